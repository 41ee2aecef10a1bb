//! The job's blob store for spilled batches.
//!
//! When a channel is full and the batch a producer wants to send is large (a batch of
//! decoded images, say), the producer may write the batch to the job's spill directory as
//! an Arrow IPC file and send a reference instead of waiting; the consumer reads it back
//! and deletes the file. The producer keeps working while a slow consumer catches up,
//! with disk instead of memory holding the difference. What the job spilled and nobody read
//! (a cancelled job) is deleted when the job ends. The store is bounded: past
//! `capacity_bytes` on disk, producers wait on the channel as usual.
//!
//! Spilling is off unless the session sets a spill budget (`EngineConfig::spill_bytes`).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use rillet_common::{Result, RilletError};

/// Batches smaller than this are never spilled: the file would cost more than the wait.
pub const MIN_SPILL_BYTES: usize = 1 << 20;

/// A job's spill directory with a bound on the bytes it holds.
#[derive(Debug)]
pub struct SpillStore {
    directory: PathBuf,
    capacity_bytes: usize,
    held_bytes: AtomicUsize,
    next_file: AtomicU64,
}

impl SpillStore {
    /// A store in a fresh directory under `parent` holding at most `capacity_bytes`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use arrow::array::{Int64Array, RecordBatch};
    /// use rillet_runtime::spill::SpillStore;
    /// let parent = tempfile::tempdir().unwrap();
    /// let store = Arc::new(SpillStore::new(parent.path(), 1 << 30).unwrap());
    /// let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap();
    /// let spilled = store.put(&batch).unwrap().expect("room in the store");
    /// assert_eq!(spilled.load().unwrap(), batch);
    /// assert_eq!(store.held_bytes(), 0);
    /// ```
    pub fn new(parent: &Path, capacity_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(parent)?;
        let directory = tempfile::Builder::new()
            .prefix("rillet-spill-")
            .tempdir_in(parent)
            .map_err(|e| io_error(parent, "create a spill directory in", e))?
            .keep();
        Ok(Self {
            directory,
            capacity_bytes,
            held_bytes: AtomicUsize::new(0),
            next_file: AtomicU64::new(0),
        })
    }

    /// The directory the spill files go to.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Bytes of batches spilled and not yet read back.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Write `batch` to a spill file; `Ok(None)` when the store is full.
    pub fn put(self: &Arc<Self>, batch: &RecordBatch) -> Result<Option<SpilledBatch>> {
        let bytes = batch.get_array_memory_size();
        let reserved = self
            .held_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= self.capacity_bytes).then_some(held + bytes)
            })
            .is_ok();
        if !reserved {
            return Ok(None);
        }
        let path = self.directory.join(format!(
            "{:08}.arrow",
            self.next_file.fetch_add(1, Ordering::Relaxed)
        ));
        // From here on the spilled batch owns the reservation (and the file) and gives
        // both back when dropped, whether the write worked or not.
        let spilled = SpilledBatch {
            store: self.clone(),
            path,
            bytes,
        };
        let file = File::create(&spilled.path).map_err(|e| io_error(&spilled.path, "create", e))?;
        let mut writer = FileWriter::try_new(BufWriter::new(file), &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
        Ok(Some(spilled))
    }
}

impl Drop for SpillStore {
    fn drop(&mut self) {
        // The job is over: whatever is left was never read back.
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A batch in the spill store: a reference to its file.
#[derive(Debug)]
pub struct SpilledBatch {
    store: Arc<SpillStore>,
    path: PathBuf,
    bytes: usize,
}

impl SpilledBatch {
    /// Bytes the batch takes in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Read the batch back; the file is deleted afterwards.
    pub fn load(self) -> Result<RecordBatch> {
        let file = File::open(&self.path).map_err(|e| io_error(&self.path, "open", e))?;
        let mut reader = FileReader::try_new(BufReader::new(file), None)?;
        reader.next().transpose()?.ok_or_else(|| {
            RilletError::internal(format!("spill file {} holds no batch", self.path.display()))
        })
    }
}

impl Drop for SpilledBatch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.store
            .held_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn io_error(path: &Path, action: &str, e: std::io::Error) -> RilletError {
    RilletError::Io(std::io::Error::new(
        e.kind(),
        format!("cannot {action} {}: {e}", path.display()),
    ))
}
