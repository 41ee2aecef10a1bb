//! `Session`, `DataFrame` and `BatchStream` for Python.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::{PyField, PySchema, PyTable};
use rillet_common::{EngineConfig, RilletError};
use rillet_connectors::files::{FileFormat, WriteMode};
use rillet_plan::{DataFrame, JoinHow, ReadFormat, Session, array_function_expr};
use rillet_processes::{ProcessBatchFunction, ProcessCommand, ProcessFunction, ProcessPoolOptions};
use rillet_runtime::{CallFields, ResourceManager, ResourceRequest};
use rillet_runtime::{CollectedBatches, JobHandle, JobStats, RowBatcher, global_runtime};

use rillet_service::ServiceFunction;

use crate::errors::{IntoPy, interrupted};
use crate::expr::{PyExpr, sort_expr};
use crate::functions::{PyArrayFunction, PyBatchFunction};

/// Run `future` on the engine's runtime without holding the GIL, checking for Ctrl-C every
/// 100 ms; on Ctrl-C call `on_interrupt` (which cancels the job) and raise
/// KeyboardInterrupt.
fn wait_interruptibly<T: Send>(
    py: Python<'_>,
    future: impl Future<Output = T> + Send,
    on_interrupt: impl FnOnce(),
) -> PyResult<T> {
    let mut future = Box::pin(future);
    loop {
        let done = py.detach(|| {
            global_runtime().block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut future)
                    .await
                    .ok()
            })
        });
        if let Some(value) = done {
            return Ok(value);
        }
        if py.check_signals().is_err() {
            on_interrupt();
            return Err(interrupted());
        }
    }
}

/// After a cancel, wait (without the GIL, at most 30 s) until the job's tasks and its
/// in-flight Python calls have ended, so none outlives the call that started it (a Python
/// call still running at interpreter exit would crash the process).
fn drain(py: Python<'_>, job: &mut JobHandle) {
    py.detach(|| {
        global_runtime().block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(30), job.wait()).await;
        })
    });
}

/// Settings and planning context.
#[pyclass(name = "Session", module = "rillet._rillet", frozen)]
pub struct PySession {
    pub(crate) session: Session,
}

impl PySession {
    /// A DataFrame over the source of `kind` built from `options` by
    /// `rillet_connectors::registry` (which may reach the system it reads, so without the
    /// GIL).
    fn read_source(
        &self,
        py: Python<'_>,
        kind: &str,
        options: serde_json::Value,
    ) -> PyResult<PyDataFrame> {
        let built = py
            .detach(|| rillet_connectors::registry::source(kind, options))
            .py_err()?;
        self.session
            .read_stream(built.source, built.bounded)
            .py_err()
            .map(PyDataFrame::from)
    }
}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (memory_budget=None, parallelism=None, batch_size=None, progress=None, spill_budget=None))]
    fn new(
        memory_budget: Option<usize>,
        parallelism: Option<usize>,
        batch_size: Option<usize>,
        progress: Option<bool>,
        spill_budget: Option<usize>,
    ) -> Self {
        let mut config = EngineConfig::default();
        if let Some(bytes) = spill_budget {
            config = config.with_spill(bytes);
        }
        if let Some(bytes) = memory_budget {
            config = config.with_memory_budget(bytes);
        }
        if let Some(n) = parallelism {
            config = config.with_parallelism(n);
        }
        if let Some(n) = batch_size {
            config = config.with_batch_size(n);
        }
        if let Some(on) = progress {
            config = config.with_progress(on);
        }
        Self {
            session: Session::new(config),
        }
    }

    #[getter]
    fn parallelism(&self) -> usize {
        self.session.config().parallelism
    }

    #[getter]
    fn memory_budget(&self) -> usize {
        self.session.config().memory_budget_bytes
    }

    /// A DataFrame over an Arrow table (anything with `__arrow_c_stream__`).
    // The Python method's name (`Session.from_arrow`), which reads like the Python API.
    #[allow(clippy::wrong_self_convention)]
    fn from_arrow(&self, py: Python<'_>, table: PyTable) -> PyResult<PyDataFrame> {
        let (batches, schema) = table.into_inner();
        py.detach(|| self.session.from_batches(schema, batches))
            .py_err()
            .map(PyDataFrame::from)
    }

    /// The deterministic sequence source (see `rillet.read_sequence`).
    #[pyo3(signature = (name, partitions, rows=None, rows_per_second=None, batch_rows=None))]
    fn read_sequence(
        &self,
        name: &str,
        partitions: u32,
        rows: Option<u64>,
        rows_per_second: Option<f64>,
        batch_rows: Option<usize>,
    ) -> PyResult<PyDataFrame> {
        self.session
            .read_sequence(name, partitions, rows, rows_per_second, batch_rows)
            .py_err()
            .map(PyDataFrame::from)
    }

    /// Redis streams as a source (see `rillet.read_redis_streams`).
    #[pyo3(signature = (url, streams, fields, bounded=false, batch_rows=None))]
    fn read_redis_streams(
        &self,
        py: Python<'_>,
        url: &str,
        streams: Vec<String>,
        fields: Vec<String>,
        bounded: bool,
        batch_rows: Option<usize>,
    ) -> PyResult<PyDataFrame> {
        let options = serde_json::json!({
            "url": url, "streams": streams, "fields": fields, "bounded": bounded,
            "batch_rows": batch_rows,
        });
        self.read_source(py, "redis", options)
    }

    /// A directory of files as a source (see `rillet.watch_directory`).
    #[pyo3(signature = (path, format, splits, bounded))]
    fn watch_directory(
        &self,
        py: Python<'_>,
        path: String,
        format: &str,
        splits: usize,
        bounded: bool,
    ) -> PyResult<PyDataFrame> {
        let options = serde_json::json!({
            "path": path, "format": format, "splits": splits, "bounded": bounded,
        });
        self.read_source(py, "files", options)
    }

    /// A Kafka topic as a source (see `rillet.read_kafka`).
    #[pyo3(signature = (brokers, topic, bounded=false))]
    fn read_kafka(
        &self,
        py: Python<'_>,
        brokers: Vec<String>,
        topic: String,
        bounded: bool,
    ) -> PyResult<PyDataFrame> {
        let options = serde_json::json!({"brokers": brokers, "topic": topic, "bounded": bounded});
        self.read_source(py, "kafka", options)
    }

    fn range(&self, n: u64) -> PyResult<PyDataFrame> {
        self.session.range(n).py_err().map(PyDataFrame::from)
    }

    fn read(&self, py: Python<'_>, format: &str, paths: Vec<String>) -> PyResult<PyDataFrame> {
        let format = match format {
            "parquet" => ReadFormat::Parquet,
            "csv" => ReadFormat::Csv,
            "json" => ReadFormat::Json,
            other => return Err(PyValueError::new_err(format!("unknown format '{other}'"))),
        };
        py.detach(|| self.session.read(format, &paths))
            .py_err()
            .map(PyDataFrame::from)
    }

    #[pyo3(signature = (pattern, allow_empty=false))]
    fn read_files(
        &self,
        py: Python<'_>,
        pattern: &str,
        allow_empty: bool,
    ) -> PyResult<PyDataFrame> {
        py.detach(|| self.session.read_files(pattern, allow_empty))
            .py_err()
            .map(PyDataFrame::from)
    }

    fn sql(
        &self,
        py: Python<'_>,
        query: &str,
        tables: Vec<(String, PyRef<'_, PyDataFrame>)>,
    ) -> PyResult<PyDataFrame> {
        let frames: Vec<(String, DataFrame)> = tables
            .iter()
            .map(|(n, df)| (n.clone(), df.df.clone()))
            .collect();
        py.detach(|| {
            let named: Vec<(&str, DataFrame)> = frames
                .iter()
                .map(|(n, df)| (n.as_str(), df.clone()))
                .collect();
            self.session.sql(query, &named)
        })
        .py_err()
        .map(PyDataFrame::from)
    }

    /// A column-function expression calling a Python callable `(arrays, n) -> array`;
    /// `result` is the result's field (its type, with an extension type's metadata).
    #[pyo3(signature = (callable, name, result, args, batch_size=None, concurrency=None))]
    fn udf_call(
        &self,
        callable: Py<PyAny>,
        name: String,
        result: PyField,
        args: Vec<PyExpr>,
        batch_size: Option<usize>,
        concurrency: Option<usize>,
    ) -> PyExpr {
        let function = PyArrayFunction {
            name,
            callable,
            fields: CallFields::new(result.into_inner().as_ref().clone()),
            batch_size,
            concurrency,
        };
        array_function_expr(
            Arc::new(function),
            args.into_iter().map(|a| a.expr).collect(),
        )
        .into()
    }

    /// A call of a service (see `rillet/service.py`).
    #[pyo3(signature = (service, result, args, *, batch_size=None))]
    fn service_call(
        &self,
        service: &crate::service::PyService,
        result: PyField,
        args: Vec<PyExpr>,
        batch_size: Option<usize>,
    ) -> PyExpr {
        let function = ServiceFunction::new(
            service.service.clone(),
            result.into_inner().as_ref().clone(),
            batch_size,
        );
        array_function_expr(
            Arc::new(function),
            args.into_iter().map(|a| a.expr).collect(),
        )
        .into()
    }

    /// A call of a UDF computed by worker processes (see `rillet/udf.py`).
    #[pyo3(signature = (name, result, args, *, batch_size, pool))]
    fn worker_udf_call(
        &self,
        name: String,
        result: PyField,
        args: Vec<PyExpr>,
        batch_size: Option<usize>,
        pool: WorkerSettings,
    ) -> PyResult<PyExpr> {
        let (command, options, resources) = pool.into_pool(&format!("udf({name})"))?;
        let function = ProcessFunction::new(
            name,
            result.into_inner().as_ref().clone(),
            batch_size,
            command,
            options,
            resources,
        );
        Ok(array_function_expr(
            Arc::new(function),
            args.into_iter().map(|a| a.expr).collect(),
        )
        .into())
    }
}

/// How to start and size the worker processes of a UDF or `map_batches`: the dict
/// `rillet.udf.pool_settings` builds.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct WorkerSettings {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) setup: Vec<u8>,
    pub(crate) min_workers: usize,
    pub(crate) max_workers: Option<usize>,
    pub(crate) num_cpus: f64,
    pub(crate) num_gpus: f64,
    pub(crate) memory: u64,
    pub(crate) max_retries: usize,
    pub(crate) idle_timeout_s: f64,
}

impl WorkerSettings {
    /// The command and pool options of `who`'s workers. Values that can never work fail
    /// here, when the expression is built; whether the machine has room is checked when a
    /// job starts.
    fn into_pool(
        self,
        who: &str,
    ) -> PyResult<(ProcessCommand, ProcessPoolOptions, Arc<ResourceManager>)> {
        let request = ResourceRequest {
            cpus: self.num_cpus,
            gpus: self.num_gpus,
            memory_bytes: self.memory,
        };
        let resources = ResourceManager::global();
        // Without a maximum, as many workers as the machine fits.
        let options = ProcessPoolOptions {
            min_workers: self.min_workers,
            max_workers: self
                .max_workers
                .unwrap_or_else(|| resources.capacity(&request).max(1)),
            request,
            max_retries: self.max_retries,
            idle_timeout: Duration::from_secs_f64(self.idle_timeout_s.max(0.0)),
        };
        options.validate(who).py_err()?;
        let command = ProcessCommand {
            argv: self.argv,
            env: self.env,
            setup: Arc::new(self.setup),
        };
        Ok((command, options, resources))
    }
}

/// A lazy DataFrame.
#[pyclass(name = "DataFrame", module = "rillet._rillet", frozen)]
pub struct PyDataFrame {
    pub(crate) df: DataFrame,
}

impl From<DataFrame> for PyDataFrame {
    fn from(df: DataFrame) -> Self {
        Self { df }
    }
}

fn exprs(list: Vec<PyExpr>) -> Vec<datafusion::logical_expr::Expr> {
    list.into_iter().map(|e| e.expr).collect()
}

/// A file format by name (`parquet`, `csv`, `json`), Parquet with `compression`.
fn file_format(format: &str, compression: Option<&str>) -> PyResult<FileFormat> {
    Ok(match format {
        "parquet" => FileFormat::Parquet(
            compression
                .unwrap_or("zstd")
                .parse::<rillet_connectors::files::ParquetCompression>()
                .py_err()?,
        ),
        "csv" => FileFormat::Csv,
        "json" => FileFormat::Json,
        other => return Err(PyValueError::new_err(format!("unknown format '{other}'"))),
    })
}

pub(crate) fn stats_to_dict<'py>(
    py: Python<'py>,
    stats: &JobStats,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("elapsed_s", stats.elapsed_s)?;
    dict.set_item("bytes_scanned", stats.bytes_scanned)?;
    dict.set_item("rows_written", stats.rows_written)?;
    dict.set_item("files_written", stats.files_written.clone())?;
    let mut operators = Vec::new();
    for op in &stats.operators {
        let d = PyDict::new(py);
        d.set_item("name", &op.name)?;
        d.set_item("rows_in", op.rows_in)?;
        d.set_item("rows_out", op.rows_out)?;
        d.set_item("bytes_out", op.bytes_out)?;
        d.set_item("batches_out", op.batches_out)?;
        d.set_item("decoded_bytes", op.decoded_bytes)?;
        d.set_item("elapsed_s", op.elapsed_s)?;
        d.set_item("rows_per_s", op.rows_per_s)?;
        d.set_item("wait_input_ms", op.wait_input_ms)?;
        d.set_item("wait_output_ms", op.wait_output_ms)?;
        d.set_item("wait_worker_ms", op.wait_worker_ms)?;
        d.set_item("wait_memory_ms", op.wait_memory_ms)?;
        d.set_item("spilled_bytes", op.spilled_bytes)?;
        d.set_item("wait_loading_ms", op.wait_loading_ms)?;
        d.set_item("retries", op.retries)?;
        d.set_item("dropped_late", op.dropped_late)?;
        d.set_item("rows_recalled", op.rows_recalled)?;
        d.set_item("workers_started", op.workers_started)?;
        let mut nulls = Vec::new();
        for count in &op.nulls {
            let n = PyDict::new(py);
            n.set_item("operator", &count.operator)?;
            n.set_item("rows", count.rows)?;
            n.set_item("nulled", count.nulled)?;
            n.set_item("reasons", count.reasons.clone())?;
            nulls.push(n);
        }
        d.set_item("nulls", nulls)?;
        operators.push(d);
    }
    dict.set_item("operators", operators)?;
    dict.set_item("nulls", stats.null_summaries())?;
    Ok(dict)
}

impl PyDataFrame {
    fn map(&self, f: impl FnOnce(&DataFrame) -> Result<DataFrame, RilletError>) -> PyResult<Self> {
        f(&self.df).py_err().map(Self::from)
    }

    /// Run to completion, collecting batches, interruptible by Ctrl-C.
    fn run_collect(
        &self,
        py: Python<'_>,
        df: &DataFrame,
    ) -> PyResult<(Vec<RecordBatch>, JobStats)> {
        let (mut job, mut batches) = py.detach(|| df.execute_stream()).py_err()?;
        let canceller = job.canceller();
        let result = wait_interruptibly(
            py,
            async {
                let mut out = Vec::new();
                while let Some(batch) = batches.next_batch().await? {
                    out.push(batch);
                }
                let stats = job.wait().await?;
                Ok::<_, RilletError>((out, stats))
            },
            move || canceller.cancel(),
        );
        let result = match result {
            Ok(result) => result,
            Err(interrupt) => {
                drain(py, &mut job);
                return Err(interrupt);
            }
        };
        let (batches, stats) = result.py_err()?;
        df.record_stats(stats.clone());
        Ok((batches, stats))
    }
}

#[pymethods]
impl PyDataFrame {
    fn schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PySchema::new(self.df.schema()).into_pyarrow(py)
    }

    fn reads_unbounded(&self) -> bool {
        self.df.reads_unbounded()
    }

    fn column_names(&self) -> Vec<String> {
        self.df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn select(&self, list: Vec<PyExpr>) -> PyResult<Self> {
        self.map(|df| df.select(exprs(list)))
    }

    fn with_columns(&self, columns: Vec<(String, PyExpr)>) -> PyResult<Self> {
        self.map(|df| df.with_columns(columns.into_iter().map(|(n, e)| (n, e.expr)).collect()))
    }

    fn filter(&self, predicate: PyExpr) -> PyResult<Self> {
        self.map(|df| df.filter(predicate.expr))
    }

    fn drop(&self, names: Vec<String>) -> PyResult<Self> {
        self.map(|df| df.drop(&names))
    }

    fn rename(&self, pairs: Vec<(String, String)>) -> PyResult<Self> {
        self.map(|df| df.rename(&pairs))
    }

    #[pyo3(signature = (n, offset=0))]
    fn limit(&self, n: usize, offset: usize) -> PyResult<Self> {
        self.map(|df| df.limit(n, offset))
    }

    fn repartition(&self, partitions: usize) -> PyResult<Self> {
        self.map(|df| df.repartition(partitions))
    }

    fn explode(&self, column: &str) -> PyResult<Self> {
        self.map(|df| df.explode(column))
    }

    fn union(&self, other: PyRef<'_, PyDataFrame>) -> PyResult<Self> {
        self.map(|df| df.union(&other.df))
    }

    fn sort(
        &self,
        by: Vec<PyExpr>,
        descending: Vec<bool>,
        nulls_first: Vec<bool>,
    ) -> PyResult<Self> {
        let keys = by
            .iter()
            .zip(descending.iter().zip(nulls_first.iter()))
            .map(|(e, (d, n))| sort_expr(e, *d, *n))
            .collect();
        self.map(|df| df.sort(keys))
    }

    fn distinct(&self) -> PyResult<Self> {
        self.map(|df| df.distinct())
    }

    fn drop_duplicates(&self, subset: Vec<String>) -> PyResult<Self> {
        self.map(|df| df.drop_duplicates(&subset))
    }

    fn aggregate(&self, keys: Vec<PyExpr>, aggs: Vec<PyExpr>) -> PyResult<Self> {
        self.map(|df| df.aggregate(exprs(keys), exprs(aggs)))
    }

    fn join(
        &self,
        other: PyRef<'_, PyDataFrame>,
        how: &str,
        left_on: Vec<String>,
        right_on: Vec<String>,
    ) -> PyResult<Self> {
        let how = how.parse::<JoinHow>().py_err()?;
        self.map(|df| df.join(&other.df, how, &left_on, &right_on))
    }

    /// A whole-batch stage calling `callable(pyarrow.RecordBatch) -> pyarrow.RecordBatch`.
    #[pyo3(signature = (callable, name, schema, batch_size=None, concurrency=None))]
    fn map_batches(
        &self,
        callable: Py<PyAny>,
        name: String,
        schema: PySchema,
        batch_size: Option<usize>,
        concurrency: Option<usize>,
    ) -> PyResult<Self> {
        let function = PyBatchFunction {
            name: format!("map_batches({name})"),
            callable,
            schema: schema.into_inner(),
            batch_size,
            concurrency,
        };
        self.map(|df| df.map_batches(Arc::new(function)))
    }

    /// A whole-batch stage computed by worker processes (see `DataFrame.map_batches`).
    #[pyo3(signature = (name, schema, *, batch_size, pool))]
    fn map_batches_workers(
        &self,
        name: String,
        schema: PySchema,
        batch_size: Option<usize>,
        pool: WorkerSettings,
    ) -> PyResult<Self> {
        let (command, options, resources) = pool.into_pool(&format!("map_batches({name})"))?;
        let function = ProcessBatchFunction::new(
            &name,
            schema.into_inner(),
            batch_size,
            command,
            options,
            resources,
        );
        self.map(|df| df.map_batches(Arc::new(function)))
    }

    /// Run and return a `pyarrow.Table` (zero copy).
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (batches, _) = self.run_collect(py, &self.df)?;
        PyTable::try_new(batches, self.df.schema())?.into_pyarrow(py)
    }

    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        let counted = self.df.count_query().py_err()?;
        let (batches, stats) = self.run_collect(py, &counted)?;
        self.df.record_stats(stats);
        DataFrame::count_from(&batches).py_err()
    }

    /// Start the job and return a stream of batches of `batch_size` rows (or as produced).
    #[pyo3(signature = (batch_size=None))]
    fn stream(&self, py: Python<'_>, batch_size: Option<usize>) -> PyResult<PyBatchStream> {
        let (job, batches) = py.detach(|| self.df.execute_stream()).py_err()?;
        let schema = batches.schema();
        Ok(PyBatchStream {
            state: parking_lot::Mutex::new(Some(StreamState {
                job,
                batches,
                batcher: batch_size.map(|n| RowBatcher::new(schema, n)),
                ready: Default::default(),
                ended: false,
            })),
            df: self.df.clone(),
        })
    }

    /// Run and write files; returns the job's figures.
    #[pyo3(signature = (directory, format, mode, compression=None, partition_by=Vec::new()))]
    fn write<'py>(
        &self,
        py: Python<'py>,
        directory: String,
        format: &str,
        mode: &str,
        compression: Option<&str>,
        partition_by: Vec<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let format = file_format(format, compression)?;
        let mode = match mode {
            "append" => WriteMode::Append,
            "overwrite" => WriteMode::Overwrite,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown write mode '{other}'; use append or overwrite"
                )));
            }
        };
        let sink = Arc::new(
            rillet_connectors::files::FileSink::new(directory, format, mode)
                .partitioned_by(partition_by)
                .py_err()?,
        );
        let name = format!("write {}", format.extension());
        let mut job = py.detach(|| self.df.execute(sink, &name)).py_err()?;
        let canceller = job.canceller();
        let result = wait_interruptibly(py, job.wait(), move || canceller.cancel());
        let stats = match result {
            Ok(result) => result.py_err()?,
            Err(interrupt) => {
                drain(py, &mut job);
                return Err(interrupt);
            }
        };
        self.df.record_stats(stats.clone());
        stats_to_dict(py, &stats)
    }

    /// Keyed running aggregates of `aggs` (count, sum, min or max of a column, aliased).
    fn running_aggregate(&self, keys: Vec<String>, aggs: Vec<PyExpr>) -> PyResult<Self> {
        self.running_aggregate_impl(keys, aggs.into_iter().map(|e| e.expr).collect())
    }

    /// Event time from `column`, watermarks `delay` behind it (`delay`: a span, see
    /// `streaming::time_span`); a task idle for `idle_timeout` seconds stops holding event
    /// time back.
    #[pyo3(signature = (column, delay, idle_timeout=None))]
    fn with_watermark(
        &self,
        column: String,
        delay: (i64, bool),
        idle_timeout: Option<f64>,
    ) -> PyResult<Self> {
        self.with_watermark_impl(&column, delay, idle_timeout)
    }

    /// Window aggregates of `aggs` per `keys` and window (`column`, `size`, `slide`,
    /// `lateness`; spans as for `with_watermark`).
    #[pyo3(signature = (keys, column, size, slide, lateness, aggs))]
    fn window_aggregate(
        &self,
        keys: Vec<String>,
        column: String,
        size: (i64, bool),
        slide: Option<(i64, bool)>,
        lateness: (i64, bool),
        aggs: Vec<PyExpr>,
    ) -> PyResult<Self> {
        let aggs = aggs.into_iter().map(|e| e.expr).collect();
        self.window_aggregate_impl(keys, column, size, slide, lateness, aggs)
    }

    /// Start a streaming job writing files exactly once (see `rillet.DataFrame.start`).
    #[pyo3(signature = (directory, format, job_id, checkpoint_dir=None, checkpoint_interval=1.0, resume_from=None, compression=None))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        directory: String,
        format: &str,
        job_id: String,
        checkpoint_dir: Option<String>,
        checkpoint_interval: f64,
        resume_from: Option<String>,
        compression: Option<&str>,
    ) -> PyResult<crate::streaming::PyStreamingJob> {
        let format = file_format(format, compression)?;
        let checkpoints = crate::streaming::Checkpoints::parse(
            job_id,
            checkpoint_dir,
            checkpoint_interval,
            resume_from,
        )?;
        let target = crate::streaming::Target::Files(directory, format);
        crate::streaming::start(py, &self.df, target, checkpoints)
    }

    /// Start a streaming job into the sink of `kind` built from `options` (a JSON object)
    /// by `rillet_connectors::registry`; see `rillet.DataFrame.start`.
    #[pyo3(signature = (kind, options, job_id, checkpoint_dir=None, checkpoint_interval=1.0, resume_from=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_external(
        &self,
        py: Python<'_>,
        kind: &str,
        options: &str,
        job_id: String,
        checkpoint_dir: Option<String>,
        checkpoint_interval: f64,
        resume_from: Option<String>,
    ) -> PyResult<crate::streaming::PyStreamingJob> {
        let checkpoints = crate::streaming::Checkpoints::parse(
            job_id,
            checkpoint_dir,
            checkpoint_interval,
            resume_from,
        )?;
        let options: serde_json::Value = serde_json::from_str(options)
            .map_err(|e| PyValueError::new_err(format!("sink options are not JSON: {e}")))?;
        let sink = py
            .detach(|| rillet_connectors::registry::sink(kind, options, &checkpoints.job_id))
            .py_err()?;
        crate::streaming::start(
            py,
            &self.df,
            crate::streaming::Target::Sink(sink),
            checkpoints,
        )
    }

    fn explain(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.df.explain()).py_err()
    }

    /// Figures of the last run, or None.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.df
            .last_stats()
            .map(|s| stats_to_dict(py, &s))
            .transpose()
    }
}

struct StreamState {
    job: JobHandle,
    batches: CollectedBatches,
    batcher: Option<RowBatcher>,
    /// Batches cut to size and not yet handed out.
    ready: std::collections::VecDeque<RecordBatch>,
    ended: bool,
}

/// Batches of a running job. Closing it (or dropping it) cancels the job.
#[pyclass(name = "BatchStream", module = "rillet._rillet")]
pub struct PyBatchStream {
    state: parking_lot::Mutex<Option<StreamState>>,
    df: DataFrame,
}

#[pymethods]
impl PyBatchStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut guard = self.state.lock();
        let Some(state) = guard.as_mut() else {
            return Ok(None);
        };
        loop {
            if let Some(batch) = state.ready.pop_front() {
                return pyo3_arrow::PyRecordBatch::new(batch)
                    .into_pyarrow(py)
                    .map(Some);
            }
            if state.ended {
                let rest = state
                    .batcher
                    .as_mut()
                    .map(|b| b.flush())
                    .transpose()
                    .py_err()?
                    .flatten();
                if rest.is_none() {
                    *guard = None;
                    return Ok(None);
                }
                return rest
                    .map(|b| pyo3_arrow::PyRecordBatch::new(b).into_pyarrow(py))
                    .transpose();
            }
            let canceller = state.job.canceller();
            let next =
                wait_interruptibly(py, state.batches.next_batch(), move || canceller.cancel());
            let next = match next {
                Ok(next) => next.py_err()?,
                Err(interrupt) => {
                    drain(py, &mut state.job);
                    *guard = None;
                    return Err(interrupt);
                }
            };
            match next {
                Some(batch) => match state.batcher.as_mut() {
                    Some(batcher) => state.ready.extend(batcher.push(batch).py_err()?),
                    None => state.ready.push_back(batch),
                },
                None => {
                    let stats = wait_interruptibly(py, state.job.wait(), || ())?.py_err()?;
                    self.df.record_stats(stats);
                    state.ended = true;
                }
            }
        }
    }

    /// Stop the job (if still running) and release its resources.
    fn close(&self, py: Python<'_>) {
        if let Some(mut state) = self.state.lock().take() {
            state.job.cancel();
            drain(py, &mut state.job);
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_class::<PyDataFrame>()?;
    m.add_class::<PyBatchStream>()?;
    Ok(())
}
