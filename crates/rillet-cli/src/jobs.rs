//! `rillet list`, `rillet stop` and `rillet resume`: steering streaming jobs through the
//! control files they keep in their checkpoint location (see `rillet_checkpoint`'s
//! `JobRecord`). Nothing here talks to a job's process directly, so the same commands work
//! for a job on another machine that shares the location (an `s3://` prefix).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rillet_checkpoint::{CheckpointStore, JobRecord, Kind, RESUME_ENV, RunState, SnapshotPath};
use rillet_runtime::block_on;
use serde_json::json;

/// A command's outcome; the error is printed as it is.
pub type Outcome<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How often `stop` and `resume --detach` read the job's record while they wait.
const POLL: Duration = Duration::from_millis(200);

/// What `list` shows of one job.
struct JobView {
    job: String,
    record: Option<JobRecord>,
    /// The newest snapshot with a manifest (not checked further).
    latest: Option<SnapshotPath>,
    /// The state as the record says, or `lost` for a run that says running but is not.
    state: String,
    /// Why a run is `lost`, or what a record-less job is.
    note: Option<String>,
}

/// The store of job `job` under `location`, which must already hold that job (opening a
/// store creates its directory, and a mistyped id must not leave one behind).
fn open_job(location: &str, job: &str) -> Outcome<CheckpointStore> {
    let jobs = block_on(CheckpointStore::jobs(location))?;
    if !jobs.iter().any(|j| j == job) {
        let known = if jobs.is_empty() {
            "none".to_string()
        } else {
            jobs.join(", ")
        };
        return Err(failure(format!(
            "no job '{job}' in {location} (jobs there: {known})"
        )));
    }
    Ok(CheckpointStore::open(location, job)?)
}

fn view(store: &CheckpointStore) -> Outcome<JobView> {
    let record = block_on(store.read_record())?;
    let latest = block_on(store.list())?
        .into_iter()
        .filter(|s| s.has_manifest)
        .max_by_key(|s| s.id)
        .map(|s| store.snapshot_path_of(s.kind, s.id));
    let (state, note) = match &record {
        None => (
            "unknown".to_string(),
            Some("no record: last run by an older Rillet".to_string()),
        ),
        Some(r) if r.state == RunState::Running && !r.is_live() => {
            let why = if r.process_alive() == Some(false) {
                format!("process {} is gone (killed?)", r.pid)
            } else {
                format!("no heartbeat for {}", age(r.age()))
            };
            ("lost".to_string(), Some(why))
        }
        Some(r) => (r.state.as_str().to_string(), r.error.clone()),
    };
    Ok(JobView {
        job: store.job().to_string(),
        record,
        latest,
        state,
        note,
    })
}

fn age(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Every job under `location` as `rillet list --json` shows it: state (`lost` for a run
/// that says running but is not), note, run, pid, host, times, snapshots, command.
pub(crate) fn jobs_json(location: &str) -> Outcome<Vec<serde_json::Value>> {
    Ok(views(location)?
        .iter()
        .map(|v| view_json(location, v))
        .collect())
}

/// What `list` shows of every job under `location`, by id.
fn views(location: &str) -> Outcome<Vec<JobView>> {
    let mut views = Vec::new();
    for job in block_on(CheckpointStore::jobs(location))? {
        views.push(view(&CheckpointStore::open(location, &job)?)?);
    }
    Ok(views)
}

fn view_json(location: &str, v: &JobView) -> serde_json::Value {
    let r = v.record.as_ref();
    let savepoint = r.and_then(|r| r.savepoint).map(|id| {
        SnapshotPath {
            location: location.to_string(),
            job: v.job.clone(),
            kind: Kind::Savepoint,
            id,
        }
        .to_string()
    });
    json!({
        "job": v.job,
        "state": v.state,
        "note": v.note,
        "run": r.map(|r| &r.run),
        "pid": r.map(|r| r.pid),
        "host": r.map(|r| &r.host),
        "started_ms": r.map(|r| r.started_ms),
        "updated_ms": r.map(|r| r.updated_ms),
        "restored_from": r.and_then(|r| r.restored_from),
        "latest_snapshot": v.latest.as_ref().map(|s| s.to_string()),
        "savepoint": savepoint,
        "command": r.map(|r| &r.command),
        "cwd": r.and_then(|r| r.cwd.as_ref()),
    })
}

/// `rillet list`.
pub fn list(location: &str, as_json: bool) -> Outcome<()> {
    let views = views(location)?;
    if as_json {
        let jobs: Vec<_> = views.iter().map(|v| view_json(location, v)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&jobs).expect("JSON values serialize")
        );
        return Ok(());
    }
    if views.is_empty() {
        println!("no jobs in {location}");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            let r = v.record.as_ref();
            let snapshot = v.latest.as_ref().map_or("-".to_string(), |s| {
                let kind = match s.kind {
                    Kind::Checkpoint => "checkpoint",
                    Kind::Savepoint => "savepoint",
                };
                format!("{kind} {}", s.id)
            });
            [
                v.job.clone(),
                v.state.clone(),
                r.map_or("-".into(), |r| format!("{}@{}", r.pid, r.host)),
                snapshot,
                r.map_or("-".into(), |r| format!("{} ago", age(r.age()))),
                v.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "JOB",
        "STATE",
        "PROCESS",
        "NEWEST SNAPSHOT",
        "UPDATED",
        "NOTE",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&header.map(String::from)));
    for row in &rows {
        println!("{}", line(row));
    }
    Ok(())
}

/// `rillet stop`: ask the job's running process to stop with a savepoint and, with
/// `wait` (seconds), wait for it and print the savepoint's path.
pub fn stop(location: &str, job: &str, wait: Option<f64>) -> Outcome<()> {
    let store = open_job(location, job)?;
    let JobView {
        record,
        state,
        note,
        ..
    } = view(&store)?;
    let record = match record {
        Some(r) if state == "running" => r,
        _ => {
            return Err(failure(format!(
                "job '{job}' is not running: {state}{}",
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            )));
        }
    };
    block_on(store.request_stop(&record.run))?;
    let Some(wait) = wait else {
        println!(
            "asked job '{job}' (process {}) to stop with a savepoint",
            record.pid
        );
        return Ok(());
    };
    // Any number of seconds, however large (or `inf`): no deadline past what fits.
    let deadline = Duration::try_from_secs_f64(wait.max(0.0))
        .ok()
        .and_then(|d| Instant::now().checked_add(d));
    loop {
        std::thread::sleep(POLL);
        let now = block_on(store.read_record())?
            .ok_or_else(|| failure(format!("job '{job}' lost its record while stopping")))?;
        if now.run != record.run {
            return Err(failure(format!(
                "another run of job '{job}' started (process {}) before this one stopped",
                now.pid
            )));
        }
        match now.state {
            RunState::Stopped => {
                let id = now
                    .savepoint
                    .ok_or_else(|| failure("a stopped run recorded no savepoint"))?;
                println!("{}", store.snapshot_path_of(Kind::Savepoint, id));
                return Ok(());
            }
            RunState::Finished => {
                println!("job '{job}' finished before it could stop: everything is committed");
                return Ok(());
            }
            RunState::Cancelled => {
                return Err(failure(format!(
                    "job '{job}' was cancelled before its savepoint"
                )));
            }
            RunState::Failed => {
                return Err(failure(format!(
                    "job '{job}' failed before its savepoint: {}",
                    now.error.unwrap_or_default()
                )));
            }
            RunState::Running if now.process_alive() == Some(false) => {
                return Err(failure(format!(
                    "the process of job '{job}' ({}) exited before it stopped",
                    now.pid
                )));
            }
            RunState::Running => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(failure(format!(
                "job '{job}' did not stop within {wait} s; the request stands and it may \
                 still stop (see `rillet list {location}`)"
            )));
        }
    }
}

/// What `rillet resume` was asked.
pub struct ResumeOptions {
    /// A snapshot to resume from instead of the newest.
    pub from: Option<String>,
    /// Run in the background.
    pub detach: bool,
    /// Where a detached program's output goes.
    pub log: Option<String>,
    /// The program to run instead of the recorded one.
    pub command: Vec<String>,
    /// Resume although the last run may still be going (another host's run whose
    /// heartbeat stopped).
    pub force: bool,
}

/// `location` as the job's program must see it to recognise its own snapshot in
/// [`RESUME_ENV`]: absolute when local, since the program runs in its own directory.
fn absolute_location(location: &str) -> String {
    if location.contains("://") && !location.starts_with("file://") {
        return location.to_string();
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    std::fs::canonicalize(local)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| location.to_string())
}

/// The snapshot `from` names (a path, or a directory name within the job), checked.
fn chosen_snapshot(store: &CheckpointStore, location: &str, from: &str) -> Outcome<SnapshotPath> {
    let (kind, id) = if from.contains('/') {
        let path = SnapshotPath::parse(from)?;
        if path.job != store.job() {
            return Err(failure(format!(
                "{from} is a snapshot of job '{}', not of '{}'",
                path.job,
                store.job()
            )));
        }
        (path.kind, path.id)
    } else {
        Kind::parse_directory(from).ok_or_else(|| {
            failure(format!(
                "--from {from:?}: give a snapshot's path or its directory name \
                 (savepoint-<id>, chk-<id>)"
            ))
        })?
    };
    let snapshots = block_on(store.list())?;
    if !snapshots.iter().any(|s| s.kind == kind && s.id == id) {
        let known: Vec<String> = snapshots
            .iter()
            .filter(|s| s.has_manifest)
            .map(|s| s.kind.directory(s.id))
            .collect();
        return Err(failure(format!(
            "job '{}' has no snapshot {} (complete ones: {})",
            store.job(),
            kind.directory(id),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    // Refuse a damaged snapshot here rather than in the program's first second.
    block_on(store.load(kind, id))?;
    Ok(SnapshotPath {
        location: absolute_location(location),
        job: store.job().to_string(),
        kind,
        id,
    })
}

/// `rillet resume`: run the job's program again so that the job continues from its
/// newest valid snapshot, or from `--from`. Returns the program's exit status (0 for a
/// detached program that started the job).
pub fn resume(location: &str, job: &str, options: &ResumeOptions) -> Outcome<i32> {
    let store = open_job(location, job)?;
    let view = view(&store)?;
    if view.state == "running" {
        let r = view.record.as_ref().expect("a running job has a record");
        return Err(failure(format!(
            "job '{job}' is running (process {}@{}); stop it first: rillet stop {location} {job}",
            r.pid, r.host
        )));
    }
    // A run that went quiet is not necessarily gone: two runs of a job on the same
    // checkpoints and sink would corrupt both.
    if let Some(r) = view
        .record
        .as_ref()
        .filter(|r| r.state == RunState::Running)
    {
        match r.process_alive() {
            Some(true) => {
                return Err(failure(format!(
                    "job '{job}': its process {} on this host is still alive, though it has \
                     not reported for {}; stop or kill it first",
                    r.pid,
                    age(r.age())
                )));
            }
            None if !options.force => {
                return Err(failure(format!(
                    "job '{job}': its run on {} (process {}) has not reported for {} and may \
                     still be going; make sure it is gone, then pass --force",
                    r.host,
                    r.pid,
                    age(r.age())
                )));
            }
            _ => {}
        }
    }
    let recorded = view.record.as_ref();
    let (command, cwd): (Vec<String>, Option<PathBuf>) = if options.command.is_empty() {
        let command = recorded.map(|r| r.command.clone()).unwrap_or_default();
        if command.is_empty() {
            return Err(failure(format!(
                "job '{job}' recorded no command to run again; give one after `--`"
            )));
        }
        let cwd = recorded
            .and_then(|r| r.cwd.as_ref())
            .map(PathBuf::from)
            .filter(|d| d.is_dir());
        (command, cwd)
    } else {
        (options.command.clone(), None)
    };
    let from = match &options.from {
        Some(from) => Some(chosen_snapshot(&store, location, from)?),
        None => None,
    };
    let what = match &from {
        Some(path) => path.to_string(),
        None => match block_on(store.latest())? {
            Some(found) => {
                for (id, reason) in &found.skipped {
                    eprintln!("rillet: snapshot {id} will not be restored: {reason}");
                }
                let m = &found.checkpoint.manifest;
                store.snapshot_path_of(m.kind, m.id).to_string()
            }
            None => "the beginning (no valid snapshot)".to_string(),
        },
    };
    let mut program = Command::new(&command[0]);
    program.args(&command[1..]);
    if let Some(cwd) = &cwd {
        program.current_dir(cwd);
    }
    match &from {
        Some(path) => program.env(RESUME_ENV, path.to_string()),
        // An inherited value naming an older snapshot must not override the newest.
        None => program.env_remove(RESUME_ENV),
    };
    let shown = command.join(" ");
    let dir = cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    eprintln!("rillet: resuming job '{job}' from {what}");
    eprintln!("rillet: running `{shown}` in {}", dir.display());
    if !options.detach {
        let status = program
            .status()
            .map_err(|e| failure(format!("cannot run `{shown}`: {e}")))?;
        if let Some(r) = block_on(store.read_record())? {
            eprintln!("rillet: job '{job}' is {}", r.state.as_str());
        }
        return Ok(exit_code(status));
    }
    let log = match &options.log {
        Some(log) => PathBuf::from(log),
        None => dir.join(format!("{job}.log")),
    };
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| failure(format!("cannot open {}: {e}", log.display())))?;
    let errors = output
        .try_clone()
        .map_err(|e| failure(format!("cannot open {}: {e}", log.display())))?;
    program.stdin(Stdio::null()).stdout(output).stderr(errors);
    // Its own process group: a Ctrl-C meant for this command does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut program, 0);
    let mut child = program
        .spawn()
        .map_err(|e| failure(format!("cannot run `{shown}`: {e}")))?;
    let previous = recorded.map(|r| r.run.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(POLL);
        if let Some(r) = block_on(store.read_record())?
            && Some(&r.run) != previous.as_ref()
            && r.is_live()
        {
            println!(
                "job '{job}' is running again (process {}); its output goes to {}",
                r.pid,
                log.display()
            );
            return Ok(0);
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| failure(format!("cannot watch `{shown}`: {e}")))?
        {
            return Err(failure(format!(
                "`{shown}` exited ({status}) before the job started; see {}",
                log.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(failure(format!(
                "`{shown}` (process {}) has not started job '{job}' within 120 s; it is \
                 still running, its output goes to {}",
                child.id(),
                log.display()
            )));
        }
    }
}

/// A program's exit status as a shell reports it (128 + the signal that killed it).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn failure(message: impl Into<String>) -> Box<dyn std::error::Error> {
    message.into().into()
}
