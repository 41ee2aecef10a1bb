//! The local worker: deploys a [`DataflowGraph`] as tokio tasks and drives the job to its
//! end, its first error, or its cancellation.
//!
//! Deploying is a sequence of named steps ([`LocalWorker::deploy`]): check the graph, wire
//! its channels, recover a checkpointed job's sinks and start its checkpoint loop, open the
//! functions' pools, spawn every task ([`spawn`]), write a checkpointed job's record, and
//! hand the rest to the [`driver`].

mod checkpointed;
mod driver;
mod handle;
mod restore;
mod spawn;
mod wiring;

pub use handle::{JobCanceller, JobHandle};

use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use rillet_common::{EngineConfig, Result, RilletError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::channel::ChannelReceiver;
use crate::checkpointing::{Checkpointing, ControlEnds, JobControl};
use crate::exchange::ExchangeRegistry;
use crate::function::{BatchFunction, FunctionContext};
use crate::graph::{DataflowGraph, VertexId, VertexOperator};
use crate::memory::CallBudget;
use crate::metrics::OperatorMetrics;
use crate::progress::ProgressDisplay;
use crate::runtime::{block_on, global_runtime};
use crate::sink::{Sink, SinkContext};

use checkpointed::CheckpointRun;
use driver::{Control, Driver};
use spawn::TaskSpawner;
use wiring::{Wiring, channel_capacity, spill_store};

/// Runs dataflow graphs in this process. (A remote worker will take the same graph.)
#[derive(Debug, Clone)]
pub struct LocalWorker {
    config: EngineConfig,
}

impl LocalWorker {
    /// A worker using `config`'s memory budget and pool sizes.
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }

    /// Deploy `graph` and start it. `task_ctx` carries DataFusion's session (functions,
    /// memory pool, object stores) to the fragments.
    pub fn submit(&self, graph: DataflowGraph, task_ctx: TaskContext) -> Result<JobHandle> {
        self.deploy(graph, task_ctx, None)
    }

    /// Deploy a streaming `graph` that checkpoints as `checkpointing` says, restoring its
    /// tasks' state from the snapshot `checkpointing` restores, if any (see
    /// [`crate::checkpointing`]). Every vertex must take part in checkpoints (no
    /// relational fragments).
    pub fn submit_checkpointed(
        &self,
        graph: DataflowGraph,
        task_ctx: TaskContext,
        checkpointing: Checkpointing,
    ) -> Result<JobHandle> {
        let claim = checkpointing.claim().clone();
        self.deploy(graph, task_ctx, Some(checkpointing))
            .inspect_err(|e| {
                // The run ends before it began: its claim must not keep the job.
                if let Err(record) = block_on(claim.fail(e)) {
                    tracing::warn!("cannot record the job's failure: {record}");
                }
            })
    }

    /// Deploy `graph` and start it: every step before the tasks spawn can fail the
    /// deployment; once they run, the job's outcome comes through the handle.
    fn deploy(
        &self,
        graph: DataflowGraph,
        task_ctx: TaskContext,
        checkpointing: Option<Checkpointing>,
    ) -> Result<JobHandle> {
        graph.validate()?;
        if checkpointing.is_some() {
            check_checkpointable(&graph)?;
        }
        let shape = state_shape(&graph);
        // Each vertex's parallelism when the restored snapshot was taken: a restore at
        // another one deals the old tasks' state out again (see `keygroups`).
        let restored_parallelism = match &checkpointing {
            Some(settings) => settings.check_shape(&shape)?,
            None => Vec::new(),
        };
        check_keyed_parallelism(&graph)?;
        let metrics: Vec<Arc<OperatorMetrics>> = graph
            .vertices
            .iter()
            .map(|v| Arc::new(OperatorMetrics::new(v.name.clone())))
            .collect();
        let capacity = channel_capacity(&self.config, &graph, checkpointing.is_some());
        let call_budget = CallBudget::new(self.config.memory_budget_bytes / 2);
        let spill = spill_store(&self.config)?;
        let wiring = Wiring::build(&graph, capacity, &metrics, spill.as_ref());
        let task_ctx = with_exchanges(task_ctx, wiring.fragment_inputs);
        let sinks = prepare_sinks(&graph)?;
        let sink_context = self.sink_context(checkpointing.as_ref());
        let mut checkpoint = checkpointing
            .map(|settings| CheckpointRun::start(settings, &graph, shape, &sink_context))
            .transpose()?;
        // The functions' worker pools start here (model loads run while the job starts).
        let opened = open_functions(&graph, &metrics)?;

        let mut spawner = TaskSpawner {
            graph: &graph,
            config: &self.config,
            task_ctx,
            metrics: &metrics,
            call_budget,
            sink_context: &sink_context,
            checkpoint: checkpoint.as_mut(),
            restored_parallelism: &restored_parallelism,
            tasks: JoinSet::new(),
            pools: Vec::new(),
        };
        let per_vertex = wiring.inputs.into_iter().zip(wiring.outputs);
        for (vertex, (inputs, outputs)) in graph.vertices.iter().zip(per_vertex) {
            spawner.spawn_vertex(vertex, inputs, outputs)?;
        }
        let TaskSpawner {
            mut tasks, pools, ..
        } = spawner;
        let commit_gate = checkpoint.as_mut().map(|c| c.launch(&mut tasks));

        let (cancel, cancel_rx) = watch::channel(false);
        let cancel = Arc::new(cancel);
        let control = checkpoint
            .as_ref()
            .and_then(|c| start_control(c, cancel.clone()));
        let metrics = Arc::new(metrics);
        let (done_tx, done_rx) = oneshot::channel();
        let started = Instant::now();
        let driver = Driver {
            tasks,
            cancel: cancel_rx,
            control,
            commit_gate,
            opened,
            pools,
            sinks,
            fragments: graph
                .vertices
                .iter()
                .filter_map(|v| match &v.operator {
                    VertexOperator::Fragment(plan) => Some(plan.clone()),
                    _ => None,
                })
                .collect::<Vec<Arc<dyn ExecutionPlan>>>(),
            sink_vertices: graph
                .vertices
                .iter()
                .filter(|v| matches!(v.operator, VertexOperator::Sink(_)))
                .map(|v| v.id.0)
                .collect(),
            metrics: metrics.clone(),
            progress: (self.config.progress)
                .then(|| ProgressDisplay::start(metrics.clone()))
                .flatten(),
            started,
            done: done_tx,
        };
        global_runtime().spawn(driver.run());
        Ok(JobHandle {
            run: checkpoint
                .as_ref()
                .map(|c| c.settings.claim().record().run.clone()),
            cancel,
            done: Some(done_rx),
            metrics,
            started,
            checkpoints: checkpoint.as_ref().map(|c| c.stats.clone()),
            stop: checkpoint.map(|c| c.stop),
        })
    }

    /// What the sinks of a run share: whether it checkpoints, its first checkpoint id, the
    /// last committed one, and its lineage.
    fn sink_context(&self, checkpointing: Option<&Checkpointing>) -> SinkContext {
        SinkContext {
            checkpointing: checkpointing.is_some(),
            // Without checkpoints, names carry the start time instead: unique per run.
            first_checkpoint: checkpointing.map_or_else(
                || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_millis() as u64)
                },
                |c| c.first_id(),
            ),
            committed: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            carry_limit_bytes: self.config.memory_budget_bytes,
            // Without checkpoints, a tag of this run's own.
            lineage: checkpointing
                .map_or_else(rillet_common::random_tag, |c| c.lineage().to_string()),
        }
    }
}

/// Every vertex of a checkpointed job must pass checkpoint barriers.
fn check_checkpointable(graph: &DataflowGraph) -> Result<()> {
    match graph.vertices.iter().find(|v| !v.operator.checkpoints()) {
        Some(vertex) => Err(RilletError::invalid_argument(format!(
            "'{}' cannot run in a checkpointed streaming job yet: it runs inside the \
             relational engine, which passes no checkpoint barriers",
            vertex.name
        ))),
        None => Ok(()),
    }
}

/// A keyed operator runs on at most as many tasks as there are key groups.
fn check_keyed_parallelism(graph: &DataflowGraph) -> Result<()> {
    let too_wide = graph.vertices.iter().find(|v| {
        matches!(&v.operator, VertexOperator::Stream(op) if op.key_columns().is_some())
            && v.parallelism > crate::keygroups::MAX_PARALLELISM
    });
    match too_wide {
        Some(vertex) => Err(RilletError::invalid_argument(format!(
            "'{}' runs on {} tasks; a keyed operator runs on at most {} (its key groups)",
            vertex.name,
            vertex.parallelism,
            crate::keygroups::MAX_PARALLELISM
        ))),
        None => Ok(()),
    }
}

/// What a restore must match: each vertex's kind and parallelism, and a stream operator's
/// name (its state layout). Not a source's or sink's description: a broker's address or a
/// bounded flag may change between runs.
fn state_shape(graph: &DataflowGraph) -> String {
    graph
        .vertices
        .iter()
        .map(|v| {
            let kind = match &v.operator {
                VertexOperator::Source(_) => "source".to_string(),
                VertexOperator::Sink(_) => "sink".to_string(),
                VertexOperator::Function(_) => "function".to_string(),
                VertexOperator::Fragment(_) => "fragment".to_string(),
                VertexOperator::Stream(operator) => operator.name(),
            };
            format!("{kind} x{}", v.parallelism)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `task_ctx` with the registry through which fragments' exchange leaves find the channels
/// `fragment_inputs` feeds them.
fn with_exchanges(
    task_ctx: TaskContext,
    fragment_inputs: Vec<(VertexId, usize, ChannelReceiver, Arc<OperatorMetrics>)>,
) -> Arc<TaskContext> {
    let registry = Arc::new(ExchangeRegistry::default());
    for (upstream, partition, receiver, consumer) in fragment_inputs {
        registry.register(upstream, partition, receiver, consumer);
    }
    let config = task_ctx.session_config().clone().with_extension(registry);
    Arc::new(task_ctx.with_session_config(config))
}

/// The job's sinks, each prepared (its output location checked) before any task runs.
fn prepare_sinks(graph: &DataflowGraph) -> Result<Vec<Arc<dyn Sink>>> {
    let mut sinks = Vec::new();
    for vertex in &graph.vertices {
        if let VertexOperator::Sink(sink) = &vertex.operator {
            sink.prepare()?;
            sinks.push(sink.clone());
        }
    }
    Ok(sinks)
}

/// Open every function's worker pool, failing now if one asks for resources this machine
/// does not have (the ones already opened are closed again).
fn open_functions(
    graph: &DataflowGraph,
    metrics: &[Arc<OperatorMetrics>],
) -> Result<Vec<Arc<dyn BatchFunction>>> {
    let mut opened: Vec<Arc<dyn BatchFunction>> = Vec::new();
    for vertex in &graph.vertices {
        if let VertexOperator::Function(function) = &vertex.operator {
            let context = FunctionContext {
                metrics: metrics[vertex.id.0].clone(),
            };
            if let Err(e) = function.open(&context) {
                opened.iter().for_each(|f| f.close());
                return Err(e);
            }
            opened.push(function.clone());
        }
    }
    Ok(opened)
}

/// The job's record, written once every task is deployed (an error before leaves none
/// claiming a run), and the poller of stop requests. The poller is not one of the job's
/// tasks: the job ends without it, and the driver stops it. A record that cannot be
/// written is not fatal, as a failed heartbeat is not: the job runs, unsteerable from
/// other processes.
fn start_control(checkpoint: &CheckpointRun, cancel: Arc<watch::Sender<bool>>) -> Option<Control> {
    let settings = &checkpoint.settings;
    let restored = settings.restored().map(|c| c.manifest.id);
    let record = match block_on(JobControl::start(
        settings.store().clone(),
        settings.claim(),
        restored,
    )) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(
                "job {}: cannot write its record: {e}",
                settings.store().job()
            );
            return None;
        }
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ends = ControlEnds {
        stop: checkpoint.stop.clone(),
        cancel,
        shutdown: shutdown_rx,
    };
    let poller = global_runtime().spawn(record.clone().run(ends, checkpoint.stats.clone()));
    Some(Control {
        record,
        poller,
        shutdown,
        stats: checkpoint.stats.clone(),
    })
}
