//! The checkpoint coordinator's bookkeeping: which checkpoints are in flight, which tasks
//! have acknowledged each, and when one may be committed.
//!
//! Pure state: no I/O, no threads and no clock of its own (callers pass `now`). The
//! runtime drives it: it triggers a checkpoint and injects the barriers, reports each
//! task's acknowledgement with the artifacts the task wrote, writes the manifest once all
//! tasks have acknowledged ([`Acknowledged::All`]), then marks the checkpoint complete
//! ([`CheckpointCoordinator::complete`]) and tells the sinks to commit.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use rillet_checkpoint::coordinator::{Acknowledged, CheckpointCoordinator, TaskId};
//!
//! let tasks = [TaskId::new(0, 0), TaskId::new(1, 0)];
//! let mut coordinator = CheckpointCoordinator::new(tasks, 1, 1, Duration::from_secs(60));
//! let now = Instant::now();
//! let id = coordinator.trigger(now).unwrap();
//! assert!(matches!(coordinator.acknowledge(id, tasks[0], vec!["source-0".into()]),
//!                  Acknowledged::Waiting { remaining: 1 }));
//! assert!(matches!(coordinator.acknowledge(id, tasks[1], vec![]), Acknowledged::All(_)));
//! // ... the manifest is written here ...
//! let done = coordinator.complete(id, now).unwrap();
//! assert_eq!(coordinator.latest_completed(), Some(id));
//! assert_eq!(done.artifacts[&tasks[0]], vec!["source-0".to_string()]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One task of the job: a vertex (operator chain) and one of its parallel subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The vertex of the physical graph.
    pub vertex: u32,
    /// Which of the vertex's parallel subtasks.
    pub subtask: u32,
}

impl TaskId {
    /// Task `subtask` of `vertex`.
    pub fn new(vertex: u32, subtask: u32) -> Self {
        Self { vertex, subtask }
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.vertex, self.subtask)
    }
}

/// Every task has acknowledged a checkpoint: what the caller writes into its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllAcknowledged {
    /// The checkpoint.
    pub id: u64,
    /// The artifacts each task wrote for it.
    pub artifacts: BTreeMap<TaskId, Vec<String>>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledged {
    /// Recorded; this many tasks have still to acknowledge.
    Waiting {
        /// Tasks still to acknowledge.
        remaining: usize,
    },
    /// The last one: the checkpoint may now be written and then completed.
    All(AllAcknowledged),
    /// Not recorded, for the reason given (a checkpoint already aborted or completed, an
    /// unknown task, a second acknowledgement from one task).
    Ignored(String),
}

/// A checkpoint given up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aborted {
    /// The checkpoint.
    pub id: u64,
    /// Why: a task declined, the timeout passed, a task failed, a newer one completed.
    pub reason: String,
}

/// A checkpoint made complete by [`CheckpointCoordinator::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The checkpoint.
    pub id: u64,
    /// The artifacts each task wrote for it.
    pub artifacts: BTreeMap<TaskId, Vec<String>>,
    /// From trigger to completion.
    pub duration: Duration,
    /// Older checkpoints still in flight, aborted because this one supersedes them.
    pub superseded: Vec<Aborted>,
}

#[derive(Debug, Clone)]
struct InFlight {
    started: Instant,
    acknowledged: BTreeMap<TaskId, Vec<String>>,
}

/// The bookkeeping of a job's checkpoints (see the module docs).
#[derive(Debug, Clone)]
pub struct CheckpointCoordinator {
    tasks: BTreeSet<TaskId>,
    next_id: u64,
    max_in_flight: usize,
    timeout: Duration,
    in_flight: BTreeMap<u64, InFlight>,
    latest_completed: Option<u64>,
}

impl CheckpointCoordinator {
    /// A coordinator for `tasks` whose first checkpoint is `first_id` (above every id in
    /// the store: `CheckpointStore::next_id`), with at most `max_in_flight` checkpoints in
    /// flight (at least 1) and `timeout` for each.
    pub fn new(
        tasks: impl IntoIterator<Item = TaskId>,
        first_id: u64,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            tasks: tasks.into_iter().collect(),
            next_id: first_id,
            max_in_flight: max_in_flight.max(1),
            timeout,
            in_flight: BTreeMap::new(),
            latest_completed: None,
        }
    }

    /// Start the next checkpoint, or say why not now (too many in flight).
    pub fn trigger(&mut self, now: Instant) -> Result<u64, String> {
        if self.in_flight.len() >= self.max_in_flight {
            return Err(format!(
                "{} checkpoint(s) in flight ({:?}), the most allowed",
                self.in_flight.len(),
                self.in_flight.keys().collect::<Vec<_>>()
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(
            id,
            InFlight {
                started: now,
                acknowledged: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// `task` has snapshotted its state for checkpoint `id` into `artifacts`.
    pub fn acknowledge(&mut self, id: u64, task: TaskId, artifacts: Vec<String>) -> Acknowledged {
        if !self.tasks.contains(&task) {
            return Acknowledged::Ignored(format!("task {task} is not part of this job"));
        }
        let Some(checkpoint) = self.in_flight.get_mut(&id) else {
            return Acknowledged::Ignored(format!("checkpoint {id} is not in flight"));
        };
        if checkpoint.acknowledged.contains_key(&task) {
            return Acknowledged::Ignored(format!(
                "task {task} already acknowledged checkpoint {id}"
            ));
        }
        checkpoint.acknowledged.insert(task, artifacts);
        let remaining = self.tasks.len() - checkpoint.acknowledged.len();
        if remaining > 0 {
            return Acknowledged::Waiting { remaining };
        }
        Acknowledged::All(AllAcknowledged {
            id,
            artifacts: checkpoint.acknowledged.clone(),
        })
    }

    /// Checkpoint `id`, acknowledged by every task and written, is complete: it becomes
    /// the one to restore, and older checkpoints still in flight are aborted. Refused for
    /// a checkpoint not in flight or not acknowledged by every task.
    pub fn complete(&mut self, id: u64, now: Instant) -> Result<Completed, String> {
        match self.in_flight.get(&id) {
            None => return Err(format!("checkpoint {id} is not in flight")),
            Some(c) if c.acknowledged.len() < self.tasks.len() => {
                return Err(format!(
                    "checkpoint {id} has {} of {} acknowledgements",
                    c.acknowledged.len(),
                    self.tasks.len()
                ));
            }
            Some(_) => {}
        }
        let checkpoint = self.in_flight.remove(&id).expect("checked above");
        let older: Vec<u64> = self.in_flight.range(..id).map(|(&k, _)| k).collect();
        let superseded = older
            .into_iter()
            .filter_map(|k| self.abort(k, &format!("checkpoint {id} completed first")))
            .collect();
        self.latest_completed = Some(id);
        Ok(Completed {
            id,
            artifacts: checkpoint.acknowledged,
            duration: now.saturating_duration_since(checkpoint.started),
            superseded,
        })
    }

    /// Give up checkpoint `id` (a task declined it, its manifest could not be written);
    /// `None` if it was not in flight.
    pub fn abort(&mut self, id: u64, reason: &str) -> Option<Aborted> {
        self.in_flight.remove(&id).map(|_| Aborted {
            id,
            reason: reason.to_string(),
        })
    }

    /// Abort every checkpoint in flight for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Aborted> {
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.started) > self.timeout)
            .map(|(&id, _)| id)
            .collect();
        let timeout = self.timeout;
        late.into_iter()
            .filter_map(|id| self.abort(id, &format!("not acknowledged within {timeout:?}")))
            .collect()
    }

    /// `task` failed: every checkpoint in flight is aborted (the job recovers from the
    /// latest completed one).
    pub fn task_failed(&mut self, task: TaskId) -> Vec<Aborted> {
        let ids: Vec<u64> = self.in_flight.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.abort(id, &format!("task {task} failed")))
            .collect()
    }

    /// The checkpoints in flight, oldest first.
    pub fn in_flight(&self) -> Vec<u64> {
        self.in_flight.keys().copied().collect()
    }

    /// The newest completed checkpoint.
    pub fn latest_completed(&self) -> Option<u64> {
        self.latest_completed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Event {
        Trigger,
        /// Acknowledge the in-flight checkpoint at this index (modulo), from this task.
        Ack(usize, u32),
        /// Acknowledge an id that was never triggered.
        AckUnknown(u32),
        Complete(usize),
        Abort(usize),
        Advance(u64),
        Fail(u32),
    }

    fn event(tasks: u32) -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::Trigger),
            8 => (0..4usize, 0..tasks + 1).prop_map(|(i, t)| Event::Ack(i, t)),
            1 => (0..tasks).prop_map(Event::AckUnknown),
            3 => (0..4usize).prop_map(Event::Complete),
            1 => (0..4usize).prop_map(Event::Abort),
            2 => (0..40u64).prop_map(Event::Advance),
            1 => (0..tasks).prop_map(Event::Fail),
        ]
    }

    proptest! {
        /// Whatever happens, in any order: ids only grow; a checkpoint is reported fully
        /// acknowledged only once every task acknowledged it once; only such a checkpoint
        /// completes, at most once and never after it was aborted; completed ids only
        /// grow; nothing older than the latest completed stays in flight; and the number
        /// in flight never passes the limit.
        #[test]
        fn the_coordinator_keeps_its_promises_under_any_events(
            tasks in 1u32..4,
            limit in 1usize..3,
            events in proptest::collection::vec(event(3), 1..120),
        ) {
            let all: Vec<TaskId> = (0..tasks).map(|t| TaskId::new(t, 0)).collect();
            let start = Instant::now();
            let mut now = start;
            let mut c = CheckpointCoordinator::new(all.clone(), 10, limit, Duration::from_secs(20));
            let mut last_triggered = 9;
            let mut acked: BTreeMap<u64, BTreeSet<TaskId>> = BTreeMap::new();
            let mut fully_acked: BTreeSet<u64> = BTreeSet::new();
            let mut aborted: BTreeSet<u64> = BTreeSet::new();
            let mut completed: Vec<u64> = Vec::new();
            for event in events {
                match event {
                    Event::Trigger => {
                        if let Ok(id) = c.trigger(now) {
                            prop_assert!(id > last_triggered);
                            last_triggered = id;
                        }
                    }
                    Event::Ack(i, t) => {
                        let flight = c.in_flight();
                        if flight.is_empty() { continue; }
                        let id = flight[i % flight.len()];
                        let task = TaskId::new(t, 0);
                        match c.acknowledge(id, task, vec![format!("{task}-{id}")]) {
                            Acknowledged::Ignored(_) => {
                                prop_assert!(t >= tasks || acked.get(&id).is_some_and(|s| s.contains(&task)));
                            }
                            Acknowledged::Waiting { remaining } => {
                                prop_assert!(acked.entry(id).or_default().insert(task));
                                prop_assert_eq!(remaining, all.len() - acked[&id].len());
                            }
                            Acknowledged::All(a) => {
                                prop_assert!(acked.entry(id).or_default().insert(task));
                                prop_assert_eq!(acked[&id].len(), all.len());
                                prop_assert_eq!(a.artifacts.len(), all.len());
                                prop_assert!(fully_acked.insert(id));
                            }
                        }
                    }
                    Event::AckUnknown(t) => {
                        let outcome = c.acknowledge(last_triggered + 1000, TaskId::new(t, 0), vec![]);
                        prop_assert!(matches!(outcome, Acknowledged::Ignored(_)));
                    }
                    Event::Complete(i) => {
                        let flight = c.in_flight();
                        if flight.is_empty() { continue; }
                        let id = flight[i % flight.len()];
                        match c.complete(id, now) {
                            Ok(done) => {
                                prop_assert!(fully_acked.contains(&id));
                                prop_assert!(!aborted.contains(&id));
                                prop_assert!(completed.last().is_none_or(|&last| id > last));
                                completed.push(id);
                                for a in done.superseded {
                                    prop_assert!(a.id < id);
                                    aborted.insert(a.id);
                                }
                            }
                            Err(_) => prop_assert!(!fully_acked.contains(&id)),
                        }
                    }
                    Event::Abort(i) => {
                        let flight = c.in_flight();
                        if flight.is_empty() { continue; }
                        let id = flight[i % flight.len()];
                        prop_assert!(c.abort(id, "test").is_some());
                        aborted.insert(id);
                    }
                    Event::Advance(seconds) => {
                        now += Duration::from_secs(seconds);
                        for a in c.expire(now) {
                            aborted.insert(a.id);
                        }
                    }
                    Event::Fail(t) => {
                        for a in c.task_failed(TaskId::new(t, 0)) {
                            aborted.insert(a.id);
                        }
                        prop_assert!(c.in_flight().is_empty());
                    }
                }
                let flight = c.in_flight();
                prop_assert!(flight.len() <= limit);
                prop_assert!(flight.iter().all(|id| !aborted.contains(id) && !completed.contains(id)));
                if let Some(&latest) = completed.last() {
                    prop_assert_eq!(c.latest_completed(), Some(latest));
                    prop_assert!(flight.iter().all(|&id| id > latest));
                }
            }
            prop_assert!(completed.iter().all(|id| !aborted.contains(id)));
        }
    }

    #[test]
    fn a_late_checkpoint_times_out_and_the_next_one_can_start() {
        let task = TaskId::new(0, 0);
        let mut c = CheckpointCoordinator::new([task], 1, 1, Duration::from_secs(5));
        let t0 = Instant::now();
        let first = c.trigger(t0).unwrap();
        let refused = c.trigger(t0).unwrap_err();
        assert!(refused.contains("in flight"), "{refused}");
        assert!(c.expire(t0 + Duration::from_secs(5)).is_empty());
        let expired = c.expire(t0 + Duration::from_secs(6));
        assert_eq!(expired.len(), 1);
        assert!(expired[0].reason.contains("within 5s"), "{expired:?}");
        // A late acknowledgement is ignored, and the next checkpoint takes a new id.
        assert!(matches!(
            c.acknowledge(first, task, vec![]),
            Acknowledged::Ignored(_)
        ));
        let second = c.trigger(t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(second, first + 1);
        assert!(matches!(
            c.acknowledge(second, task, vec![]),
            Acknowledged::All(_)
        ));
        let done = c.complete(second, t0 + Duration::from_secs(8)).unwrap();
        assert_eq!(done.duration, Duration::from_secs(2));
    }
}
