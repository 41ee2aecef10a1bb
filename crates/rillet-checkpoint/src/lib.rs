//! Checkpoints: where a job's snapshots live and how a restore knows it may trust one
//! ([`CheckpointStore`]), and the coordinator's bookkeeping of checkpoints in flight
//! ([`coordinator`]). Both are free of the runtime, which drives them, so that each is
//! tested on its own; the runtime crate injects barriers and runs the tasks.
//!
//! A snapshot (a periodic *checkpoint*, or a *savepoint* a user asked for) is a directory
//! of **artifacts**, opaque bytes to this crate (each operator task's state, the sources'
//! positions, the sinks' pending transactions), and a **manifest** written after every
//! artifact. The manifest lists each artifact with its size and checksum and carries a
//! checksum of its own:
//!
//! ```text
//! <location>/<job>/chk-00000000000000000007/_manifest      written last: the commit point
//! <location>/<job>/chk-00000000000000000007/<artifact>...
//! <location>/<job>/savepoint-00000000000000000009/...
//! ```
//!
//! - A snapshot without a manifest is incomplete (the process died while taking it) and
//!   is never restored.
//! - Restoring checks the manifest and every artifact against their checksums. The newest
//!   checkpoint that passes is restored; each one skipped is reported with the reason.
//! - Pruning keeps the newest N complete checkpoints. It deletes older ones manifest first,
//!   so a half-deleted checkpoint is never taken for a complete one. Savepoints are the
//!   user's and are never pruned.
//! - Beside the snapshots, a job's record and stop requests ([`JobRecord`], see
//!   `control`) let another process list, stop and resume the job; the store's lineage
//!   and the runs' claims ([`identity`]) keep two runs, or two stores, from writing over
//!   each other; the timeline ([`timeline`]) records each going back to an older snapshot,
//!   so the newer ones are never restored over withdrawn output.
//! - `<location>` is a local directory or an `s3://bucket/prefix` URL (configured with
//!   `rillet_io::configure`). Each object is written whole (a local file through a
//!   temporary name and a rename, an S3 object by one PUT), so a crash leaves an object
//!   either absent or complete. A local write returns once the object and its name are
//!   synced to disk, so a power cut keeps every snapshot a sink acted on (`local`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> rillet_common::Result<()> {
//! use rillet_checkpoint::{CheckpointStore, Kind};
//!
//! let dir = tempfile::tempdir()?;
//! let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job-1")?;
//! let mut writer = store.writer(Kind::Checkpoint, store.next_id().await?);
//! writer.put("source-0", b"offset=42".to_vec()).await?;
//! writer.commit(Default::default()).await?;
//!
//! let restored = store.latest().await?.expect("one checkpoint");
//! assert_eq!(&restored.checkpoint.artifact("source-0").unwrap()[..], b"offset=42");
//! # Ok(())
//! # }
//! ```

mod control;
pub mod coordinator;
pub mod identity;
mod local;
mod store;
pub mod timeline;

pub use control::{HEARTBEAT, JobRecord, RESUME_ENV, RunState, SnapshotPath};
pub use identity::Claim;
#[doc(hidden)]
pub use store::fuzz_manifest;
pub use store::{
    ArtifactInfo, Checkpoint, CheckpointStore, CheckpointWriter, Kind, Manifest, Restored,
    SnapshotInfo,
};
pub use timeline::{Rewind, Rewound};
