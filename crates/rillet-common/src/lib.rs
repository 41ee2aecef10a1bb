//! Shared foundations of Rillet: the error type every crate returns, the engine
//! configuration (memory budget, parallelism, batch sizes) and the multimodal types
//! ([`types`]).
//!
//! ```
//! use rillet_common::{EngineConfig, RilletError};
//! let config = EngineConfig::default().with_memory_budget(256 << 20);
//! assert_eq!(config.memory_budget_bytes, 256 << 20);
//! let err = RilletError::invalid_argument("batch_size must be positive");
//! assert!(err.to_string().contains("batch_size"));
//! ```

pub mod config;
pub mod durable;
mod error;
pub mod failpoints;
#[doc(hidden)]
pub mod fuzzing;
pub mod retry;
pub mod types;

pub use config::EngineConfig;
pub use error::{Result, RilletError, tidy_datafusion_message};

/// A random name of 12 lowercase hex digits (48 bits from the operating system's random
/// source): what tells apart the outputs of two checkpoint stores, or of two runs without
/// one, that share a job id.
///
/// ```
/// let tag = rillet_common::random_tag();
/// assert_eq!(tag.len(), 12);
/// assert!(tag.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
/// assert_ne!(tag, rillet_common::random_tag());
/// ```
pub fn random_tag() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // No random source: the clock's nanoseconds and the process id still differ
        // between two runs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = nanos ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
