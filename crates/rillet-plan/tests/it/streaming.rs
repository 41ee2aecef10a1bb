//! Streaming jobs with exactly-once output: the sequence source through a keyed running
//! aggregate into the exactly-once file sink, checked by the sequence oracle after a clean
//! run, a crash and restart, a corrupt checkpoint, and a stop with a savepoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rillet_checkpoint::Kind;
use rillet_connectors::files::{FileFormat, ParquetCompression};
use rillet_connectors::sequence::{check, value_of};
use rillet_plan::streaming::RunningFunction;
use rillet_plan::{DataFrame, Session, col, lit};
use rillet_runtime::{JobHandle, global_runtime};

pub(crate) const PARTITIONS: u32 = 3;

/// Failpoints are process-wide: the streaming tests run one at a time, so that one test's
/// failpoint never fires in another's job.
pub(crate) static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The job: a sequence, a filter that keeps every row (a stateless vertex), and per split
/// the running count and sum.
pub(crate) fn job(session: &Session, rows: u64, rate: Option<f64>) -> DataFrame {
    session
        .read_sequence("seq", PARTITIONS, Some(rows), rate, Some(100))
        .unwrap()
        .filter(col("value").gt_eq(lit(0i64)))
        .unwrap()
        .running_aggregate(
            &["source".to_string(), "partition".to_string()],
            vec![
                (RunningFunction::Count, None, "running_count".to_string()),
                (
                    RunningFunction::Sum,
                    Some("value".to_string()),
                    "running_sum".to_string(),
                ),
            ],
        )
        .unwrap()
}

pub(crate) fn start(df: &DataFrame, out: &Path, checkpoints: &Path, job_id: &str) -> JobHandle {
    df.start_files(
        out.to_str().unwrap(),
        FileFormat::Parquet(ParquetCompression::Snappy),
        job_id,
        Some((checkpoints.to_str().unwrap(), Duration::from_millis(50))),
        None,
    )
    .unwrap()
}

/// Every committed row: the parquet files directly in `out` (not those staged).
fn committed(out: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    batches
}

/// The oracle: each split's rows exactly once, and each row's running aggregates those of
/// its split up to and including it (state restored exactly, not replayed twice).
pub(crate) fn assert_exact(out: &Path, rows: u64) {
    let batches = committed(out);
    let expected: BTreeMap<(String, u32), u64> = (0..PARTITIONS)
        .map(|p| (("seq".to_string(), p), rows))
        .collect();
    let total = check(&batches, &expected).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(total, rows * u64::from(PARTITIONS));
    for batch in &batches {
        let partition = batch
            .column_by_name("partition")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let seq = batch
            .column_by_name("seq")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let count = batch
            .column_by_name("running_count")
            .unwrap()
            .as_primitive::<Int64Type>();
        let sum = batch
            .column_by_name("running_sum")
            .unwrap()
            .as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let (p, s) = (partition.value(row), seq.value(row));
            assert_eq!(count.value(row), s as i64 + 1, "running count of {p}/{s}");
            let want: i64 = (0..=s).map(|i| value_of(p, i)).sum();
            assert!(!sum.is_null(row));
            assert_eq!(sum.value(row), want, "running sum of {p}/{s}");
        }
    }
}

fn wait_for_checkpoints(job: &JobHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while job.checkpoint_stats().unwrap().completed < n {
        assert!(Instant::now() < deadline, "no {n} checkpoints within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_clean_run_commits_every_row_exactly_once() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    let mut job = start(&job(&session, 5_000, None), &out, &chk, "clean");
    global_runtime().block_on(job.wait()).unwrap();
    let stats = job.checkpoint_stats().unwrap();
    assert!(stats.completed >= 1, "{stats:?}");
    assert_exact(&out, 5_000);
    // Nothing is left staged.
    assert_eq!(std::fs::read_dir(out.join("_pending")).unwrap().count(), 0);
}

#[test]
fn a_crashed_job_resumes_from_its_checkpoint_with_exact_output() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    // Throttled so that the crash falls mid-stream: 3 x 4,000 rows at 6,000 rows/s, 2 s,
    // so that a loaded machine still checkpoints three times before the end (at 20,000
    // rows/s the job could end before the cancel, failing the test under CI's load).
    let df = job(&session, 4_000, Some(6_000.0));
    let mut first = start(&df, &out, &chk, "crash");
    wait_for_checkpoints(&first, 3);
    first.cancel();
    assert!(global_runtime().block_on(first.wait()).is_err());
    // What is visible is a committed prefix: no repeats, no values out of place.
    let partial = committed(&out);
    assert!(partial.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
    let mut second = start(&df, &out, &chk, "crash");
    global_runtime().block_on(second.wait()).unwrap();
    let restored = second.checkpoint_stats().unwrap().restored_from;
    assert!(restored.is_some(), "the restart restored nothing");
    assert_exact(&out, 4_000);
}

#[test]
fn a_corrupt_checkpoint_is_skipped_for_the_previous_one() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    let df = job(&session, 4_000, Some(6_000.0));
    let mut first = start(&df, &out, &chk, "corrupt");
    wait_for_checkpoints(&first, 3);
    first.cancel();
    let _ = global_runtime().block_on(first.wait());
    // Flip a byte in an artifact of the newest complete checkpoint.
    let job_dir = chk.join("corrupt");
    let mut complete: Vec<_> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_manifest").exists())
        .collect();
    complete.sort();
    let newest = complete.last().unwrap();
    let artifact = std::fs::read_dir(newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "_manifest")
        .unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&artifact, bytes).unwrap();
    let newest_id: u64 = newest.file_name().unwrap().to_str().unwrap()[4..]
        .parse()
        .unwrap();

    let mut second = start(&df, &out, &chk, "corrupt");
    global_runtime().block_on(second.wait()).unwrap();
    let restored = second.checkpoint_stats().unwrap().restored_from.unwrap();
    assert!(
        restored < newest_id,
        "restored {restored}, the corrupt one is {newest_id}"
    );
    assert_exact(&out, 4_000);
}

#[test]
fn stop_with_a_savepoint_and_resume_gives_exact_output() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    // Slow enough that two checkpoints come well before the end, on a busy machine too.
    let df = job(&session, 4_000, Some(8_000.0));
    let mut first = start(&df, &out, &chk, "savepoint");
    wait_for_checkpoints(&first, 2);
    let savepoint = global_runtime()
        .block_on(first.stop_with_savepoint())
        .unwrap();
    global_runtime().block_on(first.wait()).unwrap();
    let stopped_rows: usize = committed(&out).iter().map(|b| b.num_rows()).sum();
    assert!(stopped_rows < 12_000, "the job finished before the stop");
    // Resume from the savepoint by name.
    let mut second = df
        .start_files(
            out.to_str().unwrap(),
            FileFormat::Parquet(ParquetCompression::Snappy),
            "savepoint",
            Some((chk.to_str().unwrap(), Duration::from_millis(50))),
            Some((Kind::Savepoint, savepoint)),
        )
        .unwrap();
    global_runtime().block_on(second.wait()).unwrap();
    assert_eq!(
        second.checkpoint_stats().unwrap().restored_from,
        Some(savepoint)
    );
    assert_exact(&out, 4_000);
}

/// Going back to an older savepoint, then crashing before the first checkpoint: the
/// restart must not pick up the checkpoints taken after the savepoint (their files were
/// withdrawn when the job went back).
#[test]
fn going_back_to_a_savepoint_forgets_the_checkpoints_after_it() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    let df = job(&session, 4_000, Some(4_000.0));
    let resume = |snapshot: Option<u64>| {
        df.start_files(
            out.to_str().unwrap(),
            FileFormat::Parquet(ParquetCompression::Snappy),
            "back",
            Some((chk.to_str().unwrap(), Duration::from_millis(50))),
            snapshot.map(|id| (Kind::Savepoint, id)),
        )
        .unwrap()
    };
    let mut first = resume(None);
    wait_for_checkpoints(&first, 2);
    let savepoint = global_runtime()
        .block_on(first.stop_with_savepoint())
        .unwrap();
    global_runtime().block_on(first.wait()).unwrap();
    // On from the savepoint, several checkpoints, then a crash.
    let mut second = resume(Some(savepoint));
    wait_for_checkpoints(&second, 2);
    second.cancel();
    let _ = global_runtime().block_on(second.wait());
    // Back to the savepoint, and a crash before any checkpoint.
    // (Started again at once: the new run waits for the cancelled one to end, rather
    // than being refused as a second live run.)
    let third = resume(Some(savepoint));
    third.cancel();
    drop(third);
    // The restart resumes from the savepoint, not from the second run's checkpoints.
    let mut fourth = resume(None);
    global_runtime().block_on(fourth.wait()).unwrap();
    let restored = fourth.checkpoint_stats().unwrap().restored_from;
    assert_eq!(restored, Some(savepoint));
    assert_exact(&out, 4_000);
}

#[test]
fn a_streaming_job_refuses_what_it_cannot_checkpoint() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let session = crate::default_session();
    let df = session
        .read_sequence("seq", 2, Some(10), None, None)
        .unwrap()
        .sort(vec![col("seq").sort(true, false)])
        .unwrap();
    let Err(err) = df.start_files(
        dir.path().join("out").to_str().unwrap(),
        FileFormat::Json,
        "sorted",
        Some((
            dir.path().join("chk").to_str().unwrap(),
            Duration::from_millis(50),
        )),
        None,
    ) else {
        panic!("a sort started as a streaming job");
    };
    let err = err.to_string();
    assert!(err.contains("cannot run in a streaming job"), "{err}");
}

#[test]
fn a_bounded_sequence_reads_in_a_batch_job_too() {
    let _serial = SERIAL.lock();
    let session = crate::default_session();
    let batches = job(&session, 1_000, None).collect().unwrap();
    let expected: BTreeMap<(String, u32), u64> = (0..PARTITIONS)
        .map(|p| (("seq".to_string(), p), 1_000))
        .collect();
    assert_eq!(check(&batches, &expected).unwrap(), 3_000);
    let max_count = batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name("running_count")
                .unwrap()
                .as_primitive::<Int64Type>();
            c.values().to_vec()
        })
        .max();
    assert_eq!(max_count, Some(1_000));
}

/// What a failpoint does to the run that hits it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    /// The job fails (a crash at that window); a restart must repair it.
    Fails,
    /// Only that checkpoint is lost; the job completes.
    CheckpointLost,
}

/// Every window of the protocol: the job hits the failpoint once, then runs again without
/// it, and the committed output is exact. `source-after-emit` also fails the first
/// restart (a second failure during replay).
#[test]
fn every_protocol_failpoint_leaves_exact_output() {
    let _serial = SERIAL.lock();
    let cases = [
        ("source-after-emit", "30*off->1*return->off", Effect::Fails),
        (
            "barrier-before-alignment",
            "4*off->1*return->off",
            Effect::Fails,
        ),
        ("sink-pre-commit", "2*off->1*return->off", Effect::Fails),
        (
            "checkpoint-artifact-upload",
            "5*off->1*return->off",
            Effect::CheckpointLost,
        ),
        (
            "checkpoint-before-manifest",
            "1*off->1*return->off",
            Effect::CheckpointLost,
        ),
        (
            "checkpoint-after-manifest",
            "1*off->1*return->off",
            Effect::Fails,
        ),
        ("sink-after-commit", "1*off->1*return->off", Effect::Fails),
        (
            "file-sink-between-renames",
            "2*off->1*return->off",
            Effect::Fails,
        ),
    ];
    let session = crate::default_session();
    let df = job(&session, 3_000, Some(10_000.0));
    for (name, actions, effect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
        fail::cfg(name, actions).unwrap();
        let mut first = start(&df, &out, &chk, "failpoint");
        let result = global_runtime().block_on(first.wait());
        let stats = first.checkpoint_stats().unwrap();
        match effect {
            Effect::Fails => {
                let err = result.expect_err(name).to_string();
                assert!(err.contains(&format!("failpoint {name}")), "{name}: {err}");
            }
            Effect::CheckpointLost => {
                result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(stats.aborted >= 1, "{name}: {stats:?}");
                let failure = stats.last_failure.unwrap_or_default();
                assert!(
                    failure.contains(&format!("failpoint {name}")),
                    "{name}: {failure}"
                );
            }
        }
        if name == "source-after-emit" {
            // The restart fails too, while replaying.
            fail::cfg(name, "10*off->1*return->off").unwrap();
            let mut again = start(&df, &out, &chk, "failpoint");
            let err = global_runtime()
                .block_on(again.wait())
                .expect_err("second failure");
            assert!(err.to_string().contains("failpoint"), "{err}");
            assert!(again.checkpoint_stats().unwrap().restored_from.is_some());
        }
        fail::remove(name);
        if effect == Effect::Fails {
            let mut restarted = start(&df, &out, &chk, "failpoint");
            global_runtime()
                .block_on(restarted.wait())
                .unwrap_or_else(|e| panic!("{name}: restart: {e}"));
        }
        assert_exact(&out, 3_000);
        assert_eq!(
            std::fs::read_dir(out.join("_pending")).unwrap().count(),
            0,
            "{name}: staged files left behind"
        );
    }
}

/// A cancel that finds a commit under way (here each commit's renames are slowed down)
/// lets it finish before the job ends: once `wait` returns, nothing more appears in the
/// output, so a restart right after never races the old commit.
#[test]
fn a_cancel_lets_the_commit_under_way_finish_before_the_job_ends() {
    let _serial = SERIAL.lock();
    let session = crate::default_session();
    let df = job(&session, 100_000, Some(5_000.0));
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let listing = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    fail::cfg("file-sink-between-renames", "sleep(400)").unwrap();
    let mut first = start(&df, &out, &chk, "slow-commits");
    wait_for_checkpoints(&first, 2);
    // The next checkpoint starts within an interval (50 ms) and its commit then sleeps
    // 400 ms after its first rename: 150 ms on, the cancel finds it under way.
    std::thread::sleep(Duration::from_millis(150));
    first.cancel();
    let _ = global_runtime().block_on(first.wait());
    let (files, pending) = (listing(&out), listing(&out.join("_pending")));
    std::thread::sleep(Duration::from_millis(700));
    fail::remove("file-sink-between-renames");
    assert_eq!(listing(&out), files, "a commit went on after the job ended");
    assert_eq!(listing(&out.join("_pending")), pending);
}

/// A restore whose download breaks off falls back to the previous checkpoint.
#[test]
fn a_restore_that_breaks_off_falls_back_to_the_previous_checkpoint() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    let df = job(&session, 4_000, Some(6_000.0));
    let mut first = start(&df, &out, &chk, "restore");
    wait_for_checkpoints(&first, 3);
    first.cancel();
    let _ = global_runtime().block_on(first.wait());
    let newest = first.checkpoint_stats().unwrap().latest_completed.unwrap();
    // The first artifact read of the restore fails: the newest snapshot is skipped.
    fail::cfg("checkpoint-restore-load", "1*return->off").unwrap();
    let mut second = start(&df, &out, &chk, "restore");
    fail::remove("checkpoint-restore-load");
    global_runtime().block_on(second.wait()).unwrap();
    let restored = second.checkpoint_stats().unwrap().restored_from.unwrap();
    assert!(restored < newest, "restored {restored}, newest {newest}");
    assert_exact(&out, 4_000);
}

/// Every failpoint in the code is configured by some test (so none is dead).
#[test]
fn every_failpoint_is_hit_by_a_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut sources = Vec::new();
    collect_rust_files(&root.join("crates"), &mut sources);
    // Whitespace is dropped before matching, so that however rustfmt lays out a call or a
    // table row (`("name", "return")` on one line or split over three), it still matches.
    let text: Vec<String> = sources
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .map(|t| t.chars().filter(|c| !c.is_whitespace()).collect())
        .collect();
    let mut declared = std::collections::BTreeSet::new();
    for file in &text {
        for part in file.split("fail_point!(\"").skip(1) {
            declared.insert(part.split('"').next().unwrap().to_string());
        }
    }
    assert!(declared.len() >= 9, "{declared:?}");
    for name in &declared {
        let configured = format!("fail::cfg(\"{name}\"");
        let by_variable = format!("(\"{name}\",\"");
        assert!(
            text.iter()
                .any(|t| t.contains(&configured) || t.contains(&by_variable)),
            "failpoint {name} is never configured by a test"
        );
    }
}

fn collect_rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A run whose job a later run claimed (from another host that took it for dead) stops
/// within a poll, says why, and commits nothing after the claim, not even its end record.
#[test]
fn a_run_that_lost_its_claim_stops_before_committing_more() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let session = crate::default_session();
    let df = job(&session, 100_000, Some(2_000.0));
    let mut run = start(&df, &out, &chk, "claimed");
    wait_for_checkpoints(&run, 2);
    let claims = chk.join("claimed").join("_claims");
    let mine: u64 = std::fs::read_dir(&claims)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .max()
        .unwrap();
    let store = rillet_checkpoint::CheckpointStore::open(chk.to_str().unwrap(), "claimed").unwrap();
    let record = || {
        global_runtime()
            .block_on(store.read_record())
            .unwrap()
            .unwrap()
    };
    let before = record();
    std::fs::write(
        claims.join(format!("{:020}", mine + 1)),
        r#"{"run": "elsewhere-1-1", "pid": 1, "host": "elsewhere", "started_ms": 1}"#,
    )
    .unwrap();
    let claimed_at = Instant::now();
    let committed_then = run.checkpoint_stats().unwrap().completed;
    let error = global_runtime()
        .block_on(run.wait())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("lost its claim") && error.contains("elsewhere"),
        "{error}"
    );
    assert!(claimed_at.elapsed() < Duration::from_secs(5));
    // At most the commit under way when the claim landed.
    assert!(run.checkpoint_stats().unwrap().completed <= committed_then + 1);
    let after = record();
    assert_eq!(
        (after.run, after.state),
        (before.run, before.state),
        "the record is the later run's to write"
    );
}
