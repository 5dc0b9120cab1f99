//! `outpost space`: where the store file's bytes go, table by table. Each table's rows (keys and
//! values as stored), the B-tree around them (branch keys and page headers), and the room its
//! pages hold but do not fill; the file beside them, with what no table holds.

use std::os::unix::fs::MetadataExt;

use redb::{ReadableTableMetadata, TableHandle};
use serde::{Deserialize, Serialize};

use super::tables::ALL;
use super::{Reader, StoreError};

/// redb's page size (its default, which the store does not change).
const PAGE_BYTES: u64 = 4096;

/// One table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TableSpace {
    pub table: String,
    pub entries: u64,
    /// Keys and values as stored in the leaves.
    pub stored_bytes: u64,
    /// Keys in branch pages, and page headers.
    pub metadata_bytes: u64,
    /// Room in the table's pages that nothing fills.
    pub fragmented_bytes: u64,
    /// The table's pages, leaves and branches.
    pub pages: u64,
}

impl TableSpace {
    /// The bytes its pages take in the file.
    pub fn page_bytes(&self) -> u64 {
        self.pages * PAGE_BYTES
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceReport {
    /// Every table that exists, largest first.
    pub tables: Vec<TableSpace>,
    /// The file's length (redb grows it ahead of use).
    pub file_bytes: u64,
    /// Blocks the file system holds for it.
    pub disk_bytes: u64,
}

impl SpaceReport {
    /// Bytes in the tables' pages.
    pub fn table_bytes(&self) -> u64 {
        self.tables.iter().map(TableSpace::page_bytes).sum()
    }
}

impl Reader {
    /// Every table's space, on this snapshot. `file` is the store file, for its sizes.
    pub fn space(&self, file: &std::path::Path) -> Result<SpaceReport, StoreError> {
        let mut tables = Vec::new();
        for t in ALL {
            let table = match self.txn.open_table(t.def) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let stats = table.stats()?;
            tables.push(TableSpace {
                table: t.def.name().to_owned(),
                entries: table.len()?,
                stored_bytes: stats.stored_bytes(),
                metadata_bytes: stats.metadata_bytes(),
                fragmented_bytes: stats.fragmented_bytes(),
                pages: stats.leaf_pages() + stats.branch_pages(),
            });
        }
        tables.sort_by(|a, b| b.pages.cmp(&a.pages).then_with(|| a.table.cmp(&b.table)));
        let meta = std::fs::metadata(file)?;
        Ok(SpaceReport { tables, file_bytes: meta.len(), disk_bytes: meta.blocks() * 512 })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::ids::Id;
    use crate::store::tables::MESSAGES;
    use crate::store::{DB_FILE, Store};

    #[test]
    fn every_written_row_is_counted_in_its_table() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &mut |_| {}).unwrap());
        {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(MESSAGES.def).unwrap();
                let org = Id::new();
                for i in 0..100u64 {
                    let mut k = org.as_bytes().to_vec();
                    k.extend_from_slice(&i.to_be_bytes());
                    t.insert(k.as_slice(), [7u8; 100].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let (store, _) = Store::open(dir.path(), &mut |_| {}).unwrap();
        let report = store.reader().unwrap().space(&dir.path().join(DB_FILE)).unwrap();
        let messages = report.tables.iter().find(|t| t.table == "messages").unwrap();
        assert_eq!(messages.entries, 100);
        assert_eq!(messages.stored_bytes, 100 * (24 + 100));
        assert!(messages.page_bytes() >= messages.stored_bytes + messages.fragmented_bytes);
        assert_eq!(report.tables[0].table, "messages", "largest first: {:?}", report.tables);
        assert!(report.file_bytes >= report.table_bytes());
    }
}
