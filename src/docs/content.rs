//! A document's top-level content, read as JSON and rewritten to an older state.
//!
//! A top-level type that no client has named in this process (a server never does) is read
//! the way Yjs guesses it from its content: a text, a map, an array or XML.

use yrs::types::text::Text as _;
use yrs::types::{AsPrelim, ToJson};
use yrs::{
    Array, ArrayRef, Doc, GetString, In, Map, MapRef, Out, ReadTxn, TextRef, Transact, WriteTxn, XmlFragmentRef,
};

use crate::domain::DomainError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Map,
    Array,
    Xml,
}

fn kind_of<T: ReadTxn>(value: &Out, txn: &T) -> Kind {
    match value {
        Out::YText(_) => Kind::Text,
        Out::YArray(_) => Kind::Array,
        Out::YXmlFragment(_) | Out::YXmlElement(_) | Out::YXmlText(_) => Kind::Xml,
        Out::UndefinedRef(_) => match value.as_prelim(txn) {
            In::Text(_) => Kind::Text,
            In::Array(_) => Kind::Array,
            In::XmlText(_) | In::XmlElement(_) | In::XmlFragment(_) => Kind::Xml,
            _ => Kind::Map,
        },
        _ => Kind::Map,
    }
}

/// The top-level shared types as JSON: texts as strings, maps as objects, arrays as arrays,
/// XML as its string form.
pub fn to_json(doc: &Doc) -> serde_json::Value {
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for (name, value) in txn.root_refs() {
        let any = match (&value, kind_of(&value, &txn)) {
            (Out::YXmlElement(x), _) => yrs::Any::from(x.get_string(&txn)),
            (Out::YXmlText(x), _) => yrs::Any::from(x.get_string(&txn)),
            (Out::YText(t), _) => yrs::Any::from(t.get_string(&txn)),
            (Out::YXmlFragment(x), _) => yrs::Any::from(x.get_string(&txn)),
            (Out::UndefinedRef(b), Kind::Text) => yrs::Any::from(TextRef::from(*b).get_string(&txn)),
            (Out::UndefinedRef(b), Kind::Xml) => yrs::Any::from(XmlFragmentRef::from(*b).get_string(&txn)),
            (Out::UndefinedRef(b), Kind::Array) => ArrayRef::from(*b).to_json(&txn),
            (Out::UndefinedRef(b), Kind::Map) => MapRef::from(*b).to_json(&txn),
            (other, _) => other.to_json(&txn),
        };
        out.insert(name.to_string(), any_to_json(&any));
    }
    serde_json::Value::Object(out)
}

/// Converted directly (not through JSON text, whose parser stops at 128 levels: types nest up to
/// 256, with values up to 128 deep in them).
fn any_to_json(any: &yrs::Any) -> serde_json::Value {
    serde_json::to_value(any).unwrap_or(serde_json::Value::Null)
}

/// Changes `doc` so its top-level texts, maps and arrays hold what `old`'s do (types `old`
/// lacks are emptied) and answers that change as one update (v1). Text formatting is not
/// carried over; XML types are refused.
pub fn rewrite(doc: &Doc, old: &Doc) -> Result<Vec<u8>, DomainError> {
    let old_txn = old.transact();
    let wanted: Vec<(String, Kind, Out)> =
        old_txn.root_refs().map(|(name, value)| (name.to_owned(), kind_of(&value, &old_txn), value)).collect();
    let present: Vec<(String, Kind)> = {
        let txn = doc.transact();
        txn.root_refs().map(|(name, value)| (name.to_owned(), kind_of(&value, &txn))).collect()
    };
    if wanted.iter().any(|(_, k, _)| *k == Kind::Xml) || present.iter().any(|(_, k)| *k == Kind::Xml) {
        return Err(DomainError::Conflict {
            code: "restore_unsupported",
            detail: "this document has XML types; restore the version as a new document instead".into(),
        });
    }
    let mut txn = doc.transact_mut();
    for (name, kind) in &present {
        if !wanted.iter().any(|(n, _, _)| n == name) {
            clear(&mut txn, name, *kind);
        }
    }
    for (name, kind, value) in &wanted {
        clear(&mut txn, name, *kind);
        match (kind, value) {
            (Kind::Text, _) => {
                let s = match value {
                    Out::YText(t) => t.get_string(&old_txn),
                    Out::UndefinedRef(b) => TextRef::from(*b).get_string(&old_txn),
                    _ => String::new(),
                };
                txn.get_or_insert_text(name.as_str()).insert(&mut txn, 0, &s);
            }
            (Kind::Map, Out::UndefinedRef(b)) => {
                let target = txn.get_or_insert_map(name.as_str());
                for (k, v) in MapRef::from(*b).iter(&old_txn) {
                    target.insert(&mut txn, k, v.as_prelim(&old_txn));
                }
            }
            (Kind::Map, Out::YMap(m)) => {
                let target = txn.get_or_insert_map(name.as_str());
                for (k, v) in m.iter(&old_txn) {
                    target.insert(&mut txn, k, v.as_prelim(&old_txn));
                }
            }
            (Kind::Array, Out::UndefinedRef(b)) => copy_array(&mut txn, name, &ArrayRef::from(*b), &old_txn),
            (Kind::Array, Out::YArray(a)) => copy_array(&mut txn, name, a, &old_txn),
            _ => {}
        }
    }
    Ok(txn.encode_update_v1())
}

fn copy_array<T: ReadTxn>(txn: &mut yrs::TransactionMut, name: &str, from: &ArrayRef, from_txn: &T) {
    let target = txn.get_or_insert_array(name);
    for (i, v) in from.iter(from_txn).enumerate() {
        target.insert(txn, i as u32, v.as_prelim(from_txn));
    }
}

fn clear(txn: &mut yrs::TransactionMut, name: &str, kind: Kind) {
    match kind {
        Kind::Text => {
            let t = txn.get_or_insert_text(name);
            let len = t.len(txn);
            if len > 0 {
                t.remove_range(txn, 0, len);
            }
        }
        Kind::Map => {
            let m = txn.get_or_insert_map(name);
            let keys: Vec<String> = m.keys(txn).map(str::to_owned).collect();
            for k in keys {
                m.remove(txn, &k);
            }
        }
        Kind::Array => {
            let a = txn.get_or_insert_array(name);
            let len = a.len(txn);
            if len > 0 {
                a.remove_range(txn, 0, len);
            }
        }
        Kind::Xml => {}
    }
}
