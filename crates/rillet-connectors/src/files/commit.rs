//! Two-phase commit for file sinks: a file is written where readers do not look, and moved
//! into the output directory only once the checkpoint that covers its rows has completed.
//!
//! - A sink task writes each file as `<dir>/_pending/<name>`. Readers skip `_`-prefixed
//!   entries and subdirectories (pyarrow's datasets, DataFusion's listing tables and so
//!   Rillet's `read_parquet`), so nothing staged is visible.
//! - At a barrier the task closes its file and records a [`FileTransaction`] (the
//!   checkpoint id and the staged names) in its snapshot.
//! - When the checkpoint completes, [`FileCommitter::commit`] renames each staged file to
//!   `<dir>/<name>`. A rename is atomic. A commit repeated after a crash finds the file
//!   already in place and does nothing: the name carries the checkpoint id, and ids are
//!   never reused, so a committed name is never written again.
//! - On recovery the restored snapshot's transactions are committed again, because the
//!   crash may have fallen between the checkpoint completing and the renames. Then
//!   [`FileCommitter::discard_except`] deletes every other staged file: each belongs to a
//!   checkpoint that never completed, and its rows will be written again.
//!
//! ```
//! use rillet_connectors::files::commit::{FileCommitter, FileTransaction};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let committer = FileCommitter::new(dir.path()).unwrap();
//! let name = FileCommitter::file_name("job", "0123456789ab", 7, 0, 0, "jsonl");
//! std::fs::write(committer.staging_path(&name), "{\"seq\": 1}\n").unwrap();
//! assert!(!dir.path().join(&name).exists()); // staged: not visible yet
//!
//! let transaction = FileTransaction { checkpoint: 7, files: vec![name.clone()] };
//! committer.commit(&transaction).unwrap();
//! assert!(dir.path().join(&name).exists());
//! // Again, as after a crash: nothing to do.
//! assert_eq!(committer.commit(&transaction).unwrap().already_committed, 1);
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rillet_common::{Result, RilletError, durable};
use serde::{Deserialize, Serialize};

/// The subdirectory staged files wait in; the leading underscore hides it from readers.
pub const PENDING_DIR: &str = "_pending";

/// The files one sink task staged for one checkpoint: what its snapshot records, and what
/// [`FileCommitter::commit`] moves into place when that checkpoint completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTransaction {
    /// The checkpoint whose completion commits the files.
    pub checkpoint: u64,
    /// The files' names, the same staged and committed.
    pub files: Vec<String>,
}

impl FileTransaction {
    /// The transaction as bytes for a checkpoint artifact.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a transaction always encodes")
    }

    /// A transaction read back from [`to_bytes`](Self::to_bytes)' output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| RilletError::Checkpoint(format!("unreadable file-sink transaction: {e}")))
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitReport {
    /// Files moved into place now.
    pub committed: usize,
    /// Files found in place already (a commit repeated after a crash).
    pub already_committed: usize,
}

/// Stages and commits the files of one output directory (see the module docs).
#[derive(Debug, Clone)]
pub struct FileCommitter {
    directory: PathBuf,
}

impl FileCommitter {
    /// The committer of `directory`, creating it and its staging subdirectory.
    pub fn new(directory: impl Into<PathBuf>) -> Result<Self> {
        let directory = directory.into();
        let pending = directory.join(PENDING_DIR);
        let cannot = |e: std::io::Error| {
            RilletError::Checkpoint(format!(
                "cannot create the staging directory in {}: {e}",
                directory.display()
            ))
        };
        std::fs::create_dir_all(&pending).map_err(cannot)?;
        let directory = directory.canonicalize().map_err(cannot)?;
        // Their names on disk before any file in them is committed: a power cut must not
        // take the whole output directory.
        let above = directory.parent().unwrap_or(&directory).to_path_buf();
        durable::sync_dirs_up_to(&directory.join(PENDING_DIR).join("_"), &above).map_err(cannot)?;
        Ok(Self { directory })
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        durable::sync_dir(dir)
            .map_err(|e| RilletError::Checkpoint(format!("cannot sync {}: {e}", dir.display())))
    }

    /// The name of file `seq` that sink task `task` of `job` writes for `checkpoint`, in
    /// the checkpoint store of lineage `lineage` (or a run without checkpoints tagged so):
    /// `<job>-<lineage>-<checkpoint>-<task>-<seq>.<extension>`, unique to them, so that a
    /// committed file is never overwritten, and recognisably this store's.
    pub fn file_name(
        job: &str,
        lineage: &str,
        checkpoint: u64,
        task: usize,
        seq: usize,
        extension: &str,
    ) -> String {
        let prefix = name_prefix(job, lineage);
        format!("{prefix}{checkpoint:020}-{task:05}-{seq:05}.{extension}")
    }

    /// Where a task writes the staged file `name`.
    pub fn staging_path(&self, name: &str) -> PathBuf {
        self.directory.join(PENDING_DIR).join(name)
    }

    /// Move every file of `transaction` into the output directory. A file already there
    /// (committed before a crash) is left as it is; a file neither staged nor committed
    /// is an error, because its rows would be lost.
    pub fn commit(&self, transaction: &FileTransaction) -> Result<CommitReport> {
        let mut report = CommitReport::default();
        for name in &transaction.files {
            let staged = self.staging_path(name);
            let target = self.directory.join(name);
            match std::fs::rename(&staged, &target) {
                Ok(()) => report.committed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.is_file() => {
                    report.already_committed += 1;
                }
                Err(e) => {
                    return Err(RilletError::Checkpoint(format!(
                        "cannot commit {} of checkpoint {} into {}: {e}{}",
                        name,
                        transaction.checkpoint,
                        self.directory.display(),
                        if e.kind() == std::io::ErrorKind::NotFound {
                            " (the staged file is gone and was never committed: its rows \
                             are lost)"
                        } else {
                            ""
                        }
                    )));
                }
            }
            // The window between two renames of one commit.
            fail::fail_point!("file-sink-between-renames", |_| {
                Err(RilletError::Checkpoint(
                    "failpoint file-sink-between-renames".into(),
                ))
            });
        }
        if report.committed > 0 {
            // The renames are directory entries: sync the directory so they survive a
            // power cut (a killed process loses nothing either way).
            self.sync(&self.directory)?;
        }
        Ok(report)
    }

    /// Delete every staged file of job `job` in lineage `lineage` not named by `keep` (the
    /// transactions of the restored checkpoint, committed by the caller): what a crash left
    /// of checkpoints that never completed. Files other jobs, or other lineages of this
    /// job, staged in the same directory are theirs and stay. Returns the deleted names.
    pub fn discard_except(
        &self,
        job: &str,
        lineage: &str,
        keep: &[FileTransaction],
    ) -> Result<Vec<String>> {
        let prefix = name_prefix(job, lineage);
        let keep: BTreeSet<&str> = keep
            .iter()
            .flat_map(|t| t.files.iter().map(String::as_str))
            .collect();
        let pending = self.directory.join(PENDING_DIR);
        let mut discarded = Vec::new();
        let entries = std::fs::read_dir(&pending).map_err(|e| {
            RilletError::Checkpoint(format!("cannot list {}: {e}", pending.display()))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                RilletError::Checkpoint(format!("cannot list {}: {e}", pending.display()))
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(name.as_str()) || epoch_of(&name, &prefix).is_none() {
                continue;
            }
            remove_entry(&entry.path())?;
            discarded.push(name);
        }
        discarded.sort();
        Ok(discarded)
    }

    /// Delete the committed files of job `job` in lineage `lineage` written after
    /// checkpoint `restored` (all of them when `None`): recovery that had to fall back past
    /// a corrupt checkpoint, or a resume from an older savepoint, restores an older state,
    /// and the rows those files hold are about to be written again. A file's name carries
    /// the first checkpoint that could commit it, so the files written after `restored`
    /// are exactly those with a later one. Files of another lineage (a run without
    /// checkpoints, the job under another checkpoint location) are never touched. Returns
    /// the deleted names.
    pub fn withdraw_after(
        &self,
        job: &str,
        lineage: &str,
        restored: Option<u64>,
    ) -> Result<Vec<String>> {
        let prefix = name_prefix(job, lineage);
        let after = restored.unwrap_or(0);
        let mut withdrawn = Vec::new();
        let entries = std::fs::read_dir(&self.directory).map_err(|e| {
            RilletError::Checkpoint(format!("cannot list {}: {e}", self.directory.display()))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                RilletError::Checkpoint(format!("cannot list {}: {e}", self.directory.display()))
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(epoch) = epoch_of(&name, &prefix) else {
                continue;
            };
            if epoch > after && entry.path().is_file() {
                remove_entry(&entry.path())?;
                withdrawn.push(name);
            }
        }
        if !withdrawn.is_empty() {
            // Gone for good before their rows are written again: a power cut must not
            // bring them back beside the new copies.
            self.sync(&self.directory)?;
        }
        withdrawn.sort();
        Ok(withdrawn)
    }

    /// The output directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }
}

/// The files of one batch write (a job without checkpoints writing a directory): staged
/// in `<directory>/_staging-<tag>/`, hidden from readers, and published together once the
/// whole job has succeeded. A failed job publishes nothing; an overwrite deletes the old
/// output only once the new files are in place.
///
/// ```
/// use rillet_connectors::files::commit::BatchStaging;
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("old.csv"), "x\n1\n").unwrap();
/// let staging = BatchStaging::new(dir.path(), "run1");
/// staging.prepare().unwrap();
/// std::fs::write(staging.path("run1-00000.csv"), "x\n2\n").unwrap();
/// assert!(!dir.path().join("run1-00000.csv").exists()); // staged: not visible yet
/// staging.publish(Some("csv"), false).unwrap(); // an overwrite of the directory's CSV files
/// assert!(dir.path().join("run1-00000.csv").exists());
/// assert!(!dir.path().join("old.csv").exists());
/// ```
#[derive(Debug, Clone)]
pub struct BatchStaging {
    directory: PathBuf,
    staging: PathBuf,
}

impl BatchStaging {
    /// The staging of a write into `directory` by the run tagged `tag`.
    pub fn new(directory: impl Into<PathBuf>, tag: &str) -> Self {
        let directory = directory.into();
        let staging = directory.join(format!("_staging-{tag}"));
        Self { directory, staging }
    }

    /// Create the directory and the staging directory.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.staging).map_err(|e| io_error("create", &self.staging, e))
    }

    /// Where a task writes the file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// Move every staged file into the directory (synced), then, for an overwrite
    /// (`replace`: the format's extension), delete the files of that extension that were
    /// there before (listed first, so a concurrent writer's new files stay; in the folders
    /// below too when the output is partitioned, `deep`). A failure while moving moves the
    /// published files back: nothing is left half-published. Staged files in folders
    /// (`year=2024/part.parquet`) keep their place below the directory. Returns the
    /// published names, relative to the directory.
    pub fn publish(&self, replace: Option<&str>, deep: bool) -> Result<Vec<String>> {
        let old = match replace {
            Some(extension) => self.files_with(extension, deep)?,
            None => Vec::new(),
        };
        let published = self.move_in()?;
        for path in old {
            // The new output is visible: a file that cannot go is a warning, not a
            // failure (a retry would write the output twice).
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("overwrite: cannot delete the old {}: {e}", path.display());
            }
        }
        if let Err(e) = durable::sync_dir(&self.directory) {
            tracing::warn!("cannot sync {}: {e}", self.directory.display());
        }
        Ok(published)
    }

    /// The directory's files with `extension` (and its folders', when `deep`; staging
    /// folders are never looked into).
    fn files_with(&self, extension: &str, deep: bool) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut folders = vec![self.directory.clone()];
        while let Some(folder) = folders.pop() {
            let listed = std::fs::read_dir(&folder).map_err(|e| io_error("list", &folder, e))?;
            for entry in listed {
                let path = entry.map_err(|e| io_error("list", &folder, e))?.path();
                if path.is_file() && path.extension().is_some_and(|e| e == extension) {
                    files.push(path);
                } else if deep && path.is_dir() && !is_staging(&path) {
                    folders.push(path);
                }
            }
        }
        Ok(files)
    }

    /// The staged files, relative to the staging directory, in order.
    fn staged(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut folders = vec![PathBuf::new()];
        while let Some(folder) = folders.pop() {
            let at = self.staging.join(&folder);
            let listed = std::fs::read_dir(&at).map_err(|e| io_error("list", &at, e))?;
            for entry in listed {
                let entry = entry.map_err(|e| io_error("list", &at, e))?;
                let relative = folder.join(entry.file_name());
                if entry.path().is_dir() {
                    folders.push(relative);
                } else {
                    files.push(relative);
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// Move the staged files in, synced (with any folder they need, created and synced);
    /// on a failure, move back those already moved.
    fn move_in(&self) -> Result<Vec<String>> {
        let files = self.staged()?;
        let mut moved: Vec<&PathBuf> = Vec::new();
        let mut folders = std::collections::BTreeSet::new();
        let result = files.iter().try_for_each(|name| {
            let (from, to) = (self.staging.join(name), self.directory.join(name));
            durable::sync_file(&from).map_err(|e| io_error("sync", &from, e))?;
            if let Some(folder) = to.parent().filter(|f| *f != self.directory) {
                std::fs::create_dir_all(folder).map_err(|e| io_error("create", folder, e))?;
                folders.insert(folder.to_path_buf());
            }
            std::fs::rename(&from, &to).map_err(|e| io_error("publish", &to, e))?;
            moved.push(name);
            Ok::<_, RilletError>(())
        });
        let result = result.and_then(|()| {
            for folder in &folders {
                durable::sync_dirs_up_to(&folder.join("_"), &self.directory)
                    .map_err(|e| io_error("sync", folder, e))?;
            }
            durable::sync_dir(&self.directory).map_err(|e| io_error("sync", &self.directory, e))
        });
        if let Err(e) = result {
            for name in moved {
                let _ = std::fs::rename(self.directory.join(name), self.staging.join(name));
            }
            return Err(e);
        }
        Ok(files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect())
    }

    /// Delete the staging directory and whatever is left in it (all of it, for a job
    /// that failed).
    pub fn discard(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot delete {}: {e}", self.staging.display());
        }
    }
}

/// A batch write's staging folder (`_staging-<tag>`), never part of the output.
fn is_staging(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("_staging-"))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> RilletError {
    RilletError::Io(std::io::Error::new(
        e.kind(),
        format!("cannot {what} {}: {e}", path.display()),
    ))
}

/// What the file names of job `job` in lineage `lineage` start with: `<job>-<lineage>-`,
/// or `<job>-` in a checkpoint store from before lineages (an empty lineage).
fn name_prefix(job: &str, lineage: &str) -> String {
    if lineage.is_empty() {
        format!("{job}-")
    } else {
        format!("{job}-{lineage}-")
    }
}

/// The epoch in a file name of the job and lineage whose names start with `prefix`
/// (`<job>-<lineage>-`): `<job>-<lineage>-<20 digits>-<task>-<seq>.<extension>`, the whole
/// rest of the name in exactly that shape. `None` for another job's or lineage's file,
/// even one whose id starts with this job's (`orders` and `orders-eu`) or looks like the
/// start of one of this job's names (`orders-00000000000000000005`): a job id adds a part
/// to the name, and every part after the prefix is accounted for.
fn epoch_of(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    let (stem, extension) = rest.split_once('.')?;
    let extension_ok = extension
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    let digits =
        |part: &str, min: usize| part.len() >= min && part.bytes().all(|b| b.is_ascii_digit());
    match stem.split('-').collect::<Vec<_>>().as_slice() {
        [epoch, task, seq]
            if extension_ok
                && epoch.len() == 20
                && digits(epoch, 20)
                && digits(task, 5)
                && digits(seq, 5) =>
        {
            epoch.parse().ok()
        }
        _ => None,
    }
}

fn remove_entry(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RilletError::Checkpoint(format!(
            "cannot delete {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lineage the tests' files are staged under.
    const L: &str = "0123456789ab";

    /// Tests that commit take this, so that one test's failpoint never fires in another.
    static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    fn stage(committer: &FileCommitter, checkpoint: u64, task: usize, rows: &[u64]) -> String {
        let name = FileCommitter::file_name("job", L, checkpoint, task, 0, "jsonl");
        let text: String = rows.iter().map(|r| format!("{{\"seq\": {r}}}\n")).collect();
        std::fs::write(committer.staging_path(&name), text).unwrap();
        name
    }

    /// The rows a reader of the output directory sees: its own files only, as readers
    /// skip the `_`-prefixed staging directory.
    fn visible_rows(dir: &Path) -> Vec<u64> {
        let mut rows: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        l.trim_start_matches("{\"seq\": ")
                            .trim_end_matches('}')
                            .parse()
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn staged_rows_appear_only_when_their_checkpoint_commits() {
        let _serial = SERIAL.lock();
        let dir = tempfile::tempdir().unwrap();
        let committer = FileCommitter::new(dir.path()).unwrap();
        let first = FileTransaction {
            checkpoint: 1,
            files: vec![
                stage(&committer, 1, 0, &[1, 2]),
                stage(&committer, 1, 1, &[3]),
            ],
        };
        assert!(visible_rows(dir.path()).is_empty());
        assert_eq!(
            committer.commit(&first).unwrap(),
            CommitReport {
                committed: 2,
                already_committed: 0
            }
        );
        assert_eq!(visible_rows(dir.path()), vec![1, 2, 3]);
        stage(&committer, 2, 0, &[4]);
        assert_eq!(visible_rows(dir.path()), vec![1, 2, 3]);
    }

    #[test]
    fn a_crash_mid_commit_is_finished_by_committing_again_exactly_once() {
        let _serial = SERIAL.lock();
        let dir = tempfile::tempdir().unwrap();
        let committer = FileCommitter::new(dir.path()).unwrap();
        let transaction = FileTransaction {
            checkpoint: 3,
            files: (0..3)
                .map(|task| stage(&committer, 3, task, &[task as u64 * 10]))
                .collect(),
        };
        // The crash: after the first rename.
        let scenario = fail::FailScenario::setup();
        fail::cfg("file-sink-between-renames", "return").unwrap();
        assert!(committer.commit(&transaction).is_err());
        scenario.teardown();
        assert_eq!(visible_rows(dir.path()), vec![0]);
        // Recovery commits the restored transaction again.
        let report = committer.commit(&transaction).unwrap();
        assert_eq!(
            report,
            CommitReport {
                committed: 2,
                already_committed: 1
            }
        );
        assert_eq!(visible_rows(dir.path()), vec![0, 10, 20]);
        // And once more, as if the commit's answer was lost: still exactly once.
        assert_eq!(committer.commit(&transaction).unwrap().already_committed, 3);
        assert_eq!(visible_rows(dir.path()), vec![0, 10, 20]);
    }

    #[test]
    fn recovery_discards_what_uncompleted_checkpoints_staged() {
        let _serial = SERIAL.lock();
        let dir = tempfile::tempdir().unwrap();
        let committer = FileCommitter::new(dir.path()).unwrap();
        let restored = FileTransaction {
            checkpoint: 5,
            files: vec![stage(&committer, 5, 0, &[1])],
        };
        let abandoned = stage(&committer, 6, 0, &[2]);
        // A write a crash cut short leaves whatever it left, a directory included.
        let half = FileCommitter::file_name("job", L, 6, 1, 0, "jsonl.tmp");
        std::fs::create_dir(committer.staging_path(&half)).unwrap();
        // Another job staging into the same directory keeps its files, even one whose id
        // starts with this job's.
        let other = FileCommitter::file_name("job-eu", L, 6, 0, 0, "jsonl");
        std::fs::write(committer.staging_path(&other), "").unwrap();
        let discarded = committer
            .discard_except("job", L, std::slice::from_ref(&restored))
            .unwrap();
        let mut want = vec![abandoned, half];
        want.sort();
        assert_eq!(discarded, want);
        committer.commit(&restored).unwrap();
        assert_eq!(visible_rows(dir.path()), vec![1]);
        assert!(committer.discard_except("job", L, &[]).unwrap().is_empty());
        assert!(committer.staging_path(&other).exists());
    }

    #[test]
    fn a_file_neither_staged_nor_committed_is_an_error_not_a_silent_loss() {
        let _serial = SERIAL.lock();
        let dir = tempfile::tempdir().unwrap();
        let committer = FileCommitter::new(dir.path()).unwrap();
        let missing = FileTransaction {
            checkpoint: 9,
            files: vec![FileCommitter::file_name("job", L, 9, 0, 0, "jsonl")],
        };
        let err = committer.commit(&missing).unwrap_err();
        assert!(err.to_string().contains("rows are lost"), "{err}");
        let bytes = missing.to_bytes();
        assert_eq!(FileTransaction::from_bytes(&bytes).unwrap(), missing);
        assert!(FileTransaction::from_bytes(b"{").is_err());
    }

    /// A job id may itself look like the start of another job's file name:
    /// `orders-00000000000000000005`'s files are not epoch 5 of job `orders`, and
    /// neither a withdrawal nor a discard of `orders` touches them.
    #[test]
    fn a_job_whose_id_looks_like_another_jobs_file_name_keeps_its_files() {
        let _serial = SERIAL.lock();
        let dir = tempfile::tempdir().unwrap();
        let committer = FileCommitter::new(dir.path()).unwrap();
        let others = [
            FileCommitter::file_name("orders-00000000000000000005", L, 1, 0, 0, "parquet"),
            FileCommitter::file_name("orders-00000000000000000005-00000", L, 2, 0, 0, "parquet"),
            FileCommitter::file_name(
                "orders-00000000000000000005-00000-00000.x",
                L,
                3,
                0,
                0,
                "csv",
            ),
            // A job whose id is this job's with its lineage, and this job in another
            // lineage (a run without checkpoints, another checkpoint location).
            FileCommitter::file_name(&format!("orders-{L}"), "ba9876543210", 4, 0, 0, "parquet"),
            FileCommitter::file_name("orders", "ba9876543210", 9, 0, 0, "parquet"),
        ];
        for name in &others {
            std::fs::write(dir.path().join(name), "").unwrap();
            std::fs::write(committer.staging_path(name), "").unwrap();
        }
        let mine = FileCommitter::file_name("orders", L, 7, 0, 0, "parquet");
        std::fs::write(dir.path().join(&mine), "").unwrap();
        assert_eq!(
            committer.withdraw_after("orders", L, None).unwrap(),
            vec![mine]
        );
        assert!(
            committer
                .discard_except("orders", L, &[])
                .unwrap()
                .is_empty()
        );
        // A store from before lineages names files without one, and touches only those.
        let legacy = FileCommitter::file_name("orders", "", 8, 0, 0, "parquet");
        assert_eq!(legacy, "orders-00000000000000000008-00000-00000.parquet");
        std::fs::write(dir.path().join(&legacy), "").unwrap();
        assert_eq!(
            committer.withdraw_after("orders", "", None).unwrap(),
            vec![legacy]
        );
        for name in &others {
            assert!(dir.path().join(name).exists(), "{name} withdrawn");
            assert!(committer.staging_path(name).exists(), "{name} discarded");
        }
    }
}
