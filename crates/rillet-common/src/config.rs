//! Engine configuration: how much memory a job may hold in flight, how many tasks run at
//! once, and the default batch size.

/// Settings for one Rillet session. Every field has a default that suits the machine it
/// runs on (see [`default_memory_budget`]).
///
/// ```
/// use rillet_common::EngineConfig;
/// let config = EngineConfig::default().with_parallelism(4).with_batch_size(4096);
/// assert_eq!(config.parallelism, 4);
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Total bytes that may be in flight at once. Half is shared by the exchange channels,
    /// which make producers wait when it is used up; half bounds the data held inside
    /// function calls (decoded media), which wait for running calls when it is used up.
    pub memory_budget_bytes: usize,
    /// Number of parallel tasks per operator (defaults to the number of cores).
    pub parallelism: usize,
    /// Target rows per batch for scans and exchanges.
    pub batch_size: usize,
    /// Show live progress in a terminal. Off when stderr is not a terminal either way.
    pub progress: bool,
    /// Threads for blocking work (Python UDFs, file writes) when an operator does not ask
    /// for a concurrency of its own.
    pub blocking_threads: usize,
    /// Disk bytes a job may spill large batches to instead of waiting on a full channel
    /// (0: never spill). Spill files go to a directory of their own under
    /// `RILLET_SPILL_DIR` (default: the system's temporary directory), deleted at job end.
    pub spill_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            memory_budget_bytes: default_memory_budget(),
            parallelism: cores,
            batch_size: 8192,
            progress: std::env::var("RILLET_PROGRESS").map_or(true, |v| v != "0"),
            blocking_threads: cores,
            spill_bytes: 0,
        }
    }
}

/// The in-flight memory budget a session gets unless told otherwise: 1/16 of the memory
/// this process may use (its cgroup's limit, else the machine's), between 512 MiB and
/// 4 GiB. A fixed 512 MiB let a 24 GiB, 2-core machine run only one video call at a time
/// (a minute of 720p frames at 1 fps is 166 MB), leaving a core idle.
///
/// ```
/// let budget = rillet_common::config::default_memory_budget();
/// assert!((512 << 20..=4 << 30).contains(&budget));
/// ```
pub fn default_memory_budget() -> usize {
    const FLOOR: usize = 512 << 20;
    const CEILING: usize = 4 << 30;
    usable_memory().map_or(FLOOR, |bytes| (bytes / 16).clamp(FLOOR, CEILING))
}

/// Bytes of memory this process may use: the smaller of the machine's memory and its
/// cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), on Linux.
fn usable_memory() -> Option<usize> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })?;
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| read(path)?.trim().parse::<usize>().ok());
    Some(limit.map_or(total, |limit| limit.min(total)))
}

impl EngineConfig {
    /// Set the in-flight memory budget in bytes (at least 1 MiB).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget_bytes = bytes.max(1 << 20);
        self
    }

    /// Set the number of parallel tasks per operator (at least 1).
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }

    /// Set the target batch size in rows (at least 1).
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Let jobs spill up to `bytes` of large batches to disk instead of waiting on full
    /// channels (0 turns spilling off).
    pub fn with_spill(mut self, bytes: usize) -> Self {
        self.spill_bytes = bytes;
        self
    }

    /// Turn the live terminal progress display on or off.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
}
