//! OpenAI-compatible providers from Python (`rl.ai.register_provider`).

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rillet_ai::provider::{self, ProviderConfig};

use crate::errors::IntoPy;

/// Register (or replace) the provider `name` at `base_url`.
#[pyfunction]
#[pyo3(signature = (name, base_url, *, api_key_env, timeout_s, max_retries, max_rate_limited, max_rate_limit_wait_s, max_concurrency, breaker_failures, breaker_cooldown_s))]
#[allow(clippy::too_many_arguments)]
fn register_provider(
    name: String,
    base_url: String,
    api_key_env: Option<String>,
    timeout_s: f64,
    max_retries: u32,
    max_rate_limited: u32,
    max_rate_limit_wait_s: f64,
    max_concurrency: usize,
    breaker_failures: u32,
    breaker_cooldown_s: f64,
) -> PyResult<()> {
    let config = ProviderConfig {
        name,
        base_url,
        api_key_env,
        timeout: seconds("timeout_s", timeout_s.max(0.001))?,
        max_retries,
        max_rate_limited,
        max_rate_limit_wait: seconds("max_rate_limit_wait_s", max_rate_limit_wait_s)?,
        max_concurrency,
        breaker_failures: breaker_failures.max(1),
        breaker_cooldown: seconds("breaker_cooldown_s", breaker_cooldown_s.max(0.0))?,
    };
    provider::register(config).py_err().map(|_| ())
}

/// `value` seconds as a duration; a negative, NaN or unrepresentable one is a ValueError
/// naming the argument.
fn seconds(argument: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{argument} must be a finite number of seconds, at least 0 (got {value})"
        ))
    })
}

/// A provider's counters as a dict.
#[pyfunction]
fn provider_stats<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let stats = provider::provider(name).py_err()?.stats();
    let dict = PyDict::new(py);
    dict.set_item("requests", stats.requests)?;
    dict.set_item("retries", stats.retries)?;
    dict.set_item("rate_limited", stats.rate_limited)?;
    dict.set_item("failures", stats.failures)?;
    dict.set_item("rejected", stats.rejected)?;
    dict.set_item("open", stats.open)?;
    Ok(dict)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(register_provider, m)?)?;
    m.add_function(wrap_pyfunction!(provider_stats, m)?)?;
    Ok(())
}
