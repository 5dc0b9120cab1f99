//! Group commit: many concurrent callers share commits, each gets its own answer, and a
//! Mutation that fails (before or after writing) affects only itself.

use std::collections::HashSet;

use outpost::domain::DomainError;
use outpost::ids::Id;
use outpost::store::tables::{OPERATOR_KEYS, org_id_key};
use outpost::store::writer::MutationCtx;
use outpost::tenancy::OrgScope;
use serde_json::json;

use crate::support::config_for;

enum Outcome {
    Committed(Id),
    RejectedClean,
    RejectedDirty(Id),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits_and_failures_stay_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    let n = 600;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let writer = app.writer.clone();
        tasks.spawn(async move {
            let id = Id::new();
            let ctx = MutationCtx::system(OrgScope::INSTANCE);
            let kind = i % 3;
            let r = writer
                .submit(ctx, move |tx| {
                    if kind == 1 {
                        return Err(DomainError::Conflict { code: "nope", detail: "rejected before writing".into() });
                    }
                    tx.put(OPERATOR_KEYS, &org_id_key(Id::NIL, id), b"{}")?;
                    if kind == 2 {
                        return Err(DomainError::Conflict { code: "nope", detail: "rejected after writing".into() });
                    }
                    tx.emit("instance", "test.written", json!({ "id": id }));
                    tx.audit("test.write", format!("key:{id}"), json!({}));
                    Ok(id)
                })
                .await;
            match (kind, r) {
                (0, Ok(got)) => Outcome::Committed(got),
                (1, Err(DomainError::Conflict { .. })) => Outcome::RejectedClean,
                (2, Err(DomainError::Conflict { .. })) => Outcome::RejectedDirty(id),
                (k, other) => panic!("mutation kind {k} got {other:?}"),
            }
        });
    }
    let mut committed = HashSet::new();
    let mut dirty = Vec::new();
    let mut clean = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Outcome::Committed(id) => assert!(committed.insert(id), "distinct results"),
            Outcome::RejectedClean => clean += 1,
            Outcome::RejectedDirty(id) => dirty.push(id),
        }
    }
    assert_eq!(committed.len(), n / 3);
    assert_eq!(clean, n / 3);
    assert_eq!(dirty.len(), n / 3);

    let commits = app.metrics.writer_commits.get();
    assert!(commits < n as u64 / 3, "{commits} commits for {n} mutations: no grouping happened");

    let reader = app.store.reader().unwrap();
    for id in &committed {
        assert!(reader.get(OPERATOR_KEYS, &org_id_key(Id::NIL, *id)).unwrap().is_some());
    }
    for id in &dirty {
        assert!(reader.get(OPERATOR_KEYS, &org_id_key(Id::NIL, *id)).unwrap().is_none(), "a rejected write leaked");
    }
    // One event per committed Mutation (after the store's first signing key), dense in seq
    // and gseq; one audit record each.
    let events = reader.events_after(&OrgScope::INSTANCE, None, 0, 10_000).unwrap();
    assert_eq!(events[0].kind, "signing_key.rotated");
    assert_eq!(events.len(), committed.len() + 1);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.gseq, i as u64 + 1);
    }
    let v = reader.verify_audit(&mut |_, _| {}).unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.records, committed.len() as u64 + 1);
    app.writer.shutdown().await;
}

#[tokio::test]
async fn writes_after_shutdown_are_refused_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    app.writer.shutdown().await;
    let r: Result<(), DomainError> = app
        .writer
        .submit(MutationCtx::system(OrgScope::INSTANCE), |tx| {
            tx.audit("x", "y", json!({}));
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(DomainError::Store(outpost::store::StoreError::Closed))), "{r:?}");
}

/// Every audited Mutation that changes something declares exactly one audit record: one that
/// declares two (or none) is refused, its caller is told, nothing of it is stored, and
/// Mutations beside it commit. One that changes nothing (an idempotent repeat) needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_with_two_audit_records_or_none_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    let write = |audits: usize| {
        let writer = app.writer.clone();
        async move {
            let id = Id::new();
            let r = writer
                .submit(MutationCtx::system(OrgScope::INSTANCE), move |tx| {
                    tx.put(OPERATOR_KEYS, &org_id_key(Id::NIL, id), b"{}")?;
                    for n in 0..audits {
                        tx.audit("test.write", format!("key:{id}"), json!({ "n": n }));
                    }
                    Ok::<_, DomainError>(())
                })
                .await;
            (id, r)
        }
    };
    let records = || app.store.reader().unwrap().verify_audit(&mut |_, _| {}).unwrap().records;
    let before = records();
    let ((two, r2), (none, r0), (one, r1)) = tokio::join!(write(2), write(0), write(1));
    assert!(r2.is_err(), "two audit records: {r2:?}");
    assert!(r0.is_err(), "no audit record: {r0:?}");
    assert!(r1.is_ok(), "one audit record: {r1:?}");
    let noop = app.writer.submit(MutationCtx::system(OrgScope::INSTANCE), |_| Ok::<_, DomainError>(())).await;
    assert!(noop.is_ok(), "a Mutation that changes nothing: {noop:?}");
    let reader = app.store.reader().unwrap();
    let stored = |id: Id| reader.get(OPERATOR_KEYS, &org_id_key(Id::NIL, id)).unwrap().is_some();
    assert!(!stored(two) && !stored(none), "nothing of a refused Mutation is stored");
    assert!(stored(one));
    assert_eq!(records(), before + 1, "the chain holds the one good record only");
    app.writer.shutdown().await;
}

/// Records of things already done (gateway calls, MCP requests) go to the writer many to a
/// job: each lands in the chain with its own context and details, beside ordinary Mutations
/// of the same commits, and the chain still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_appended_together_each_join_the_chain_with_their_own_context() {
    use outpost::store::writer::Record;
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    let reader = || app.store.reader().unwrap();
    let before = reader().verify_audit(&mut |_, _| {}).unwrap().records;
    let commits = app.metrics.writer_commits.get();
    let records = |batch: usize| {
        (0..50)
            .map(|i| Record {
                ctx: MutationCtx {
                    scope: OrgScope::INSTANCE,
                    actor: format!("user:{batch}"),
                    request_id: Some(format!("req-{batch}-{i}")),
                    client_addr: None,
                },
                action: "service.call",
                target: format!("service:{batch}"),
                details: json!({ "n": i, "outcome": "answered" }),
            })
            .collect::<Vec<_>>()
    };
    let ordinary = app.writer.submit(MutationCtx::system(OrgScope::INSTANCE), |tx| {
        tx.put(OPERATOR_KEYS, &org_id_key(Id::NIL, Id::new()), b"{}")?;
        tx.audit("test.write", "key", json!({}));
        Ok::<_, DomainError>(())
    });
    let (a, b, c, o) = tokio::join!(
        app.writer.append_records(records(1)),
        app.writer.append_records(records(2)),
        app.writer.append_records(Vec::new()),
        ordinary
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    o.unwrap();
    assert!(app.metrics.writer_commits.get() - commits <= 3, "one commit per job at most");
    let v = reader().verify_audit(&mut |_, _| {}).unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.records, before + 101);
    let chain = reader().audit_after(&OrgScope::INSTANCE, before, 1000).unwrap();
    for batch in [1, 2] {
        let mine: Vec<_> = chain.iter().filter(|r| r.target == format!("service:{batch}")).collect();
        assert_eq!(mine.len(), 50);
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(r.action, "service.call");
            assert_eq!(r.actor, format!("user:{batch}"));
            assert_eq!(r.request_id.as_deref(), Some(format!("req-{batch}-{i}").as_str()), "in the order given");
            assert_eq!(r.details["n"], i);
        }
    }
    // After the writer stops, records are refused, not taken and lost.
    app.writer.shutdown().await;
    let r = app.writer.append_records(records(3)).await;
    assert!(matches!(r, Err(outpost::store::StoreError::Closed)), "{r:?}");
}
