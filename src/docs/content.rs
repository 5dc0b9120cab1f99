//! A document's top-level content, read as JSON and rewritten to an older state.
//!
//! A top-level type that no client has named in this process (a server never does) is read
//! the way Yjs guesses it from its content: a text, a map, an array or XML.
//!
//! yrs reads a list by index through an iterator that loops for ever when the list holds text
//! whose length in its units differs from its length in characters (any non-ASCII text, found
//! by fuzzing: one `GET …/json` spun a core for good). A list holds text when an update puts it
//! there (in Yjs only texts do), so nothing here reads a list by index if it holds any text:
//! lists are judged and read through walks of their items, and a list holding text is read as
//! that text.

use yrs::branch::BranchPtr;
use yrs::types::AsPrelim;
use yrs::types::text::Text as _;
use yrs::{Array, ArrayRef, Doc, GetString, Map, MapRef, Out, ReadTxn, TextRef, Transact, WriteTxn, XmlFragmentRef};

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
        Out::UndefinedRef(b) => guess(*b, txn),
        _ => Kind::Map,
    }
}

/// What an unnamed type is, guessed as Yjs guesses it: entries and text make XML text, entries
/// and a list an XML element, text alone a text, a list alone an array, anything else a map.
/// (Yjs looks at the first item of the list for text; here any text counts, so that a list
/// holding text is never read as an array.)
fn guess<T: ReadTxn>(b: BranchPtr, txn: &T) -> Kind {
    let has_map = MapRef::from(b).len(txn) > 0;
    let has_text = holds_text(b, txn);
    let has_list = b.content_len > 0;
    match (has_map, has_list, has_text) {
        (true, _, true) | (true, true, false) => Kind::Xml,
        (false, _, true) => Kind::Text,
        (false, true, false) => Kind::Array,
        _ => Kind::Map,
    }
}

/// Whether the list of `b` holds any text (a walk of its items).
fn holds_text<T: ReadTxn>(b: BranchPtr, txn: &T) -> bool {
    !TextRef::from(b).get_string(txn).is_empty()
}

/// The top-level shared types as JSON: texts as strings, maps as objects, arrays as arrays,
/// XML as its string form.
pub fn to_json(doc: &Doc) -> serde_json::Value {
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for (name, value) in txn.root_refs() {
        out.insert(name.to_string(), render(&value, &txn));
    }
    serde_json::Value::Object(out)
}

/// One value as JSON. Recursive: types nest at most 256 deep (see `nesting`).
fn render<T: ReadTxn>(value: &Out, txn: &T) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Out::Any(any) => any_to_json(any),
        Out::YText(t) => Value::String(t.get_string(txn)),
        Out::YXmlElement(x) => Value::String(x.get_string(txn)),
        Out::YXmlText(x) => Value::String(x.get_string(txn)),
        Out::YXmlFragment(x) => Value::String(x.get_string(txn)),
        Out::YMap(m) => map(m, txn),
        Out::YArray(a) => list(BranchPtr::from(a.as_ref()), txn),
        Out::UndefinedRef(b) => match guess(*b, txn) {
            Kind::Text => Value::String(TextRef::from(*b).get_string(txn)),
            Kind::Xml => Value::String(XmlFragmentRef::from(*b).get_string(txn)),
            Kind::Array => list(*b, txn),
            Kind::Map => map(&MapRef::from(*b), txn),
        },
        Out::YDoc(_) => Value::Null,
    }
}

fn map<T: ReadTxn>(m: &MapRef, txn: &T) -> serde_json::Value {
    serde_json::Value::Object(m.iter(txn).map(|(k, v)| (k.to_owned(), render(&v, txn))).collect())
}

/// A list as an array; one holding text (which only a malformed update makes) as that text.
fn list<T: ReadTxn>(b: BranchPtr, txn: &T) -> serde_json::Value {
    if holds_text(b, txn) {
        return serde_json::Value::String(TextRef::from(b).get_string(txn));
    }
    serde_json::Value::Array(ArrayRef::from(b).iter(txn).map(|v| render(&v, txn)).collect())
}

/// Whether `value`, or a type inside it, is a list holding text: copying it (restoring a
/// version) reads it by index, which would not end.
fn list_with_text<T: ReadTxn>(value: &Out, txn: &T) -> bool {
    let branch = match value {
        Out::YArray(a) => BranchPtr::from(a.as_ref()),
        Out::YMap(m) => return m.iter(txn).any(|(_, v)| list_with_text(&v, txn)),
        Out::UndefinedRef(b) => match guess(*b, txn) {
            Kind::Array => *b,
            Kind::Map => return MapRef::from(*b).iter(txn).any(|(_, v)| list_with_text(&v, txn)),
            Kind::Text | Kind::Xml => return false,
        },
        _ => return false,
    };
    holds_text(branch, txn) || ArrayRef::from(branch).iter(txn).any(|v| list_with_text(&v, txn))
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
    let lists_with_text = wanted.iter().any(|(_, _, v)| list_with_text(v, &old_txn)) || {
        let txn = doc.transact();
        txn.root_refs().any(|(_, v)| list_with_text(&v, &txn))
    };
    if lists_with_text {
        return Err(DomainError::Conflict {
            code: "restore_unsupported",
            detail: "this document has lists holding text; restore the version as a new document instead".into(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Transact, Update};

    fn doc(update: &[u8]) -> Doc {
        let doc = Doc::new();
        doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
        doc
    }

    /// A list whose first item is a value and whose second is non-ASCII text: yrs's iterator
    /// over it never ends. At the top (unnamed), Yjs's guess makes it an array; here it is the
    /// text it holds, restored as text.
    #[test]
    fn a_top_level_list_holding_text_is_read_as_that_text() {
        let update = [1, 2, 1, 0, 0x08, 1, 1, b'l', 1, 120, 0x84, 1, 0, 2, 0xc3, 0xa9, 0];
        assert_eq!(super::to_json(&doc(&update)), serde_json::json!({ "l": "é" }));
        super::rewrite(&Doc::new(), &doc(&update)).unwrap();
    }

    /// The same in an array nested in a map: read as its text, and a version holding it is not
    /// restored in place (copying reads it by index).
    #[test]
    fn a_nested_array_holding_text_is_read_without_indexing_it() {
        let update = [1, 3, 1, 0, 0x27, 1, 1, b'm', 1, b'k', 0, 0x08, 0, 1, 0, 1, 120, 0x84, 1, 1, 2, 0xc3, 0xa9, 0];
        assert_eq!(super::to_json(&doc(&update)), serde_json::json!({ "m": { "k": "é" } }));
        let refused = super::rewrite(&Doc::new(), &doc(&update)).unwrap_err();
        assert!(format!("{refused:?}").contains("lists holding text"), "{refused:?}");
    }
}
