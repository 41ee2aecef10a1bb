//! The checkpoint store: writing, listing, validating, restoring and pruning snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rillet_common::{Result, RilletError};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use crate::local::DurableLocal;
use crate::timeline::retired_error;

/// The manifest's file name; a leading underscore keeps it apart from artifact names.
const MANIFEST: &str = "_manifest";
/// What the manifest's last line starts with: the checksum of everything before it.
const CHECKSUM_LINE: &str = "xxh3:";
/// The manifest format this crate writes and reads.
const FORMAT: u32 = 1;

/// What a snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Taken periodically by the job; pruned to the last N.
    Checkpoint,
    /// Taken when a user asked (`stop(savepoint=True)`); kept until the user deletes it.
    Savepoint,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Checkpoint => "chk-",
            Kind::Savepoint => "savepoint-",
        }
    }

    /// The snapshot directory name of `id`: zero-padded, so names sort as ids do.
    pub fn directory(self, id: u64) -> String {
        format!("{}{id:020}", self.prefix())
    }

    /// The kind and id a snapshot directory name (`chk-<id>`, `savepoint-<id>`) stands for.
    pub fn parse_directory(name: &str) -> Option<(Kind, u64)> {
        [Kind::Checkpoint, Kind::Savepoint]
            .into_iter()
            .find_map(|kind| Some((kind, name.strip_prefix(kind.prefix())?.parse().ok()?)))
    }
}

/// One artifact as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// Name within the snapshot (letters, digits, `.`, `-`, `_`; not starting with `_`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// XXH3-64 of the bytes, as 16 hex digits.
    pub xxh3: String,
}

/// What a complete snapshot holds, written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The job the snapshot belongs to.
    pub job: String,
    /// The snapshot's id, increasing within the job.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: Kind,
    /// When the manifest was written, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Every artifact, in the order they were written.
    pub artifacts: Vec<ArtifactInfo>,
    /// Small facts the job records with the snapshot (its plan's fingerprint, the
    /// sources' watermarks, ...).
    pub properties: BTreeMap<String, String>,
}

/// A snapshot read back and checked: its manifest and every artifact's bytes.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The manifest.
    pub manifest: Manifest,
    artifacts: BTreeMap<String, Bytes>,
}

impl Checkpoint {
    /// The bytes of artifact `name`, if the snapshot has one by that name.
    pub fn artifact(&self, name: &str) -> Option<&Bytes> {
        self.artifacts.get(name)
    }
}

/// The newest checkpoint that passed its checks, with those skipped to reach it.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The checkpoint to restore.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints passed over, newest first, each with the reason (incomplete,
    /// a checksum mismatch, a missing artifact, ...).
    pub skipped: Vec<(u64, String)>,
}

/// A snapshot directory as listed, before any check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotInfo {
    /// Checkpoint or savepoint.
    pub kind: Kind,
    /// Its id.
    pub id: u64,
    /// Whether its manifest exists (it may still fail its checks).
    pub has_manifest: bool,
}

/// A job's snapshots in one location (see the crate docs for the layout and the rules).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The job's directory within `store`.
    pub(crate) root: ObjectPath,
    pub(crate) job: String,
    /// Where the snapshots are, as the user gave it (for messages and snapshot paths).
    pub(crate) location: String,
    /// The job's directory when the location is local: object stores have no directories,
    /// but a file system keeps a deleted snapshot's directory (and the staging file of a
    /// write a crash cut short), which must go too.
    local_root: Option<std::path::PathBuf>,
}

fn storage_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RilletError {
    RilletError::Checkpoint(format!("{what}: {e}"))
}

/// `name` is a valid job id or artifact name: a single path segment of plain characters.
pub(crate) fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && name != "."
        && name != ".."
}

fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", XxHash3_64::oneshot(bytes))
}

impl CheckpointStore {
    /// The snapshots of `job` under `location`: a local directory (created if missing) or
    /// an `s3://bucket/prefix` URL.
    pub fn open(location: &str, job: &str) -> Result<Self> {
        if !plain_name(job) {
            return Err(RilletError::invalid_argument(format!(
                "job id {job:?} must be letters, digits, '.', '-' or '_'"
            )));
        }
        let (store, prefix, local_dir) = Self::open_location(location, true)?;
        Ok(Self {
            store,
            root: prefix.clone().join(job),
            job: job.to_string(),
            location: location.to_string(),
            local_root: local_dir.map(|dir| dir.join(job)),
        })
    }

    /// The object store of `location` (created if missing and `create`, when local), the
    /// prefix within it, and the local directory when it is one.
    pub(crate) fn open_location(
        location: &str,
        create: bool,
    ) -> Result<(Arc<dyn ObjectStore>, ObjectPath, Option<std::path::PathBuf>)> {
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            let (store, prefix) = rillet_io::store_for(location)?;
            return Ok((store, prefix, None));
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        if create {
            // The highest directory the create makes: its parent must hold its name.
            let absolute = std::path::absolute(dir)
                .map_err(|e| storage_error(format!("cannot resolve {dir}"), e))?;
            let highest_new = absolute
                .ancestors()
                .take_while(|d| !d.exists())
                .last()
                .map(std::path::Path::to_path_buf);
            std::fs::create_dir_all(dir).map_err(|e| {
                storage_error(format!("cannot create checkpoint directory {dir}"), e)
            })?;
            if let Some(top) = highest_new.as_deref().and_then(std::path::Path::parent) {
                rillet_common::durable::sync_dirs_up_to(&absolute.join("_"), top)
                    .map_err(|e| storage_error(format!("cannot sync {dir}"), e))?;
            }
        } else if !std::path::Path::new(dir).is_dir() {
            return Err(RilletError::Checkpoint(format!(
                "no checkpoint directory {dir}"
            )));
        }
        let local = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| storage_error(format!("cannot use directory {dir}"), e))?;
        Ok((
            Arc::new(DurableLocal::new(local, std::path::PathBuf::from(dir))),
            ObjectPath::default(),
            Some(std::path::PathBuf::from(dir)),
        ))
    }

    /// The job this store holds snapshots of.
    pub fn job(&self) -> &str {
        &self.job
    }

    fn snapshot_path(&self, kind: Kind, id: u64) -> ObjectPath {
        self.root.clone().join(kind.directory(id))
    }

    /// A writer for a new snapshot `id` of `kind`: artifacts first, then
    /// [`commit`](CheckpointWriter::commit).
    pub fn writer(&self, kind: Kind, id: u64) -> CheckpointWriter {
        CheckpointWriter {
            store: self.clone(),
            kind,
            id,
            artifacts: Vec::new(),
        }
    }

    /// Every snapshot directory of the job, complete or not, by kind then id.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>> {
        // One listing of every object, rather than one request per snapshot for its
        // manifest: `<root>/<snapshot>/<object>`.
        let objects: Vec<_> = self
            .store
            .list(Some(&self.root))
            .try_collect()
            .await
            .map_err(|e| storage_error(format!("cannot list {}", self.location), e))?;
        let mut found: BTreeMap<(Kind, u64), bool> = BTreeMap::new();
        for object in objects {
            let Some(inside) = object.location.prefix_match(&self.root) else {
                continue;
            };
            let parts: Vec<_> = inside.collect();
            let [directory, file] = parts.as_slice() else {
                continue;
            };
            if let Some(snapshot) = Kind::parse_directory(directory.as_ref()) {
                *found.entry(snapshot).or_default() |= file.as_ref() == MANIFEST;
            }
        }
        Ok(found
            .into_iter()
            .map(|((kind, id), has_manifest)| SnapshotInfo {
                kind,
                id,
                has_manifest,
            })
            .collect())
    }

    /// The id for the next snapshot: above every id in use, complete or not, and above
    /// every id used up by a going back in time (see [`crate::timeline`]), so a new
    /// snapshot never reuses the id of an abandoned or discarded one (sinks may have
    /// recorded their commits under it).
    pub async fn next_id(&self) -> Result<u64> {
        let in_use = self.list().await?.iter().map(|s| s.id + 1).max();
        let used_up = self.timeline().await?.through().map(|id| id + 1);
        Ok(in_use.max(used_up).unwrap_or(1))
    }

    /// Read snapshot `id` of `kind` and check it: not retired by a going back in time
    /// (see [`crate::timeline`]), the manifest's own checksum, its job and id, and every
    /// artifact's size and checksum. The error says what failed.
    pub async fn load(&self, kind: Kind, id: u64) -> Result<Checkpoint> {
        if let Some(rewind) = self.timeline().await?.retired_by(id) {
            return Err(retired_error(self, kind, id, rewind));
        }
        self.load_unretired(kind, id).await
    }

    async fn load_unretired(&self, kind: Kind, id: u64) -> Result<Checkpoint> {
        let dir = self.snapshot_path(kind, id);
        let manifest_path = dir.clone().join(MANIFEST);
        let bytes = match self.read(&manifest_path).await {
            Ok(bytes) => bytes,
            Err(ReadError::NotFound) => {
                return Err(RilletError::Checkpoint(format!(
                    "{} of job {} is incomplete or missing: it has no manifest",
                    kind.directory(id),
                    self.job
                )));
            }
            Err(ReadError::Other(e)) => return Err(e),
        };
        let manifest = parse_manifest(&bytes, manifest_path.as_ref())?;
        if manifest.job != self.job || manifest.id != id || manifest.kind != kind {
            return Err(RilletError::Checkpoint(format!(
                "{manifest_path} describes {:?} {} of job {:?}, not {kind:?} {id} of {:?}",
                manifest.kind, manifest.id, manifest.job, self.job
            )));
        }
        let mut artifacts = BTreeMap::new();
        for info in &manifest.artifacts {
            let path = dir.clone().join(info.name.as_str());
            // A restore whose download breaks off midway: the snapshot cannot be trusted
            // and the next older one is tried.
            fail::fail_point!("checkpoint-restore-load", |_| {
                Err(RilletError::Checkpoint(format!(
                    "failpoint checkpoint-restore-load at {path}"
                )))
            });
            let bytes = match self.read(&path).await {
                Ok(bytes) => bytes,
                Err(ReadError::NotFound) => {
                    return Err(RilletError::Checkpoint(format!(
                        "artifact {path} is missing"
                    )));
                }
                Err(ReadError::Other(e)) => return Err(e),
            };
            if bytes.len() as u64 != info.size || checksum(&bytes) != info.xxh3 {
                return Err(RilletError::Checkpoint(format!(
                    "artifact {path} is corrupt: {} bytes with checksum {}, the manifest \
                     says {} bytes with {}",
                    bytes.len(),
                    checksum(&bytes),
                    info.size,
                    info.xxh3
                )));
            }
            artifacts.insert(info.name.clone(), bytes);
        }
        Ok(Checkpoint {
            manifest,
            artifacts,
        })
    }

    /// The newest snapshot, checkpoint or savepoint (their ids share one sequence), that
    /// passes [`load`](Self::load)'s checks, with every newer one it passed over and why;
    /// `None` when none passes. A job stopped with a savepoint thus resumes from it.
    pub async fn latest(&self) -> Result<Option<Restored>> {
        let mut skipped = Vec::new();
        let mut snapshots = self.list().await?;
        snapshots.sort_by_key(|s| s.id);
        let timeline = self.timeline().await?;
        for info in snapshots.iter().rev() {
            if let Some(rewind) = timeline.retired_by(info.id) {
                let reason = retired_error(self, info.kind, info.id, rewind).to_string();
                skipped.push((info.id, reason));
                continue;
            }
            match self.load_unretired(info.kind, info.id).await {
                Ok(checkpoint) => {
                    return Ok(Some(Restored {
                        checkpoint,
                        skipped,
                    }));
                }
                Err(RilletError::Checkpoint(reason)) => skipped.push((info.id, reason)),
                Err(other) => return Err(other),
            }
        }
        Ok(None)
    }

    /// Keep the newest `retain` complete checkpoints (at least one) and delete the rest:
    /// older complete ones, and incomplete ones older than the newest complete one (those
    /// were abandoned; a newer incomplete one may still be being written). Savepoints are
    /// never deleted. Returns the deleted checkpoint ids.
    ///
    /// Retention counts checkpoints with a manifest, without reading their artifacts: a
    /// checkpoint damaged after it was written still counts. Keep at least 2, so that one
    /// has a predecessor to fall back to.
    pub async fn prune(&self, retain: usize) -> Result<Vec<u64>> {
        let checkpoints: Vec<SnapshotInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.kind == Kind::Checkpoint)
            .collect();
        let complete: Vec<u64> = checkpoints
            .iter()
            .filter(|s| s.has_manifest)
            .map(|s| s.id)
            .collect();
        let Some(&newest_complete) = complete.last() else {
            return Ok(Vec::new());
        };
        let oldest_kept = complete[complete.len().saturating_sub(retain.max(1))];
        let mut deleted = Vec::new();
        for info in checkpoints {
            let drop = if info.has_manifest {
                info.id < oldest_kept
            } else {
                info.id < newest_complete
            };
            if drop {
                self.delete(Kind::Checkpoint, info.id).await?;
                deleted.push(info.id);
            }
        }
        Ok(deleted)
    }

    /// Delete snapshot `id` of `kind`: its manifest first, so that from that moment it is
    /// incomplete and never restored, then its artifacts.
    pub async fn delete(&self, kind: Kind, id: u64) -> Result<()> {
        let dir = self.snapshot_path(kind, id);
        let manifest = dir.clone().join(MANIFEST);
        self.delete_object(&manifest).await?;
        let objects: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| storage_error(format!("cannot list {dir}"), e))?;
        for object in objects {
            self.delete_object(&object.location).await?;
        }
        if let Some(root) = &self.local_root {
            // Also takes a write's staging file left by a crash in the middle of it.
            let empty = root.join(kind.directory(id));
            match std::fs::remove_dir_all(&empty) {
                Ok(()) => rillet_common::durable::sync_dir(root)
                    .map_err(|e| storage_error(format!("cannot sync {}", root.display()), e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(storage_error(
                        format!("cannot delete {}", empty.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Delete one object; one already gone is no error.
    pub(crate) async fn delete_object(&self, path: &ObjectPath) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(format!("cannot delete {path}"), e)),
        }
    }

    /// The bytes at `path`. A failure to read (an unreachable store, a throttled request)
    /// is [`RilletError::Io`], not [`RilletError::Checkpoint`]: it says nothing about the
    /// snapshot, so a restore fails and is tried again rather than passing the snapshot
    /// over as damaged (which would withdraw its output and retire the newer savepoints).
    pub(crate) async fn read(&self, path: &ObjectPath) -> std::result::Result<Bytes, ReadError> {
        let unreadable = |e: object_store::Error| {
            ReadError::Other(RilletError::Io(std::io::Error::other(format!(
                "cannot read {path} from {}: {e}; nothing was restored, start the job again \
                 once the store answers",
                self.location
            ))))
        };
        let got = match self.store.get(path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(ReadError::NotFound),
            Err(e) => return Err(unreadable(e)),
        };
        got.bytes().await.map_err(unreadable)
    }

    pub(crate) async fn write(&self, path: &ObjectPath, bytes: Bytes) -> Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| storage_error(format!("cannot write {path}"), e))
    }
}

impl CheckpointStore {
    /// Write `bytes` to `path` unless an object is there already: `false` when one was.
    /// Atomic on a local directory and on object stores with conditional writes; on one
    /// without, a check then a write (two writers at the same instant can both win).
    pub(crate) async fn put_if_absent(&self, path: &ObjectPath, bytes: Bytes) -> Result<bool> {
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes.clone()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => match self.store.head(path).await {
                Ok(_) => Ok(false),
                Err(object_store::Error::NotFound { .. }) => {
                    self.write(path, bytes).await.map(|()| true)
                }
                Err(e) => Err(storage_error(format!("cannot read {path}"), e)),
            },
            Err(e) => Err(storage_error(format!("cannot write {path}"), e)),
        }
    }
}

pub(crate) enum ReadError {
    NotFound,
    Other(RilletError),
}

/// The manifest in `bytes`, after checking the checksum on its last line and, before
/// anything else of its body, its format: a manifest of another format is
/// [`RilletError::IncompatibleState`], any other failure [`RilletError::Checkpoint`] (damage,
/// which a restore falls back past). `path` names it in the errors.
fn parse_manifest(bytes: &[u8], path: &str) -> Result<Manifest> {
    let damaged = |what: String| RilletError::Checkpoint(format!("{path}: {what}"));
    let text = std::str::from_utf8(bytes).map_err(|_| damaged("not UTF-8 text".into()))?;
    let truncated = || damaged("no checksum line: the manifest is truncated".into());
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .ok_or_else(truncated)?;
    let (body, last) = text.split_at(body_end + 1);
    let expected = last
        .trim_end()
        .strip_prefix(CHECKSUM_LINE)
        .ok_or_else(truncated)?;
    let actual = checksum(body.as_bytes());
    if actual != expected {
        return Err(damaged(format!(
            "checksum mismatch (stored {expected}, computed {actual}): the manifest is corrupt"
        )));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| damaged(format!("unreadable manifest: {e}")))?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        let found = format.map_or_else(|| "none".to_string(), |f| f.to_string());
        return Err(RilletError::IncompatibleState(format!(
            "{path}: manifest format {found}, and this build reads format {FORMAT}: written \
             by another Rillet version; restore it with that version, or start the job \
             under a new job id or checkpoint location"
        )));
    }
    serde_json::from_value(value).map_err(|e| damaged(format!("unreadable manifest: {e}")))
}

/// Fuzzing entry point (not an API): parse `body` as a manifest twice, once as it is
/// and once behind the checksum line it needs, so that the fuzzer reaches the JSON;
/// whether the sealed one parsed. Any outcome but a panic is fine.
#[doc(hidden)]
pub fn fuzz_manifest(body: &[u8]) -> bool {
    let _ = parse_manifest(body, "fuzz");
    let mut sealed = body.to_vec();
    sealed.extend_from_slice(format!("{CHECKSUM_LINE}{}\n", checksum(body)).as_bytes());
    parse_manifest(&sealed, "fuzz").is_ok()
}

/// Writes one snapshot: [`put`](Self::put) each artifact, then [`commit`](Self::commit)
/// writes the manifest. Dropped without a commit, the snapshot stays incomplete and is
/// never restored ([`CheckpointStore::prune`] removes it).
#[derive(Debug)]
pub struct CheckpointWriter {
    store: CheckpointStore,
    kind: Kind,
    id: u64,
    artifacts: Vec<ArtifactInfo>,
}

impl CheckpointWriter {
    /// The snapshot's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Write artifact `name` (letters, digits, `.`, `-`, `_`, not starting with `_`; once
    /// per snapshot).
    pub async fn put(&mut self, name: &str, bytes: impl Into<Bytes>) -> Result<()> {
        if !plain_name(name) || name.starts_with('_') {
            return Err(RilletError::invalid_argument(format!(
                "artifact name {name:?} must be letters, digits, '.', '-' or '_', not \
                 starting with '_'"
            )));
        }
        if self.artifacts.iter().any(|a| a.name == name) {
            return Err(RilletError::invalid_argument(format!(
                "artifact {name:?} was already written to {} {}",
                self.kind.directory(self.id),
                self.store.job
            )));
        }
        let bytes: Bytes = bytes.into();
        let info = ArtifactInfo {
            name: name.to_string(),
            size: bytes.len() as u64,
            xxh3: checksum(&bytes),
        };
        let path = self.store.snapshot_path(self.kind, self.id).join(name);
        // An upload that fails (a full disk, an object store error): the checkpoint is
        // abandoned, the job goes on.
        fail::fail_point!("checkpoint-artifact-upload", |_| {
            Err(RilletError::Checkpoint(
                "failpoint checkpoint-artifact-upload".into(),
            ))
        });
        self.store.write(&path, bytes).await?;
        self.artifacts.push(info);
        Ok(())
    }

    /// Write the manifest, which makes the snapshot complete, and return it. Fails if a
    /// complete snapshot with this id exists already (ids are never reused).
    pub async fn commit(self, properties: BTreeMap<String, String>) -> Result<Manifest> {
        let path = self.store.snapshot_path(self.kind, self.id).join(MANIFEST);
        match self.store.store.head(&path).await {
            Ok(_) => {
                return Err(RilletError::Checkpoint(format!(
                    "{} of job {} is already complete; snapshot ids are never reused",
                    self.kind.directory(self.id),
                    self.store.job
                )));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_error(format!("cannot read {path}"), e)),
        }
        // The window between the last artifact and the manifest: a crash here leaves an
        // incomplete snapshot that restores skip.
        fail::fail_point!("checkpoint-before-manifest", |_| {
            Err(RilletError::Checkpoint(
                "failpoint checkpoint-before-manifest".into(),
            ))
        });
        let manifest = Manifest {
            format: FORMAT,
            job: self.store.job.clone(),
            id: self.id,
            kind: self.kind,
            created_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            artifacts: self.artifacts,
            properties,
        };
        let mut text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| RilletError::internal(format!("cannot encode a manifest: {e}")))?;
        text.push('\n');
        let sum = checksum(text.as_bytes());
        text.push_str(CHECKSUM_LINE);
        text.push_str(&sum);
        text.push('\n');
        // Created, never replaced: a run that lost its claim and writes this id at the
        // same moment as the run that took the job over does not replace its manifest.
        if !self.store.put_if_absent(&path, Bytes::from(text)).await? {
            return Err(RilletError::Checkpoint(format!(
                "{} of job {} was completed by another run meanwhile",
                self.kind.directory(self.id),
                self.store.job
            )));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Tests that commit take this, so that one test's failpoint never fires in another.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn the_checkpoint_manifest_corpus_replays_without_a_panic() {
        rillet_common::fuzzing::replay("checkpoint_manifest", fuzz_manifest);
    }

    async fn take(store: &CheckpointStore, states: &[(&str, &str)]) -> u64 {
        let id = store.next_id().await.unwrap();
        let mut writer = store.writer(Kind::Checkpoint, id);
        for (name, state) in states {
            writer.put(name, state.as_bytes().to_vec()).await.unwrap();
        }
        writer.commit(BTreeMap::new()).await.unwrap();
        id
    }

    fn snapshot_dir(root: &Path, kind: Kind, id: u64) -> PathBuf {
        root.join("job").join(kind.directory(id))
    }

    fn text(checkpoint: &Checkpoint, name: &str) -> String {
        String::from_utf8(checkpoint.artifact(name).unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_newest_complete_checkpoint_is_restored_with_every_artifact() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        assert!(store.latest().await.unwrap().is_none());
        assert_eq!(take(&store, &[("a", "1"), ("b", "one")]).await, 1);
        assert_eq!(take(&store, &[("a", "2"), ("b", "two")]).await, 2);
        let restored = store.latest().await.unwrap().unwrap();
        assert!(restored.skipped.is_empty());
        assert_eq!(restored.checkpoint.manifest.id, 2);
        assert_eq!(text(&restored.checkpoint, "a"), "2");
        assert_eq!(text(&restored.checkpoint, "b"), "two");
        assert!(restored.checkpoint.artifact("c").is_none());
        // Another job in the same location sees none of them.
        let other = CheckpointStore::open(dir.path().to_str().unwrap(), "other").unwrap();
        assert!(other.latest().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_corrupt_or_partial_checkpoint_falls_back_to_the_one_before() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        for n in 1..=4 {
            take(&store, &[("state", &format!("state {n}"))]).await;
        }
        // 4: one bit of the artifact flipped.
        let artifact = snapshot_dir(dir.path(), Kind::Checkpoint, 4).join("state");
        let mut bytes = std::fs::read(&artifact).unwrap();
        bytes[0] ^= 0x01;
        std::fs::write(&artifact, bytes).unwrap();
        // 3: the manifest cut short.
        let manifest = snapshot_dir(dir.path(), Kind::Checkpoint, 3).join(MANIFEST);
        let bytes = std::fs::read(&manifest).unwrap();
        std::fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();
        // 5: artifacts written, no manifest (a crash before the commit).
        let mut writer = store.writer(Kind::Checkpoint, 5);
        writer.put("state", b"state 5".to_vec()).await.unwrap();
        drop(writer);

        let restored = store.latest().await.unwrap().unwrap();
        assert_eq!(restored.checkpoint.manifest.id, 2);
        assert_eq!(text(&restored.checkpoint, "state"), "state 2");
        let reasons: Vec<(u64, &str)> = restored
            .skipped
            .iter()
            .map(|(id, r)| (*id, r.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].0 == 5 && reasons[0].1.contains("no manifest"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].0 == 4 && reasons[1].1.contains("corrupt"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].0 == 3 && reasons[2].1.contains("manifest"),
            "{reasons:?}"
        );
        // A new checkpoint takes an id above the abandoned one.
        assert_eq!(store.next_id().await.unwrap(), 6);
    }

    #[tokio::test]
    async fn a_missing_artifact_or_a_foreign_manifest_is_not_restored() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        take(&store, &[("a", "1")]).await;
        take(&store, &[("a", "2")]).await;
        std::fs::remove_file(snapshot_dir(dir.path(), Kind::Checkpoint, 2).join("a")).unwrap();
        let err = store.load(Kind::Checkpoint, 2).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // Checkpoint 1's manifest copied over 2's: its checksum holds, its id does not.
        std::fs::copy(
            snapshot_dir(dir.path(), Kind::Checkpoint, 1).join(MANIFEST),
            snapshot_dir(dir.path(), Kind::Checkpoint, 2).join(MANIFEST),
        )
        .unwrap();
        let err = store.load(Kind::Checkpoint, 2).await.unwrap_err();
        assert!(err.to_string().contains("not Checkpoint 2"), "{err}");
        assert_eq!(
            store
                .latest()
                .await
                .unwrap()
                .unwrap()
                .checkpoint
                .manifest
                .id,
            1
        );
    }

    #[tokio::test]
    async fn ids_of_discarded_snapshots_never_come_round_again() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        for _ in 0..3 {
            take(&store, &[("s", "x")]).await;
        }
        // Going back to 1: 2 and 3 are discarded, their ids used up.
        let rewound = store.rewind_to(1).await.unwrap();
        assert_eq!(rewound.deleted, vec![2, 3]);
        assert_eq!(store.next_id().await.unwrap(), 4);
        assert_eq!(store.rewind_to(1).await.unwrap(), Default::default()); // nothing newer
        assert_eq!(store.next_id().await.unwrap(), 4);
        assert_eq!(
            store
                .latest()
                .await
                .unwrap()
                .unwrap()
                .checkpoint
                .manifest
                .id,
            1
        );
    }

    #[tokio::test]
    async fn pruning_keeps_the_last_n_and_savepoints_and_a_checkpoint_in_progress() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        take(&store, &[("s", "1")]).await;
        // 2: abandoned (no manifest), older than the newest complete one.
        store
            .writer(Kind::Checkpoint, 2)
            .put("s", b"2".to_vec())
            .await
            .unwrap();
        let mut savepoint = store.writer(Kind::Savepoint, 3);
        savepoint.put("s", b"saved".to_vec()).await.unwrap();
        savepoint.commit(BTreeMap::new()).await.unwrap();
        for _ in 0..3 {
            take(&store, &[("s", "later")]).await;
        }
        // 7: in progress, newer than every complete one.
        store
            .writer(Kind::Checkpoint, 7)
            .put("s", b"7".to_vec())
            .await
            .unwrap();

        let deleted = store.prune(2).await.unwrap();
        assert_eq!(deleted, vec![1, 2, 4]);
        let left: Vec<(Kind, u64, bool)> = store
            .list()
            .await
            .unwrap()
            .iter()
            .map(|s| (s.kind, s.id, s.has_manifest))
            .collect();
        assert_eq!(
            left,
            vec![
                (Kind::Checkpoint, 5, true),
                (Kind::Checkpoint, 6, true),
                (Kind::Checkpoint, 7, false),
                (Kind::Savepoint, 3, true),
            ]
        );
        assert!(
            !snapshot_dir(dir.path(), Kind::Checkpoint, 1)
                .join("s")
                .exists()
        );
        let saved = store.load(Kind::Savepoint, 3).await.unwrap();
        assert_eq!(text(&saved, "s"), "saved");
        // Retaining zero still keeps the newest complete checkpoint.
        assert_eq!(store.prune(0).await.unwrap(), vec![5]);
    }

    /// A snapshot written by a newer format is not damage to fall back past (that would
    /// end at no snapshot: a restart from zero that withdraws every committed output): the
    /// restore refuses to start and says which version to use, even when the newer
    /// manifest's fields no longer parse as this version's.
    #[tokio::test]
    async fn a_snapshot_of_an_unknown_format_refuses_the_restore_instead_of_being_skipped() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        take(&store, &[("s", "one")]).await;
        take(&store, &[("s", "two")]).await;
        for newer in [
            r#"{"format":2,"job":"job","id":2,"kind":"checkpoint","created_ms":0,"artifacts":[],"properties":{}}"#,
            r#"{"format":2,"snapshot":{"of":"job"}}"#,
        ] {
            let body = format!("{newer}\n");
            let sealed = format!("{body}{CHECKSUM_LINE}{}\n", checksum(body.as_bytes()));
            let manifest = snapshot_dir(dir.path(), Kind::Checkpoint, 2).join(MANIFEST);
            std::fs::write(&manifest, sealed).unwrap();
            let err = match store.latest().await {
                Err(e) => e.to_string(),
                Ok(found) => panic!(
                    "restored past a newer format: {:?}",
                    found.map(|r| r.skipped)
                ),
            };
            assert!(
                err.contains("format 2") && err.contains("another Rillet version"),
                "{err}"
            );
            let err = store.load(Kind::Checkpoint, 2).await.unwrap_err();
            assert!(!matches!(err, RilletError::Checkpoint(_)), "{err:?}");
        }
    }

    #[tokio::test]
    async fn a_crash_before_the_manifest_leaves_the_previous_checkpoint_current() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        take(&store, &[("s", "before")]).await;
        let scenario = fail::FailScenario::setup();
        fail::cfg("checkpoint-before-manifest", "return").unwrap();
        let mut writer = store.writer(Kind::Checkpoint, 2);
        writer.put("s", b"after".to_vec()).await.unwrap();
        let err = writer.commit(BTreeMap::new()).await.unwrap_err();
        assert!(
            err.to_string().contains("checkpoint-before-manifest"),
            "{err}"
        );
        scenario.teardown();
        let restored = store.latest().await.unwrap().unwrap();
        assert_eq!(restored.checkpoint.manifest.id, 1);
        assert_eq!(text(&restored.checkpoint, "s"), "before");
        assert_eq!(restored.skipped.len(), 1);
        // The id is not reused; the next checkpoint completes.
        assert_eq!(take(&store, &[("s", "next")]).await, 3);
    }

    #[tokio::test]
    async fn bad_names_and_reused_ids_are_refused_with_the_reason() {
        let _serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        for job in ["", "a/b", "..", "job id"] {
            let err = CheckpointStore::open(location, job).unwrap_err();
            assert!(err.to_string().contains("job id"), "{err}");
        }
        let store = CheckpointStore::open(location, "job").unwrap();
        let mut writer = store.writer(Kind::Checkpoint, 1);
        for name in ["_manifest", "a/b", ""] {
            let err = writer.put(name, b"x".to_vec()).await.unwrap_err();
            assert!(err.to_string().contains("artifact name"), "{err}");
        }
        writer.put("a", b"x".to_vec()).await.unwrap();
        let err = writer.put("a", b"y".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains("already written"), "{err}");
        writer.commit(BTreeMap::new()).await.unwrap();
        let err = store
            .writer(Kind::Checkpoint, 1)
            .commit(BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never reused"), "{err}");
    }

    /// A real S3-speaking server (moto, from requirements-dev.txt) on a free port, killed
    /// when dropped.
    struct MotoServer {
        process: std::process::Child,
        endpoint: String,
    }

    impl MotoServer {
        fn start() -> Self {
            let server = std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("moto_server"))
                .find(|path| path.is_file())
                .expect(
                    "moto_server is missing: pip install 'moto[server]' (requirements-dev.txt), \
                     or run the tests through scripts/test.sh",
                );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let process = std::process::Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "moto_server did not listen in 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Self {
                process,
                endpoint: format!("http://127.0.0.1:{port}"),
            }
        }

        /// Create `bucket` (moto does not check signatures, so a bare PUT does).
        fn create_bucket(&self, bucket: &str) {
            use std::io::{Read, Write};
            let address = self.endpoint.trim_start_matches("http://");
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            write!(
                stream,
                "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        }
    }

    impl Drop for MotoServer {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }

    #[tokio::test]
    async fn checkpoints_in_s3_restore_fall_back_and_prune_as_local_ones_do() {
        let _serial = SERIAL.lock().await;
        let server = MotoServer::start();
        server.create_bucket("checkpoints");
        rillet_io::configure(
            "s3://checkpoints",
            &[
                ("endpoint", server.endpoint.as_str()),
                ("access_key_id", "test"),
                ("secret_access_key", "test"),
                ("region", "us-east-1"),
            ],
        )
        .unwrap();
        let store = CheckpointStore::open("s3://checkpoints/jobs", "job").unwrap();
        assert!(store.latest().await.unwrap().is_none());
        for n in 1..=3 {
            take(&store, &[("state", &format!("state {n}"))]).await;
        }
        // Checkpoint 3's artifact replaced behind the store's back.
        let artifact = store.snapshot_path(Kind::Checkpoint, 3).join("state");
        store
            .store
            .put(&artifact, PutPayload::from(Bytes::from_static(b"state X")))
            .await
            .unwrap();
        let restored = store.latest().await.unwrap().unwrap();
        assert_eq!(restored.checkpoint.manifest.id, 2);
        assert_eq!(text(&restored.checkpoint, "state"), "state 2");
        assert!(
            restored.skipped[0].1.contains("corrupt"),
            "{:?}",
            restored.skipped
        );
        assert_eq!(store.prune(2).await.unwrap(), vec![1]);
        let left: Vec<u64> = store.list().await.unwrap().iter().map(|s| s.id).collect();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(store.next_id().await.unwrap(), 4);
        // The control files live beside the snapshots in S3 too, and the jobs are listed
        // by their prefixes.
        let record = crate::JobRecord::start("job", Some(2));
        store.write_record(&record).await.unwrap();
        assert_eq!(store.read_record().await.unwrap(), Some(record.clone()));
        store.request_stop(&record.run).await.unwrap();
        assert!(store.take_stop_request(&record.run).await.unwrap());
        assert_eq!(
            store.next_id().await.unwrap(),
            4,
            "control files are no snapshots"
        );
        CheckpointStore::open("s3://checkpoints/jobs", "other")
            .unwrap()
            .write_record(&crate::JobRecord::start("other", None))
            .await
            .unwrap();
        assert_eq!(
            CheckpointStore::jobs("s3://checkpoints/jobs")
                .await
                .unwrap(),
            vec!["job".to_string(), "other".to_string()]
        );
    }

    #[test]
    fn manifest_checks_refuse_damage_and_other_formats() {
        let manifest = Manifest {
            format: FORMAT,
            job: "job".into(),
            id: 1,
            kind: Kind::Checkpoint,
            created_ms: 0,
            artifacts: vec![],
            properties: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        let sealed = |m: &Manifest| {
            let mut text = serde_json::to_string(m).unwrap();
            text.push('\n');
            let sum = checksum(text.as_bytes());
            format!("{text}{CHECKSUM_LINE}{sum}\n")
        };
        let good = sealed(&manifest);
        let parse = |bytes: &[u8]| parse_manifest(bytes, "m");
        assert_eq!(parse(good.as_bytes()).unwrap(), manifest);
        for bad in [
            good.replace("\"v\"", "\"w\""),
            good[..good.len() - 5].to_string(),
            String::new(),
        ] {
            let err = parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, RilletError::Checkpoint(_)),
                "{bad:?}: {err:?}"
            );
        }
        assert!(matches!(
            parse(&[0xff, 0xfe, b'\n']),
            Err(RilletError::Checkpoint(_))
        ));
        let newer = sealed(&Manifest {
            format: FORMAT + 1,
            ..manifest
        });
        let err = parse(newer.as_bytes()).unwrap_err();
        assert!(matches!(err, RilletError::IncompatibleState(_)), "{err:?}");
        assert!(err.to_string().contains("another Rillet version"), "{err}");
    }
}
