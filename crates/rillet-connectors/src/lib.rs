//! Sources and sinks for streaming jobs.
//!
//! Sources are split-based: a job's source is cut into splits (a Kafka partition, a Redis
//! stream, a range of a sequence), each read by one reader that reports its position, so
//! that a checkpoint can record where every split stands and a restore can continue from
//! there. The first one here is the deterministic [`sequence`] generator, with the oracle
//! that checks a job's committed output against it (RELIABILITY.md, "Sequence oracle").

pub mod sequence;
