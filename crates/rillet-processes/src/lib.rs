//! Function processes: column functions computed in processes of their own.
//!
//! Python UDFs that load models (class UDFs) or process whole batches run in isolated
//! processes by default: a crash, a leak or the GIL of one process never touches the
//! engine or the other processes, and each process holds its own share of the machine
//! (CPUs, a GPU or a fraction of one, memory) from the [`ResourceManager`]. A
//! [`ProcessFunction`] is the engine's side of such a function: its calls go to a
//! [`ProcessPool`] that lives as long as the job, as Arrow IPC over pipes (see
//! [`protocol`]).
//!
//! [`ResourceManager`]: rillet_operator::resources::ResourceManager

mod pool;
pub mod protocol;

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use rillet_common::{Result, RilletError};
use rillet_operator::ScalarValue;

pub use pool::{
    ProcessCommand, ProcessPool, ProcessPoolOptions, describe_exit, lock_child, spawn_process,
    stop_processes,
};

use rillet_operator::function::{ArrayFunction, BatchFunction, CallFields, FunctionContext};
use rillet_operator::resources::ResourceManager;

/// The process pool of a function for the jobs that use it: started by the first job's
/// `open`, closed by the last job's `close`.
#[derive(Debug)]
struct JobPool {
    /// Operator label for errors and metrics: `udf(name)`, `map_batches(name)`.
    operator: String,
    command: ProcessCommand,
    options: ProcessPoolOptions,
    resources: Arc<ResourceManager>,
    slot: Mutex<PoolSlot>,
}

/// The pool of the running job(s) and how many use it.
#[derive(Debug, Default)]
struct PoolSlot {
    pool: Option<Arc<ProcessPool>>,
    jobs: usize,
}

impl JobPool {
    fn new(
        operator: String,
        command: ProcessCommand,
        options: ProcessPoolOptions,
        resources: Arc<ResourceManager>,
    ) -> Self {
        Self {
            operator,
            command,
            options,
            resources,
            slot: Mutex::new(PoolSlot::default()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, PoolSlot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running pool; a call outside a job (a plan executed without the engine's
    /// stages) starts one that lives until the function is dropped.
    fn running(&self) -> Result<Arc<ProcessPool>> {
        let mut slot = self.slot();
        if let Some(pool) = &slot.pool {
            return Ok(pool.clone());
        }
        let pool = self.start(None)?;
        slot.pool = Some(pool.clone());
        Ok(pool)
    }

    fn start(
        &self,
        metrics: Option<Arc<rillet_operator::metrics::OperatorMetrics>>,
    ) -> Result<Arc<ProcessPool>> {
        ProcessPool::start(
            self.operator.clone(),
            self.command.clone(),
            self.options.clone(),
            self.resources.clone(),
            metrics,
        )
    }

    fn current(&self) -> Option<Arc<ProcessPool>> {
        self.slot().pool.clone()
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        let mut slot = self.slot();
        if slot.pool.is_none() {
            slot.pool = Some(self.start(Some(context.metrics.clone()))?);
        }
        slot.jobs += 1;
        Ok(())
    }

    fn close(&self) {
        let pool = {
            let mut slot = self.slot();
            slot.jobs = slot.jobs.saturating_sub(1);
            if slot.jobs > 0 {
                return;
            }
            slot.pool.take()
        };
        if let Some(pool) = pool {
            pool.close();
        }
    }

    /// Send `batch` to a process and return its reply.
    fn call(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let request = protocol::encode_batch(batch)?;
        self.running()?.call(&request)
    }
}

/// Schema metadata of a function's reply: the rows its `on_error="null"` policy nulled …
pub const NULLED_KEY: &str = "rillet.nulled";
/// … and the first reason why (see `python/rillet/_worker.py`).
pub const NULL_REASON_KEY: &str = "rillet.null_reason";

/// Count, for the running call, the `rows` rows of `operator` and those its reply says the
/// null policy nulled (a Python function's failures, counted as native operators' are).
pub fn record_reply_nulls(operator: &str, rows: usize, reply: &RecordBatch) {
    let metadata = reply.schema_ref().metadata();
    let nulled = metadata
        .get(NULLED_KEY)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let reason = metadata
        .get(NULL_REASON_KEY)
        .map(String::as_str)
        .filter(|r| !r.is_empty());
    rillet_operator::function::record_nulls(operator, rows as u64, nulled, reason);
}

/// A column function whose calls run in a pool of processes started for each job.
///
/// Each call sends the argument arrays (as columns `a0`, `a1`, … of a batch with the
/// call's row count) and expects a batch whose single column is the result.
#[derive(Debug)]
pub struct ProcessFunction {
    name: String,
    fields: CallFields,
    batch_size: Option<usize>,
    pool: JobPool,
}

impl ProcessFunction {
    /// A function called `name` returning `result` (a field, so an extension type's
    /// metadata is kept), computed by processes started with `command` and sized by
    /// `options`, with resources from `resources`.
    pub fn new(
        name: impl Into<String>,
        result: Field,
        batch_size: Option<usize>,
        command: ProcessCommand,
        options: ProcessPoolOptions,
        resources: Arc<ResourceManager>,
    ) -> Self {
        let name = name.into();
        Self {
            pool: JobPool::new(format!("udf({name})"), command, options, resources),
            name,
            fields: CallFields::new(result),
            batch_size,
        }
    }

    fn operator(&self) -> String {
        self.pool.operator.clone()
    }

    /// The pool of the running job, if any (for tests and diagnostics).
    pub fn pool(&self) -> Option<Arc<ProcessPool>> {
        self.pool.current()
    }
}

impl ArrayFunction for ProcessFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn return_type(&self) -> DataType {
        self.fields.return_type()
    }

    fn return_field(&self, args: &[FieldRef], _literals: &[Option<&ScalarValue>]) -> Result<Field> {
        Ok(self.fields.return_field(&self.name, args))
    }

    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        let reply = self.pool.call(&self.fields.argument_batch(args, rows)?)?;
        if reply.num_columns() != 1 {
            return Err(RilletError::UserFunction {
                operator: self.operator(),
                message: format!(
                    "its worker replied with {} columns instead of one",
                    reply.num_columns()
                ),
            });
        }
        if reply.num_rows() != rows {
            return Err(RilletError::UserFunction {
                operator: self.operator(),
                message: format!("returned {} values for {rows} rows", reply.num_rows()),
            });
        }
        record_reply_nulls(&self.operator(), rows, &reply);
        Ok(reply.column(0).clone())
    }

    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.pool.options.max_workers)
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        self.pool.open(context)
    }

    fn close(&self) {
        self.pool.close()
    }
}

/// A batch function (`map_batches`) whose calls run in a pool of processes started
/// for each job: each call sends the batch and expects the output batch back.
#[derive(Debug)]
pub struct ProcessBatchFunction {
    name: String,
    schema: SchemaRef,
    batch_size: Option<usize>,
    pool: JobPool,
}

impl ProcessBatchFunction {
    /// `map_batches(name)` producing batches of `schema`, computed by processes started with
    /// `command` and sized by `options`, with resources from `resources`.
    pub fn new(
        name: &str,
        schema: SchemaRef,
        batch_size: Option<usize>,
        command: ProcessCommand,
        options: ProcessPoolOptions,
        resources: Arc<ResourceManager>,
    ) -> Self {
        let name = format!("map_batches({name})");
        Self {
            pool: JobPool::new(name.clone(), command, options, resources),
            name,
            schema,
            batch_size,
        }
    }
}

impl BatchFunction for ProcessBatchFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn call(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let reply = self.pool.call(&batch)?;
        // The process cast its result to the declared schema; the batch only needs the
        // declared field metadata (extension types) back.
        RecordBatch::try_new(self.schema.clone(), reply.columns().to_vec()).map_err(|e| {
            RilletError::UserFunction {
                operator: self.name.clone(),
                message: format!(
                    "its worker replied with a batch that does not fit the schema: {e}"
                ),
            }
        })
    }

    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.pool.options.max_workers)
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        self.pool.open(context)
    }

    fn close(&self) {
        self.pool.close()
    }
}
