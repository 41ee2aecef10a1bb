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

mod config;
mod error;
pub mod failpoints;
pub mod retry;
pub mod types;

pub use config::EngineConfig;
pub use error::{Result, RilletError};
