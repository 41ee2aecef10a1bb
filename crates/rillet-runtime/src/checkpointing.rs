//! Checkpoints of a running job: the settings a job starts with, the loop that triggers
//! checkpoints and collects the tasks' snapshots into the [`CheckpointStore`], and the
//! handle each task acknowledges through.
//!
//! The protocol, aligned barriers:
//! 1. Every `interval` the loop starts checkpoint `n` ([`CheckpointCoordinator::trigger`])
//!    and tells every source task.
//! 2. A source task records its splits' positions, acknowledges `n` with them, and sends
//!    the barrier of `n` down every output channel, in order with its batches.
//! 3. A task with several input channels aligns the barrier ([`crate::channel::InputGate`]),
//!    snapshots its state, acknowledges, and forwards the barrier. A function vertex does
//!    not wait for the calls it started (a model may take seconds): the input rows of its
//!    calls in flight, and of those not yet started, are its state; their results follow
//!    the barrier, and a restore calls them again. A sink task closes the files it wrote
//!    since the last barrier; their names are its state.
//! 4. When every task has acknowledged, the loop writes the manifest (the commit point of
//!    the checkpoint), then tells the sinks to commit what the checkpoint covers
//!    ([`crate::Sink::commit`]), then prunes old checkpoints.
//!
//! When every source has ended, the loop takes a final checkpoint, after which the sources
//! send their end: a finished job has committed everything. `stop` takes the same final
//! snapshot as a savepoint while the sources are still running. The final snapshot's
//! barrier is marked `last`: no row may follow it, so a function vertex finishes its calls
//! before passing it on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rillet_checkpoint::coordinator::{Acknowledged, CheckpointCoordinator, TaskId};
use rillet_checkpoint::{
    Checkpoint, CheckpointStore, CheckpointWriter, Claim, HEARTBEAT, JobRecord, Kind, RunState,
};
use rillet_common::{Result, RilletError};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::sink::{Sink, SinkContext};

/// How a job checkpoints, and what it restores from.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    store: CheckpointStore,
    interval: Duration,
    retain: usize,
    timeout: Duration,
    restored: Option<Arc<Checkpoint>>,
    first_id: u64,
    /// The store held no snapshot of the job at all: nothing was ever committed under it.
    fresh: bool,
    /// This run's claim on the job, taken before anything was restored.
    claim: Claim,
    /// The store's lineage: what the sinks name their commits with.
    lineage: String,
}

impl Checkpointing {
    /// Checkpoint every `interval` into `store`, restoring from the newest valid snapshot
    /// (checkpoint or savepoint) already there, if any: a job restarted with the same id
    /// resumes by itself. Snapshots skipped on the way (incomplete, corrupt, retired) are
    /// logged. Claims the job first (see [`rillet_checkpoint::identity`]): an error names
    /// the live run that holds it.
    pub async fn resume_latest(store: CheckpointStore, interval: Duration) -> Result<Self> {
        let claim = store.claim().await?;
        let restored = async {
            let Some(found) = store.latest().await? else {
                return Ok(None);
            };
            for (id, reason) in &found.skipped {
                tracing::warn!("job {}: not restoring snapshot {id}: {reason}", store.job());
            }
            Ok(Some(Arc::new(found.checkpoint)))
        }
        .await;
        Self::with_restored(store, interval, restored, claim).await
    }

    /// Checkpoint every `interval` into `store`, restoring from snapshot `id` of `kind`
    /// (a savepoint the user names); an error if it is missing, fails its checks or is
    /// retired. Claims the job first, as [`resume_latest`](Self::resume_latest) does.
    pub async fn resume_from(
        store: CheckpointStore,
        interval: Duration,
        kind: Kind,
        id: u64,
    ) -> Result<Self> {
        let claim = store.claim().await?;
        let restored = store.load(kind, id).await.map(|c| Some(Arc::new(c)));
        Self::with_restored(store, interval, restored, claim).await
    }

    async fn with_restored(
        store: CheckpointStore,
        interval: Duration,
        restored: Result<Option<Arc<Checkpoint>>>,
        claim: Claim,
    ) -> Result<Self> {
        let opened = async {
            let restored = restored?;
            Ok::<_, RilletError>((restored, store.next_id().await?, store.lineage().await?))
        }
        .await;
        let (restored, first_id, lineage) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // The run ends before it began: the job is free again.
                if let Err(record) = claim.fail(&e).await {
                    tracing::warn!("job {}: cannot record its failure: {record}", store.job());
                }
                return Err(e);
            }
        };
        Ok(Self {
            store,
            interval: interval.max(Duration::from_millis(10)),
            retain: 3,
            timeout: Duration::from_secs(600),
            restored,
            first_id,
            // Ids start at 1: the next one is 1 only in a store without snapshots.
            fresh: first_id == 1,
            claim,
            lineage,
        })
    }

    /// Keep the newest `retain` checkpoints (at least 2, so a corrupt newest one has a
    /// predecessor to fall back to). Default 3.
    pub fn with_retain(mut self, retain: usize) -> Self {
        self.retain = retain.max(2);
        self
    }

    /// Abort a checkpoint not acknowledged by every task within `timeout` (default 10
    /// minutes).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The snapshot the job starts from, if any.
    pub fn restored(&self) -> Option<&Checkpoint> {
        self.restored.as_deref()
    }

    /// The store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    pub(crate) fn first_id(&self) -> u64 {
        self.first_id
    }

    /// This run's claim on the job.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The store's lineage (see [`rillet_checkpoint::identity`]).
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// What the sinks recover to: the restored snapshot's id; 0 when snapshots exist but
    /// none could be restored (everything committed under the job is to be written
    /// again); `None` when the job never checkpointed before.
    pub(crate) fn recover_to(&self) -> Option<u64> {
        match &self.restored {
            Some(restored) => Some(restored.manifest.id),
            None if self.fresh => None,
            None => Some(0),
        }
    }

    /// Go back to the restored snapshot (to nothing when none is restored), before any
    /// output is withdrawn: delete the newer checkpoints (skipped as corrupt or unreadable,
    /// or passed over for an older savepoint) and retire the newer savepoints, whose output
    /// the sinks are about to withdraw, so none of them is restored later (see
    /// [`rillet_checkpoint::timeline`]). Returns what it deleted and retired.
    pub(crate) async fn rewind(&self) -> Result<rillet_checkpoint::Rewound> {
        let restored = self.restored.as_ref().map_or(0, |c| c.manifest.id);
        self.store.rewind_to(restored).await
    }

    /// Whether the restored snapshot's keyed operators had their keys routed by key group
    /// (it records their count; earlier snapshots routed by another hash).
    pub(crate) fn restored_by_key_group(&self) -> bool {
        self.restored
            .as_ref()
            .is_some_and(|c| c.manifest.properties.contains_key(MAX_PARALLELISM_PROPERTY))
    }

    /// The states the restored checkpoint holds for the tasks of vertex `vertex`, by the
    /// task that snapshotted them, in task order (tasks without state have none).
    pub(crate) fn restored_states(&self, vertex: usize) -> Vec<(usize, Vec<u8>)> {
        let Some(restored) = &self.restored else {
            return Vec::new();
        };
        restored
            .manifest
            .artifacts
            .iter()
            .filter_map(|a| {
                let (v, task) = parse_artifact_name(&a.name)?;
                let bytes = restored.artifact(&a.name)?;
                (v == vertex).then(|| (task, bytes.to_vec()))
            })
            .collect::<BTreeMap<usize, Vec<u8>>>()
            .into_iter()
            .collect()
    }

    /// Fail if the restored snapshot was taken by a job of another shape: other operators,
    /// or in another order. Parallelism may differ (see [`crate::keygroups`]). Returns each
    /// vertex's parallelism at the snapshot (empty without one).
    pub(crate) fn check_shape(&self, shape: &str) -> Result<Vec<usize>> {
        let Some(restored) = &self.restored else {
            return Ok(Vec::new());
        };
        let recorded = restored.manifest.properties.get(SHAPE_PROPERTY);
        let (theirs, parallelism) = recorded.map(|r| split_shape(r)).unwrap_or_default();
        let (ours, _) = split_shape(shape);
        let max = restored
            .manifest
            .properties
            .get(MAX_PARALLELISM_PROPERTY)
            .map_or(Ok(crate::keygroups::MAX_PARALLELISM), |m| m.parse());
        if recorded.is_some() && theirs == ours && max == Ok(crate::keygroups::MAX_PARALLELISM) {
            return Ok(parallelism);
        }
        if recorded.is_some() && theirs == ours {
            return Err(RilletError::IncompatibleState(format!(
                "snapshot {} of job '{}' lays its keyed state out in {} key groups, and this \
                 build in {}: restore it with the version that took it",
                restored.manifest.id,
                restored.manifest.job,
                restored.manifest.properties[MAX_PARALLELISM_PROPERTY],
                crate::keygroups::MAX_PARALLELISM
            )));
        }
        Err(RilletError::Checkpoint(format!(
            "snapshot {} of job '{}' was taken by a job of another shape ({}); this job is \
             ({shape}). Resume it with the same pipeline, or start under a new job id",
            restored.manifest.id,
            restored.manifest.job,
            recorded.map_or("unrecorded", String::as_str),
        )))
    }
}

/// A shape (`<vertex> x<parallelism>; ...`) as its vertices without their parallelism,
/// and the parallelisms.
fn split_shape(shape: &str) -> (Vec<String>, Vec<usize>) {
    shape
        .split("; ")
        .map(|part| match part.rsplit_once(" x") {
            Some((vertex, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (vertex.to_string(), n.parse().unwrap_or(0))
            }
            _ => (part.to_string(), 0),
        })
        .unzip()
}

/// The manifest property recording how many key groups keyed state is laid out in.
const MAX_PARALLELISM_PROPERTY: &str = "max_parallelism";

/// The manifest property recording the job's vertices and parallelisms.
const SHAPE_PROPERTY: &str = "shape";

/// The artifact holding task `task`'s state.
pub(crate) fn artifact_name(task: TaskId) -> String {
    format!("task-{:03}-{:03}", task.vertex, task.subtask)
}

/// The vertex and task of an artifact named by [`artifact_name`].
fn parse_artifact_name(name: &str) -> Option<(usize, usize)> {
    let (vertex, task) = name.strip_prefix("task-")?.split_once('-')?;
    Some((vertex.parse().ok()?, task.parse().ok()?))
}

/// Figures about a job's checkpoints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStats {
    /// The snapshot the job restored from.
    pub restored_from: Option<u64>,
    /// Checkpoints completed by this run.
    pub completed: u64,
    /// Checkpoints aborted (timed out, failed to write, superseded).
    pub aborted: u64,
    /// The newest completed checkpoint or savepoint.
    pub latest_completed: Option<u64>,
    /// Duration of each completed checkpoint, trigger to manifest written (the sinks
    /// commit after that), in milliseconds, oldest first (the last 1,000).
    pub durations_ms: Vec<f64>,
    /// The last abort's reason.
    pub last_failure: Option<String>,
    /// The savepoint taken by `stop`, once written.
    pub savepoint: Option<u64>,
}

/// What a task tells the checkpoint loop.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// Its state for checkpoint `checkpoint` (`None`: no state).
    Ack {
        checkpoint: u64,
        task: TaskId,
        state: Option<Vec<u8>>,
    },
    /// A source task has read everything assigned to it and waits for the final barrier.
    SourceEnded(TaskId),
}

/// What the checkpoint loop tells a source task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceCommand {
    /// Inject the barrier of this checkpoint.
    Barrier(u64),
    /// Inject the barrier of this checkpoint, then end.
    FinalBarrier(u64),
}

/// A task's link to the checkpoint loop.
#[derive(Debug, Clone)]
pub(crate) struct TaskLink {
    pub task: TaskId,
    events: mpsc::Sender<TaskEvent>,
}

impl TaskLink {
    /// Acknowledge `checkpoint` with `state`.
    pub async fn ack(&self, checkpoint: u64, state: Option<Vec<u8>>) -> Result<()> {
        self.events
            .send(TaskEvent::Ack {
                checkpoint,
                task: self.task,
                state,
            })
            .await
            .map_err(|_| RilletError::Cancelled)
    }

    pub async fn source_ended(&self) -> Result<()> {
        self.events
            .send(TaskEvent::SourceEnded(self.task))
            .await
            .map_err(|_| RilletError::Cancelled)
    }
}

/// Why a completion failed: the checkpoint only (its manifest could not be written) or
/// the job (after the manifest, the checkpoint is complete and recovery must finish it).
enum Abandon {
    Checkpoint(RilletError),
    Job(RilletError),
}

/// The request to stop with a savepoint.
pub(crate) type StopRequest = tokio::sync::oneshot::Sender<Result<u64>>;

/// The running loop's ends, handed out by [`CheckpointLoop::new`].
pub(crate) struct CheckpointLoop {
    settings: Checkpointing,
    shape: String,
    tasks: BTreeSet<TaskId>,
    sources: Vec<(TaskId, mpsc::Sender<SourceCommand>)>,
    sinks: Vec<(usize, Arc<dyn Sink>)>,
    /// What the sinks are told when they commit.
    sink_context: SinkContext,
    events: mpsc::Receiver<TaskEvent>,
    stop: mpsc::Receiver<StopRequest>,
    stats: Arc<Mutex<CheckpointStats>>,
    completed: Arc<AtomicU64>,
    /// The sink tasks' states per checkpoint in flight, by sink vertex, for the commit.
    sink_states: BTreeMap<u64, BTreeMap<usize, Vec<Vec<u8>>>>,
    /// Held by a commit under way (see [`commit_checkpoint`]).
    commit_gate: Arc<tokio::sync::Mutex<()>>,
}

/// The most checkpoints in flight at once: aligned checkpoints queue behind each other.
const MAX_IN_FLIGHT: usize = 1;

impl CheckpointLoop {
    /// The loop for a job of `shape` with `tasks`; returns it, the link factory's sender,
    /// and the receivers of source commands to hand to the source tasks.
    #[allow(clippy::type_complexity)]
    pub fn new(
        settings: Checkpointing,
        shape: String,
        tasks: BTreeSet<TaskId>,
        sources: &[TaskId],
        sinks: Vec<(usize, Arc<dyn Sink>)>,
        sink_context: SinkContext,
        stats: Arc<Mutex<CheckpointStats>>,
    ) -> (
        Self,
        mpsc::Sender<TaskEvent>,
        BTreeMap<TaskId, mpsc::Receiver<SourceCommand>>,
        mpsc::Sender<StopRequest>,
    ) {
        // Each task acknowledges each checkpoint in flight at most once, plus the final
        // one and a source's end: the channels never fill.
        let (events_tx, events) = mpsc::channel(tasks.len() * (MAX_IN_FLIGHT + 2) + 1);
        let mut commands = BTreeMap::new();
        let mut senders = Vec::new();
        for &task in sources {
            let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT + 2);
            senders.push((task, tx));
            commands.insert(task, rx);
        }
        let (stop_tx, stop) = mpsc::channel(1);
        stats.lock().restored_from = settings.restored().map(|c| c.manifest.id);
        let completed = sink_context.committed.clone();
        if let Some(restored) = settings.restored() {
            completed.store(restored.manifest.id, Ordering::SeqCst);
        }
        (
            Self {
                settings,
                shape,
                tasks,
                sources: senders,
                sinks,
                sink_context,
                events,
                stop,
                stats,
                completed,
                sink_states: BTreeMap::new(),
                commit_gate: Arc::new(tokio::sync::Mutex::new(())),
            },
            events_tx,
            commands,
            stop_tx,
        )
    }

    /// A task's link, sending on `events`.
    pub fn link(task: TaskId, events: &mpsc::Sender<TaskEvent>) -> TaskLink {
        TaskLink {
            task,
            events: events.clone(),
        }
    }

    /// Run until the final checkpoint (after every source ended) or the savepoint of a
    /// stop has completed. Returns the savepoint's id for a stop.
    pub async fn run(mut self) -> Result<Option<u64>> {
        let mut coordinator = CheckpointCoordinator::new(
            self.tasks.iter().copied(),
            self.settings.first_id(),
            MAX_IN_FLIGHT,
            self.settings.timeout,
        );
        let mut writers: BTreeMap<u64, CheckpointWriter> = BTreeMap::new();
        let mut ended_sources: BTreeSet<TaskId> = BTreeSet::new();
        // The final snapshot: its id, its kind, and who asked for it (a stop).
        let mut last: Option<(u64, Kind, Option<StopRequest>)> = None;
        let mut pending_stop: Option<StopRequest> = None;
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            // The final snapshot goes out once nothing else is in flight.
            let all_ended = !self.sources.is_empty() && ended_sources.len() == self.sources.len();
            if last.is_none()
                && (all_ended || pending_stop.is_some())
                && coordinator.in_flight().is_empty()
            {
                let id = coordinator
                    .trigger(Instant::now())
                    .map_err(RilletError::Checkpoint)?;
                let kind = if pending_stop.is_some() {
                    Kind::Savepoint
                } else {
                    Kind::Checkpoint
                };
                writers.insert(id, self.settings.store.writer(kind, id));
                self.command(SourceCommand::FinalBarrier(id))?;
                last = Some((id, kind, pending_stop.take()));
            }
            tokio::select! {
                _ = ticker.tick() => {
                    for aborted in coordinator.expire(Instant::now()) {
                        writers.remove(&aborted.id);
                        self.sink_states.remove(&aborted.id);
                        self.record_abort(aborted.id, &aborted.reason);
                        if let Some((id, _, stop)) = last.take_if(|(id, ..)| *id == aborted.id) {
                            // The sources have ended after this barrier: no later
                            // checkpoint can take its place. Fail; a restart replays.
                            let error = RilletError::Checkpoint(format!(
                                "the final snapshot {id} timed out: {}",
                                aborted.reason
                            ));
                            if let Some(stop) = stop {
                                let _ = stop.send(Err(RilletError::Checkpoint(error.to_string())));
                            }
                            return Err(error);
                        }
                    }
                    if last.is_some() || all_ended || pending_stop.is_some() {
                        continue;
                    }
                    if let Ok(id) = coordinator.trigger(Instant::now()) {
                        writers.insert(id, self.settings.store.writer(Kind::Checkpoint, id));
                        if let Err(e) = self.command(SourceCommand::Barrier(id)) {
                            if matches!(e, RilletError::Cancelled) {
                                return Err(e);
                            }
                            // A source still busy with earlier barriers (stuck behind
                            // backpressure): skip this checkpoint rather than fail the job.
                            self.abandon(&mut coordinator, &mut writers, id, &e);
                        }
                    }
                }
                Some(request) = self.stop.recv(), if pending_stop.is_none() && last.is_none() => {
                    pending_stop = Some(request);
                }
                event = self.events.recv() => match event {
                    None => return Err(RilletError::Cancelled),
                    Some(TaskEvent::SourceEnded(task)) => {
                        ended_sources.insert(task);
                    }
                    Some(TaskEvent::Ack { checkpoint, task, state }) => {
                        let Some(writer) = writers.get_mut(&checkpoint) else {
                            continue; // aborted meanwhile
                        };
                        let mut names = Vec::new();
                        let vertex = task.vertex as usize;
                        if let Some(state) = &state
                            && self.sinks.iter().any(|(v, _)| *v == vertex)
                        {
                            self.sink_states
                                .entry(checkpoint)
                                .or_default()
                                .entry(vertex)
                                .or_default()
                                .push(state.clone());
                        }
                        if let Some(state) = state {
                            let name = artifact_name(task);
                            if let Err(e) = writer.put(&name, state).await {
                                // The checkpoint is lost, not the job: the next one
                                // covers what this one would have (sinks keep their
                                // transactions until a checkpoint commits them).
                                self.abandon(&mut coordinator, &mut writers, checkpoint, &e);
                                if let Some((id, ..)) = &last
                                    && *id == checkpoint
                                {
                                    return Err(e);
                                }
                                continue;
                            }
                            names.push(name);
                        }
                        let Acknowledged::All(_) = coordinator.acknowledge(checkpoint, task, names)
                        else {
                            continue;
                        };
                        let writer = writers.remove(&checkpoint).expect("present above");
                        let completed = match self.complete(&mut coordinator, writer).await {
                            Ok(completed) => completed,
                            Err(Abandon::Checkpoint(e)) => {
                                self.abandon(&mut coordinator, &mut writers, checkpoint, &e);
                                if let Some((id, ..)) = &last
                                    && *id == checkpoint
                                {
                                    return Err(e);
                                }
                                continue;
                            }
                            Err(Abandon::Job(e)) => return Err(e),
                        };
                        for aborted in &completed.superseded {
                            writers.remove(&aborted.id);
                            self.sink_states.remove(&aborted.id);
                        }
                        if let Some((id, kind, stop)) = last.take_if(|(id, ..)| *id == checkpoint) {
                            if kind == Kind::Savepoint {
                                self.stats.lock().savepoint = Some(id);
                            }
                            if let Some(stop) = stop {
                                let _ = stop.send(Ok(id));
                                return Ok(Some(id));
                            }
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Send `command` to every source task, or to none: a barrier some sources inject
    /// and others not could never align downstream.
    fn command(&self, command: SourceCommand) -> Result<()> {
        // Only this loop sends, so room seen here is still there below.
        if let Some((task, _)) = self
            .sources
            .iter()
            .find(|(_, sender)| sender.capacity() == 0 && !sender.is_closed())
        {
            return Err(RilletError::Checkpoint(format!(
                "source task {task} has not yet taken the barriers sent before"
            )));
        }
        for (task, sender) in &self.sources {
            if let Err(e) = sender.try_send(command) {
                if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                    return Err(RilletError::Cancelled);
                }
                return Err(RilletError::Checkpoint(format!(
                    "source task {task} has not yet taken the barriers sent before"
                )));
            }
        }
        Ok(())
    }

    /// Give up checkpoint `id` after `error`; the job goes on.
    fn abandon(
        &mut self,
        coordinator: &mut CheckpointCoordinator,
        writers: &mut BTreeMap<u64, CheckpointWriter>,
        id: u64,
        error: &RilletError,
    ) {
        writers.remove(&id);
        self.sink_states.remove(&id);
        if coordinator.abort(id, &error.to_string()).is_some() {
            self.record_abort(id, &error.to_string());
        }
    }

    /// Write the manifest, mark the checkpoint complete, commit the sinks, prune.
    async fn complete(
        &mut self,
        coordinator: &mut CheckpointCoordinator,
        writer: CheckpointWriter,
    ) -> std::result::Result<rillet_checkpoint::coordinator::Completed, Abandon> {
        let id = writer.id();
        let properties = BTreeMap::from([
            (SHAPE_PROPERTY.to_string(), self.shape.clone()),
            (
                MAX_PARALLELISM_PROPERTY.to_string(),
                crate::keygroups::MAX_PARALLELISM.to_string(),
            ),
        ]);
        let states = self.sink_states.remove(&id).unwrap_or_default();
        let (sinks, context, store, retain, claim) = (
            self.sinks.clone(),
            self.sink_context.clone(),
            self.settings.store.clone(),
            self.settings.retain,
            self.settings.claim.clone(),
        );
        // The commit runs as a task of its own that holds the commit gate: cancelling the
        // job aborts this loop, not a commit under way (a manifest half-way to disk, a sink
        // renaming its files), and the job ends only once that commit has, so a restart
        // never races it.
        let gate = self.commit_gate.clone().lock_owned().await;
        let commit = tokio::spawn(async move {
            let _gate = gate;
            let sinks = SinkCommits {
                sinks,
                states,
                context,
            };
            commit_checkpoint(id, writer, properties, sinks, store, retain, claim).await
        });
        let manifest_written = commit.await.map_err(|e| {
            Abandon::Job(RilletError::internal(format!(
                "the commit of checkpoint {id} panicked: {e}"
            )))
        })??;
        // A checkpoint's duration runs from its trigger to its manifest (as Flink counts
        // it); the sinks' commits after that are not part of it.
        let completed = coordinator
            .complete(id, manifest_written)
            .map_err(|e| Abandon::Job(RilletError::Checkpoint(e)))?;
        self.completed.store(id, Ordering::SeqCst);
        {
            let mut stats = self.stats.lock();
            stats.completed += 1;
            stats.latest_completed = Some(id);
            stats
                .durations_ms
                .push(completed.duration.as_secs_f64() * 1e3);
            if stats.durations_ms.len() > 1000 {
                stats.durations_ms.remove(0);
            }
            stats.aborted += completed.superseded.len() as u64;
        }
        Ok(completed)
    }

    /// The gate a commit holds while it runs: the job's driver takes it before reporting
    /// the job's end.
    pub fn commit_gate(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.commit_gate.clone()
    }

    fn record_abort(&self, id: u64, reason: &str) {
        tracing::warn!(checkpoint = id, "checkpoint {id} aborted: {reason}");
        let mut stats = self.stats.lock();
        stats.aborted += 1;
        stats.last_failure = Some(format!("checkpoint {id}: {reason}"));
    }
}

/// What the sinks commit when a checkpoint completes.
struct SinkCommits {
    sinks: Vec<(usize, Arc<dyn Sink>)>,
    /// The sink tasks' states, by sink vertex.
    states: BTreeMap<usize, Vec<Vec<u8>>>,
    context: SinkContext,
}

/// Complete checkpoint `id`: write its manifest (the commit point), have the sinks commit
/// what it covers, and prune old checkpoints. Returns when the manifest was written. A run
/// that lost its claim to a later run stops before either.
async fn commit_checkpoint(
    id: u64,
    writer: CheckpointWriter,
    properties: BTreeMap<String, String>,
    mut commits: SinkCommits,
    store: CheckpointStore,
    retain: usize,
    claim: Claim,
) -> std::result::Result<Instant, Abandon> {
    // A run that lost the job stops; a claim that cannot be read now costs this
    // checkpoint only.
    claim.check().await.map_err(|e| match e {
        RilletError::Checkpoint(_) => Abandon::Job(e),
        other => Abandon::Checkpoint(other),
    })?;
    // The commit point: once the manifest exists, a restore starts from here. Failing to
    // write it loses this checkpoint only.
    writer
        .commit(properties)
        .await
        .map_err(Abandon::Checkpoint)?;
    let manifest_written = Instant::now();
    // From here the checkpoint is complete whatever happens: a failure fails the job, and
    // recovery restores this checkpoint and finishes its commits.
    fail::fail_point!("checkpoint-after-manifest", |_| {
        Err(Abandon::Job(RilletError::Checkpoint(
            "failpoint checkpoint-after-manifest".into(),
        )))
    });
    // A later run that claimed the job meanwhile restores from here and commits itself.
    claim.check().await.map_err(Abandon::Job)?;
    // Sinks commit what this checkpoint covers. A crash before or during this is repaired
    // on recovery, which commits the restored checkpoint's transactions again.
    for (vertex, sink) in &commits.sinks {
        let states = commits.states.remove(vertex).unwrap_or_default();
        let (sink, context) = (sink.clone(), commits.context.clone());
        tokio::task::spawn_blocking(move || sink.commit(&context, id, &states))
            .await
            .map_err(|e| Abandon::Job(RilletError::internal(format!("sink commit panicked: {e}"))))?
            .map_err(Abandon::Job)?;
    }
    // The commit is applied but not yet recorded (its answer lost): recovery repeats it,
    // and a repeated commit changes nothing.
    fail::fail_point!("sink-after-commit", |_| {
        Err(Abandon::Job(RilletError::Checkpoint(
            "failpoint sink-after-commit".into(),
        )))
    });
    if let Err(e) = store.prune(retain).await {
        tracing::warn!("cannot prune old checkpoints: {e}");
    }
    Ok(manifest_written)
}

/// How often a running job looks for a stop request from another process.
const CONTROL_POLL: Duration = Duration::from_millis(500);

/// A checkpointed job's record in its checkpoint location, and the stop requests other
/// processes leave there (see `rillet_checkpoint`'s control files): what lets the
/// `rillet` command line list, stop and resume jobs it did not start. It also watches the
/// run's claim: once a later run claims the job, this run is cancelled and writes its
/// record no more (the record is the new run's).
pub(crate) struct JobControl {
    store: CheckpointStore,
    claim: Claim,
    record: Mutex<JobRecord>,
    /// Why the run was cancelled: a later run claimed the job.
    lost: Mutex<Option<RilletError>>,
}

/// What [`JobControl::run`] acts on.
pub(crate) struct ControlEnds {
    /// Asks the checkpoint loop for a stop with a savepoint.
    pub stop: mpsc::Sender<StopRequest>,
    /// Cancels the job.
    pub cancel: Arc<tokio::sync::watch::Sender<bool>>,
    /// Changes when the job has ended.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl JobControl {
    /// Record that the run holding `claim` has started, restored from `restored_from`,
    /// and drop the stop requests earlier runs left untaken.
    pub async fn start(
        store: CheckpointStore,
        claim: &Claim,
        restored_from: Option<u64>,
    ) -> Result<Arc<Self>> {
        let mut record = claim.record().clone();
        let cleared = store.clear_stop_requests_except(&record.run).await?;
        if cleared > 0 {
            tracing::warn!(
                "job {}: dropped {cleared} stop requests earlier runs did not take",
                store.job()
            );
        }
        record.restored_from = restored_from;
        record.latest_snapshot = restored_from;
        record.touch();
        store.write_record(&record).await?;
        Ok(Arc::new(Self {
            store,
            claim: claim.clone(),
            record: Mutex::new(record),
            lost: Mutex::new(None),
        }))
    }

    /// Why the run was cancelled, if a later run claimed the job.
    pub fn lost_claim(&self) -> Option<RilletError> {
        self.lost
            .lock()
            .as_ref()
            .map(|e| RilletError::Checkpoint(e.to_string()))
    }

    /// Until `ends.shutdown` changes: take stop requests (each becomes a stop with a
    /// savepoint), cancel the run once a later run has claimed the job, and keep the
    /// record's newest snapshot and heartbeat current. A write under way when the shutdown
    /// comes finishes first, so none lands after [`finish`](Self::finish). Storage errors
    /// are logged, not fatal: the job runs on without being steerable (and every
    /// checkpoint's commit checks the claim again).
    pub async fn run(self: Arc<Self>, mut ends: ControlEnds, stats: Arc<Mutex<CheckpointStats>>) {
        let run = self.record.lock().run.clone();
        let mut written = Instant::now();
        let mut stopping = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(CONTROL_POLL) => {}
                _ = ends.shutdown.changed() => return,
            }
            match self.claim.check().await {
                Ok(()) => {}
                Err(e @ RilletError::Checkpoint(_)) => {
                    tracing::error!("job {}: {e}", self.store.job());
                    *self.lost.lock() = Some(e);
                    let _ = ends.cancel.send(true);
                    return;
                }
                Err(e) => tracing::warn!("job {}: cannot check its claim: {e}", self.store.job()),
            }
            if !stopping {
                match self.store.take_stop_request(&run).await {
                    Ok(true) => {
                        tracing::info!(
                            "job {}: stopping with a savepoint, as asked",
                            self.store.job()
                        );
                        let (tx, _) = tokio::sync::oneshot::channel();
                        // The loop takes it unless a stop is already under way.
                        stopping = ends.stop.send(tx).await.is_ok();
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("job {}: {e}", self.store.job()),
                }
            }
            let latest = stats.lock().latest_completed;
            let record = {
                let mut record = self.record.lock();
                // Before this run's first checkpoint the record keeps the restored one.
                let news = latest.is_some() && latest != record.latest_snapshot;
                if !news && written.elapsed() < HEARTBEAT {
                    continue;
                }
                record.latest_snapshot = latest.or(record.latest_snapshot);
                record.touch();
                record.clone()
            };
            if let Err(e) = self.store.write_record(&record).await {
                tracing::warn!("job {}: cannot update its record: {e}", self.store.job());
            }
            written = Instant::now();
        }
    }

    /// Record how the run ended: `error` (`Cancelled` for a cancel) or, without one,
    /// stopped with `savepoint` or finished. Nothing once a later run holds the job.
    pub async fn finish(&self, error: Option<&RilletError>, stats: &CheckpointStats) {
        if self.lost.lock().is_some() || self.claim.check().await.is_err() {
            return;
        }
        let record = {
            let mut record = self.record.lock();
            record.state = match error {
                Some(e) if e.is_cancelled() => RunState::Cancelled,
                Some(_) => RunState::Failed,
                None if stats.savepoint.is_some() => RunState::Stopped,
                None => RunState::Finished,
            };
            record.error = error.filter(|e| !e.is_cancelled()).map(|e| e.to_string());
            record.savepoint = stats.savepoint;
            record.latest_snapshot = stats.latest_completed.or(record.latest_snapshot);
            record.touch();
            record.clone()
        };
        if let Err(e) = self.store.write_record(&record).await {
            tracing::warn!("job {}: cannot record its end: {e}", self.store.job());
        }
    }
}
