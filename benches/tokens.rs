//! Access-token verification with and without the verified-token cache, token signing, and
//! the cost of one password check at the chosen argon2id parameters (the floor of a login).
//!
//!   cargo bench --bench tokens

use std::time::{Duration, Instant};

use outpost::auth::password;
use outpost::auth::tokens::{self, AccessClaims, VerifiedCache};
use outpost::ids::Id;

fn per_op(n: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("outpost-tokens-bench-{}", Id::new()));
    let mut config = outpost::Config { data_dir: dir.clone(), ..outpost::Config::default() };
    config.store.min_free_disk_bytes = 0;
    let app = rt.block_on(async { outpost::App::start(config).await.expect("app").0 });
    let ring = app.keys.ring();
    let ttl = Duration::from_secs(900);
    let claims = AccessClaims { org: Id::new(), user: Id::new(), role: "member".into(), session: Id::new(), exp_s: 0 };
    let token = tokens::issue(&ring, &claims, ttl).expect("token");
    let cache = VerifiedCache::default();
    let rounds = 5;
    let (mut sign, mut plain, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        sign.push(per_op(2000, || {
            tokens::issue(&ring, &claims, ttl).expect("sign");
        }));
        plain.push(per_op(2000, || {
            tokens::verify(&ring, &token, ttl).expect("verify");
        }));
        cached.push(per_op(200_000, || {
            cache.verify(&ring, &token, ttl).expect("cached");
        }));
    }
    let hash = password::hash_sync("a password of reasonable length");
    let mut check = Vec::new();
    for _ in 0..rounds {
        check.push(per_op(5, || {
            assert!(password::verify_sync("a password of reasonable length", &hash));
        }));
    }
    let (plain_m, cached_m) = (median(plain), median(cached));
    println!("token sign              median {:>10.1?}", median(sign));
    println!("token verify (Ed25519)  median {plain_m:>10.1?}");
    println!(
        "token verify (cached)   median {cached_m:>10.1?}   ({:.0}x faster)",
        plain_m.as_secs_f64() / cached_m.as_secs_f64()
    );
    println!(
        "password check (argon2id m={} KiB t={} p={})  median {:>8.1?}",
        password::M_COST_KIB,
        password::T_COST,
        password::P_COST,
        median(check)
    );
    rt.block_on(app.writer.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}
