//! Sources and sinks, one folder per external system with its source and its sink.
//!
//! Sources are split-based: a job's source is cut into splits (a Kafka partition, a Redis
//! stream, a range of a sequence), each read by one reader that reports its position, so
//! that a checkpoint can record where every split stands and a restore can continue from
//! there. Sinks are exactly-once: what a checkpoint covers is written out once it has
//! completed, idempotently.
//!
//! - [`files`]: a directory whose files keep arriving, and the file sink (Parquet, CSV,
//!   JSON lines; two-phase commit).
//! - [`kafka`]: topics as a source and a sink.
//! - [`redis`]: Redis Streams as a source and a sink.
//! - [`postgres`]: the upsert sink.
//! - [`registry`]: every source and sink built by kind and options.
//! - [`sequence`]: the deterministic generator, with the oracle that checks a job's
//!   committed output against it (no row lost, repeated or wrong).

pub mod files;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod sequence;
mod staged;

/// The bucket of `bytes` among `buckets` (at least 1) by FNV-1a: the same in every run and
/// build, so a file stays in its split and a key in its Kafka partition across restarts.
pub(crate) fn stable_bucket(bytes: &[u8], buckets: usize) -> usize {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % buckets.max(1) as u64) as usize
}
