//! Services from Python: `rl.service(...)` holds a [`PyService`].

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rillet_processes::ProcessCommand;
use rillet_runtime::{ResourceManager, ResourceRequest};
use rillet_service::{Service, ServiceOptions};

use crate::dataframe::WorkerSettings;
use crate::errors::IntoPy;

/// A running service: its replicas, sizing and counters.
#[pyclass(name = "Service", module = "rillet._rillet", frozen)]
pub(crate) struct PyService {
    pub(crate) service: Arc<Service>,
}

#[pymethods]
impl PyService {
    /// Start the service `name`: replicas built from `pool` (the dict of
    /// `rillet.udf.pool_settings`, whose worker bounds are the replica bounds).
    #[new]
    #[pyo3(signature = (name, pool, *, max_batch_size, max_wait_ms, max_in_flight, per_replica, timeout_s, health_interval_s))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        pool: WorkerSettings,
        max_batch_size: usize,
        max_wait_ms: f64,
        max_in_flight: usize,
        per_replica: usize,
        timeout_s: f64,
        health_interval_s: f64,
    ) -> PyResult<Self> {
        let resources = ResourceManager::global();
        let request = ResourceRequest {
            cpus: pool.num_cpus,
            gpus: pool.num_gpus,
            memory_bytes: pool.memory,
        };
        let options = ServiceOptions {
            min_replicas: pool.min_workers,
            max_replicas: pool.max_workers.unwrap_or(pool.min_workers.max(1)),
            request,
            max_batch_rows: max_batch_size,
            max_wait: Duration::from_secs_f64(max_wait_ms.max(0.0) / 1000.0),
            max_in_flight,
            per_replica,
            max_retries: pool.max_retries,
            timeout: Duration::from_secs_f64(timeout_s.max(0.001)),
            idle_timeout: Duration::from_secs_f64(pool.idle_timeout_s.max(0.0)),
            health_interval: Duration::from_secs_f64(health_interval_s.max(0.05)),
        };
        let command = ProcessCommand {
            argv: pool.argv,
            env: pool.env,
            setup: Arc::new(pool.setup),
        };
        let service = py
            .detach(|| Service::start(name, command, options, resources))
            .py_err()?;
        Ok(Self {
            service: Arc::new(service),
        })
    }

    /// Keep between `min` and `max` replicas from now on.
    fn scale(&self, py: Python<'_>, min: usize, max: usize) -> PyResult<()> {
        py.detach(|| self.service.scale(min, max)).py_err()
    }

    /// Wait until `replicas` replicas are ready and none is loading or draining.
    fn wait_ready(&self, py: Python<'_>, replicas: usize, timeout_s: f64) -> PyResult<bool> {
        let timeout = Duration::from_secs_f64(timeout_s.max(0.0));
        py.detach(|| self.service.wait_ready(replicas, timeout))
            .py_err()
    }

    /// The replicas and counters as a dict.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let status = self.service.status();
        let dict = PyDict::new(py);
        dict.set_item("name", &status.name)?;
        dict.set_item("min_replicas", status.min_replicas)?;
        dict.set_item("max_replicas", status.max_replicas)?;
        let replicas = PyList::empty(py);
        for r in &status.replicas {
            let item = PyDict::new(py);
            item.set_item("id", r.id)?;
            item.set_item("pid", r.pid)?;
            item.set_item("port", r.port)?;
            item.set_item("state", r.state.to_string())?;
            item.set_item("in_flight", r.in_flight)?;
            item.set_item("served", r.served)?;
            replicas.append(item)?;
        }
        dict.set_item("replicas", replicas)?;
        dict.set_item("calls", status.calls)?;
        dict.set_item("requests", status.requests)?;
        dict.set_item("retries", status.retries)?;
        dict.set_item("replicas_lost", status.replicas_lost)?;
        dict.set_item("replicas_started", status.replicas_started)?;
        dict.set_item("waiting_calls", status.waiting_calls)?;
        dict.set_item("failure", status.failure)?;
        Ok(dict)
    }

    /// Stop every replica.
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.service.shutdown())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyService>()
}
