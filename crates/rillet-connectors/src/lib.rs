//! Sources and sinks for streaming jobs.
//!
//! Sources are split-based: a job's source is cut into splits (a Kafka partition, a Redis
//! stream, a range of a sequence), each read by one reader that reports its position, so
//! that a checkpoint can record where every split stands and a restore can continue from
//! there: the deterministic [`sequence`] generator, with the oracle that checks a job's
//! committed output against it (no row lost, repeated or wrong), [`redis_streams`],
//! [`kafka`] and [`files`] (a directory whose files keep arriving); and the exactly-once
//! [`postgres`] upsert sink, [`redis_sink`] and [`kafka_sink`].

pub mod files;
pub mod kafka;
pub mod kafka_sink;
pub mod postgres;
pub mod redis_sink;
pub mod redis_streams;
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
