//! Tuning of mimalloc, the global allocator of the Python module and the command line.
//!
//! A media pipeline frees and allocates large buffers at a high rate: encoded files, decoded
//! photos, output batches, Parquet pages. mimalloc hands freed memory back to the kernel
//! ("purges" it) once it has been unused for a delay, 1 s by default, and the kernel then
//! has to zero fresh pages (2 MiB at a time with transparent huge pages) when the next
//! batch needs the memory again. With 2 cores that zeroing was 5% of the image benchmark's
//! CPU time. Keeping freed memory for 10 s lets the next batches reuse it; memory still
//! goes back to the kernel 10 s after a job stops using it, and the engine's memory budget
//! (see [`crate::memory`]) bounds what is live either way.

/// mimalloc's `mi_option_purge_delay` (the same index in mimalloc 2 and 3; `libmimalloc-sys`
/// does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds freed memory stays with the process before mimalloc purges it.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// Apply Rillet's mimalloc settings, unless the user set the same option through
/// mimalloc's own environment variable (`MIMALLOC_PURGE_DELAY`), which then wins. Called
/// once by the binaries that install mimalloc as their global allocator; harmless (it only
/// sets an option of a library that is not used) in a process that does not.
///
/// ```
/// rillet_runtime::allocator::tune();
/// ```
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is thread-safe in mimalloc and takes plain integers.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}
