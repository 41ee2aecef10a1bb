//! Savepoint compatibility: a savepoint written by an earlier version, kept as a fixture
//! (`tests/fixtures/savepoint-v1`: the job's checkpoint directory and its output directory
//! as they were when it stopped), restores in this version, and the job finishes with
//! every row exactly once. A change that breaks it must come with a new format version
//! and a way to read this one.
//!
//! The fixture was written by `write_the_savepoint_fixture` (run it with
//! `cargo test --workspace --exclude rillet-python write_the_savepoint_fixture -- --ignored`
//! only to add a fixture for a new format, never to replace this one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rillet_checkpoint::Kind;
use rillet_connectors::files::{FileFormat, ParquetCompression};
use rillet_runtime::global_runtime;

use crate::streaming::{SERIAL, assert_exact, job};

/// Rows per split of the fixture's job.
const ROWS: u64 = 600;
/// The fixture's job id, and its savepoint.
const JOB: &str = "compat";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/savepoint-v1")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The savepoint in the fixture's checkpoint directory.
fn savepoint(chk: &Path) -> u64 {
    std::fs::read_dir(chk.join(JOB))
        .unwrap()
        .filter_map(|e| Kind::parse_directory(&e.unwrap().file_name().to_string_lossy()))
        .find(|(kind, _)| *kind == Kind::Savepoint)
        .expect("the fixture holds a savepoint")
        .1
}

fn start(dir: &Path, resume: Option<u64>) -> rillet_runtime::JobHandle {
    let session = crate::default_session();
    job(&session, ROWS, resume.is_none().then_some(1_000.0))
        .start_files(
            dir.join("out").to_str().unwrap(),
            FileFormat::Parquet(ParquetCompression::Snappy),
            JOB,
            Some((dir.join("chk").to_str().unwrap(), Duration::from_millis(50))),
            resume.map(|id| (Kind::Savepoint, id)),
        )
        .unwrap()
}

#[test]
fn a_savepoint_of_the_first_format_restores_exactly() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), dir.path());
    let id = savepoint(&dir.path().join("chk"));
    let mut resumed = start(dir.path(), Some(id));
    global_runtime().block_on(resumed.wait()).unwrap();
    assert_eq!(resumed.checkpoint_stats().unwrap().restored_from, Some(id));
    assert_exact(&dir.path().join("out"), ROWS);
}

#[test]
#[ignore = "writes the fixture; run by hand for a new format only"]
fn write_the_savepoint_fixture() {
    let _serial = SERIAL.lock();
    let target = fixture();
    assert!(
        !target.exists(),
        "{} exists: never replace a fixture",
        target.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), None);
    std::thread::sleep(Duration::from_millis(300));
    global_runtime()
        .block_on(first.stop_with_savepoint())
        .unwrap();
    global_runtime().block_on(first.wait()).unwrap();
    std::fs::remove_dir_all(dir.path().join("out").join("_pending")).unwrap();
    copy_tree(dir.path(), &target);
}
