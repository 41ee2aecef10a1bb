//! Worker processes: column functions computed in processes of their own.
//!
//! Python UDFs that load models (class UDFs) or process whole batches run in isolated
//! worker processes by default: a crash, a leak or the GIL of one worker never touches the
//! engine or the other workers, and each worker holds its own share of the machine
//! (CPUs, a GPU or a fraction of one, memory) from the [`ResourceManager`]. A
//! [`WorkerFunction`] is the engine's side of such a function: its calls go to a
//! [`ProcessPool`] that lives as long as the job, as Arrow IPC over pipes (see
//! [`protocol`]).
//!
//! [`ResourceManager`]: crate::resources::ResourceManager

mod pool;
pub mod protocol;

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema};
use rillet_common::{Result, RilletError};

pub use pool::{PoolOptions, ProcessPool, WorkerCommand};

use crate::function::{ArrayFunction, FunctionContext};
use crate::resources::ResourceManager;

/// A column function whose calls run in a pool of worker processes started for each job.
///
/// Each call sends the argument arrays (as columns `a0`, `a1`, … of a batch with the
/// call's row count) and expects a batch whose single column is the result.
#[derive(Debug)]
pub struct WorkerFunction {
    name: String,
    return_type: DataType,
    batch_size: Option<usize>,
    command: WorkerCommand,
    options: PoolOptions,
    resources: Arc<ResourceManager>,
    pool: Mutex<PoolSlot>,
}

/// The pool of the running job(s): started by the first `open`, closed by the last
/// `close`.
#[derive(Debug, Default)]
struct PoolSlot {
    pool: Option<Arc<ProcessPool>>,
    jobs: usize,
}

impl WorkerFunction {
    /// A function called `name` returning `return_type`, computed by workers started with
    /// `command` and sized by `options`, with resources from `resources`.
    pub fn new(
        name: impl Into<String>,
        return_type: DataType,
        batch_size: Option<usize>,
        command: WorkerCommand,
        options: PoolOptions,
        resources: Arc<ResourceManager>,
    ) -> Self {
        Self {
            name: name.into(),
            return_type,
            batch_size,
            command,
            options,
            resources,
            pool: Mutex::new(PoolSlot::default()),
        }
    }

    fn operator(&self) -> String {
        format!("udf({})", self.name)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, PoolSlot> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running pool; a call outside a job (a plan executed without the engine's
    /// stages) starts one that lives until the function is dropped.
    fn running_pool(&self) -> Result<Arc<ProcessPool>> {
        let mut slot = self.slot();
        if let Some(pool) = &slot.pool {
            return Ok(pool.clone());
        }
        let pool = self.start_pool(None)?;
        slot.pool = Some(pool.clone());
        Ok(pool)
    }

    fn start_pool(
        &self,
        metrics: Option<Arc<crate::metrics::OperatorMetrics>>,
    ) -> Result<Arc<ProcessPool>> {
        ProcessPool::start(
            self.operator(),
            self.command.clone(),
            self.options.clone(),
            self.resources.clone(),
            metrics,
        )
    }

    /// The pool of the running job, if any (for tests and diagnostics).
    pub fn pool(&self) -> Option<Arc<ProcessPool>> {
        self.slot().pool.clone()
    }
}

impl ArrayFunction for WorkerFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn return_type(&self) -> DataType {
        self.return_type.clone()
    }

    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        let fields: Vec<Field> = args
            .iter()
            .enumerate()
            .map(|(i, a)| Field::new(format!("a{i}"), a.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            args.to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let request = protocol::encode_batch(&batch)?;
        let reply = self.running_pool()?.call(&request)?;
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
        Ok(reply.column(0).clone())
    }

    fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.options.max_workers)
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        let mut slot = self.slot();
        if slot.pool.is_none() {
            slot.pool = Some(self.start_pool(Some(context.metrics.clone()))?);
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
}
