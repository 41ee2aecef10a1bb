//! The local worker: deploys a [`DataflowGraph`] as tokio tasks and drives the job to its
//! end, its first error, or its cancellation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use rillet_checkpoint::coordinator::TaskId;
use rillet_common::{EngineConfig, Result, RilletError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::channel::{ChannelReceiver, ChannelSender, InputGate, byte_channel};
use crate::checkpointing::{
    CheckpointLoop, CheckpointStats, Checkpointing, ControlEnds, JobControl, SourceCommand,
    StopRequest, TaskLink,
};
use crate::exchange::ExchangeRegistry;
use crate::function::{BatchFunction, RowBatcher, check_output_schema, with_call};
use crate::graph::{DataflowGraph, EdgeKind, VertexId, VertexOperator};
use crate::keygroups::TaskPlacement;
use crate::memory::{self, CallBudget, CallSizer};
use crate::message::CheckpointBarrier;
use crate::message::{StreamMessage, WATERMARK_END};
use crate::metrics::{JobStats, OperatorMetrics};
use crate::pool::{BlockingPool, panic_message};
use crate::progress::ProgressDisplay;
use crate::runtime::{block_on, global_runtime};
use crate::sink::Sink;
use crate::sink::SinkContext;
use crate::spill::SpillStore;
use crate::stream::{OperatorTask, SourceReader, SourceState, assign_splits};

/// Smallest and largest share of the memory budget one channel gets.
const MIN_CHANNEL_BYTES: usize = 256 << 10;
const MAX_CHANNEL_BYTES: usize = 64 << 20;
/// The largest channel of a checkpointed job. An aligned barrier waits behind everything
/// queued before it, so under backpressure a checkpoint takes as long as draining the
/// channels on its path: 64 MiB of small rows behind a slow model is minutes. Flink keeps
/// a few 32 KiB buffers per channel for the same reason.
const MAX_CHECKPOINTED_CHANNEL_BYTES: usize = 1 << 20;

/// Runs dataflow graphs in this process. (A remote worker will take the same graph.)
#[derive(Debug, Clone)]
pub struct LocalWorker {
    config: EngineConfig,
}

/// A running job. Dropping the handle cancels the job.
pub struct JobHandle {
    cancel: Arc<watch::Sender<bool>>,
    done: Option<oneshot::Receiver<Result<JobStats>>>,
    metrics: Arc<Vec<Arc<OperatorMetrics>>>,
    started: Instant,
    /// Set for a checkpointed job.
    checkpoints: Option<Arc<Mutex<CheckpointStats>>>,
    stop: Option<mpsc::Sender<StopRequest>>,
    /// A checkpointed job's run, as its claim names it.
    run: Option<String>,
}

/// Cancels a job; see [`JobHandle::canceller`].
#[derive(Clone)]
pub struct JobCanceller(Arc<watch::Sender<bool>>, Option<String>);

impl JobCanceller {
    /// Ask every task of the job to stop.
    pub fn cancel(&self) {
        ending(self.1.as_deref());
        let _ = self.0.send(true);
    }
}

/// A checkpointed run of this process is ending: a new run of its job waits for it.
fn ending(run: Option<&str>) {
    if let Some(run) = run {
        rillet_checkpoint::identity::mark_ending(run);
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        // Dropping the handle cancels the job.
        ending(self.run.as_deref());
    }
}

/// Where a task's output goes.
struct OutputRouter {
    kind: EdgeKind,
    senders: Vec<ChannelSender>,
    next: usize,
}

impl OutputRouter {
    /// Send to the next receiver; `false` when downstream has gone away (it needs no more).
    async fn send(&mut self, message: StreamMessage) -> Result<bool> {
        let target = match (&self.kind, &message) {
            (EdgeKind::Forward, _) => 0,
            // Barriers and watermarks go to every downstream task: each must see the
            // checkpoint, and each merges the watermarks of all its inputs.
            (_, StreamMessage::Barrier(_) | StreamMessage::Watermark(_) | StreamMessage::Idle) => {
                for sender in &self.senders {
                    if sender.send(message.clone()).await.is_err() {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            (EdgeKind::Rebalance, _) => {
                self.next = (self.next + 1) % self.senders.len();
                self.next
            }
            (EdgeKind::Hash(keys), StreamMessage::Batch(batch)) => {
                let parts = hash_partition(batch, keys, self.senders.len())?;
                for (target, part) in parts.into_iter().enumerate() {
                    if let Some(part) = part
                        && self.senders[target]
                            .send(StreamMessage::Batch(part))
                            .await
                            .is_err()
                    {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            (EdgeKind::Hash(_), StreamMessage::End) => 0,
        };
        Ok(self.senders[target].send(message).await.is_ok())
    }

    async fn end(&mut self) {
        for sender in &self.senders {
            let _ = sender.send(StreamMessage::End).await;
        }
    }
}

/// Split `batch` by the key groups of its `keys` columns over `targets` tasks; `None` where
/// a task gets no rows. A key's group is fixed (see [`crate::keygroups`]), so a key goes to
/// the task owning its group in every run and build, where its restored state is.
fn hash_partition(
    batch: &RecordBatch,
    keys: &[usize],
    targets: usize,
) -> Result<Vec<Option<RecordBatch>>> {
    let columns: Vec<ArrayRef> = keys.iter().map(|&k| batch.column(k).clone()).collect();
    let groups = crate::keygroups::key_groups(&columns, batch.num_rows())?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); targets];
    for (row, &group) in groups.iter().enumerate() {
        indices[crate::keygroups::task_of(group, targets)].push(row as u32);
    }
    indices
        .into_iter()
        .map(|rows| {
            if rows.is_empty() {
                return Ok(None);
            }
            if rows.len() == batch.num_rows() {
                return Ok(Some(batch.clone()));
            }
            let rows = arrow::array::UInt32Array::from(rows);
            Ok(Some(arrow::compute::take_record_batch(batch, &rows)?))
        })
        .collect()
}

/// Marks a task finished on its operator when it ends, however it ends.
struct TaskGuard(Arc<OperatorMetrics>);

impl TaskGuard {
    fn start(metrics: &Arc<OperatorMetrics>) -> Self {
        metrics.task_started();
        Self(metrics.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.task_finished();
    }
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

    fn deploy(
        &self,
        graph: DataflowGraph,
        task_ctx: TaskContext,
        checkpointing: Option<Checkpointing>,
    ) -> Result<JobHandle> {
        graph.validate()?;
        if checkpointing.is_some()
            && let Some(vertex) = graph.vertices.iter().find(|v| !v.operator.checkpoints())
        {
            return Err(RilletError::invalid_argument(format!(
                "'{}' cannot run in a checkpointed streaming job yet: it runs inside the \
                 relational engine, which passes no checkpoint barriers",
                vertex.name
            )));
        }
        // What a restore must match: each vertex's kind and parallelism, and a stream
        // operator's name (its state layout). Not a source's or sink's description: a
        // broker's address or a bounded flag may change between runs.
        let shape = graph
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
            .join("; ");
        // Each vertex's parallelism when the restored snapshot was taken: a restore at
        // another one deals the old tasks' state out again (see `keygroups`).
        let restored_parallelism = match &checkpointing {
            Some(settings) => settings.check_shape(&shape)?,
            None => Vec::new(),
        };
        if let Some(vertex) = graph.vertices.iter().find(|v| {
            matches!(&v.operator, VertexOperator::Stream(op) if op.key_columns().is_some())
                && v.parallelism > crate::keygroups::MAX_PARALLELISM
        }) {
            return Err(RilletError::invalid_argument(format!(
                "'{}' runs on {} tasks; a keyed operator runs on at most {} (its key groups)",
                vertex.name,
                vertex.parallelism,
                crate::keygroups::MAX_PARALLELISM
            )));
        }
        let runtime = global_runtime();
        let metrics: Vec<Arc<OperatorMetrics>> = graph
            .vertices
            .iter()
            .map(|v| Arc::new(OperatorMetrics::new(v.name.clone())))
            .collect();

        let channel_count: usize = graph
            .edges
            .iter()
            .map(|e| {
                let down = graph.vertices[e.target.0].parallelism;
                match e.kind {
                    EdgeKind::Forward => down,
                    _ => down * graph.vertices[e.source.0].parallelism,
                }
            })
            .sum::<usize>()
            .max(1);
        // Half the budget for data queued in channels, half for data held inside calls
        // (decoded media; see `memory`).
        let max_channel = if checkpointing.is_some() {
            MAX_CHECKPOINTED_CHANNEL_BYTES
        } else {
            MAX_CHANNEL_BYTES
        };
        let capacity = (self.config.memory_budget_bytes / 2 / channel_count)
            .clamp(MIN_CHANNEL_BYTES, max_channel);
        let call_budget = CallBudget::new(self.config.memory_budget_bytes / 2);
        let spill = match self.config.spill_bytes {
            0 => None,
            bytes => {
                let parent = std::env::var_os("RILLET_SPILL_DIR")
                    .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
                Some(Arc::new(SpillStore::new(&parent, bytes)?))
            }
        };
        // Every edge's sender may spill when the job has a store.
        let channel = |upstreams: usize, s: usize, t: usize| {
            let (tx, rx) = byte_channel(
                capacity,
                upstreams,
                Some(metrics[s].clone()),
                Some(metrics[t].clone()),
            );
            match &spill {
                Some(store) => (tx.with_spill(store.clone()), rx),
                None => (tx, rx),
            }
        };

        // inputs[v][p]: receivers feeding task p of vertex v, with their upstream vertex.
        let mut inputs: Vec<Vec<Vec<(VertexId, ChannelReceiver)>>> = graph
            .vertices
            .iter()
            .map(|v| (0..v.parallelism).map(|_| Vec::new()).collect())
            .collect();
        let mut outputs: Vec<Vec<Option<OutputRouter>>> = graph
            .vertices
            .iter()
            .map(|v| (0..v.parallelism).map(|_| None).collect())
            .collect();
        let mut fragment_inputs = Vec::new();
        for edge in &graph.edges {
            let (s, t) = (edge.source.0, edge.target.0);
            let (up, down) = (graph.vertices[s].parallelism, graph.vertices[t].parallelism);
            if matches!(graph.vertices[t].operator, VertexOperator::Fragment(_)) {
                // A fragment reads its input through exchange leaves, whose partitions are
                // the upstream tasks (one fragment task may run several of them, e.g. under
                // a final aggregate): one channel per upstream task, found by the leaf.
                for (p, slot) in outputs[s].iter_mut().enumerate() {
                    let (tx, rx) = channel(1, s, t);
                    fragment_inputs.push((edge.source, p, rx, metrics[t].clone()));
                    *slot = Some(OutputRouter {
                        kind: EdgeKind::Forward,
                        senders: vec![tx],
                        next: 0,
                    });
                }
                continue;
            }
            match edge.kind {
                EdgeKind::Forward => {
                    for p in 0..down {
                        let (tx, rx) = channel(1, s, t);
                        inputs[t][p].push((edge.source, rx));
                        outputs[s][p] = Some(OutputRouter {
                            kind: edge.kind.clone(),
                            senders: vec![tx],
                            next: 0,
                        });
                    }
                }
                EdgeKind::Rebalance | EdgeKind::Hash(_) => {
                    // One channel per pair of tasks, so that a downstream task can hold
                    // one upstream task back while it aligns a barrier (`InputGate`).
                    for (sp, slot) in outputs[s].iter_mut().enumerate() {
                        let mut senders = Vec::with_capacity(down);
                        for task_inputs in inputs[t].iter_mut() {
                            let (tx, rx) = channel(1, s, t);
                            task_inputs.push((edge.source, rx));
                            senders.push(tx);
                        }
                        *slot = Some(OutputRouter {
                            kind: edge.kind.clone(),
                            senders,
                            next: sp % down,
                        });
                    }
                    let _ = up;
                }
            }
        }

        let registry = Arc::new(ExchangeRegistry::default());
        for (upstream, partition, receiver, consumer) in fragment_inputs {
            registry.register(upstream, partition, receiver, consumer);
        }
        let config = task_ctx
            .session_config()
            .clone()
            .with_extension(registry.clone());
        let task_ctx = Arc::new(task_ctx.with_session_config(config));

        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        let mut fragments: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for vertex in &graph.vertices {
            match &vertex.operator {
                VertexOperator::Sink(sink) => {
                    sink.prepare()?;
                    sinks.push(sink.clone());
                }
                VertexOperator::Fragment(plan) => fragments.push(plan.clone()),
                VertexOperator::Function(_)
                | VertexOperator::Source(_)
                | VertexOperator::Stream(_) => {}
            }
        }

        // Checkpoints: every task acknowledges each checkpoint; sources take commands.
        let checkpoint_stats = checkpointing
            .as_ref()
            .map(|_| Arc::new(Mutex::new(CheckpointStats::default())));
        let committed = Arc::new(AtomicU64::new(0));
        let mut source_commands = BTreeMap::new();
        let mut task_events = None;
        let mut stop_sender = None;
        let mut checkpoint_loop = None;
        let sink_context = SinkContext {
            checkpointing: checkpointing.is_some(),
            // Without checkpoints, names carry the start time instead: unique per run.
            first_checkpoint: checkpointing.as_ref().map_or_else(
                || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_millis() as u64)
                },
                |c| c.first_id(),
            ),
            committed: committed.clone(),
            carry_limit_bytes: self.config.memory_budget_bytes,
            // Without checkpoints, a tag of this run's own.
            lineage: checkpointing
                .as_ref()
                .map_or_else(rillet_common::random_tag, |c| c.lineage().to_string()),
        };
        if let Some(settings) = &checkpointing {
            let all_tasks: BTreeSet<TaskId> = graph
                .vertices
                .iter()
                .flat_map(|v| (0..v.parallelism).map(move |p| TaskId::new(v.id.0 as u32, p as u32)))
                .collect();
            let sources: Vec<TaskId> = graph
                .vertices
                .iter()
                .filter(|v| matches!(v.operator, VertexOperator::Source(_)))
                .flat_map(|v| (0..v.parallelism).map(move |p| TaskId::new(v.id.0 as u32, p as u32)))
                .collect();
            if sources.is_empty() {
                return Err(RilletError::invalid_argument(
                    "a checkpointed job needs a streaming source",
                ));
            }
            let sink_list: Vec<(usize, Arc<dyn Sink>)> = graph
                .vertices
                .iter()
                .filter_map(|v| match &v.operator {
                    VertexOperator::Sink(sink) => Some((v.id.0, sink.clone())),
                    _ => None,
                })
                .collect();
            // Before any task starts: go back to the restored snapshot, finish its commits
            // and drop what later, never completed checkpoints staged.
            // A later run may have claimed the job while this one restored (a slow store):
            // it must not undo that run's commits.
            block_on(settings.claim().check())?;
            let rewound = block_on(settings.rewind())?;
            if !rewound.deleted.is_empty() || !rewound.retired.is_empty() {
                tracing::warn!(
                    "deleted checkpoints {:?} and retired savepoints {:?}, newer than the \
                     snapshot restored",
                    rewound.deleted,
                    rewound.retired
                );
            }
            let restored_id = settings.recover_to();
            for vertex in &graph.vertices {
                if let VertexOperator::Sink(sink) = &vertex.operator {
                    // Every old task's, whatever the parallelism now.
                    let states: Vec<Vec<u8>> = settings
                        .restored_states(vertex.id.0)
                        .into_iter()
                        .map(|(_, state)| state)
                        .collect();
                    block_on(settings.claim().check())?;
                    sink.recover(&sink_context, restored_id, &states)?;
                }
            }
            let (cl, events, commands, stop) = CheckpointLoop::new(
                settings.clone(),
                shape.clone(),
                all_tasks,
                &sources,
                sink_list,
                sink_context.clone(),
                checkpoint_stats.clone().expect("set with checkpointing"),
            );
            source_commands = commands;
            task_events = Some(events);
            stop_sender = Some(stop);
            checkpoint_loop = Some(cl);
        }
        let link_for = |v: usize, p: usize| {
            task_events
                .as_ref()
                .map(|events| CheckpointLoop::link(TaskId::new(v as u32, p as u32), events))
        };

        // Start the functions' worker pools (model loads run while the job starts) and
        // fail now if one asks for resources this machine does not have.
        let mut opened: Vec<Arc<dyn BatchFunction>> = Vec::new();
        for vertex in &graph.vertices {
            if let VertexOperator::Function(function) = &vertex.operator {
                let context = crate::function::FunctionContext {
                    metrics: metrics[vertex.id.0].clone(),
                };
                if let Err(e) = function.open(&context) {
                    opened.iter().for_each(|f| f.close());
                    return Err(e);
                }
                opened.push(function.clone());
            }
        }

        let mut tasks: JoinSet<Result<Vec<String>>> = JoinSet::new();
        let mut pools = Vec::new();
        for vertex in &graph.vertices {
            let v = vertex.id.0;
            let vertex_metrics = metrics[v].clone();
            let pool = match &vertex.operator {
                VertexOperator::Function(f) => Some(BlockingPool::new(
                    f.concurrency().unwrap_or(self.config.blocking_threads),
                )),
                // One writer thread per sink task.
                VertexOperator::Sink(_) => Some(BlockingPool::new(vertex.parallelism)),
                _ => None,
            };
            pools.extend(pool.clone());
            // What the vertex's tasks snapshotted, read once for all of its tasks.
            let restored = RestoredVertex::of(
                checkpointing.as_ref(),
                v,
                restored_parallelism.get(v) == Some(&vertex.parallelism),
            );
            // A source's splits, enumerated and dealt to its tasks once, each from its
            // restored position (positions are kept per split, whichever task had it).
            let mut source_splits = match &vertex.operator {
                VertexOperator::Source(source) => {
                    let mut positions = BTreeMap::new();
                    for state in &restored.states {
                        positions.extend(SourceState::from_bytes(state)?.positions);
                    }
                    let splits = source.splits()?;
                    if let Some(gone) = positions.keys().find(|s| !splits.contains(s)) {
                        // Its position would be dropped, and what it covers read again (or
                        // not at all) under another split.
                        return Err(RilletError::Checkpoint(format!(
                            "the snapshot holds a position for split {gone:?} of '{}', which \
                             this source no longer has (its splits are {splits:?}): restore \
                             with the source's earlier settings, or start under a new job id",
                            vertex.name
                        )));
                    }
                    assign_splits(&splits, vertex.parallelism, &positions)
                }
                _ => Vec::new(),
            };
            for p in 0..vertex.parallelism {
                let mut task_inputs = std::mem::take(&mut inputs[v][p]);
                let router = outputs[v][p].take();
                let m = vertex_metrics.clone();
                match &vertex.operator {
                    VertexOperator::Fragment(plan) => {
                        debug_assert!(
                            task_inputs.is_empty(),
                            "fragment inputs go through the registry"
                        );
                        let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                        let fut = run_fragment(plan.clone(), p, task_ctx.clone(), router, m);
                        tasks.spawn_on(fut, runtime.handle());
                    }
                    VertexOperator::Function(function) => {
                        let input = gate(std::mem::take(&mut task_inputs), &m, &vertex.name)?.1;
                        let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                        let restored = restored.for_function(p, &vertex.name)?.to_vec();
                        let fut = run_function(
                            function.clone(),
                            input,
                            router,
                            m,
                            pool.clone().expect("function vertices have a pool"),
                            call_budget.clone(),
                            link_for(v, p),
                            restored,
                        );
                        tasks.spawn_on(fut, runtime.handle());
                    }
                    VertexOperator::Sink(sink) => {
                        let (upstream, input) =
                            gate(std::mem::take(&mut task_inputs), &m, &vertex.name)?;
                        let schema = graph.output_schema(upstream);
                        let blocking = pool.clone().expect("sink vertices have a pool");
                        let writer = sink.open(p, schema, &blocking, &sink_context)?;
                        let fut = run_sink(writer, input, m, link_for(v, p));
                        tasks.spawn_on(fut, runtime.handle());
                    }
                    VertexOperator::Stream(operator) => {
                        let input = gate(std::mem::take(&mut task_inputs), &m, &vertex.name)?.1;
                        let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                        let placement = TaskPlacement::new(p, vertex.parallelism);
                        let task = operator.open(placement, restored.for_stream(p))?;
                        let fut = run_stream(task, input, router, m, link_for(v, p));
                        tasks.spawn_on(fut, runtime.handle());
                    }
                    VertexOperator::Source(source) => {
                        let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                        let assigned = std::mem::take(&mut source_splits[p]);
                        let idle = assigned.is_empty();
                        let reader = source.open(assigned)?;
                        let commands = source_commands.remove(&TaskId::new(v as u32, p as u32));
                        let fut = run_source(reader, idle, commands, router, m, link_for(v, p));
                        tasks.spawn_on(fut, runtime.handle());
                    }
                }
            }
        }

        drop(task_events);
        let commit_gate = checkpoint_loop.as_ref().map(CheckpointLoop::commit_gate);
        if let Some(cl) = checkpoint_loop {
            tasks.spawn_on(
                async move { cl.run().await.map(|_| Vec::new()) },
                runtime.handle(),
            );
        }
        // The job's record, written once every task is deployed (an error above leaves
        // none claiming a run), and the poller of stop requests. The poller is not one of
        // the job's tasks: the job ends without it, and the driver stops it.
        let control = match &checkpointing {
            Some(settings) => {
                let restored = settings.restored().map(|c| c.manifest.id);
                match block_on(JobControl::start(
                    settings.store().clone(),
                    settings.claim(),
                    restored,
                )) {
                    Ok(control) => Some(control),
                    // Not fatal, as a failed heartbeat is not: the job runs, unsteerable
                    // from other processes.
                    Err(e) => {
                        tracing::warn!(
                            "job {}: cannot write its record: {e}",
                            settings.store().job()
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let (control_shutdown, shutdown_rx) = watch::channel(false);
        let (cancel, cancel_rx) = watch::channel(false);
        let cancel = Arc::new(cancel);
        let control_task = control.as_ref().map(|control| {
            let stop = stop_sender.clone().expect("set with checkpointing");
            let stats = checkpoint_stats.clone().expect("set with checkpointing");
            let ends = ControlEnds {
                stop,
                cancel: cancel.clone(),
                shutdown: shutdown_rx.clone(),
            };
            runtime.spawn(control.clone().run(ends, stats))
        });
        let final_stats = checkpoint_stats.clone();
        let run = checkpointing
            .as_ref()
            .map(|settings| settings.claim().record().run.clone());

        let metrics = Arc::new(metrics);
        let progress = (self.config.progress)
            .then(|| ProgressDisplay::start(metrics.clone()))
            .flatten();
        let (done_tx, done_rx) = oneshot::channel();
        let started = Instant::now();
        let driver_metrics = metrics.clone();
        let sink_vertices: Vec<usize> = graph
            .vertices
            .iter()
            .filter(|v| matches!(v.operator, VertexOperator::Sink(_)))
            .map(|v| v.id.0)
            .collect();
        runtime.spawn(async move {
            let (error, files) = drive(tasks, cancel_rx).await;
            // Cancelled because a later run claimed the job: say so.
            let error = control.as_ref().and_then(|c| c.lost_claim()).or(error);
            // A commit the cancel found under way finishes before the job ends.
            if let Some(gate) = &commit_gate {
                let _ = gate.lock().await;
            }
            // The poller stops, finishing a record write under way, before the last one.
            let _ = control_shutdown.send(true);
            if let Some(task) = control_task {
                let _ = task.await;
            }
            if let (Some(control), Some(stats)) = (&control, &final_stats) {
                let stats = stats.lock().clone();
                control.finish(error.as_ref(), &stats).await;
            }
            // Stop worker processes; on failure this also ends calls still running in them.
            let closing =
                tokio::task::spawn_blocking(move || opened.iter().for_each(|f| f.close()));
            let _ = closing.await;
            // Aborted tasks may have left a blocking call running: the job ends with it.
            for pool in &pools {
                pool.idle().await;
            }
            // Every task succeeded: the sinks make the output visible, all at once.
            let mut error = error;
            for sink in &sinks {
                if error.is_some() {
                    break;
                }
                let sink = sink.clone();
                error = match tokio::task::spawn_blocking(move || sink.publish()).await {
                    Ok(published) => published.err(),
                    Err(e) => Some(RilletError::internal(format!(
                        "a sink's publish panicked: {e}"
                    ))),
                };
            }
            for sink in &sinks {
                sink.finish();
            }
            if let Some(progress) = progress {
                progress.finish();
            }
            let stats = JobStats {
                operators: driver_metrics.iter().map(|m| m.snapshot()).collect(),
                elapsed_s: started.elapsed().as_secs_f64(),
                bytes_scanned: fragments.iter().map(bytes_scanned).sum(),
                rows_written: sink_vertices
                    .iter()
                    .map(|&v| driver_metrics[v].snapshot().rows_in)
                    .sum(),
                files_written: files,
            };
            let _ = done_tx.send(match error {
                Some(error) => Err(error),
                None => Ok(stats),
            });
        });
        Ok(JobHandle {
            run,
            cancel,
            done: Some(done_rx),
            metrics,
            started,
            checkpoints: checkpoint_stats,
            stop: stop_sender,
        })
    }
}

/// What the tasks of one vertex snapshotted in the restored checkpoint, and which of it
/// each of its tasks starts from.
struct RestoredVertex {
    /// The old task of each state, in task order.
    tasks: Vec<usize>,
    states: Vec<Vec<u8>>,
    /// The vertex runs at the parallelism of the snapshot.
    unchanged: bool,
    /// The snapshot's keys were routed by key group.
    key_grouped: bool,
}

impl RestoredVertex {
    /// The states of vertex `v` (none without a restored checkpoint); `unchanged`: the
    /// vertex runs at the snapshot's parallelism.
    fn of(checkpointing: Option<&Checkpointing>, v: usize, unchanged: bool) -> Self {
        let (tasks, states) = checkpointing
            .map(|c| c.restored_states(v))
            .unwrap_or_default()
            .into_iter()
            .unzip();
        Self {
            tasks,
            states,
            unchanged,
            key_grouped: checkpointing.is_some_and(Checkpointing::restored_by_key_group),
        }
    }

    /// The state of old task `p` alone, if it left one.
    fn own(&self, p: usize) -> &[Vec<u8>] {
        match self.tasks.iter().position(|&t| t == p) {
            Some(i) => &self.states[i..=i],
            None => &[],
        }
    }

    /// What task `p` of a stream operator starts from: every old task's state (each task
    /// keeps the keys of its key groups), or only its own when the parallelism is
    /// unchanged and the keys were routed by key group (so its keys are already its own).
    fn for_stream(&self, p: usize) -> &[Vec<u8>] {
        if self.unchanged && self.key_grouped {
            self.own(p)
        } else {
            &self.states
        }
    }

    /// What task `p` of function vertex `name` starts from: its own calls in flight. At
    /// another parallelism there must be none: their rows would race the newer rows of
    /// their splits, now dealt to other tasks, and come out of order.
    fn for_function(&self, p: usize, name: &str) -> Result<&[Vec<u8>]> {
        if !self.unchanged && !self.states.is_empty() {
            return Err(RilletError::Checkpoint(format!(
                "the snapshot holds calls in flight of '{name}' at another parallelism: stop \
                 the job with a savepoint (which finishes them) to change its parallelism"
            )));
        }
        Ok(self.own(p))
    }
}

/// The input gate over a task's channels, with the vertex feeding them.
fn gate(
    inputs: Vec<(VertexId, ChannelReceiver)>,
    metrics: &Arc<OperatorMetrics>,
    name: &str,
) -> Result<(VertexId, InputGate)> {
    let upstream = inputs
        .first()
        .map(|(v, _)| *v)
        .ok_or_else(|| missing_input(name))?;
    let receivers = inputs.into_iter().map(|(_, rx)| rx).collect();
    Ok((upstream, InputGate::new(receivers, Some(metrics.clone()))))
}

fn missing_input(name: &str) -> RilletError {
    RilletError::internal(format!("vertex '{name}' has no input channel"))
}

fn missing_output(name: &str) -> RilletError {
    RilletError::internal(format!("vertex '{name}' has no output channel"))
}

/// Bytes read from storage by the scans of a plan (DataFusion's `bytes_scanned` metric).
fn bytes_scanned(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("bytes_scanned"))
        .map_or(0, |v| v.as_usize() as u64);
    own + plan.children().into_iter().map(bytes_scanned).sum::<u64>()
}

/// Wait for every task; on the first error or a cancel, abort the rest. Returns the job's
/// error (a real failure wins over the cancellations it caused) and the files written.
async fn drive(
    mut tasks: JoinSet<Result<Vec<String>>>,
    mut cancel: watch::Receiver<bool>,
) -> (Option<RilletError>, Vec<String>) {
    let mut error: Option<RilletError> = None;
    let mut files = Vec::new();
    let mut cancelled = false;
    let record = |error: &mut Option<RilletError>, new: RilletError| {
        let replace = match error {
            None => true,
            Some(old) => old.is_cancelled() && !new.is_cancelled(),
        };
        if replace {
            *error = Some(new);
        }
    };
    loop {
        tokio::select! {
            changed = cancel.changed(), if !cancelled => {
                // A cancel request, or the handle was dropped.
                if changed.is_err() || *cancel.borrow() {
                    cancelled = true;
                    record(&mut error, RilletError::Cancelled);
                    tasks.abort_all();
                }
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(file))) => files.extend(file),
                Some(Ok(Err(e))) => {
                    record(&mut error, e);
                    tasks.abort_all();
                }
                Some(Err(e)) if e.is_panic() => {
                    let message = panic_message(e.into_panic());
                    record(&mut error, RilletError::internal(format!("a task panicked: {message}")));
                    tasks.abort_all();
                }
                Some(Err(_)) => {} // aborted after an error or cancel
            }
        }
    }
    files.sort();
    (error, files)
}

async fn run_fragment(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    task_ctx: Arc<TaskContext>,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut stream = plan.execute(partition, task_ctx)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
        if !output.send(StreamMessage::Batch(batch)).await? {
            // Downstream needs no more rows (a limit was reached): stop reading.
            return Ok(Vec::new());
        }
    }
    output.end().await;
    Ok(Vec::new())
}

/// Runs a function vertex's task: cut the input into the function's batch size and keep as
/// many calls running as the pool has workers, sending results in input order. One task
/// thus uses every worker (a single-partition input still spreads over all cores) without
/// reordering rows. A call that finishes before an earlier, slower one holds its result
/// until that one is sent, and its worker starts the next call meanwhile instead of idling
/// (at most twice the pool's size of calls are in flight, running or held). Each call first
/// reserves its estimated memory from the job's [`CallBudget`]; functions with independent
/// rows get fewer rows per call when rows are large.
// The task's parts (ends, metrics, pool, budget, checkpoint link, restored state) are the
// same as every other task runner's, passed one by one like theirs.
#[allow(clippy::too_many_arguments)]
async fn run_function(
    function: Arc<dyn BatchFunction>,
    mut input: InputGate,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    pool: BlockingPool,
    budget: CallBudget,
    link: Option<TaskLink>,
    restored: Vec<Vec<u8>>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut batcher: Option<RowBatcher> = None;
    let expected = function.output_schema();
    let max_running = pool.size();
    // Running calls plus finished ones held back to keep the output in input order.
    let max_in_flight = 2 * max_running;
    // Calls in `calls` whose work is done (their results wait behind an earlier call), and
    // a signal from each call as it finishes, so that its worker gets the next call at once.
    let finished = Arc::new(AtomicUsize::new(0));
    let call_finished = Arc::new(tokio::sync::Notify::new());
    let running = |calls: &FuturesOrdered<_>| calls.len() - finished.load(Ordering::SeqCst);
    let mut sizer = CallSizer::new(
        function.batch_size(),
        function.splittable_batches(),
        budget.capacity() / max_running,
    );
    // Batches cut from the input and not yet handed to the pool; on a restore, first the
    // rows whose calls were in flight at the checkpoint.
    let mut ready: VecDeque<RecordBatch> = VecDeque::new();
    for state in &restored {
        ready.extend(crate::stream::decode_batches(state)?);
    }
    // Counted, not hidden: a model sees these rows a second time.
    metrics.add_rows_recalled(ready.iter().map(|b| b.num_rows() as u64).sum());
    let mut calls = FuturesOrdered::new();
    // The input of each call in `calls`, in the same order: what a checkpoint taken while
    // they run records, so that a restore calls them again.
    let mut called: VecDeque<RecordBatch> = VecDeque::new();
    // Input rows handed to calls so far: the first row of the next call.
    let mut rows_called: u64 = 0;
    // What ends the input once the calls before it are done: a barrier or the end.
    let mut held: Option<StreamMessage> = None;
    loop {
        while running(&calls) < max_running
            && calls.len() < max_in_flight
            && let Some(mut batch) = ready.pop_front()
        {
            let rows = sizer.rows_for(batch.num_rows());
            if rows < batch.num_rows() {
                ready.push_front(batch.slice(rows, batch.num_rows() - rows));
                batch = batch.slice(0, rows);
            }
            let estimate = sizer.estimate(rows);
            called.push_back(batch.clone());
            let first_row = rows_called;
            rows_called += rows as u64;
            let (f, pool, m, budget) = (
                function.clone(),
                pool.clone(),
                metrics.clone(),
                budget.clone(),
            );
            let (finished, call_finished) = (finished.clone(), call_finished.clone());
            calls.push_back(async move {
                let called = async {
                    let _reserved = budget.reserve(estimate, Some(&m)).await?;
                    let call_metrics = m.clone();
                    pool.run(Some(&m), move || {
                        let (result, charged) = with_call(first_row, &call_metrics, || {
                            memory::measure_call(|| f.call(batch))
                        });
                        result.map(|r| (r, charged))
                    })
                    .await
                }
                .await;
                finished.fetch_add(1, Ordering::SeqCst);
                call_finished.notify_one();
                let (result, charged) = called?;
                Ok::<_, RilletError>((result, rows, charged))
            });
        }
        if calls.is_empty() && ready.is_empty() {
            match held.take() {
                Some(StreamMessage::End) => {
                    output.end().await;
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Barrier(barrier)) => {
                    // The last barrier, once every call started before it has finished and
                    // been sent: nothing is in flight, so the state is empty.
                    if let Some(link) = &link {
                        link.ack(barrier.checkpoint_id, None).await?;
                    }
                    if !output.send(StreamMessage::Barrier(barrier)).await? {
                        return Ok(Vec::new());
                    }
                }
                // Forwarded once the rows before it have gone out.
                Some(StreamMessage::Watermark(watermark))
                    if !output.send(StreamMessage::Watermark(watermark)).await? =>
                {
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Watermark(_)) => {}
                Some(StreamMessage::Idle) if !output.send(StreamMessage::Idle).await? => {
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Idle) => {}
                Some(StreamMessage::Batch(_)) => {
                    return Err(RilletError::internal("a batch was held as a barrier"));
                }
                None => {}
            }
        }
        let accepting = held.is_none()
            && ready.is_empty()
            && running(&calls) < max_running
            && calls.len() < max_in_flight;
        tokio::select! {
            // Finished calls go out first, in order, so results never wait behind input.
            biased;
            Some(result) = calls.next(), if !calls.is_empty() => {
                finished.fetch_sub(1, Ordering::SeqCst);
                called.pop_front();
                let (result, rows, charged) = result?;
                sizer.observe(rows, charged);
                check_output_schema(function.as_ref(), &result, &expected)?;
                if result.num_rows() > 0 {
                    metrics.add_output(result.num_rows(), result.get_array_memory_size());
                    if !output.send(StreamMessage::Batch(result)).await? {
                        return Ok(Vec::new());
                    }
                }
            }
            // A call finished behind an earlier one: its worker is free for the next call.
            () = call_finished.notified() => {}
            message = input.recv(), if accepting => match message? {
                Some(StreamMessage::Batch(batch)) => {
                    metrics.add_input(batch.num_rows());
                    if batch.num_rows() > 0 {
                        match function.batch_size() {
                            Some(size) => ready.extend(
                                batcher
                                    .get_or_insert_with(|| RowBatcher::new(batch.schema(), size))
                                    .push(batch)?,
                            ),
                            None => ready.push_back(batch),
                        }
                    }
                }
                Some(end_or_barrier) => {
                    // Rows buffered before a barrier belong to the checkpoint before it
                    // (and before a watermark, to the event time before it).
                    if let Some(rest) = batcher.as_mut().map(|b| b.flush()).transpose()?.flatten() {
                        ready.push_back(rest);
                    }
                    match (end_or_barrier, &link) {
                        // A checkpoint does not wait for the calls under way (a model may
                        // take seconds): their input rows, and those not yet called, are
                        // the task's state, and their results go out after the barrier,
                        // in the next checkpoint. A restore calls them again.
                        (StreamMessage::Barrier(barrier), Some(link)) if !barrier.last => {
                            let pending: Vec<RecordBatch> =
                                called.iter().chain(ready.iter()).cloned().collect();
                            let state = match pending.first() {
                                Some(first) => {
                                    Some(crate::stream::encode_batches(&first.schema(), &pending)?)
                                }
                                None => None,
                            };
                            link.ack(barrier.checkpoint_id, state).await?;
                            if !output.send(StreamMessage::Barrier(barrier)).await? {
                                return Ok(Vec::new());
                            }
                        }
                        // The end, a watermark, or the last barrier (nothing may follow
                        // it) wait for the calls before them.
                        (message, _) => held = Some(message),
                    }
                }
                // Upstream vanished: it failed or was cancelled, and reports that itself.
                None => return Err(RilletError::Cancelled),
            },
        }
    }
}

async fn run_sink(
    mut writer: Box<dyn crate::sink::BatchWriter>,
    mut input: InputGate,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    loop {
        match input.recv().await? {
            Some(StreamMessage::Batch(batch)) => {
                metrics.add_input(batch.num_rows());
                metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
                match writer.write(batch).await {
                    Ok(()) => {}
                    // The caller stopped reading (closed iterator): nothing more to do.
                    Err(RilletError::Cancelled) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                }
            }
            Some(StreamMessage::Barrier(barrier)) => {
                let state = writer.checkpoint(barrier.checkpoint_id).await?;
                if let Some(link) = &link {
                    link.ack(barrier.checkpoint_id, state).await?;
                }
            }
            Some(StreamMessage::Watermark(_) | StreamMessage::Idle) => {}
            Some(StreamMessage::End) => break,
            None => return Err(RilletError::Cancelled),
        }
    }
    writer.close().await
}

/// Runs a streaming operator's task: batches through the operator, watermarks to it (and
/// on, as it says), its own watermarks out after the rows they follow, and at each aligned
/// barrier a snapshot of its state.
async fn run_stream(
    mut operator: Box<dyn OperatorTask>,
    mut input: InputGate,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    // The last watermark sent: watermarks only ever advance.
    let mut sent: Option<i64> = None;
    // Whether the run's final barrier (a stop's savepoint, or the checkpoint after every
    // source ended) has passed: then the state it snapshotted lives on in it.
    let mut final_barrier_passed = false;
    // Whether the task told the tasks after it that it is idle (see `idle_timeout`), and
    // when it last had a row (barriers and watermarks do not count).
    let mut idle = false;
    let mut last_row = Instant::now();
    loop {
        let message = match operator.idle_timeout().filter(|_| !idle) {
            Some(timeout) => {
                match tokio::time::timeout(timeout.saturating_sub(last_row.elapsed()), input.recv())
                    .await
                {
                    Ok(message) => message?,
                    Err(_) => {
                        // No row for the idle timeout: the last watermark due, then idle.
                        idle = true;
                        let flushed = operator
                            .flush_watermark()
                            .filter(|&w| sent.is_none_or(|s| w > s));
                        if let Some(watermark) = flushed {
                            sent = Some(watermark);
                            if !output.send(StreamMessage::Watermark(watermark)).await? {
                                return Ok(Vec::new());
                            }
                        }
                        if !output.send(StreamMessage::Idle).await? {
                            return Ok(Vec::new());
                        }
                        continue;
                    }
                }
            }
            None => input.recv().await?,
        };
        let (produced, watermark) = match message {
            Some(StreamMessage::Batch(batch)) => {
                idle = false;
                last_row = Instant::now();
                metrics.add_input(batch.num_rows());
                let produced = operator.process(batch)?;
                (produced, operator.take_watermark())
            }
            // Every input idle: so is this task, for the tasks after it.
            Some(StreamMessage::Idle) => {
                if !output.send(StreamMessage::Idle).await? {
                    return Ok(Vec::new());
                }
                continue;
            }
            Some(StreamMessage::Watermark(watermark)) => operator.on_watermark(watermark)?,
            Some(StreamMessage::Barrier(barrier)) => {
                let state = operator.snapshot()?;
                if let Some(link) = &link {
                    link.ack(barrier.checkpoint_id, state).await?;
                }
                final_barrier_passed |= barrier.last;
                if !output.send(StreamMessage::Barrier(barrier)).await? {
                    return Ok(Vec::new());
                }
                continue;
            }
            Some(StreamMessage::End) if final_barrier_passed => {
                // What `finish` would emit (windows still open at a stop) is in the
                // snapshot: a resume emits it. A bounded input's real end fired every
                // window before the final barrier, with the end-of-input watermark.
                output.end().await;
                return Ok(Vec::new());
            }
            Some(StreamMessage::End) => {
                for batch in operator.finish()? {
                    if batch.num_rows() > 0 && !output.send(StreamMessage::Batch(batch)).await? {
                        return Ok(Vec::new());
                    }
                }
                output.end().await;
                return Ok(Vec::new());
            }
            None => return Err(RilletError::Cancelled),
        };
        let late = operator.take_dropped_late();
        if late > 0 {
            metrics.add_dropped_late(late);
        }
        for batch in produced {
            if batch.num_rows() == 0 {
                continue;
            }
            metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
            if !output.send(StreamMessage::Batch(batch)).await? {
                return Ok(Vec::new());
            }
        }
        if let Some(watermark) = watermark.filter(|&w| sent.is_none_or(|s| w > s)) {
            sent = Some(watermark);
            if !output.send(StreamMessage::Watermark(watermark)).await? {
                return Ok(Vec::new());
            }
        }
    }
}

/// Runs a source task: reads its splits and, on the checkpoint loop's command, records
/// their positions, acknowledges, and injects the barrier in order with the batches. A
/// bounded source that has read everything waits for the final barrier before it ends,
/// so that the last rows are committed too.
async fn run_source(
    mut reader: Box<dyn SourceReader>,
    idle: bool,
    mut commands: Option<mpsc::Receiver<SourceCommand>>,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    link: Option<TaskLink>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut ended = false;
    let mut pending: Option<SourceCommand> = None;
    // A task without splits reads nothing, ever: its watermark must not hold back event
    // time downstream.
    if idle && !output.send(StreamMessage::Watermark(WATERMARK_END)).await? {
        return Ok(Vec::new());
    }
    loop {
        if pending.is_none()
            && let Some(rx) = commands.as_mut()
        {
            pending = if ended {
                Some(rx.recv().await.ok_or(RilletError::Cancelled)?)
            } else {
                rx.try_recv().ok()
            };
        }
        if let Some(command) = pending.take() {
            let (id, last) = match command {
                SourceCommand::Barrier(id) => (id, false),
                SourceCommand::FinalBarrier(id) => (id, true),
            };
            let state = SourceState {
                positions: reader.positions().into_iter().collect(),
            };
            if let Some(link) = &link {
                link.ack(id, Some(state.to_bytes())).await?;
            }
            let barrier = StreamMessage::Barrier(CheckpointBarrier {
                checkpoint_id: id,
                last,
            });
            if !output.send(barrier).await? {
                return Ok(Vec::new());
            }
            if last {
                output.end().await;
                return Ok(Vec::new());
            }
            continue;
        }
        if ended {
            // No checkpoints: nothing to wait for.
            output.end().await;
            return Ok(Vec::new());
        }
        let next = match commands.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                command = rx.recv() => {
                    pending = Some(command.ok_or(RilletError::Cancelled)?);
                    continue;
                }
                next = reader.next_batch() => next?,
            },
            None => reader.next_batch().await?,
        };
        match next {
            Some(batch) => {
                if batch.num_rows() == 0 {
                    continue;
                }
                metrics.add_output(batch.num_rows(), batch.get_array_memory_size());
                if !output.send(StreamMessage::Batch(batch)).await? {
                    return Ok(Vec::new());
                }
                // Rows sent, positions not yet snapshotted: a crash here replays them.
                fail::fail_point!("source-after-emit", |_| Err(RilletError::Checkpoint(
                    "failpoint source-after-emit".into()
                )));
            }
            None => {
                ended = true;
                // Every window may fire now, before the final checkpoint commits them.
                if !idle && !output.send(StreamMessage::Watermark(WATERMARK_END)).await? {
                    return Ok(Vec::new());
                }
                if let Some(link) = &link {
                    link.source_ended().await?;
                }
            }
        }
    }
}

impl JobHandle {
    /// Ask every task to stop. Returns at once; [`wait`](Self::wait) then reports
    /// [`RilletError::Cancelled`].
    pub fn cancel(&self) {
        ending(self.run.as_deref());
        let _ = self.cancel.send(true);
    }

    /// A handle that can cancel the job from elsewhere (another thread, a signal handler)
    /// while this one is busy waiting.
    pub fn canceller(&self) -> JobCanceller {
        JobCanceller(self.cancel.clone(), self.run.clone())
    }

    /// Wait for the job to end and return its figures, or its first error.
    pub async fn wait(&mut self) -> Result<JobStats> {
        let done = self
            .done
            .as_mut()
            .ok_or_else(|| RilletError::internal("job already waited for"))?;
        let result = done
            .await
            .unwrap_or_else(|_| Err(RilletError::internal("job driver vanished")));
        self.done = None;
        result
    }

    /// Figures about the job's checkpoints; `None` for a job without checkpoints.
    pub fn checkpoint_stats(&self) -> Option<CheckpointStats> {
        self.checkpoints.as_ref().map(|s| s.lock().clone())
    }

    /// Stop a checkpointed job with a savepoint: the sources stop reading, a final
    /// snapshot is taken as a savepoint and the sinks commit it, then the job ends (its
    /// [`wait`](Self::wait) returns normally). Returns the savepoint's id once written.
    pub async fn stop_with_savepoint(&self) -> Result<u64> {
        self.stop_request().await
    }

    /// [`stop_with_savepoint`](Self::stop_with_savepoint) as a future that does not borrow
    /// the handle (to await it while another thread waits for the job).
    pub fn stop_request(&self) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        ending(self.run.as_deref());
        let stop = self.stop.clone();
        let stats = self.checkpoints.clone();
        // Another stop (`rillet stop`, say) may have taken the savepoint first: this one
        // then answers with it.
        let taken = move || stats.as_ref().and_then(|s| s.lock().savepoint);
        async move {
            let stop = stop.ok_or_else(|| {
                RilletError::invalid_argument(
                    "only a job with checkpoints can stop with a savepoint",
                )
            })?;
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).await.is_err() {
                return taken()
                    .ok_or_else(|| RilletError::invalid_argument("the job has already ended"));
            }
            match rx.await {
                Ok(answer) => answer,
                Err(_) => taken().ok_or_else(|| {
                    RilletError::invalid_argument("the job ended before its savepoint")
                }),
            }
        }
    }

    /// Live figures of the running (or finished) job.
    pub fn stats(&self) -> JobStats {
        JobStats {
            operators: self.metrics.iter().map(|m| m.snapshot()).collect(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            ..Default::default()
        }
    }
}
