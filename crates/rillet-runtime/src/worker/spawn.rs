//! Spawning a job's tasks, vertex by vertex: each task gets its channel ends, its pool,
//! what it restores from, and its checkpoint link.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::execution::TaskContext;
use rillet_common::{EngineConfig, Result, RilletError};

use crate::blocking::BlockingPool;
use crate::channel::ChannelReceiver;
use crate::checkpointing::TaskLink;
use crate::graph::{DataflowGraph, Vertex, VertexId, VertexOperator};
use crate::keygroups::TaskPlacement;
use crate::memory::CallBudget;
use crate::metrics::OperatorMetrics;
use crate::runtime::global_runtime;
use crate::sink::SinkContext;
use crate::stream::{SourceState, SplitAssignment, StreamSource, assign_splits};
use crate::task::{
    OutputRouter, gate, missing_output, run_fragment, run_function, run_sink, run_source,
    run_stream,
};

use super::checkpointed::CheckpointRun;
use super::driver::Tasks;
use super::restore::RestoredVertex;

/// What every task of a job is spawned with.
pub(super) struct TaskSpawner<'a> {
    pub graph: &'a DataflowGraph,
    pub config: &'a EngineConfig,
    pub task_ctx: Arc<TaskContext>,
    pub metrics: &'a [Arc<OperatorMetrics>],
    pub call_budget: CallBudget,
    pub sink_context: &'a SinkContext,
    pub checkpoint: Option<&'a mut CheckpointRun>,
    /// Each vertex's parallelism when the restored snapshot was taken.
    pub restored_parallelism: &'a [usize],
    pub tasks: Tasks,
    /// The blocking pools of function and sink vertices.
    pub pools: Vec<BlockingPool>,
}

/// A task's input channels, with the vertex feeding each.
type TaskInputs = Vec<(VertexId, ChannelReceiver)>;

impl TaskSpawner<'_> {
    /// Spawn the tasks of `vertex`, task `p` with `inputs[p]` and `outputs[p]`.
    pub fn spawn_vertex(
        &mut self,
        vertex: &Vertex,
        inputs: Vec<TaskInputs>,
        outputs: Vec<Option<OutputRouter>>,
    ) -> Result<()> {
        let v = vertex.id.0;
        let pool = match &vertex.operator {
            VertexOperator::Function(f) => Some(BlockingPool::new(
                f.concurrency().unwrap_or(self.config.blocking_threads),
            )),
            // One writer thread per sink task.
            VertexOperator::Sink(_) => Some(BlockingPool::new(vertex.parallelism)),
            _ => None,
        };
        self.pools.extend(pool.clone());
        // What the vertex's tasks snapshotted, read once for all of its tasks.
        let restored = RestoredVertex::of(
            self.checkpoint.as_deref().map(|c| &c.settings),
            v,
            self.restored_parallelism.get(v) == Some(&vertex.parallelism),
        );
        let mut source_splits = match &vertex.operator {
            VertexOperator::Source(source) => deal_splits(source.as_ref(), vertex, &restored)?,
            _ => Vec::new(),
        };
        let runtime = global_runtime();
        for (p, (task_inputs, router)) in inputs.into_iter().zip(outputs).enumerate() {
            let m = self.metrics[v].clone();
            let link = self.link(v, p);
            match &vertex.operator {
                VertexOperator::Fragment(plan) => {
                    debug_assert!(
                        task_inputs.is_empty(),
                        "fragment inputs go through the registry"
                    );
                    let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                    let fut = run_fragment(plan.clone(), p, self.task_ctx.clone(), router, m);
                    self.tasks.spawn_on(fut, runtime.handle());
                }
                VertexOperator::Function(function) => {
                    let input = gate(task_inputs, &m, &vertex.name)?.1;
                    let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                    let restored = restored.for_function(p, &vertex.name)?.to_vec();
                    let fut = run_function(
                        function.clone(),
                        input,
                        router,
                        m,
                        pool.clone().expect("function vertices have a pool"),
                        self.call_budget.clone(),
                        link,
                        restored,
                    );
                    self.tasks.spawn_on(fut, runtime.handle());
                }
                VertexOperator::Sink(sink) => {
                    let (upstream, input) = gate(task_inputs, &m, &vertex.name)?;
                    let schema = self.graph.output_schema(upstream);
                    let blocking = pool.clone().expect("sink vertices have a pool");
                    let writer = sink.open(p, schema, &blocking, self.sink_context)?;
                    self.tasks
                        .spawn_on(run_sink(writer, input, m, link), runtime.handle());
                }
                VertexOperator::Stream(operator) => {
                    let input = gate(task_inputs, &m, &vertex.name)?.1;
                    let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                    let placement = TaskPlacement::new(p, vertex.parallelism);
                    let task = operator.open(placement, restored.for_stream(p))?;
                    let fut = run_stream(task, input, router, m, link);
                    self.tasks.spawn_on(fut, runtime.handle());
                }
                VertexOperator::Source(source) => {
                    let router = router.ok_or_else(|| missing_output(&vertex.name))?;
                    let assigned = std::mem::take(&mut source_splits[p]);
                    let idle = assigned.is_empty();
                    let reader = source.open(assigned)?;
                    let commands = self
                        .checkpoint
                        .as_deref_mut()
                        .and_then(|c| c.source_commands(v, p));
                    let fut = run_source(reader, idle, commands, router, m, link);
                    self.tasks.spawn_on(fut, runtime.handle());
                }
            }
        }
        Ok(())
    }

    /// Task `p` of vertex `v`'s checkpoint link, in a checkpointed job.
    fn link(&self, v: usize, p: usize) -> Option<TaskLink> {
        self.checkpoint.as_deref().map(|c| c.link(v, p))
    }
}

/// A source's splits, enumerated and dealt to its tasks once, each from its restored
/// position (positions are kept per split, whichever task had it).
fn deal_splits(
    source: &dyn StreamSource,
    vertex: &Vertex,
    restored: &RestoredVertex,
) -> Result<Vec<Vec<SplitAssignment>>> {
    let mut positions = BTreeMap::new();
    for state in &restored.states {
        positions.extend(SourceState::from_bytes(state)?.positions);
    }
    let splits = source.splits()?;
    if let Some(gone) = positions.keys().find(|s| !splits.contains(s)) {
        // Its position would be dropped, and what it covers read again (or not at all)
        // under another split.
        return Err(RilletError::Checkpoint(format!(
            "the snapshot holds a position for split {gone:?} of '{}', which this source no \
             longer has (its splits are {splits:?}): restore with the source's earlier \
             settings, or start under a new job id",
            vertex.name
        )));
    }
    Ok(assign_splits(&splits, vertex.parallelism, &positions))
}
