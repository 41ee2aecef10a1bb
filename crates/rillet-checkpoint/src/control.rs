//! A job's control files, kept beside its snapshots so that any process that can read the
//! checkpoint location (the `rillet` command line on another terminal, a script on
//! another machine sharing the bucket) can see and steer the job:
//!
//! ```text
//! <location>/<job>/_job.json         the record of the job's latest run (JobRecord)
//! <location>/<job>/_stop.<run id>    a request to stop that run with a savepoint
//! ```
//!
//! The running job rewrites its record when it starts, as its checkpoints complete (at
//! most every [`HEARTBEAT`]) and when it ends, and polls for a stop request. A run killed
//! outright leaves a record that still says `running`; [`JobRecord::process_alive`] and the
//! age of its heartbeat tell a reader so.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> rillet_common::Result<()> {
//! use rillet_checkpoint::{CheckpointStore, JobRecord, RunState};
//!
//! let dir = tempfile::tempdir()?;
//! let location = dir.path().to_str().unwrap();
//! let store = CheckpointStore::open(location, "orders")?;
//! let record = JobRecord::start("orders", None);
//! store.write_record(&record).await?;
//! assert_eq!(CheckpointStore::jobs(location).await?, vec!["orders".to_string()]);
//!
//! // Another process asks the run to stop; the run takes the request once.
//! store.request_stop(&record.run).await?;
//! assert!(store.take_stop_request(&record.run).await?);
//! assert!(!store.take_stop_request(&record.run).await?);
//! assert_eq!(store.read_record().await?.unwrap().state, RunState::Running);
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use rillet_common::{Result, RilletError};
use serde::{Deserialize, Serialize};

use object_store::ObjectStoreExt;

use crate::store::{CheckpointStore, Kind, ReadError, plain_name};

/// The record's object name within the job's directory.
const RECORD: &str = "_job.json";
/// What a stop request's object name within the job's directory starts with; the run it
/// is for follows.
const STOP: &str = "_stop.";

/// How often a running job rewrites its record when nothing else changed, so that a
/// reader can tell a live run from one that died without a trace. A record older than
/// three heartbeats belongs to a run that is gone or stuck.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Where a run of a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started and not yet ended (or killed before it could say so).
    Running,
    /// Its bounded sources ran out and everything was committed.
    Finished,
    /// Stopped with a savepoint.
    Stopped,
    /// Cancelled: nothing after its last checkpoint was committed.
    Cancelled,
    /// Failed with an error.
    Failed,
}

impl RunState {
    /// The state as the record and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Stopped => "stopped",
            RunState::Cancelled => "cancelled",
            RunState::Failed => "failed",
        }
    }
}

/// What a job's latest run says about itself (`<location>/<job>/_job.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub job: String,
    /// This run's id (host, process and start time): a stop request names the run it
    /// was meant for, so a later run of the job does not take it.
    pub run: String,
    /// Where the run stands.
    pub state: RunState,
    /// The process running the job.
    pub pid: u32,
    /// The host that process runs on.
    pub host: String,
    /// When the run started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When the record was last written.
    pub updated_ms: u64,
    /// The snapshot the run restored from.
    pub restored_from: Option<u64>,
    /// The newest snapshot the run completed.
    pub latest_snapshot: Option<u64>,
    /// The savepoint the run stopped with.
    pub savepoint: Option<u64>,
    /// Why the run failed.
    pub error: Option<String>,
    /// The command line that started the process (its program as an absolute path), and
    /// the directory it ran in: what `rillet resume` runs again.
    pub command: Vec<String>,
    /// The process's working directory.
    pub cwd: Option<String>,
    /// The process's pid namespace (the inode of `/proc/self/ns/pid`): two containers
    /// sharing a host name see each other's process ids as unrelated.
    #[serde(default)]
    pub pid_namespace: Option<u64>,
    /// When the process started, in clock ticks since boot (`/proc/<pid>/stat`): a process
    /// id reused by a later process (a restarted container's pid 1) is not the run's.
    #[serde(default)]
    pub process_started: Option<u64>,
    /// The machine's boot (`/proc/sys/kernel/random/boot_id`): after a reboot no process
    /// of before is alive, whatever its id.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl JobRecord {
    /// The record of a run of `job` starting now in this process, restored from snapshot
    /// `restored_from`.
    pub fn start(job: &str, restored_from: Option<u64>) -> Self {
        let now = now_ms();
        let pid = std::process::id();
        let host = host_name();
        Self {
            job: job.to_string(),
            run: format!("{host}-{pid}-{now}"),
            state: RunState::Running,
            pid,
            host,
            started_ms: now,
            updated_ms: now,
            restored_from,
            latest_snapshot: restored_from,
            savepoint: None,
            error: None,
            command: launch_command(),
            cwd: std::env::current_dir()
                .ok()
                .map(|d| d.to_string_lossy().into_owned()),
            pid_namespace: pid_namespace(),
            process_started: process_start(pid),
            boot_id: boot_id(),
        }
    }

    /// Whether the run's process is still alive: `None` when that cannot be told from
    /// here (the run is on another host, or this system has no `/proc`). A process id
    /// reused by another program after the run died reads as alive.
    pub fn process_alive(&self) -> Option<bool> {
        if self.host != host_name() || !std::path::Path::new("/proc/self").exists() {
            return None;
        }
        if self.boot_id.is_some() && self.boot_id != boot_id() {
            return Some(false); // the machine restarted since
        }
        if self.pid_namespace.is_some() && self.pid_namespace != pid_namespace() {
            return None; // another container on this host: its ids are not ours to look up
        }
        let started = process_start(self.pid);
        if self.process_started.is_some() && started.is_some() && started != self.process_started {
            return Some(false); // the id now belongs to a later process
        }
        Some(process_running(self.pid))
    }

    /// Mark the record as written now (its heartbeat).
    pub fn touch(&mut self) {
        self.updated_ms = now_ms();
    }

    /// How long ago the record was written.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.updated_ms))
    }

    /// Whether the run may still be going: its record says running, its process (where
    /// that can be told) is alive, and its heartbeat is fresh.
    pub fn is_live(&self) -> bool {
        self.state == RunState::Running
            && self.process_alive() != Some(false)
            && self.age() < 3 * HEARTBEAT
    }
}

/// Whether process `pid` exists and has not exited: a process that was killed stays in
/// `/proc` as a zombie until its parent reaps it, and in a container whose first process
/// reaps nothing it stays there for good.
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (name) state ...`: the name may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// This process's pid namespace, where `/proc` tells it.
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// When process `pid` started, in clock ticks since boot (field 22 of its `stat`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) state ppid ...`: after the name, the state is field 3, start time 22.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This boot of the machine, where Linux tells it.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This machine's name (Linux's, else `$HOSTNAME`, else `unknown`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// This process's command line with its program made absolute (found on `PATH` if it was
/// a bare name), so it runs again from any directory. Symbolic links are kept: a Python
/// virtual environment's interpreter is a link, and resolving it would leave the
/// environment.
fn launch_command() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        let path = std::path::Path::new(program.as_str());
        let absolute = if path.is_absolute() {
            None
        } else if program.contains('/') {
            std::env::current_dir().ok().map(|cwd| cwd.join(path))
        } else {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(path))
                    .find(|candidate| candidate.is_file())
            })
        };
        if let Some(absolute) = absolute {
            *program = absolute.to_string_lossy().into_owned();
        }
    }
    args
}

/// A request to stop a run, as written to `_stop.<run>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StopRequestFile {
    requested_ms: u64,
}

/// A snapshot directory's parts: `<location>/<job>/<chk-… or savepoint-…>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPath {
    /// The checkpoint location (a directory or an `s3://` URL).
    pub location: String,
    /// The job id.
    pub job: String,
    /// Checkpoint or savepoint.
    pub kind: Kind,
    /// The snapshot id.
    pub id: u64,
}

impl SnapshotPath {
    /// Split a snapshot directory's path into its parts; an error says what a snapshot
    /// path looks like.
    ///
    /// ```
    /// use rillet_checkpoint::{Kind, SnapshotPath};
    /// let p = SnapshotPath::parse("/data/chk/orders/savepoint-00000000000000000012/").unwrap();
    /// assert_eq!((p.location.as_str(), p.job.as_str(), p.kind, p.id), ("/data/chk", "orders", Kind::Savepoint, 12));
    /// assert_eq!(p.to_string(), "/data/chk/orders/savepoint-00000000000000000012");
    /// ```
    pub fn parse(path: &str) -> Result<Self> {
        let trimmed = path.trim_end_matches('/');
        let bad = || {
            RilletError::invalid_argument(format!(
                "{path:?} is not a snapshot directory (<checkpoint_dir>/<job>/savepoint-<id> \
                 or chk-<id>)"
            ))
        };
        let (parent, name) = trimmed.rsplit_once('/').ok_or_else(bad)?;
        let (location, job) = parent.rsplit_once('/').ok_or_else(bad)?;
        let (kind, id) = Kind::parse_directory(name).ok_or_else(bad)?;
        Ok(Self {
            location: if location.is_empty() { "/" } else { location }.to_string(),
            job: job.to_string(),
            kind,
            id,
        })
    }
}

/// The environment variable naming a snapshot for the job it belongs to to resume from
/// (set by `rillet resume --from`): a job started with the same location and job id
/// resumes from that snapshot instead of its newest one.
pub const RESUME_ENV: &str = "RILLET_RESUME_FROM";

impl SnapshotPath {
    /// The snapshot [`RESUME_ENV`] names, if it names one of job `job` in `location` and
    /// no job of this process took it before: it applies to the first start of that job
    /// only (a later start, a retry say, resumes from the newest snapshot as usual). A
    /// value naming another job is left for that job; one that is not a snapshot path is
    /// an error.
    pub fn from_env(location: &str, job: &str) -> Result<Option<Self>> {
        static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if TAKEN.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        let Some(value) = std::env::var_os(RESUME_ENV) else {
            return Ok(None);
        };
        let value = value.to_string_lossy();
        let path = Self::parse(&value)
            .map_err(|e| RilletError::invalid_argument(format!("{RESUME_ENV}: {e}")))?;
        let same = path.job == job && same_location(&path.location, location);
        if path.job == job && !same {
            tracing::warn!(
                "{RESUME_ENV} names a snapshot of job {job} in {}, not in {location}: ignored",
                path.location
            );
        }
        if same && TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(same.then_some(path))
    }
}

/// Whether two spellings of a checkpoint location are the same place (local paths are
/// compared once resolved).
fn same_location(a: &str, b: &str) -> bool {
    let local = |l: &str| {
        let l = l.strip_prefix("file://").unwrap_or(l);
        std::fs::canonicalize(l).ok()
    };
    if a.trim_end_matches('/') == b.trim_end_matches('/') {
        return true;
    }
    matches!((local(a), local(b)), (Some(x), Some(y)) if x == y)
}

impl std::fmt::Display for SnapshotPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.location.trim_end_matches('/'),
            self.job,
            self.kind.directory(self.id)
        )
    }
}

impl CheckpointStore {
    fn control_path(&self, name: &str) -> ObjectPath {
        self.root.clone().join(name)
    }

    /// The path of snapshot `id` of `kind`, as a user passes it to `resume_from`.
    pub fn snapshot_path_of(&self, kind: Kind, id: u64) -> SnapshotPath {
        SnapshotPath {
            location: self.location.clone(),
            job: self.job.clone(),
            kind,
            id,
        }
    }

    /// Write the job's record (replacing the previous run's).
    pub async fn write_record(&self, record: &JobRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| RilletError::internal(format!("cannot encode the job record: {e}")))?;
        self.write(&self.control_path(RECORD), Bytes::from(bytes))
            .await
    }

    /// The job's record; `None` if no run ever wrote one.
    pub async fn read_record(&self) -> Result<Option<JobRecord>> {
        let path = self.control_path(RECORD);
        match self.read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RilletError::Checkpoint(format!("{path} is not a job record: {e}"))),
            Err(ReadError::NotFound) => Ok(None),
            Err(ReadError::Other(e)) => Err(e),
        }
    }

    /// Ask run `run` of the job to stop with a savepoint. The run notices within a second
    /// or so; its record then says `stopped` and names the savepoint. A request for a run
    /// that has ended is never taken (the next run clears it).
    pub async fn request_stop(&self, run: &str) -> Result<()> {
        let request = StopRequestFile {
            requested_ms: now_ms(),
        };
        let bytes = serde_json::to_vec(&request)
            .map_err(|e| RilletError::internal(format!("cannot encode a stop request: {e}")))?;
        self.write(
            &self.control_path(&format!("{STOP}{run}")),
            Bytes::from(bytes),
        )
        .await
    }

    /// Whether a stop request for run `run` is waiting; it is removed when taken.
    pub async fn take_stop_request(&self, run: &str) -> Result<bool> {
        let path = self.control_path(&format!("{STOP}{run}"));
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(RilletError::Checkpoint(format!("cannot read {path}: {e}"))),
        }
        self.delete_object(&path).await?;
        Ok(true)
    }

    /// Remove the stop requests left for earlier runs (a new run must not take a stop
    /// nobody asked of it); returns how many there were.
    pub async fn clear_stop_requests(&self) -> Result<usize> {
        self.clear_stop_requests_except("").await
    }

    /// Remove the stop requests left for runs other than `run` (one asked of `run` while it
    /// was starting stays for it to take); returns how many there were.
    pub async fn clear_stop_requests_except(&self, run: &str) -> Result<usize> {
        let own = format!("{STOP}{run}");
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| RilletError::Checkpoint(format!("cannot list {}: {e}", self.root)))?;
        let mut cleared = 0;
        for object in listing.objects {
            if object
                .location
                .filename()
                .is_some_and(|n| n.starts_with(STOP) && (run.is_empty() || n != own))
            {
                self.delete_object(&object.location).await?;
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// Every job with a directory under `location`, by id.
    pub async fn jobs(location: &str) -> Result<Vec<String>> {
        let (store, prefix, _) = Self::open_location(location, false)?;
        let listing = store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| RilletError::Checkpoint(format!("cannot list {location}: {e}")))?;
        let mut jobs: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| plain_name(name))
            .collect();
        jobs.sort();
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_request_is_taken_by_its_run_only_and_cleared_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        store.request_stop("old-run").await.unwrap();
        assert!(!store.take_stop_request("new-run").await.unwrap());
        assert_eq!(store.clear_stop_requests().await.unwrap(), 1);
        assert!(!store.take_stop_request("old-run").await.unwrap());
        store.request_stop("new-run").await.unwrap();
        assert!(store.take_stop_request("new-run").await.unwrap());
        assert!(!store.take_stop_request("new-run").await.unwrap());
    }

    #[tokio::test]
    async fn control_files_are_not_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        store
            .write_record(&JobRecord::start("j", None))
            .await
            .unwrap();
        store.request_stop("run").await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert_eq!(store.next_id().await.unwrap(), 1);
        assert!(store.latest().await.unwrap().is_none());
    }

    #[test]
    fn a_record_from_this_process_is_alive_and_a_dead_pid_is_not() {
        let mut record = JobRecord::start("j", Some(3));
        assert_eq!(record.process_alive(), Some(true));
        assert!(record.is_live());
        assert!(std::path::Path::new(&record.command[0]).is_absolute());
        record.pid = u32::MAX - 1;
        assert_eq!(record.process_alive(), Some(false));
        assert!(!record.is_live());
        // This process's id, taken by a later process: not the run.
        let mut reused = JobRecord::start("j", None);
        *reused.process_started.as_mut().unwrap() += 1;
        assert_eq!(reused.process_alive(), Some(false));
        // A process in another pid namespace on this host cannot be looked up from here.
        let mut elsewhere = JobRecord::start("j", None);
        *elsewhere.pid_namespace.as_mut().unwrap() += 1;
        assert_eq!(elsewhere.process_alive(), None);
        assert!(elsewhere.is_live(), "its heartbeat decides");
        record.host = "elsewhere.invalid".into();
        assert_eq!(record.process_alive(), None);
        record.updated_ms -= 3 * HEARTBEAT.as_millis() as u64;
        assert!(!record.is_live(), "a stale heartbeat is not live");
    }

    #[test]
    fn snapshot_paths_round_trip_and_bad_ones_say_why() {
        let p = SnapshotPath::parse("s3://b/chk/job-1/chk-00000000000000000003").unwrap();
        assert_eq!(p.location, "s3://b/chk");
        assert_eq!(p.to_string(), "s3://b/chk/job-1/chk-00000000000000000003");
        let e = SnapshotPath::parse("/tmp/chk/job-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a snapshot directory"), "{e}");
    }
}
