//! The fuzz targets (`outpost::fuzzing`) on every test run: each replays its corpus in
//! `fuzz/corpus/<target>/` (seeds and every finding kept), then a bounded number of mutations of
//! it — bit flips, byte changes, cuts, repeats and splices, from a fixed seed so a failure
//! repeats. Long coverage-guided runs are `fuzz/run.sh` (libFuzzer).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mutated inputs per target, and the time each may take at most.
const MUTATIONS: usize = 10_000;
const BUDGET: Duration = Duration::from_secs(20);

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One mutation of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len().max(1));
        match rng.below(7) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[at] = [0, 0xff, b'"', b'{', b'[', b'\\', 0x80, b'9'][rng.below(8)],
            2 => out.truncate(at),
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                out.splice(at.min(out.len()).., other[from..].iter().copied());
            }
            5 => out.insert(at.min(out.len()), rng.next() as u8),
            _ if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mut report = Vec::new();
    for (name, target) in outpost::fuzzing::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        for (path, input) in &seeds {
            let run = std::panic::catch_unwind(|| target(input));
            assert!(run.is_ok(), "{name} panicked on {}", path.display());
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let started = Instant::now();
        let mut done = 0;
        while done < MUTATIONS && started.elapsed() < BUDGET {
            let (_, a) = &seeds[rng.below(seeds.len())];
            let (_, b) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, a, b);
            let run = std::panic::catch_unwind(|| target(&input));
            assert!(run.is_ok(), "{name} panicked on a mutation: {input:?}");
            done += 1;
        }
        report.push(format!("{name}: {} seeds, {done} mutations", seeds.len()));
    }
    println!("{}", report.join("\n"));
}

/// The targets listed in `outpost::fuzzing` and the cargo-fuzz binaries in `fuzz/` are the same.
#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in outpost::fuzzing::TARGETS {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(root.join("corpus").join(name).is_dir(), "no fuzz/corpus/{name}");
    }
}

/// The SDP seeds are offers the relay answers, so mutations start from the paths real clients
/// take, not only from the refusals.
#[test]
fn the_sdp_seeds_are_answered() {
    use outpost::media::sfu::Direction;
    let host = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    for (name, direction) in
        [("publish.sdp", Direction::Publish), ("play.sdp", Direction::Play), ("call.sdp", Direction::Call)]
    {
        let (_, offer) = corpus("sdp_offer").into_iter().find(|(p, _)| p.ends_with(name)).unwrap();
        let offer = String::from_utf8(offer).unwrap();
        let answered = outpost::media::sfu::sdp::answer(&offer, direction, host, true, true, 16);
        assert!(answered.is_ok(), "{name}: {:?}", answered.err());
    }
}

/// The stored-record seeds read, in each form (JSON, the first binary form, the compact one),
/// so mutations start from records the store would take.
#[test]
fn the_stored_record_seeds_read() {
    use outpost::store::{audit::AuditRecord, events::Event, tables::org_seq_key};
    let key = org_seq_key(outpost::ids::Id::NIL, 1);
    let seeds = corpus("stored_record");
    assert_eq!(seeds.len(), 6);
    for (path, seed) in seeds {
        let (which, value) = seed.split_first().unwrap();
        let read = if which % 2 == 0 {
            AuditRecord::from_stored(&key, value).map(|_| ())
        } else {
            Event::from_stored(&key, value).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(read.is_ok(), "{}: {read:?}", path.display());
    }
}
