//! Store start-up: a store written by a newer build is refused, not guessed at; a second
//! process on the same data dir is refused while the first has it open.

use outpost::store::tables::META;
use outpost::store::{SCHEMA_VERSION, Store, StoreError};

use crate::support::cli;

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &mut |_| {}).unwrap());
    {
        let db = redb::Database::open(dir.path().join("outpost.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META.def)
            .unwrap()
            .insert(b"schema_version".as_slice(), (SCHEMA_VERSION + 1).to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path(), &mut |_| {}).err();
    assert!(matches!(err, Some(StoreError::SchemaTooNew { .. })), "{err:?}");
    let (code, _, stderr) =
        cli(&["serve", "--listen", "127.0.0.1:0", "--data", dir.path().to_str().unwrap()], &[], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("newer than this build supports"), "{stderr}");
}

#[test]
fn one_process_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = Store::open(dir.path(), &mut |_| {}).unwrap();
    assert!(report.created);
    let second = Store::open(dir.path(), &mut |_| {}).err();
    assert!(matches!(second, Some(StoreError::Locked)), "{second:?}");
    drop(store);
    let (_, report) = Store::open(dir.path(), &mut |_| {}).unwrap();
    assert!(!report.created);
}
