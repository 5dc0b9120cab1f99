//! What the checks on an incoming Yjs update cost, next to what applying it costs anyway.
//!
//! For each kind of update (a keystroke into a 20,000-character text, a 10 KB paste, a
//! paragraph added to a rich-text document of 1,000 paragraphs, a map nested 50 deep, and a
//! whole 1 MB document as a client's first sync sends it), per update:
//!   decode   yrs decoding alone (what was done before any check);
//!   walk     the shape walk in front of it (`docs::v1::update`: counts that fit, values not too deep);
//!   checked  everything `docs::decode_updates` does (walk, decode, one run per client, the
//!            trial integration into an empty document);
//!   nesting  listing the items and bounding how deep types nest against the document;
//!   apply    integrating it into the loaded document (the work the server does regardless).
//! and the checks (checked + nesting) as a multiple of apply.
//!
//!   cargo bench --bench yjs_checks

use std::time::{Duration, Instant};

use outpost::docs::{nesting, v1};
use yrs::types::xml::{XmlFragment, XmlTextPrelim};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update, XmlElementPrelim};

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

/// A document and one update a client would send it next.
struct Case {
    name: &'static str,
    doc: Vec<u8>,
    update: Vec<u8>,
}

fn diff(client: &Doc, change: impl FnOnce(&Doc)) -> Vec<u8> {
    let before = client.transact().state_vector();
    change(client);
    client.transact().encode_diff_v1(&before)
}

fn whole(doc: &Doc) -> Vec<u8> {
    doc.transact().encode_state_as_update_v1(&StateVector::default())
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();

    let client = Doc::with_client_id(1);
    let text = client.get_or_insert_text("t");
    for i in 0..2_000 {
        text.insert(&mut client.transact_mut(), i * 10, "0123456789");
    }
    let doc = whole(&client);
    let update = diff(&client, |c| text.insert(&mut c.transact_mut(), 10_000, "x"));
    out.push(Case { name: "keystroke", doc: doc.clone(), update });
    let paste = "lorem ipsum dolor sit amet, ".repeat(366);
    let update = diff(&client, |c| text.insert(&mut c.transact_mut(), 5_000, &paste));
    out.push(Case { name: "10 KB paste", doc, update });

    let client = Doc::with_client_id(2);
    let body = client.get_or_insert_xml_fragment("prosemirror");
    for i in 0..1_000 {
        let mut txn = client.transact_mut();
        let p = body.insert(&mut txn, i, XmlElementPrelim::empty("paragraph"));
        p.insert(&mut txn, 0, XmlTextPrelim::new("a paragraph of some length, as people write them"));
    }
    let doc = whole(&client);
    let update = diff(&client, |c| {
        let mut txn = c.transact_mut();
        let p = body.insert(&mut txn, 500, XmlElementPrelim::empty("paragraph"));
        p.insert(&mut txn, 0, XmlTextPrelim::new("a new paragraph"));
    });
    out.push(Case { name: "paragraph (rich text)", doc, update });

    let client = Doc::with_client_id(3);
    let root = client.get_or_insert_map("m");
    root.insert(&mut client.transact_mut(), "seed", 1);
    let doc = whole(&client);
    let update = diff(&client, |c| {
        let mut txn = c.transact_mut();
        let mut m = root.clone();
        for _ in 0..50 {
            m = m.insert(&mut txn, "k", MapPrelim::default());
        }
    });
    out.push(Case { name: "maps nested 50 deep", doc, update });

    let client = Doc::with_client_id(4);
    let text = client.get_or_insert_text("t");
    let body = client.get_or_insert_xml_fragment("prosemirror");
    for i in 0..10_000u32 {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, i * 50, "fifty characters of text, typed in one go......");
        if i % 10 == 0 {
            let p = body.insert(&mut txn, i / 10, XmlElementPrelim::empty("paragraph"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("a paragraph"));
        }
    }
    let update = whole(&client);
    out.push(Case { name: "whole document (first sync)", doc: Vec::new(), update });
    out
}

fn main() {
    let rounds = 7;
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "update", "bytes", "decode", "walk", "checked", "nesting", "apply", "checks/apply"
    );
    for case in cases() {
        let loaded = Doc::new();
        if !case.doc.is_empty() {
            loaded.transact_mut().apply_update(Update::decode_v1(&case.doc).expect("doc")).expect("apply doc");
        }
        let n = (2_000_000 / (case.update.len() as u32 + 200)).clamp(3, 20_000);
        let (mut decode, mut walk, mut checked, mut nest, mut apply) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let sv = loaded.transact().state_vector();
        for _ in 0..rounds {
            decode.push(per_op(n, || {
                std::hint::black_box(Update::decode_v1(&case.update).expect("decode"));
            }));
            walk.push(per_op(n, || {
                std::hint::black_box(v1::update(&case.update).expect("walk"));
            }));
            checked.push(per_op(n, || {
                std::hint::black_box(outpost::docs::decode_updates(vec![case.update.clone()]).expect("checked"));
            }));
            nest.push(per_op(n, || {
                let mut items = Vec::new();
                v1::items(&case.update, &mut items).expect("items");
                let in_doc = |c: u64, k: u64| k < u64::from(sv.get(&yrs::ClientID::new(c)));
                std::hint::black_box(nesting::deepest(&mut items, &in_doc, 1).expect("nesting"));
            }));
            // Into a fresh copy of the document each time: loading the copy is timed too, and
            // taken off below.
            apply.push(per_op(n.min(50), || {
                let d = Doc::new();
                if !case.doc.is_empty() {
                    d.transact_mut().apply_update(Update::decode_v1(&case.doc).expect("doc")).expect("doc");
                }
                d.transact_mut().apply_update(Update::decode_v1(&case.update).expect("u")).expect("apply");
            }));
        }
        // Loading the copy alone, taken off apply.
        let load = median(
            (0..rounds)
                .map(|_| {
                    per_op(n.min(50), || {
                        let d = Doc::new();
                        if !case.doc.is_empty() {
                            d.transact_mut().apply_update(Update::decode_v1(&case.doc).expect("doc")).expect("doc");
                        }
                    })
                })
                .collect(),
        );
        let (decode, walk, checked, nest) = (median(decode), median(walk), median(checked), median(nest));
        let apply = median(apply).saturating_sub(load).max(Duration::from_nanos(1));
        let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
        println!(
            "{:<30} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.2}",
            case.name,
            case.update.len(),
            us(decode),
            us(walk),
            us(checked),
            us(nest),
            us(apply),
            (checked + nest).as_secs_f64() / apply.as_secs_f64()
        );
    }
}
