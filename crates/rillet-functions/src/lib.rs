//! Rillet's built-in multimodal operators, native Rust over Arrow arrays.
//!
//! Each operator is written once as an [`operator::Operator`] and registered in every
//! session under its SQL name (`image_resize`), so SQL and the DataFrame namespaces
//! (`col("img").image.resize(224, 224)`) share one implementation. Calls run as stages of
//! their own on the engine's blocking pool, in small batches for operators that hold
//! decoded media.
//!
//! Data problems in a row (corrupt, truncated, unknown format, over a size cap) follow the
//! operator's `on_error` option: `"null"` (default), `"raise"`, or `"column"`
//! (a `{value, error}` struct).
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Array, ArrayRef, BinaryArray};
//! let png: &[u8] = &[0x89, b'P', b'N', b'G']; // truncated: bad data, not a panic
//! let input: ArrayRef = Arc::new(BinaryArray::from(vec![png]));
//! let decode = rillet_functions::functions().into_iter().find(|f| f.name() == "image_decode").unwrap();
//! let out = decode.call(&[input], 1).unwrap();
//! assert!(out.is_null(0));
//! ```

pub mod audio;
pub mod file;
pub mod image;
pub mod input;
pub mod operator;
pub mod pdf;
pub mod sampling;
pub mod tensor;
pub mod text;
pub mod tokens;
pub mod vector;
#[cfg(feature = "video")]
pub mod video;

use std::sync::Arc;

pub use rillet_operator::ArrayFunction;

/// Make room in a column's row buffer for a row of `bytes`. The first time the buffer must
/// grow, room is made for `rows_left` rows of this size (never more than 256 MiB ahead of
/// need), so a batch of similar rows is not copied over and over by doubling.
pub(crate) fn reserve_rows(buffer: &mut Vec<u8>, bytes: usize, rows_left: usize) {
    if buffer.capacity() - buffer.len() >= bytes {
        return;
    }
    let ahead = bytes
        .saturating_mul(rows_left.max(1))
        .min(bytes.max(256 << 20));
    buffer.reserve_exact(ahead);
}

/// Every built-in operator.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    let mut all = Vec::new();
    all.extend(image::functions());
    all.extend(audio::functions());
    all.extend(file::functions());
    all.extend(text::functions());
    all.extend(tokens::functions());
    all.extend(pdf::functions());
    all.extend(vector::functions());
    all.extend(sampling::functions());
    #[cfg(feature = "video")]
    all.extend(video::functions());
    all
}
