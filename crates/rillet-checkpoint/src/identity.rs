//! Who writes under a job: the checkpoint store's **lineage**, and a run's **claim**.
//!
//! ```text
//! <location>/<job>/_lineage             this store's name, chosen once
//! <location>/<job>/_claims/<n, 20 digits>   run n's claim, created once
//! ```
//!
//! - The lineage is a random name given to a job's snapshots the first time a run opens
//!   them. Sinks put it in everything they commit (file names, Kafka headers, Redis
//!   markers), so that a run recovering from this store recognises, withdraws and discards
//!   only what this store's runs wrote: the output of a run without checkpoints, or of the
//!   same job id with another checkpoint location, is never taken for its own, and a
//!   committed name is never written again.
//! - A run claims the job before it restores anything. The claim is refused while the
//!   job's record ([`JobRecord`]) names a live run (its process alive, its heartbeat
//!   fresh), and the refusal names that run's process and host. Claims are numbered and
//!   created exclusively, so of two runs starting at once each gets its own number; a run
//!   checks ([`Claim::check`]) that no later claim exists before it makes a checkpoint
//!   complete and before its sinks commit, and stops when one does.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> rillet_common::Result<()> {
//! use rillet_checkpoint::CheckpointStore;
//!
//! let dir = tempfile::tempdir()?;
//! let store = CheckpointStore::open(dir.path().to_str().unwrap(), "orders")?;
//! let lineage = store.lineage().await?;
//! assert_eq!(store.lineage().await?, lineage); // chosen once
//!
//! let claim = store.claim().await?;
//! claim.check().await?;
//! // While this run is live, a second one is refused, naming it.
//! let refused = store.claim().await.unwrap_err().to_string();
//! assert!(refused.contains("already running"), "{refused}");
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use rillet_common::{Result, RilletError};
use serde::{Deserialize, Serialize};

use crate::control::{HEARTBEAT, now_ms};
use crate::store::{CheckpointStore, ReadError};
use crate::{JobRecord, RunState};

/// The lineage's object name within the job's directory.
const LINEAGE: &str = "_lineage";
/// The directory of claims within the job's directory.
const CLAIMS: &str = "_claims";
/// What `_lineage` holds for a store that had snapshots before lineages came in.
const LEGACY: &str = "legacy";
/// Claims kept behind the newest (older ones are removed as runs come and go).
const CLAIMS_KEPT: u64 = 4;

/// How long a new run waits for a run of its own process that was asked to end.
const ENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The runs of this process asked to end (see [`mark_ending`]).
static ENDING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Note that run `run` of this process was asked to end (a cancel, a stop, its handle
/// dropped): a new run of its job in this process waits for it to end rather than being
/// refused as a second live run.
pub fn mark_ending(run: &str) {
    ENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run.to_string());
}

/// What a claim object holds: enough to name the run in a refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimFile {
    run: String,
    pid: u32,
    host: String,
    started_ms: u64,
}

/// A run's claim on its job (see the module docs): hold it for the run's life.
#[derive(Debug, Clone)]
pub struct Claim {
    store: CheckpointStore,
    number: u64,
    record: JobRecord,
}

impl Claim {
    /// The run's record, as written when the claim was taken (state `running`).
    pub fn record(&self) -> &JobRecord {
        &self.record
    }

    /// The claim's number: each run of the job takes a higher one.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Fail if a later run has claimed the job since: this run must then stop before it
    /// completes a checkpoint or commits anything more.
    pub async fn check(&self) -> Result<()> {
        // Any later claim, not only the next: claims are pruned as runs come and go.
        let Some(newest) = self
            .store
            .newest_claim()
            .await?
            .filter(|&n| n > self.number)
        else {
            return Ok(());
        };
        let later = match self.store.read(&self.store.claim_path(newest)).await {
            Ok(bytes) => serde_json::from_slice::<ClaimFile>(&bytes).ok(),
            Err(_) => None,
        };
        Err(RilletError::Checkpoint(format!(
            "run {} of job '{}' lost its claim to a later run{}: it stops before completing a \
             checkpoint or committing more output",
            self.record.run,
            self.store.job(),
            later.map_or_else(String::new, |c| format!(
                " ({}, process {}@{})",
                c.run, c.pid, c.host
            ))
        )))
    }

    /// Record that the run failed before it started (its claim ends with it).
    pub async fn fail(&self, error: &RilletError) -> Result<()> {
        let mut record = self.record.clone();
        record.state = if error.is_cancelled() {
            RunState::Cancelled
        } else {
            RunState::Failed
        };
        record.error = Some(error.to_string());
        record.touch();
        self.store.write_record(&record).await
    }
}

impl CheckpointStore {
    fn claim_path(&self, number: u64) -> ObjectPath {
        self.root.clone().join(CLAIMS).join(format!("{number:020}"))
    }

    /// This store's lineage (see the module docs): 12 lowercase hex digits, chosen by the
    /// first run to ask and the same for every later one. Empty for a store that already
    /// held snapshots when lineages came in: its sinks go on naming their commits as they
    /// did (no lineage in names, headers or markers), so a restore finds what was written
    /// before the upgrade.
    pub async fn lineage(&self) -> Result<String> {
        let path = self.root.clone().join(LINEAGE);
        if let Some(lineage) = self.read_lineage(&path).await? {
            return Ok(lineage);
        }
        let older = !self.list().await?.is_empty() || self.timeline().await?.through().is_some();
        let chosen = if older {
            LEGACY.to_string()
        } else {
            rillet_common::random_tag()
        };
        // Of two runs choosing at once, one writes and both read back the same.
        self.put_if_absent(&path, Bytes::from(chosen)).await?;
        self.read_lineage(&path)
            .await?
            .ok_or_else(|| RilletError::Checkpoint(format!("{path} vanished")))
    }

    async fn read_lineage(&self, path: &ObjectPath) -> Result<Option<String>> {
        let bytes = match self.read(path).await {
            Ok(bytes) => bytes,
            Err(ReadError::NotFound) => return Ok(None),
            Err(ReadError::Other(e)) => return Err(e),
        };
        let lineage = std::str::from_utf8(&bytes).unwrap_or("").trim();
        if lineage == LEGACY {
            return Ok(Some(String::new()));
        }
        if lineage.len() != 12
            || !lineage
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(RilletError::Checkpoint(format!(
                "{path} holds {lineage:?}, not a lineage (12 lowercase hex digits): the \
                 checkpoint location is damaged"
            )));
        }
        Ok(Some(lineage.to_string()))
    }

    /// Claim the job for a run starting now in this process, or refuse, naming the live run
    /// that holds it (see the module docs). Writes the run's record.
    pub async fn claim(&self) -> Result<Claim> {
        let holder = self.read_record().await?;
        if let Some(holder) = &holder
            && holder.is_live()
            && !self.ended_in_time(holder).await?
        {
            return Err(already_running(self.job(), holder));
        }
        let newest = self.newest_claim().await?;
        let recorded_run = holder.as_ref().map(|h| h.run.as_str());
        if let Some(starting) = self.starting_run(newest, recorded_run).await? {
            return Err(RilletError::Checkpoint(format!(
                "job '{}' is already running: run {} (process {}@{}) claimed it a moment ago \
                 and is starting; stop or cancel it first, or wait for it to end",
                self.job(),
                starting.run,
                starting.pid,
                starting.host
            )));
        }
        let number = newest.map_or(1, |n| n + 1);
        let record = JobRecord::start(self.job(), None);
        let file = ClaimFile {
            run: record.run.clone(),
            pid: record.pid,
            host: record.host.clone(),
            started_ms: record.started_ms,
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|e| RilletError::internal(format!("cannot encode a claim: {e}")))?;
        if !self
            .put_if_absent(&self.claim_path(number), Bytes::from(bytes))
            .await?
        {
            let other = match self.read(&self.claim_path(number)).await {
                Ok(bytes) => serde_json::from_slice::<ClaimFile>(&bytes).ok(),
                Err(_) => None,
            };
            return Err(RilletError::Checkpoint(format!(
                "job '{}' is already running: another run claimed it at the same moment{}",
                self.job(),
                other.map_or_else(String::new, |c| format!(
                    " ({}, process {}@{})",
                    c.run, c.pid, c.host
                ))
            )));
        }
        self.write_record(&record).await?;
        // Best effort: a store that refuses deletes keeps them, and nothing depends on it.
        for old in number.saturating_sub(CLAIMS_KEPT + 8)..number.saturating_sub(CLAIMS_KEPT) {
            if let Err(e) = self.delete_object(&self.claim_path(old)).await {
                tracing::debug!("job {}: keeping an old claim: {e}", self.job());
                break;
            }
        }
        Ok(Claim {
            store: self.clone(),
            number,
            record,
        })
    }

    /// Whether `holder`, a run of this process asked to end (cancelled, stopped or
    /// dropped), has ended within [`ENDING_WAIT`]: a job cancelled and started again at
    /// once is not refused because its first run is still winding down.
    async fn ended_in_time(&self, holder: &JobRecord) -> Result<bool> {
        let ending = holder.pid == std::process::id()
            && holder.process_alive() == Some(true)
            && ENDING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&holder.run);
        if !ending {
            return Ok(false);
        }
        let deadline = std::time::Instant::now() + ENDING_WAIT;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match self.read_record().await? {
                Some(record) if record.run == holder.run && record.is_live() => {}
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The run of claim `newest` when it is still starting: it claimed the job less than
    /// three heartbeats ago (by the store's clock) and the job's record (naming
    /// `recorded_run`) does not name it yet (two runs starting at the same moment: the
    /// second is refused). A run that died between its claim and its record holds the job
    /// that long.
    async fn starting_run(
        &self,
        newest: Option<u64>,
        recorded_run: Option<&str>,
    ) -> Result<Option<ClaimFile>> {
        let Some(number) = newest else {
            return Ok(None);
        };
        let path = self.claim_path(number);
        let unreadable = |e: object_store::Error| {
            RilletError::Io(std::io::Error::other(format!("cannot read {path}: {e}")))
        };
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unreadable(e)),
        };
        let claimed_ms = u64::try_from(got.meta.last_modified.timestamp_millis()).unwrap_or(0);
        let bytes = got.bytes().await.map_err(unreadable)?;
        let Ok(claim) = serde_json::from_slice::<ClaimFile>(&bytes) else {
            return Ok(None);
        };
        let age = std::time::Duration::from_millis(now_ms().saturating_sub(claimed_ms));
        let recorded = recorded_run == Some(claim.run.as_str());
        Ok((!recorded && age < 3 * HEARTBEAT).then_some(claim))
    }

    async fn newest_claim(&self) -> Result<Option<u64>> {
        use futures::TryStreamExt;
        let prefix = self.root.clone().join(CLAIMS);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| {
                RilletError::Io(std::io::Error::other(format!("cannot list {prefix}: {e}")))
            })?;
        Ok(objects
            .iter()
            .filter_map(|o| o.location.filename()?.parse::<u64>().ok())
            .max())
    }
}

/// The refusal of a second run while `holder` is live.
fn already_running(job: &str, holder: &JobRecord) -> RilletError {
    RilletError::Checkpoint(format!(
        "job '{job}' is already running as process {}@{} (run {}, its heartbeat {:.0} s \
         ago): stop or cancel that run first, or wait for it to end. A run whose process has \
         died is taken over at once on its own host, and from another host once its \
         heartbeat is {} s old",
        holder.pid,
        holder.host,
        holder.run,
        holder.age().as_secs_f64(),
        3 * HEARTBEAT.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_claim_fences_the_earlier_run_and_an_ended_run_frees_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        let first = store.claim().await.unwrap();
        first.check().await.unwrap();
        let e = store.claim().await.unwrap_err().to_string();
        assert!(e.contains(&format!("{}@", std::process::id())), "{e}");
        // The run ends: the job is free, and the next claim fences the first for good.
        first.fail(&RilletError::Cancelled).await.unwrap();
        let second = store.claim().await.unwrap();
        assert_eq!(second.number(), first.number() + 1);
        let lost = first.check().await.unwrap_err().to_string();
        assert!(
            lost.contains("lost its claim") && lost.contains(&second.record().run),
            "{lost}"
        );
        second.check().await.unwrap();
    }

    #[tokio::test]
    async fn a_run_whose_process_died_is_taken_over_and_old_claims_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        for _ in 0..12 {
            let claim = store.claim().await.unwrap();
            let mut record = claim.record().clone();
            record.pid = u32::MAX - 1; // a process that does not exist
            store.write_record(&record).await.unwrap();
        }
        let numbers: Vec<u64> = std::fs::read_dir(dir.path().join("j").join(CLAIMS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        assert!(numbers.len() <= CLAIMS_KEPT as usize + 1, "{numbers:?}");
        assert_eq!(numbers.iter().max(), Some(&12));
    }

    #[tokio::test]
    async fn a_store_with_snapshots_from_before_lineages_keeps_the_old_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        let mut writer = store.writer(crate::Kind::Checkpoint, 1);
        writer.put("a", b"x".to_vec()).await.unwrap();
        writer.commit(Default::default()).await.unwrap();
        assert_eq!(store.lineage().await.unwrap(), "");
        assert_eq!(store.lineage().await.unwrap(), "", "and stays so");
    }

    #[tokio::test]
    async fn a_run_that_claimed_a_moment_ago_and_has_not_yet_recorded_itself_is_starting() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        // Another run's claim, its record not yet written: a run starting at this moment.
        let other = ClaimFile {
            run: "elsewhere-7-1".into(),
            pid: 7,
            host: "elsewhere".into(),
            started_ms: 1,
        };
        store
            .write(
                &store.claim_path(1),
                Bytes::from(serde_json::to_vec(&other).unwrap()),
            )
            .await
            .unwrap();
        let e = store.claim().await.unwrap_err().to_string();
        assert!(e.contains("7@elsewhere") && e.contains("starting"), "{e}");
    }

    #[tokio::test]
    async fn a_damaged_lineage_is_an_error_not_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        let lineage = store.lineage().await.unwrap();
        assert_eq!(lineage.len(), 12);
        std::fs::write(dir.path().join("j").join(LINEAGE), "x").unwrap();
        let e = store.lineage().await.unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
