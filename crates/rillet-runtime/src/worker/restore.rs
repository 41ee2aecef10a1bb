//! What the tasks of a vertex start from in a restored snapshot.

use rillet_common::{Result, RilletError};

use crate::checkpointing::Checkpointing;

/// What the tasks of one vertex snapshotted in the restored checkpoint, and which of it
/// each of its tasks starts from.
pub(super) struct RestoredVertex {
    /// The old task of each state, in task order.
    tasks: Vec<usize>,
    pub(super) states: Vec<Vec<u8>>,
    /// The vertex runs at the parallelism of the snapshot.
    unchanged: bool,
    /// The snapshot's keys were routed by key group.
    key_grouped: bool,
}

impl RestoredVertex {
    /// The states of vertex `v` (none without a restored checkpoint); `unchanged`: the
    /// vertex runs at the snapshot's parallelism.
    pub(super) fn of(checkpointing: Option<&Checkpointing>, v: usize, unchanged: bool) -> Self {
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
    pub(super) fn for_stream(&self, p: usize) -> &[Vec<u8>] {
        if self.unchanged && self.key_grouped {
            self.own(p)
        } else {
            &self.states
        }
    }

    /// What task `p` of function vertex `name` starts from: its own calls in flight. At
    /// another parallelism there must be none: their rows would race the newer rows of
    /// their splits, now dealt to other tasks, and come out of order.
    pub(super) fn for_function(&self, p: usize, name: &str) -> Result<&[Vec<u8>]> {
        if !self.unchanged && !self.states.is_empty() {
            return Err(RilletError::Checkpoint(format!(
                "the snapshot holds calls in flight of '{name}' at another parallelism: stop \
                 the job with a savepoint (which finishes them) to change its parallelism"
            )));
        }
        Ok(self.own(p))
    }
}
