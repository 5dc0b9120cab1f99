//! The event log's followers, retention and the in-process bus.

use std::time::Duration;

use outpost::domain::DomainError;
use outpost::store::events::BusItem;
use outpost::store::followers::{self, Follower, Retention};
use outpost::store::writer::MutationCtx;
use outpost::tenancy::OrgScope;
use serde_json::json;

use crate::support::config_for;

// A new store's instance log starts with one event: its first signing key. Positions below
// count it.

async fn emit(app: &outpost::App, n: usize) {
    for i in 0..n {
        let r: Result<(), DomainError> = app
            .writer
            .submit(MutationCtx::system(OrgScope::INSTANCE), move |tx| {
                tx.emit("instance", "test.tick", json!({ "i": i }));
                tx.audit("test.tick", "instance", json!({}));
                Ok(())
            })
            .await;
        r.unwrap();
    }
}

#[tokio::test]
async fn followers_resume_from_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    emit(&app, 25).await;
    let mut f = Follower::open("indexer", app.store.clone(), app.writer.clone(), app.followers.clone()).await.unwrap();
    assert_eq!(f.position(), 0);
    let batch = f.next_batch(10).await.unwrap();
    assert_eq!(batch.iter().map(|e| e.gseq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    f.checkpoint(batch.last().unwrap().gseq).await.unwrap();
    drop(f);
    app.writer.shutdown().await;
    drop(app);

    // After a restart the follower resumes exactly after its checkpoint.
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    let f = Follower::open("indexer", app.store.clone(), app.writer.clone(), app.followers.clone()).await.unwrap();
    assert_eq!(f.position(), 10);
    let rest = f.next_batch(100).await.unwrap();
    assert_eq!(rest.first().map(|e| e.gseq), Some(11));
    assert_eq!(rest.len(), 16);
    // A follower waiting on the bus wakes for a new event.
    let mut bus = app.bus.subscribe();
    let mut f = f;
    f.checkpoint(26).await.unwrap();
    let app2 = app.clone();
    tokio::spawn(async move { emit(&app2, 1).await });
    let got = f.wait_batch(&mut bus, 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].gseq, 27);
    app.writer.shutdown().await;
}

#[tokio::test]
async fn retention_trims_by_count_but_waits_for_followers() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = outpost::App::start(config_for(dir.path())).await.unwrap();
    let mut f = Follower::open("slow", app.store.clone(), app.writer.clone(), app.followers.clone()).await.unwrap();
    emit(&app, 30).await;
    f.checkpoint(12).await.unwrap();
    let retention = Retention { age: Duration::from_secs(3600), count_max: 5, batch_max: 1000 };
    let removed = followers::trim(&app.writer, retention).await.unwrap();
    assert_eq!(removed, 12, "only what the follower has applied goes");
    let bounds = app.store.reader().unwrap().log_bounds(&OrgScope::INSTANCE).unwrap();
    assert_eq!((bounds.first_seq, bounds.head_seq), (13, 31));
    f.checkpoint(31).await.unwrap();
    let removed = followers::trim(&app.writer, retention).await.unwrap();
    assert_eq!(removed, 14);
    let reader = app.store.reader().unwrap();
    let left = reader.events_after(&OrgScope::INSTANCE, None, 0, 100).unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), (27..=31).collect::<Vec<_>>());
    // The topic index was trimmed with the log.
    let by_topic = reader.events_after(&OrgScope::INSTANCE, Some("instance"), 0, 100).unwrap();
    assert_eq!(by_topic, left);

    // By age: everything older than the limit goes (the follower has applied it all).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let by_age = Retention { age: Duration::ZERO, count_max: u64::MAX, batch_max: 1000 };
    assert_eq!(followers::trim(&app.writer, by_age).await.unwrap(), 5);
    let bounds = app.store.reader().unwrap().log_bounds(&OrgScope::INSTANCE).unwrap();
    assert_eq!((bounds.first_seq, bounds.head_seq), (0, 31), "the head stays after trimming");
    // New events continue the sequence.
    emit(&app, 1).await;
    let after = app.store.reader().unwrap().events_after(&OrgScope::INSTANCE, None, 0, 10).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [32]);
    app.writer.shutdown().await;
}

#[tokio::test]
async fn a_lagging_bus_receiver_is_told_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.events.bus_capacity = 16;
    let (app, _) = outpost::App::start(config).await.unwrap();
    let mut rx = app.bus.subscribe();
    emit(&app, 3).await;
    // Read two, then fall far behind.
    for want in 2..=3 {
        match rx.recv().await {
            BusItem::Event(e) => assert_eq!(e.gseq, want),
            other => panic!("{other:?}"),
        }
    }
    emit(&app, 40).await;
    let resume = match rx.recv().await {
        BusItem::Lagged { resume_after_gseq } => resume_after_gseq,
        other => panic!("expected a lag notice, got {other:?}"),
    };
    assert_eq!(resume, 3);
    // Nothing is lost: the log has everything after the resume point.
    let missed = app.store.reader().unwrap().events_after_gseq(resume, 1000).unwrap();
    assert_eq!(missed.iter().map(|e| e.gseq).collect::<Vec<_>>(), (4..=44).collect::<Vec<_>>());
    app.writer.shutdown().await;
}
