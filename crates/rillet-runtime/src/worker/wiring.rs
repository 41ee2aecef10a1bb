//! The channels of a job: how large each is, and which task sends to which.

use std::sync::Arc;

use rillet_common::{EngineConfig, Result};

use crate::channel::{ChannelReceiver, ChannelSender, byte_channel};
use crate::graph::{DataflowGraph, EdgeKind, VertexId, VertexOperator};
use crate::metrics::OperatorMetrics;
use crate::spill::SpillStore;
use crate::task::OutputRouter;

/// Smallest and largest share of the memory budget one channel gets.
const MIN_CHANNEL_BYTES: usize = 256 << 10;
const MAX_CHANNEL_BYTES: usize = 64 << 20;
/// The largest channel of a checkpointed job. An aligned barrier waits behind everything
/// queued before it, so under backpressure a checkpoint takes as long as draining the
/// channels on its path: 64 MiB of small rows behind a slow model is minutes. Flink keeps
/// a few 32 KiB buffers per channel for the same reason.
const MAX_CHECKPOINTED_CHANNEL_BYTES: usize = 1 << 20;

/// The bytes each channel of `graph` may hold: half the memory budget shared by all its
/// channels (the other half is for data held inside calls, see [`crate::memory`]).
pub(super) fn channel_capacity(
    config: &EngineConfig,
    graph: &DataflowGraph,
    checkpointed: bool,
) -> usize {
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
    let max_channel = if checkpointed {
        MAX_CHECKPOINTED_CHANNEL_BYTES
    } else {
        MAX_CHANNEL_BYTES
    };
    (config.memory_budget_bytes / 2 / channel_count).clamp(MIN_CHANNEL_BYTES, max_channel)
}

/// The job's spill store, when the config gives it room: under `RILLET_SPILL_DIR`, else
/// the system's temporary directory.
pub(super) fn spill_store(config: &EngineConfig) -> Result<Option<Arc<SpillStore>>> {
    match config.spill_bytes {
        0 => Ok(None),
        bytes => {
            let parent = std::env::var_os("RILLET_SPILL_DIR")
                .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
            Ok(Some(Arc::new(SpillStore::new(&parent, bytes)?)))
        }
    }
}

/// Every task's channel ends.
pub(super) struct Wiring {
    /// `inputs[v][p]`: the receivers feeding task `p` of vertex `v`, with their upstream
    /// vertex.
    pub inputs: Vec<Vec<Vec<(VertexId, ChannelReceiver)>>>,
    /// `outputs[v][p]`: where task `p` of vertex `v` sends.
    pub outputs: Vec<Vec<Option<OutputRouter>>>,
    /// What fragments read through exchange leaves: upstream vertex, its task, the
    /// receiver, and the fragment's metrics.
    pub fragment_inputs: Vec<(VertexId, usize, ChannelReceiver, Arc<OperatorMetrics>)>,
}

impl Wiring {
    /// The channels of every edge of `graph`, each of `capacity` bytes, spilling to
    /// `spill` when the job has a store.
    pub fn build(
        graph: &DataflowGraph,
        capacity: usize,
        metrics: &[Arc<OperatorMetrics>],
        spill: Option<&Arc<SpillStore>>,
    ) -> Self {
        let channel = |s: usize, t: usize| -> (ChannelSender, ChannelReceiver) {
            let (tx, rx) = byte_channel(
                capacity,
                1,
                Some(metrics[s].clone()),
                Some(metrics[t].clone()),
            );
            match spill {
                Some(store) => (tx.with_spill(store.clone()), rx),
                None => (tx, rx),
            }
        };
        let mut wiring = Self {
            inputs: graph
                .vertices
                .iter()
                .map(|v| (0..v.parallelism).map(|_| Vec::new()).collect())
                .collect(),
            outputs: graph
                .vertices
                .iter()
                .map(|v| (0..v.parallelism).map(|_| None).collect())
                .collect(),
            fragment_inputs: Vec::new(),
        };
        for edge in &graph.edges {
            let (s, t) = (edge.source.0, edge.target.0);
            let down = graph.vertices[t].parallelism;
            if matches!(graph.vertices[t].operator, VertexOperator::Fragment(_)) {
                // A fragment reads its input through exchange leaves, whose partitions are
                // the upstream tasks (one fragment task may run several of them, e.g. under
                // a final aggregate): one channel per upstream task, found by the leaf.
                for (p, slot) in wiring.outputs[s].iter_mut().enumerate() {
                    let (tx, rx) = channel(s, t);
                    wiring
                        .fragment_inputs
                        .push((edge.source, p, rx, metrics[t].clone()));
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
                        let (tx, rx) = channel(s, t);
                        wiring.inputs[t][p].push((edge.source, rx));
                        wiring.outputs[s][p] = Some(OutputRouter {
                            kind: edge.kind.clone(),
                            senders: vec![tx],
                            next: 0,
                        });
                    }
                }
                EdgeKind::Rebalance | EdgeKind::Hash(_) => {
                    // One channel per pair of tasks, so that a downstream task can hold
                    // one upstream task back while it aligns a barrier (`InputGate`).
                    for (sp, slot) in wiring.outputs[s].iter_mut().enumerate() {
                        let mut senders = Vec::with_capacity(down);
                        for task_inputs in wiring.inputs[t].iter_mut() {
                            let (tx, rx) = channel(s, t);
                            task_inputs.push((edge.source, rx));
                            senders.push(tx);
                        }
                        *slot = Some(OutputRouter {
                            kind: edge.kind.clone(),
                            senders,
                            next: sp % down,
                        });
                    }
                }
            }
        }
        wiring
    }
}
