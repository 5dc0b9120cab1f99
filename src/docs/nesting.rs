//! How deep shared types nest, bounded before an update is stored.
//!
//! yrs deletes a shared type, and writes one as JSON, by recursing into the types inside it,
//! a few hundred bytes of stack a level: a map nested 10,000 deep (150 KB of update) overflows
//! a 2 MiB stack, which aborts the process — no containment catches that — and since the
//! update is stored first, every later load that deletes it aborts again. So no update may
//! make types nest deeper than [`NESTING_MAX`].
//!
//! An update names each item's parent by the id of the type holding it, or not at all (then it
//! sits beside its origin, in the same parent). The bound walks those links through the
//! update's own items; a link into the loaded document counts as the document's deepest type
//! (an upper bound, kept per loaded document and found exactly, from its whole state, when it
//! loads). A new type whose parent is in neither cannot be placed, so it is refused: it would
//! wait for its parent unchecked.

use super::v1::{Item, Parent};

/// The deepest a shared type may sit (a root type is at 0, a type in it at 1). Rich-text
/// editors nest a dozen levels; yrs needs under 100 KiB of stack for this many.
pub const NESTING_MAX: u32 = 256;

/// Why an update's types cannot be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    /// A new type's parent is neither in the update nor in the document.
    ParentMissing,
    /// Items name each other as parents in a circle.
    Circular,
}

/// The depth of the deepest type among `items` (taken together: one batch), or `doc_deepest`
/// if that is deeper. `in_doc` says whether an id is in the document; `doc_deepest` is the
/// depth of its deepest type.
pub fn deepest(items: &mut [Item], in_doc: &dyn Fn(u64, u64) -> bool, doc_deepest: u32) -> Result<u32, Unplaced> {
    if !items.iter().any(|i| i.is_type) {
        return Ok(doc_deepest);
    }
    items.sort_unstable_by_key(|i| (i.client, i.start));
    let mut parents = Parents { items, known: vec![UNKNOWN; items.len()], in_doc, doc_deepest };
    let mut deepest = doc_deepest;
    for i in 0..parents.items.len() {
        if parents.items[i].is_type {
            deepest = deepest.max(parents.depth_of_parent(i)?.saturating_add(1));
        }
    }
    Ok(deepest)
}

const UNKNOWN: u32 = u32::MAX;
const VISITING: u32 = u32::MAX - 1;

struct Parents<'a> {
    items: &'a [Item],
    /// The depth of each item's parent, once found.
    known: Vec<u32>,
    in_doc: &'a dyn Fn(u64, u64) -> bool,
    doc_deepest: u32,
}

impl Parents<'_> {
    /// The item holding clock `clock` of `client`.
    fn find(&self, client: u64, clock: u64) -> Option<usize> {
        let after = self.items.partition_point(|i| (i.client, i.start) <= (client, clock));
        let i = after.checked_sub(1)?;
        let item = &self.items[i];
        (item.client == client && clock - item.start < item.len).then_some(i)
    }

    /// The depth of item `i`'s parent, following the links without recursing (a chain of items
    /// each beside the last is as long as the update).
    fn depth_of_parent(&mut self, i: usize) -> Result<u32, Unplaced> {
        // The items on the way, each with what its link adds: 1 into a type, 0 beside one.
        let mut path: Vec<(usize, u32)> = Vec::new();
        let mut at = i;
        // The depth of the last item on the path's parent.
        let base = loop {
            match self.known[at] {
                UNKNOWN => {}
                VISITING => return Err(Unplaced::Circular),
                d => match path.last() {
                    Some(&(_, adds)) => break d.saturating_add(adds),
                    None => return Ok(d),
                },
            }
            self.known[at] = VISITING;
            let (link, adds) = match self.items[at].parent {
                Parent::Root => {
                    path.push((at, 0));
                    break 0;
                }
                Parent::Unknown => {
                    path.push((at, 0));
                    break self.doc_deepest;
                }
                Parent::In(c, k) => ((c, k), 1),
                Parent::Beside(c, k) => ((c, k), 0),
            };
            path.push((at, adds));
            match self.find(link.0, link.1) {
                Some(next) => at = next,
                // Into the document: the parent is at most its deepest type.
                None if (self.in_doc)(link.0, link.1) => break self.doc_deepest,
                None => return Err(Unplaced::ParentMissing),
            }
        };
        // Unwind: each item's parent is as deep as the next one's, plus its link.
        let mut depth = base;
        if let Some(&(last, _)) = path.last() {
            self.known[last] = depth;
        }
        for &(item, link) in path.iter().rev().skip(1) {
            depth = depth.saturating_add(link);
            self.known[item] = depth;
        }
        Ok(self.known[i])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::docs::v1;
    use yrs::types::ToJson;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, ArrayPrelim, Doc, Map, MapPrelim, MapRef, ReadTxn, StateVector, Text, Transact, Update};

    fn items(updates: &[&[u8]]) -> Vec<Item> {
        let mut out = Vec::new();
        for u in updates {
            v1::items(u, &mut out).unwrap();
        }
        out
    }

    /// A replica of the server's document: checks each update as the engine does, then applies it.
    struct Replica {
        doc: Doc,
        deepest: u32,
    }

    impl Replica {
        fn take(&mut self, update: &[u8]) -> Result<u32, Unplaced> {
            let sv = self.doc.transact().state_vector();
            let in_doc = |c: u64, k: u64| k < u64::from(sv.get(&yrs::ClientID::new(c)));
            let d = deepest(&mut items(&[update]), &in_doc, self.deepest)?;
            self.doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
            self.deepest = d;
            Ok(d)
        }
    }

    fn nested(doc: &Doc, levels: usize) -> MapRef {
        let mut m = doc.get_or_insert_map("deep");
        let mut txn = doc.transact_mut();
        for _ in 0..levels {
            m = m.insert(&mut txn, "k", MapPrelim::default());
        }
        m
    }

    #[test]
    fn item_clocks_match_what_yrs_counts() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        let list = doc.get_or_insert_array("a");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "a😀é"); // 4 UTF-16 units
            text.insert(&mut txn, 1, "");
            list.insert_range(&mut txn, 0, [1, 2, 3]);
            list.insert(&mut txn, 1, ArrayPrelim::default());
            text.remove_range(&mut txn, 0, 1);
        }
        let u = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let its = items(&[&u]);
        let end = its.iter().filter(|i| i.client == 3).map(|i| i.start + i.len).max().unwrap();
        assert_eq!(end, u64::from(doc.transact().state_vector().get(&yrs::ClientID::new(3))));
        assert_eq!(its.iter().filter(|i| i.is_type).count(), 1);
    }

    #[test]
    fn nesting_in_one_update_is_counted_exactly() {
        for levels in [0, 1, 2, 40, 300] {
            let doc = Doc::with_client_id(1);
            nested(&doc, levels);
            let u = doc.transact().encode_state_as_update_v1(&StateVector::default());
            assert_eq!(deepest(&mut items(&[&u]), &|_, _| false, 0), Ok(levels as u32));
            assert_eq!(crate::docs::deepest_type(&doc), levels as u32);
        }
    }

    #[test]
    fn nesting_built_one_update_at_a_time_is_bounded_by_the_documents_deepest() {
        let mut server = Replica { doc: Doc::new(), deepest: 0 };
        let client = Doc::with_client_id(9);
        let mut m = client.get_or_insert_map("deep");
        for level in 1..=20u32 {
            let before = client.transact().state_vector();
            m = m.insert(&mut client.transact_mut(), "k", MapPrelim::default());
            let u = client.transact().encode_diff_v1(&before);
            assert_eq!(server.take(&u), Ok(level));
        }
        // Beside a type in the document (an array's element after another): as deep as it.
        let list = client.get_or_insert_array("list");
        let before = client.transact().state_vector();
        list.insert(&mut client.transact_mut(), 0, MapPrelim::default());
        assert_eq!(server.take(&client.transact().encode_diff_v1(&before)), Ok(20));
        let before = client.transact().state_vector();
        list.insert(&mut client.transact_mut(), 1, MapPrelim::default());
        // The bound: beside an item of the document, as deep as its deepest type, plus one.
        assert_eq!(server.take(&client.transact().encode_diff_v1(&before)), Ok(21));
        assert_eq!(crate::docs::deepest_type(&server.doc), 20);
    }

    #[test]
    fn a_type_whose_parent_is_nowhere_is_not_placed() {
        let client = Doc::with_client_id(5);
        let m = nested(&client, 3);
        let before = client.transact().state_vector();
        m.insert(&mut client.transact_mut(), "x", MapPrelim::default());
        let child = client.transact().encode_diff_v1(&before);
        // Without what holds its parent, nothing can place it.
        assert_eq!(deepest(&mut items(&[&child]), &|_, _| false, 0), Err(Unplaced::ParentMissing));
        // Text with no types costs nothing, wherever its parent is.
        let t = client.get_or_insert_text("t");
        let before = client.transact().state_vector();
        t.insert(&mut client.transact_mut(), 0, "hello");
        t.insert(&mut client.transact_mut(), 2, "XX");
        let text = client.transact().encode_diff_v1(&before);
        assert_eq!(deepest(&mut items(&[&text]), &|_, _| false, 7), Ok(7));
    }

    #[test]
    fn items_naming_each_other_as_parents_are_refused() {
        // Two items of client 1 at clocks 0 and 1, each a type in the other.
        let u = [1, 2, 1, 0, 0x07, 0, 1, 1, 0, 0x07, 0, 1, 0, 0, 0];
        assert_eq!(deepest(&mut items(&[&u]), &|_, _| false, 0), Err(Unplaced::Circular));
    }

    /// yrs panics on this update (its delete set names clocks before a client's first
    /// structure), and then again in the transaction's drop: while unwinding, that aborts, so
    /// the transaction is dropped only once the first panic is caught. The door refuses the
    /// update first (its clocks run past 2^32, which yrs wraps).
    #[test]
    fn a_panic_in_the_engine_does_not_panic_again_in_the_transactions_drop() {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/yjs_update");
        let bytes = std::fs::read(format!("{corpus}/finding-delete-before-first-clock-double-panic.bin")).unwrap();
        assert!(v1::update(&bytes).unwrap_err().to_string().contains("2^32"));
        let u = Update::decode_v1(&bytes).unwrap();
        let r = crate::docs::transact_contained(&Doc::new(), |txn| txn.apply_update(u));
        assert!(r.unwrap_err().0.contains("index out of bounds"));
    }

    /// The limit is safe where the server runs yrs: deleting and reading as JSON a document
    /// nested [`NESTING_MAX`] deep fits a tokio worker's 2 MiB stack with room to spare.
    #[test]
    fn the_deepest_document_taken_is_deleted_and_read_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let doc = Doc::new();
                nested(&doc, NESTING_MAX as usize);
                assert_eq!(crate::docs::deepest_type(&doc), NESTING_MAX);
                let _ = doc.get_or_insert_map("deep").to_json(&doc.transact());
                let mut json = &crate::docs::content::to_json(&doc)["deep"];
                let mut levels = 0;
                while let Some(inner) = json.get("k") {
                    json = inner;
                    levels += 1;
                }
                assert_eq!(levels, NESTING_MAX, "read as JSON whole");
                doc.get_or_insert_map("deep").remove(&mut doc.transact_mut(), "k");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
