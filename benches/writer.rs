//! Durable writes per second through the store writer, with 1, 8 and 64 concurrent callers,
//! beside the disk's fsync rate measured in the same run.
//!
//! Each write is a real Mutation: `domain::orgs::create` (organization row, slug index, event,
//! audit record), acknowledged only after its group commit is fsynced. The fsync rate is a
//! 4 KiB write + fdatasync loop on the same file system. Rounds alternate the two.
//!
//!   cargo bench --bench writer                      # defaults: 5 rounds of 3 s
//!   cargo bench --bench writer -- --rounds 3 --seconds 2 --dir /var/tmp --tsv out.tsv

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost::domain::operators;
use outpost::domain::orgs::{self, NewOrg};
use outpost::ids::Id;
use outpost::store::writer::MutationCtx;
use outpost::tenancy::OrgScope;

struct Args {
    rounds: usize,
    seconds: f64,
    dir: PathBuf,
    callers: Vec<usize>,
    tsv: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args { rounds: 5, seconds: 3.0, dir: std::env::temp_dir(), callers: vec![1, 8, 64], tsv: None };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().unwrap_or(5),
            "--seconds" => a.seconds = v().parse().unwrap_or(3.0),
            "--dir" => a.dir = PathBuf::from(v()),
            "--callers" => a.callers = v().split(',').filter_map(|c| c.parse().ok()).collect(),
            "--tsv" => a.tsv = Some(PathBuf::from(v())),
            _ => {} // cargo bench passes --bench; ignore what we do not know
        }
    }
    a
}

/// 4 KiB write + fdatasync, repeated for `secs`: the disk's durable-commit ceiling.
fn fsync_rate(dir: &std::path::Path, secs: f64) -> f64 {
    let path = dir.join(format!("fsync-probe-{}", Id::new()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("probe file");
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

async fn writes_per_s(
    app: &outpost::App,
    op: &outpost::auth::Operator,
    callers: usize,
    secs: f64,
    round: usize,
) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let commits_before = app.metrics.writer_commits.get();
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for c in 0..callers {
        let (app, op, done, stop) = (app.clone(), op.clone(), done.clone(), stop.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ctx = MutationCtx {
                    scope: OrgScope::operator(Id::new(), &op),
                    actor: op.actor(),
                    request_id: None,
                    client_addr: None,
                };
                let new = NewOrg { slug: format!("r{round}c{c}n{i}x{callers}"), name: "bench".into(), settings: None };
                orgs::create(&app.writer, ctx, new).await.expect("write");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    let commits = (app.metrics.writer_commits.get() - commits_before).max(1) as f64;
    (n / elapsed, n / commits)
}

/// One caller count's samples, a value per round.
#[derive(Default)]
struct Row {
    callers: usize,
    writes_per_s: Vec<f64>,
    fsync_per_s: Vec<f64>,
    per_commit: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = a.dir.join(format!("outpost-writer-bench-{}", Id::new()));
    let mut config = outpost::Config { data_dir: dir.clone(), ..outpost::Config::default() };
    config.store.min_free_disk_bytes = 0;
    let mut rows: Vec<Row> = a.callers.iter().map(|c| Row { callers: *c, ..Row::default() }).collect();
    rt.block_on(async {
        let (app, _) = outpost::App::start(config).await.expect("store");
        let key = operators::create_key(&app.writer, "bench", "bench").await.expect("key");
        let op = outpost::auth::operator(&app.store, &app.operator_keys, &key.token).await.expect("operator");
        // Warm-up.
        writes_per_s(&app, &op, 8, 1.0, 999).await;
        for round in 0..a.rounds {
            for row in &mut rows {
                let fsync = tokio::task::block_in_place(|| fsync_rate(&dir, a.seconds.min(2.0)));
                let (wps, per_commit) = writes_per_s(&app, &op, row.callers, a.seconds, round).await;
                eprintln!(
                    "round {round}: {:>2} callers: {wps:>9.0} writes/s ({per_commit:.1} per commit), fsync {fsync:.0}/s",
                    row.callers
                );
                row.writes_per_s.push(wps);
                row.fsync_per_s.push(fsync);
                row.per_commit.push(per_commit);
            }
        }
        app.writer.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ncallers  writes/s median (min–max)      fsync/s median   writes per fsync   writes per commit");
    let mut tsv =
        String::from("callers\twrites_per_s_median\twrites_per_s_min\twrites_per_s_max\tfsync_per_s_median\tratio\n");
    for Row { callers: c, writes_per_s: w, fsync_per_s: f, per_commit: pc } in &mut rows {
        let (wmin, wmax) = (w.iter().copied().fold(f64::MAX, f64::min), w.iter().copied().fold(0.0, f64::max));
        let ratios: Vec<f64> = w.iter().zip(f.iter()).map(|(w, f)| w / f).collect();
        let (wm, fm, rm, pcm) = (median(w), median(f), median(&mut ratios.clone()), median(pc));
        println!("{c:>7}  {wm:>9.0} ({wmin:.0}–{wmax:.0})  {fm:>14.0}   {rm:>16.2}   {pcm:>17.1}");
        let _ = writeln!(tsv, "{c}\t{wm:.0}\t{wmin:.0}\t{wmax:.0}\t{fm:.0}\t{rm:.3}");
    }
    if let Some(p) = a.tsv {
        let _ = std::fs::write(p, tsv);
    }
}
