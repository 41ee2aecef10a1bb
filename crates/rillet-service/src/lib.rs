//! Service operators: a model served by an independent pool of replica processes.
//!
//! A [`Service`] is started once and lives until it is shut down, independent of the jobs
//! that call it: its replicas have their own processes, resources (CPUs, GPUs or a share
//! of one) and failure domain. Jobs call it through a [`ServiceFunction`] in an
//! expression. Calls travel as Arrow record batches over Arrow Flight `DoExchange`
//! (gRPC, loopback), streamed in messages of at most 2 MiB, so a batch of any size goes
//! through without raising a frame limit.
//!
//! - Replicas register only after their constructor (the model load) finished.
//! - The client batches calls dynamically (max rows, max wait), bounds the calls in
//!   flight, retries with backoff and fails over across replicas; a dead replica is a
//!   routing event, not a job failure: it is replaced and its requests re-sent.
//! - A manager thread checks replica health, grows the pool while requests wait, drains
//!   idle replicas above the minimum, and applies [`Service::scale`] while jobs run.
//!
//! The replica side is `python/rillet/_worker.py` in serving mode: the same worker script
//! as a UDF's worker pool, answering the setup with its Flight port.

mod function;
mod replica;
mod service;

pub use function::ServiceFunction;
pub use service::{ReplicaState, ReplicaStatus, Service, ServiceOptions, ServiceStatus};
