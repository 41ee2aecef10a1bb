//! Buffers a pool thread keeps from one call to the next (the decode buffer, the resizer's
//! convolution buffers), so its calls reuse them instead of allocating (and having the
//! kernel zero) fresh memory per call.

use std::cell::Cell;
use std::thread::LocalKey;

/// Largest buffer (bytes) a thread keeps between calls (a 4000x3000 RGB photo is 36 MB).
pub(crate) const MAX_KEPT_BYTES: usize = 64 << 20;

/// A thread's slot for one spare value.
pub(crate) type Slot<T> = LocalKey<Cell<Option<T>>>;

/// This thread's spare value from `slot`, or a new one if there is none (or another
/// caller on this thread holds it).
pub(crate) fn take<T: Default>(slot: &'static Slot<T>) -> T {
    slot.with(Cell::take).unwrap_or_default()
}

/// Give `value`, which holds `bytes` of memory, back to this thread's `slot` for the next
/// call; a value over [`MAX_KEPT_BYTES`] is dropped instead.
pub(crate) fn give_back<T>(slot: &'static Slot<T>, value: T, bytes: usize) {
    if bytes <= MAX_KEPT_BYTES {
        // try_with: a thread being torn down has no slot any more.
        let _ = slot.try_with(|spare| spare.set(Some(value)));
    }
}
