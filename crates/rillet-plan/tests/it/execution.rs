//! Executor behaviour: Rust batch functions as stages, early stop, cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rillet_common::{EngineConfig, RilletError};
use rillet_plan::{ReadFormat, col, lit};
use rillet_runtime::{BatchFunction, global_runtime};

/// Passes batches through, counting rows.
#[derive(Debug)]
struct Counting {
    schema: SchemaRef,
    rows: Arc<AtomicUsize>,
    delay: Duration,
}

impl BatchFunction for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn call(&self, batch: RecordBatch) -> rillet_common::Result<RecordBatch> {
        self.rows.fetch_add(batch.num_rows(), Ordering::SeqCst);
        std::thread::sleep(self.delay);
        Ok(batch)
    }
    fn batch_size(&self) -> Option<usize> {
        Some(1000)
    }
}

fn write_parquet(path: &std::path::Path, rows: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(50_000))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let mut start = 0;
    while start < rows {
        let end = (start + 50_000).min(rows);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(start..end)),
                Arc::new(Float64Array::from_iter_values(
                    (start..end).map(|i| (i % 100) as f64),
                )),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        start = end;
    }
    writer.close().unwrap();
}

#[test]
fn a_rust_batch_function_runs_as_its_own_stage() {
    let session = crate::default_session();
    let rows = Arc::new(AtomicUsize::new(0));
    let df = session.range(10_000).unwrap();
    let stage = Counting {
        schema: df.schema(),
        rows: rows.clone(),
        delay: Duration::ZERO,
    };
    let df = df
        .map_batches(Arc::new(stage))
        .unwrap()
        .filter(col("id").lt(lit(500)))
        .unwrap();
    assert_eq!(df.count().unwrap(), 500);
    assert_eq!(rows.load(Ordering::SeqCst), 10_000);
    let names: Vec<String> = df
        .last_stats()
        .unwrap()
        .operators
        .iter()
        .map(|o| o.name.clone())
        .collect();
    assert!(names.contains(&"counting".to_string()), "{names:?}");
}

/// Holds its first call (the one with row 0) until a later call has started, and records
/// the first row of every call in the order calls start.
#[derive(Debug)]
struct FirstCallWaits {
    schema: SchemaRef,
    started: std::sync::Mutex<Vec<i64>>,
    later_call_started: std::sync::Condvar,
}

impl BatchFunction for FirstCallWaits {
    fn name(&self) -> &str {
        "first call waits"
    }
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn call(&self, batch: RecordBatch) -> rillet_common::Result<RecordBatch> {
        let first = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        let mut started = self.started.lock().unwrap();
        started.push(first);
        self.later_call_started.notify_all();
        if first == 0 {
            // Two workers: the second call ran and finished; the third may only start
            // while this one still runs if the second's worker did not sit idle.
            let (started, _) = self
                .later_call_started
                .wait_timeout_while(started, Duration::from_secs(10), |s| s.len() < 3)
                .unwrap();
            assert!(
                started.len() >= 3,
                "no call started beside the slow first one"
            );
        }
        Ok(batch)
    }
    fn batch_size(&self) -> Option<usize> {
        Some(10)
    }
    fn concurrency(&self) -> Option<usize> {
        Some(2)
    }
}

#[test]
fn a_worker_whose_call_finishes_early_starts_the_next_call() {
    // One partition, so that one task's calls (two at a time) are all there is.
    let session = crate::session(EngineConfig::default().with_parallelism(1));
    let df = session.range(60).unwrap();
    let stage = Arc::new(FirstCallWaits {
        schema: df.schema(),
        started: Default::default(),
        later_call_started: Default::default(),
    });
    let started = Instant::now();
    let batches = df.map_batches(stage.clone()).unwrap().collect().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the first call waited out its timeout: {:?}",
        started.elapsed()
    );
    // Results still come out in input order.
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            ids.values().to_vec()
        })
        .collect();
    assert_eq!(ids, (0..60).collect::<Vec<_>>());
    assert_eq!(stage.started.lock().unwrap().len(), 6);
}

#[test]
fn limit_reads_a_small_part_of_a_large_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    write_parquet(&path, 2_000_000);
    let size = std::fs::metadata(&path).unwrap().len();
    let session = crate::default_session();
    let df = session
        .read(ReadFormat::Parquet, &[path.display().to_string()])
        .unwrap()
        .limit(7, 0)
        .unwrap();
    // collect, not count: a count over a limit is answered from Parquet statistics.
    let rows: usize = df.collect().unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 7);
    let scanned = df.last_stats().unwrap().bytes_scanned;
    assert!(
        scanned > 0 && scanned < size / 10,
        "scanned {scanned} of {size}"
    );
    // The metric is real: a full scan reads most of the file.
    let full = session
        .read(ReadFormat::Parquet, &[path.display().to_string()])
        .unwrap()
        .filter(col("x").gt_eq(lit(0.0)))
        .unwrap();
    full.collect().unwrap();
    assert!(full.last_stats().unwrap().bytes_scanned > size / 2);
}

#[test]
fn dropping_the_result_stream_stops_the_job() {
    let session = crate::session(EngineConfig::default().with_memory_budget(2 << 20));
    let rows = Arc::new(AtomicUsize::new(0));
    let df = session.range(100_000_000).unwrap();
    let stage = Counting {
        schema: df.schema(),
        rows: rows.clone(),
        delay: Duration::from_millis(2),
    };
    let df = df.map_batches(Arc::new(stage)).unwrap();
    let (mut job, mut batches) = df.execute_stream().unwrap();
    let runtime = global_runtime();
    runtime.block_on(async { batches.next_batch().await.unwrap().unwrap() });
    drop(batches);
    job.cancel();
    let started = Instant::now();
    let result = runtime.block_on(job.wait());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(result, Err(RilletError::Cancelled)), "{result:?}");
    let seen = rows.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rows.load(Ordering::SeqCst),
        seen,
        "work continued after cancel"
    );
    assert!(seen < 100_000_000);
}

#[test]
fn write_then_read_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let session = crate::default_session();
    let df = session
        .range(12_345)
        .unwrap()
        .with_column("sq", col("id") * col("id"))
        .unwrap();
    let stats = df
        .write(
            &dir.path().display().to_string(),
            rillet_connectors::files::FileFormat::Parquet(Default::default()),
            rillet_connectors::files::WriteMode::Overwrite,
        )
        .unwrap();
    assert_eq!(stats.rows_written, 12_345);
    let back = session
        .read(ReadFormat::Parquet, &[dir.path().display().to_string()])
        .unwrap();
    assert_eq!(back.count().unwrap(), 12_345);
}
