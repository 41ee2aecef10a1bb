//! What a checkpointed job runs beside its tasks: the restored snapshot gone back to and its
//! sinks recovered before any task starts, the checkpoint loop the tasks report to, and the
//! commands it sends the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;
use rillet_checkpoint::coordinator::TaskId;
use rillet_common::{Result, RilletError};
use tokio::sync::mpsc;

use crate::checkpointing::{
    CheckpointLoop, CheckpointStats, Checkpointing, SourceCommand, StopRequest, TaskEvent, TaskLink,
};
use crate::graph::{DataflowGraph, VertexOperator};
use crate::runtime::{block_on, global_runtime};
use crate::sink::{Sink, SinkContext};

use super::driver::Tasks;

/// A checkpointed job's part beside its tasks: one value, present exactly when the job
/// checkpoints.
pub(super) struct CheckpointRun {
    pub settings: Checkpointing,
    pub stats: Arc<Mutex<CheckpointStats>>,
    /// Stop requests (a stop with a savepoint) for the loop.
    pub stop: mpsc::Sender<StopRequest>,
    /// Where tasks acknowledge checkpoints: each task's link holds a sender. Dropped
    /// when the loop starts, so that only the tasks' links keep the channel open.
    events: Option<mpsc::Sender<TaskEvent>>,
    /// The receiver of each source task's commands, until the task takes it.
    source_commands: BTreeMap<TaskId, mpsc::Receiver<SourceCommand>>,
    /// The loop, until it starts.
    coordinator: Option<CheckpointLoop>,
}

impl CheckpointRun {
    /// Go back to the snapshot `settings` restores (finishing its commits and dropping what
    /// later, never completed checkpoints staged), recover `graph`'s sinks from it, and set
    /// up the checkpoint loop of a job of `shape`. Nothing of the job runs yet.
    pub fn start(
        settings: Checkpointing,
        graph: &DataflowGraph,
        shape: String,
        sink_context: &SinkContext,
    ) -> Result<Self> {
        let tasks_of = |v: &crate::graph::Vertex| {
            let id = v.id.0 as u32;
            (0..v.parallelism).map(move |p| TaskId::new(id, p as u32))
        };
        let all_tasks: BTreeSet<TaskId> = graph.vertices.iter().flat_map(tasks_of).collect();
        let sources: Vec<TaskId> = graph
            .vertices
            .iter()
            .filter(|v| matches!(v.operator, VertexOperator::Source(_)))
            .flat_map(tasks_of)
            .collect();
        if sources.is_empty() {
            return Err(RilletError::invalid_argument(
                "a checkpointed job needs a streaming source",
            ));
        }
        let sinks: Vec<(usize, Arc<dyn Sink>)> = graph
            .vertices
            .iter()
            .filter_map(|v| match &v.operator {
                VertexOperator::Sink(sink) => Some((v.id.0, sink.clone())),
                _ => None,
            })
            .collect();
        rewind(&settings)?;
        recover_sinks(&settings, &sinks, sink_context)?;
        let stats = Arc::new(Mutex::new(CheckpointStats::default()));
        let (coordinator, events, source_commands, stop) = CheckpointLoop::new(
            settings.clone(),
            shape,
            all_tasks,
            &sources,
            sinks,
            sink_context.clone(),
            stats.clone(),
        );
        Ok(Self {
            settings,
            stats,
            stop,
            events: Some(events),
            source_commands,
            coordinator: Some(coordinator),
        })
    }

    /// The link through which task `p` of vertex `v` acknowledges checkpoints.
    pub fn link(&self, v: usize, p: usize) -> TaskLink {
        let events = self
            .events
            .as_ref()
            .expect("links are made before the loop starts");
        CheckpointLoop::link(TaskId::new(v as u32, p as u32), events)
    }

    /// The commands for source task `p` of vertex `v` (once).
    pub fn source_commands(&mut self, v: usize, p: usize) -> Option<mpsc::Receiver<SourceCommand>> {
        self.source_commands
            .remove(&TaskId::new(v as u32, p as u32))
    }

    /// Start the checkpoint loop among the job's `tasks`, once every task holds its link.
    /// Returns the loop's commit gate, held by a commit under way.
    pub fn launch(&mut self, tasks: &mut Tasks) -> Arc<tokio::sync::Mutex<()>> {
        self.events = None;
        let coordinator = self.coordinator.take().expect("the loop starts once");
        let gate = coordinator.commit_gate();
        tasks.spawn_on(
            async move { coordinator.run().await.map(|_| Vec::new()) },
            global_runtime().handle(),
        );
        gate
    }
}

/// Before any task starts: go back to the restored snapshot, finish its commits and drop
/// what later, never completed checkpoints staged. A later run may have claimed the job
/// while this one restored (a slow store): it must not undo that run's commits.
fn rewind(settings: &Checkpointing) -> Result<()> {
    block_on(settings.claim().check())?;
    let rewound = block_on(settings.rewind())?;
    if !rewound.deleted.is_empty() || !rewound.retired.is_empty() {
        tracing::warn!(
            "deleted checkpoints {:?} and retired savepoints {:?}, newer than the snapshot \
             restored",
            rewound.deleted,
            rewound.retired
        );
    }
    Ok(())
}

/// Each sink back to the restored snapshot, from every old task's state, whatever the
/// parallelism now.
fn recover_sinks(
    settings: &Checkpointing,
    sinks: &[(usize, Arc<dyn Sink>)],
    sink_context: &SinkContext,
) -> Result<()> {
    let restored_id = settings.recover_to();
    for (vertex, sink) in sinks {
        let states: Vec<Vec<u8>> = settings
            .restored_states(*vertex)
            .into_iter()
            .map(|(_, state)| state)
            .collect();
        block_on(settings.claim().check())?;
        sink.recover(sink_context, restored_id, &states)?;
    }
    Ok(())
}
