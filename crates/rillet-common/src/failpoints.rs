//! Fault injection for the fault tests: named failpoints at the windows of the checkpoint
//! protocol (around artifact and manifest writes, barriers, the sinks' commits), compiled
//! into every build and each inert until configured, so that Rust tests, the Python tests
//! and the kill sweeps' child processes all reach them.
//!
//! A failpoint's actions are those of the `fail` crate: `return` (fail there every time),
//! `10%return` (fail one time in ten), `3*off->1*return->off` (fail the fourth time only),
//! `sleep(100)` (wait 100 ms there), `off`.
//!
//! ```
//! use rillet_common::failpoints;
//! failpoints::configure("doc-window", "1*return->off").unwrap();
//! assert!(failpoints::list().contains(&("doc-window".to_string(), "1*return->off".to_string())));
//! failpoints::remove("doc-window");
//! assert!(failpoints::list().iter().all(|(name, _)| name != "doc-window"));
//! let err = failpoints::configure("doc-window", "now and then").unwrap_err();
//! assert!(err.to_string().contains("doc-window"));
//! ```

use crate::{Result, RilletError};

/// The environment variable [`configure_from_env`] reads: `name=actions` pairs separated by
/// `;`, e.g. `checkpoint-artifact-upload=10%return;sink-pre-commit=1*return->off`.
pub const FAILPOINTS_ENV: &str = "RILLET_FAILPOINTS";

/// Give failpoint `name` the `actions` (see the module docs); they replace any before.
pub fn configure(name: &str, actions: &str) -> Result<()> {
    fail::cfg(name, actions).map_err(|e| {
        RilletError::invalid_argument(format!("failpoint {name:?}: actions {actions:?}: {e}"))
    })
}

/// Turn failpoint `name` off.
pub fn remove(name: &str) {
    fail::remove(name);
}

/// The configured failpoints and their actions.
pub fn list() -> Vec<(String, String)> {
    fail::list()
}

/// Configure the failpoints [`FAILPOINTS_ENV`] names, if it is set; returns how many.
pub fn configure_from_env() -> Result<usize> {
    let Ok(spec) = std::env::var(FAILPOINTS_ENV) else {
        return Ok(0);
    };
    let mut count = 0;
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry.split_once('=').ok_or_else(|| {
            RilletError::invalid_argument(format!(
                "{FAILPOINTS_ENV}: {entry:?} is not name=actions"
            ))
        })?;
        configure(name.trim(), actions.trim())?;
        count += 1;
    }
    Ok(count)
}
