//! System-prompt composition and rendering: a prompt of three layers (global, organization,
//! room; three sections each, a custom variable), measured the way the prompt engine serves
//! it:
//!
//! - cached composition: the cache lookup alone (what a composition cache in front of string
//!   templates answers with);
//! - cached compose + render: the lookup and the render with fresh values (what a render call
//!   costs once the templates are compiled);
//! - uncached compose + render: the layers read from the store, compiled and planned, then
//!   rendered (the first render after a template changes).
//!
//! Each figure is the median of `ROUNDS` rounds (default 5), on one thread.
//!
//!   cargo bench --bench prompts

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost::domain::operators;
use outpost::domain::orgs::{self, NewOrg};
use outpost::domain::prompts::{self, Body, Level, Merge, NewTemplate, Section, Variable};
use outpost::domain::rooms::{self, RoomFields};
use outpost::ids::Id;
use outpost::prompts::{Input, Subject};
use outpost::store::writer::MutationCtx;
use outpost::tenancy::OrgScope;

fn section(name: &str, text: &str, merge: Merge) -> Section {
    Section { name: name.into(), text: text.into(), merge, priority: 0, locked: false }
}

fn body(sections: Vec<Section>) -> Body {
    Body {
        sections,
        variables: vec![Variable {
            name: "topic".into(),
            description: String::new(),
            default: Some("planning".into()),
        }],
    }
}

/// An organization with a room, the three layers' templates, and what a render is for.
async fn setup(app: &outpost::App) -> (OrgScope, Subject, Input) {
    let key = operators::create_key(&app.writer, "bench", "bench").await.expect("key");
    let op = outpost::auth::operator(&app.store, &app.operator_keys, &key.token).await.expect("operator");
    let ctx = |scope: OrgScope| MutationCtx { scope, actor: op.actor(), request_id: None, client_addr: None };
    let scope = OrgScope::operator(Id::new(), &op);
    let org = orgs::create(
        &app.writer,
        ctx(scope),
        NewOrg { slug: "bench".into(), name: "Bench Org".into(), settings: None },
    )
    .await
    .expect("org");
    let user = Id::new();
    let room = rooms::create(
        &app.writer,
        ctx(scope),
        user,
        RoomFields { name: Some("Launch".into()), ..RoomFields::default() },
    )
    .await
    .expect("room");
    let layers = [
        (
            OrgScope::INSTANCE,
            Level::Global,
            None,
            vec![
                section("identity", "You are the assistant of {{ org.name }}.", Merge::Append),
                section("safety", "Never share secrets. Refuse anything unlawful.", Merge::Append),
                section("style", "Be brief. Answer in {{ locale }}.", Merge::Append),
            ],
        ),
        (
            scope,
            Level::Org,
            None,
            vec![
                section("identity", "You help the people of {{ org.name }} ({{ org.slug }}).", Merge::Replace),
                section("style", "Today is {{ today }}.", Merge::Append),
                section("topic", "The topic is {{ vars.topic }}.", Merge::Append),
            ],
        ),
        (
            scope,
            Level::Room,
            Some(room.id),
            vec![
                section("context", "This room: {{ room.name }}. {{ room.description }}", Merge::Append),
                section(
                    "style",
                    "{% for t in tools %}- {{ t.name }}: {{ t.description }}\n{% endfor %}",
                    Merge::Append,
                ),
                section("user", "You talk with {{ user.name }} ({{ user.role }}).", Merge::Append),
            ],
        ),
    ];
    for (s, level, room, sections) in layers {
        let new = NewTemplate {
            level,
            room,
            user: None,
            name: "assistant".into(),
            description: String::new(),
            body: body(sections),
            note: String::new(),
        };
        app.prompts.check(level, &new.body).expect("valid");
        prompts::create(&app.writer, ctx(s), new).await.expect("template");
    }
    let subject = Subject {
        org: (org.id, org.name.clone(), org.slug.clone()),
        room: Some((room.id, room.name.clone(), "Where the launch is planned.".into())),
        user: (user, "Ada".into(), "member", Some("en".into()), None),
    };
    let input = Input {
        name: "assistant".into(),
        room: Some(room.id),
        user,
        locale: None,
        vars: BTreeMap::from([("topic".into(), "the launch checklist".into())]),
        tools: (0..3)
            .map(|i| outpost::prompts::Tool {
                service: Id::NIL,
                name: format!("tool{i}"),
                description: "Does a thing.".into(),
            })
            .collect(),
    };
    (scope, subject, input)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("outpost-prompts-bench-{}", Id::new()));
    let mut config = outpost::Config { data_dir: dir.clone(), ..outpost::Config::default() };
    config.store.min_free_disk_bytes = 0;
    rt.block_on(async {
        let (app, _) = outpost::App::start(config).await.expect("app");
        let (scope, subject, input) = setup(&app).await;
        let (room, user) = (input.room, input.user);
        let sample = app.prompts.render(scope, subject.clone(), input.clone()).await.expect("render");
        let (mut lookup, mut cached, mut uncached) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let n = 200_000;
            let start = Instant::now();
            for _ in 0..n {
                let (c, hit) = app.prompts.composition_for(scope, "assistant", room, user).await.expect("c");
                assert!(hit);
                std::hint::black_box(c);
            }
            lookup.push(f64::from(n) / start.elapsed().as_secs_f64());
            let n = 20_000;
            let start = Instant::now();
            for _ in 0..n {
                let r = app.prompts.render(scope, subject.clone(), input.clone()).await.expect("render");
                std::hint::black_box(r);
            }
            cached.push(f64::from(n) / start.elapsed().as_secs_f64());
            let n = 1_000;
            let start = Instant::now();
            for _ in 0..n {
                let c = app.prompts.compose_uncached(scope, "assistant", room, user).await.expect("compose");
                let r = c.render(&subject, &input, app.prompts.output_bytes_max()).expect("render");
                std::hint::black_box(r);
            }
            uncached.push(f64::from(n) / start.elapsed().as_secs_f64());
        }
        let per = |ops: f64| Duration::from_secs_f64(1.0 / ops);
        println!("prompt: 3 layers, {} sections, {} bytes rendered", sample.sections.len(), sample.prompt.len());
        for (what, v) in [
            ("cached composition (lookup)", lookup),
            ("cached compose + render", cached),
            ("uncached compose + render", uncached),
        ] {
            let m = median(v);
            println!("{what:<30} {m:>12.0} ops/s   {:>10.1?} per op", per(m));
        }
        app.writer.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(dir);
}
