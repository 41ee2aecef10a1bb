//! A Kafka topic as an exactly-once sink, without broker transactions.
//!
//! Rows wait in the job's checkpoint (see [`crate::staged`]); when the checkpoint
//! completes they are produced to the topic. Each record carries a header
//! `rillet-commit: <job>:<lineage>:<checkpoint>:<partitions>:<index>:murmur2`: the lineage of the
//! job's checkpoint store (checkpoint ids restart in a new store, so the same job id
//! checkpointing elsewhere never takes these records for its own), its place in the
//! commit's plan for its partition, how many partitions the plan spread the rows over, and
//! how it picked a key's partition (`murmur2`; a header without one was written by a
//! Rillet that used FNV-1a, and its commit is repeated with FNV-1a). The plan
//! is deterministic (the staged states are taken in a fixed order, and a row's partition
//! follows from its key or its place), so a commit cut short by a crash and repeated on
//! recovery produces exactly the records the first attempt did not: recovery reads back
//! each partition's tail, newest first, until it meets a record of an earlier checkpoint
//! of the job, skips every index it finds, and plans over the partitions the first attempt
//! used even if the topic has grown since. Consumers see each row once, whatever their
//! isolation level.
//!
//! Produce requests are never sent twice by the client (a request appended by the broker
//! whose answer was lost would land twice): a failed request fails the commit, and the
//! recovery above finishes it. One case remains: rskafka 0.6 sends a produce request again
//! when the broker answers it with a throttle time (a quota), so a broker with produce
//! quotas can duplicate records.
//!
//! Why not Kafka transactions: they need a broker that implements them. The broker the
//! tests run (tansu 0.6.0) has no `EndTxn`, so a transactional producer cannot commit
//! there; the header scheme works with any broker, and costs a read of the partition
//! tails only on recovery.
//!
//! A record's value is the row's `value` column when it has one (binary or string), else
//! the whole row as a JSON object; its key is the `key` column named at creation (as
//! text, or its bytes when binary), which also picks the partition as Kafka's Java client
//! does by default and librdkafka's `murmur2_random` partitioner does (murmur2 of the
//! key), so a Rillet job and such a producer writing the same keys are co-partitioned. A
//! build from before the partitioner tag reads a tagged header as another job's: going
//! back to such a build while a commit is unfinished would produce that commit again. Without a key, rows go round robin
//! over the partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_operator::{BatchWriter, BlockingPool, Sink, SinkContext, block_on};
use rskafka::chrono::Utc;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use crate::kafka::{connect, kafka_error};
use crate::staged::{RowsOut, StagedWriter, decode_segments};

/// The header naming a record's commit:
/// `<job>:<lineage>:<checkpoint>:<partitions>:<index>:<partitioner>`.
pub const COMMIT_HEADER: &str = "rillet-commit";
/// How long a commit retries an unreachable broker before it fails (and the job restarts
/// from its checkpoint, repeating the commit).
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);
/// Records read back per partition before the scan window doubles.
const FIRST_SCAN_WINDOW: i64 = 1024;
/// Most bytes asked of the broker per fetch while scanning.
const SCAN_FETCH_BYTES: i32 = 4 << 20;

/// Produces to a Kafka topic exactly once (see the module docs).
#[derive(Debug, Clone)]
pub struct KafkaSink {
    brokers: Vec<String>,
    topic: String,
    job: String,
    key: Option<String>,
    records_per_request: usize,
}

/// A commit's records, by partition, each list in index order.
type Plan = BTreeMap<i32, Vec<Record>>;

/// Where a record stands in its commit, as its header says: the checkpoint, the number
/// of partitions the commit was planned over and how keys were placed on them, and the
/// record's index in its partition's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Commit {
    checkpoint: u64,
    partitions: usize,
    partitioner: Partitioner,
    index: usize,
}

/// How a keyed record's partition is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Partitioner {
    /// Kafka's: murmur2 of the key with its sign bit cleared, modulo the partitions, as
    /// the Java client's default partitioner and librdkafka's `murmur2_random` place keys.
    Murmur2,
    /// FNV-1a of the key: how Rillet placed keys before. Only a commit that a Rillet of
    /// before began, repeated on recovery, is planned with it, so its rows land where the
    /// first attempt put their fellows.
    Fnv1a,
}

impl Partitioner {
    /// The header's name for it; FNV-1a, from before names, has none.
    fn tag(self) -> Option<&'static str> {
        match self {
            Partitioner::Murmur2 => Some("murmur2"),
            Partitioner::Fnv1a => None,
        }
    }

    /// The slot of `key` among `partitions` (at least 1).
    fn slot(self, key: &[u8], partitions: usize) -> usize {
        match self {
            Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1),
            Partitioner::Fnv1a => crate::stable_bucket(key, partitions),
        }
    }
}

/// Kafka's 32-bit murmur2 of `data` (seed `0x9747b28c`), as its clients compute it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = 0x9747_b28c_u32 ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in words.by_ref() {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (shift, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * shift);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

impl KafkaSink {
    /// Produce to `topic` on `brokers` (`host:port`) for job `job`, keyed by column `key`.
    pub fn new(
        brokers: Vec<String>,
        topic: impl Into<String>,
        job: &str,
        key: Option<String>,
    ) -> Self {
        Self {
            brokers,
            topic: topic.into(),
            job: job.to_string(),
            key,
            records_per_request: 500,
        }
    }

    /// Send at most `n` records per produce request (default 500). tansu 0.6.0's memory
    /// engine gives a multi-record batch a single offset, so tests against it send 1.
    pub fn with_records_per_request(mut self, n: usize) -> Self {
        self.records_per_request = n.max(1);
        self
    }

    fn header(&self, lineage: &str, commit: Commit) -> Vec<u8> {
        // A checkpoint store from before lineages: the header of before.
        let job = if lineage.is_empty() {
            self.job.clone()
        } else {
            format!("{}:{lineage}", self.job)
        };
        let mut header = format!(
            "{job}:{}:{}:{}",
            commit.checkpoint, commit.partitions, commit.index
        );
        if let Some(tag) = commit.partitioner.tag() {
            header.push(':');
            header.push_str(tag);
        }
        header.into_bytes()
    }

    /// Which commit of this job in `lineage` wrote `record`; `None` for a record of anyone
    /// else (another job, or this job id checkpointing in another store).
    fn commit_of(&self, lineage: &str, record: &Record) -> Option<Commit> {
        let header = std::str::from_utf8(record.headers.get(COMMIT_HEADER)?).ok()?;
        // Job ids are letters, digits, '.', '-' and '_', lineages hex digits: never a ':'.
        let parts: Vec<&str> = header.split(':').collect();
        let (owner, rest) = match parts.as_slice() {
            [job, their_lineage, rest @ ..] if !lineage.is_empty() => {
                ((*job, *their_lineage), rest)
            }
            [job, rest @ ..] if lineage.is_empty() => ((*job, ""), rest),
            _ => return None,
        };
        let (checkpoint, partitions, index, partitioner) = match rest {
            [c, p, i] => (c, p, i, Partitioner::Fnv1a),
            [c, p, i, tag] if Some(*tag) == Partitioner::Murmur2.tag() => {
                (c, p, i, Partitioner::Murmur2)
            }
            _ => return None,
        };
        (owner == (self.job.as_str(), lineage)).then_some(Commit {
            checkpoint: checkpoint.parse().ok()?,
            partitions: partitions.parse().ok()?,
            partitioner,
            index: index.parse().ok()?,
        })
    }

    /// A client for metadata and reading back, retrying a broker that does not answer.
    async fn client(&self) -> Result<Client> {
        connect(&self.brokers, COMMIT_DEADLINE).await
    }

    /// A client for producing that never sends a request again by itself: a request the
    /// broker appended but whose answer was lost would be appended twice. A failed request
    /// fails the commit instead, and recovery reads back what landed.
    async fn producer(&self) -> Result<Client> {
        connect(&self.brokers, Duration::ZERO).await
    }

    /// The topic's partitions, in order.
    async fn partitions(&self, client: &Client) -> Result<Vec<i32>> {
        let topics = client
            .list_topics()
            .await
            .map_err(|e| kafka_error(&self.brokers, "listing topics", e))?;
        let mut partitions: Vec<i32> = topics
            .into_iter()
            .find(|t| t.name == self.topic)
            .ok_or_else(|| {
                RilletError::invalid_argument(format!(
                    "kafka at {}: no topic {:?} to write to",
                    self.brokers.join(","),
                    self.topic
                ))
            })?
            .partitions
            .into_iter()
            .collect();
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// The records of `batches` for checkpoint `checkpoint` in `lineage`, by partition,
    /// keys placed by `partitioner`.
    fn plan(
        &self,
        lineage: &str,
        checkpoint: u64,
        batches: &[RecordBatch],
        partitions: &[i32],
        partitioner: Partitioner,
    ) -> Result<Plan> {
        if partitions.is_empty() {
            return Err(RilletError::invalid_argument(format!(
                "kafka topic {:?} has no partitions to write to",
                self.topic
            )));
        }
        let mut plan: Plan = partitions.iter().map(|&p| (p, Vec::new())).collect();
        let now = Utc::now();
        let mut row_number = 0usize;
        for batch in batches {
            let values = self.values(batch)?;
            let keys = self.keys(batch)?;
            for (row, value) in values.into_iter().enumerate() {
                let key = keys.as_ref().and_then(|k| k[row].clone());
                let slot = match &key {
                    Some(key) => partitioner.slot(key, partitions.len()),
                    None => row_number % partitions.len(),
                };
                row_number += 1;
                let records = plan
                    .get_mut(&partitions[slot])
                    .expect("every partition planned");
                let commit = Commit {
                    checkpoint,
                    partitions: partitions.len(),
                    partitioner,
                    index: records.len(),
                };
                let header = self.header(lineage, commit);
                records.push(Record {
                    key,
                    value,
                    headers: BTreeMap::from([(COMMIT_HEADER.to_string(), header)]),
                    timestamp: now,
                });
            }
        }
        Ok(plan)
    }

    /// Each row's value: the `value` column's bytes, or the row as a JSON object.
    fn values(&self, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        if let Some(column) = batch.column_by_name("value")
            && matches!(
                column.data_type(),
                DataType::Binary
                    | DataType::Utf8
                    | DataType::LargeBinary
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::BinaryView
            )
        {
            return column_bytes(column);
        }
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(batch)?;
        writer.finish()?;
        let text = writer.into_inner();
        let lines: Vec<Option<Vec<u8>>> = text
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| Some(line.to_vec()))
            .collect();
        if lines.len() != batch.num_rows() {
            return Err(RilletError::internal(format!(
                "kafka sink: {} JSON lines for {} rows",
                lines.len(),
                batch.num_rows()
            )));
        }
        Ok(lines)
    }

    /// Each row's key, from the key column; `None` without one.
    fn keys(&self, batch: &RecordBatch) -> Result<Option<Vec<Option<Vec<u8>>>>> {
        let Some(name) = &self.key else {
            return Ok(None);
        };
        let column = batch.column_by_name(name).ok_or_else(|| {
            RilletError::invalid_argument(format!("kafka sink: no key column {name:?}"))
        })?;
        column_bytes(column).map(Some)
    }

    /// For each partition, the indices of checkpoint `checkpoint`'s records already in
    /// it: its tail read newest first, in windows that double, down to a record of an
    /// earlier checkpoint of this job (commits run one after another, so none of this
    /// checkpoint's records lies below it) or the partition's start.
    async fn already_written(
        &self,
        client: &PartitionClient,
        lineage: &str,
        checkpoint: u64,
    ) -> Result<BTreeSet<Commit>> {
        let error = |what: &str, e: rskafka::client::error::Error| {
            kafka_error(&self.brokers, &format!("{what} of {}", self.topic), e)
        };
        let earliest = client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| error("earliest offset", e))?;
        let mut high = client
            .get_offset(OffsetAt::Latest)
            .await
            .map_err(|e| error("latest offset", e))?;
        let mut window = FIRST_SCAN_WINDOW;
        let mut found = BTreeSet::new();
        while high > earliest {
            let low = (high - window).max(earliest);
            let mut earlier_commit = false;
            let mut next = low;
            while next < high {
                let (records, _) = client
                    .fetch_records(next, 1..SCAN_FETCH_BYTES, 0)
                    .await
                    .map_err(|e| error("reading back", e))?;
                let records: Vec<_> = records
                    .into_iter()
                    .filter(|r| r.offset >= next && r.offset < high)
                    .collect();
                let Some(last) = records.last().map(|r| r.offset) else {
                    // Nothing at `next` (a record compacted or deleted away): step over it.
                    next += 1;
                    continue;
                };
                for r in &records {
                    match self.commit_of(lineage, &r.record) {
                        Some(commit) if commit.checkpoint == checkpoint => {
                            found.insert(commit);
                        }
                        Some(commit) if commit.checkpoint < checkpoint => earlier_commit = true,
                        _ => {}
                    }
                }
                next = last + 1;
            }
            if earlier_commit {
                break;
            }
            high = low;
            window = window.saturating_mul(2);
        }
        Ok(found)
    }

    /// Produce the rows of `states`, the tasks' states of checkpoint `checkpoint`: each
    /// segment (the rows sealed at one barrier) under its own checkpoint id, oldest first.
    /// With `repeat` (a recovery), the commit may have been made, wholly or in part,
    /// before: skip what is there already. Without, no segment was produced before: a
    /// segment of an earlier checkpoint in a live commit was carried past an aborted
    /// checkpoint, because the checkpoint loop starts a checkpoint only after the previous
    /// one's commit has run (and a commit that fails ends the job).
    async fn produce(
        &self,
        lineage: &str,
        checkpoint: u64,
        states: &[Vec<u8>],
        repeat: bool,
    ) -> Result<()> {
        for (id, batches) in decode_segments(checkpoint, states)? {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            self.produce_batches(lineage, id, &batches, repeat).await?;
        }
        Ok(())
    }

    async fn produce_batches(
        &self,
        lineage: &str,
        checkpoint: u64,
        batches: &[RecordBatch],
        repeat: bool,
    ) -> Result<()> {
        let client = self.client().await?;
        let mut partitions = self.partitions(&client).await?;
        let mut partitioner = Partitioner::Murmur2;
        // What an earlier attempt of this commit left in each partition.
        let mut written: BTreeMap<i32, BTreeSet<usize>> = BTreeMap::new();
        if repeat && checkpoint > 0 {
            let mut planned_over = BTreeSet::new();
            for &partition in &partitions {
                let partition_client = client
                    .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await
                    .map_err(|e| {
                        kafka_error(&self.brokers, &format!("partition {partition}"), e)
                    })?;
                for commit in self
                    .already_written(&partition_client, lineage, checkpoint)
                    .await?
                {
                    planned_over.insert((commit.partitions, commit.partitioner));
                    written.entry(partition).or_default().insert(commit.index);
                }
            }
            // Partitions added since the first attempt must not move its rows: plan over
            // the partitions it planned over (new ones come last in Kafka's numbering),
            // placing keys as it did (a Rillet of before used FNV-1a).
            match planned_over.iter().copied().collect::<Vec<_>>().as_slice() {
                [] => {}
                [(count, by)] if *count <= partitions.len() => {
                    partitions.truncate(*count);
                    partitioner = *by;
                }
                plans => {
                    return Err(RilletError::Checkpoint(format!(
                        "kafka topic {:?}: the commit of checkpoint {checkpoint} was planned \
                         as {plans:?} (partitions, partitioner), and the topic has {} \
                         partitions",
                        self.topic,
                        partitions.len()
                    )));
                }
            }
        }
        let plan = self.plan(lineage, checkpoint, batches, &partitions, partitioner)?;
        let producer = self.producer().await?;
        for (partition, records) in plan {
            let skip = written.remove(&partition).unwrap_or_default();
            let missing: Vec<Record> = records
                .into_iter()
                .enumerate()
                .filter(|(index, _)| !skip.contains(index))
                .map(|(_, record)| record)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let partition_client = producer
                .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Error)
                .await
                .map_err(|e| kafka_error(&self.brokers, &format!("partition {partition}"), e))?;
            let mut missing = missing.into_iter().peekable();
            while missing.peek().is_some() {
                let request: Vec<Record> =
                    missing.by_ref().take(self.records_per_request).collect();
                partition_client
                    .produce(request, Compression::NoCompression)
                    .await
                    .map_err(|e| {
                        kafka_error(
                            &self.brokers,
                            &format!("producing to {}/{partition}", self.topic),
                            e,
                        )
                    })?;
                // A crash between two requests: part of the commit is in the topic.
                fail::fail_point!("kafka-sink-between-requests", |_| Err(RilletError::Io(
                    std::io::Error::other("failpoint kafka-sink-between-requests")
                )));
            }
        }
        Ok(())
    }
}

/// A column's values as bytes: binary as it is, anything else as its text.
fn column_bytes(column: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>> {
    let binary = match column.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            arrow::compute::cast(column, &DataType::Binary)?
        }
        _ => {
            let text = arrow::compute::cast(column, &DataType::Utf8)?;
            arrow::compute::cast(&text, &DataType::Binary)?
        }
    };
    let binary = binary.as_binary::<i32>();
    Ok((0..binary.len())
        .map(|i| (!binary.is_null(i)).then(|| binary.value(i).to_vec()))
        .collect())
}

impl RowsOut for KafkaSink {
    fn write_out(&self, context: &SinkContext, batches: &[RecordBatch]) -> Result<()> {
        block_on(self.produce_batches(&context.lineage, 0, batches, false))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!(
            "produce to kafka {} at {}",
            self.topic,
            self.brokers.join(",")
        )
    }

    fn prepare(&self) -> Result<()> {
        block_on(async {
            let client = self.client().await?;
            self.partitions(&client).await.map(|_| ())
        })
    }

    fn open(
        &self,
        partition: usize,
        schema: SchemaRef,
        _blocking: &BlockingPool,
        context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>> {
        if let Some(key) = &self.key
            && schema.field_with_name(key).is_err()
        {
            return Err(RilletError::invalid_argument(format!(
                "kafka sink: the rows have no key column {key:?}"
            )));
        }
        Ok(StagedWriter::boxed(self, schema, partition, context))
    }

    fn commit(&self, context: &SinkContext, checkpoint: u64, states: &[Vec<u8>]) -> Result<()> {
        block_on(self.produce(&context.lineage, checkpoint, states, false))
    }

    fn recover(
        &self,
        context: &SinkContext,
        checkpoint: Option<u64>,
        states: &[Vec<u8>],
    ) -> Result<()> {
        match checkpoint {
            // The restored checkpoint's commit may have been cut short, or not begun.
            Some(id) if id > 0 => block_on(self.produce(&context.lineage, id, states, true)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    /// The lineage the tests' records are planned in.
    const L: &str = "0123456789ab";

    fn sink() -> KafkaSink {
        KafkaSink::new(
            vec!["127.0.0.1:1".into()],
            "t",
            "job-1",
            Some("user".into()),
        )
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["ann", "bob", "ann", "cy"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_plan_is_the_same_every_time_and_keys_keep_to_one_partition() {
        let s = sink();
        let a = s
            .plan(L, 7, &[batch()], &[0, 1, 2], Partitioner::Murmur2)
            .unwrap();
        let b = s
            .plan(L, 7, &[batch()], &[0, 1, 2], Partitioner::Murmur2)
            .unwrap();
        type Shape = Vec<(i32, Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>)>)>;
        let shape = |p: &Plan| -> Shape {
            p.iter()
                .map(|(k, v)| {
                    (
                        *k,
                        v.iter()
                            .map(|r| {
                                (
                                    r.key.clone(),
                                    r.value.clone(),
                                    r.headers[COMMIT_HEADER].clone(),
                                )
                            })
                            .collect(),
                    )
                })
                .collect()
        };
        assert_eq!(shape(&a), shape(&b));
        let ann: Vec<i32> = a
            .iter()
            .filter(|(_, rs)| rs.iter().any(|r| r.key.as_deref() == Some(b"ann")))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(ann.len(), 1, "both of ann's rows in one partition");
        let records: Vec<&Record> = a.values().flatten().collect();
        assert_eq!(records.len(), 4);
        let values: BTreeSet<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect();
        assert!(values.contains(r#"{"user":"bob"}"#), "{values:?}");
        assert!(values.contains(r#"{"user":"ann","n":3}"#), "{values:?}");
        for rs in a.values() {
            for (index, r) in rs.iter().enumerate() {
                let commit = Commit {
                    checkpoint: 7,
                    partitions: 3,
                    partitioner: Partitioner::Murmur2,
                    index,
                };
                assert_eq!(s.commit_of(L, r), Some(commit));
            }
        }
    }

    #[test]
    fn only_this_jobs_headers_count() {
        let s = sink();
        let mut r = s
            .plan(L, 3, &[batch()], &[0], Partitioner::Murmur2)
            .unwrap()
            .remove(&0)
            .unwrap()
            .remove(0);
        let first = Commit {
            checkpoint: 3,
            partitions: 1,
            partitioner: Partitioner::Murmur2,
            index: 0,
        };
        assert_eq!(s.commit_of(L, &r), Some(first));
        for other in [
            &b"job-10:0123456789ab:3:1:0"[..],
            b"job-1:ba9876543210:3:1:0", // the same job id in another store
            b"job-1:3:1:0:murmur2",      // no lineage (written before lineages)
            b"job-1:0123456789ab:x:1:0",
            b"job-1:0123456789ab:3:0",
            b"job-1:0123456789ab:3:1:0:9",
            b"job-1:0123456789ab:3:1:0:murmur2:x",
        ] {
            r.headers.insert(COMMIT_HEADER.into(), other.to_vec());
            assert_eq!(
                s.commit_of(L, &r),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // A checkpoint store from before lineages: the header of before, both ways.
        let legacy = s
            .plan("", 3, &[batch()], &[0], Partitioner::Murmur2)
            .unwrap()
            .remove(&0)
            .unwrap()
            .remove(0);
        assert_eq!(&legacy.headers[COMMIT_HEADER][..], b"job-1:3:1:0:murmur2");
        assert_eq!(s.commit_of("", &legacy), Some(first));
        // A header of before partitioner names: a commit planned with FNV-1a.
        r.headers
            .insert(COMMIT_HEADER.into(), b"job-1:0123456789ab:3:1:0".to_vec());
        let fnv = Commit {
            partitioner: Partitioner::Fnv1a,
            ..first
        };
        assert_eq!(s.commit_of(L, &r), Some(fnv));
        assert_eq!(s.commit_of(L, &legacy), None);
        assert_eq!(s.commit_of("", &r), None);
        r.headers.clear();
        assert_eq!(s.commit_of(L, &r), None);
        assert!(
            s.plan(L, 3, &[batch()], &[], Partitioner::Murmur2).is_err(),
            "no partitions: an error, not a panic"
        );
    }

    #[test]
    fn murmur2_matches_kafkas_clients() {
        // Values Kafka's Java client gives (as signed 32-bit integers).
        for (key, java) in [
            ("21", -973_932_308_i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, java, "{key}");
        }
        // The sign bit cleared, not the value negated: 2^31 - 790,332,482.
        assert_eq!(Partitioner::Murmur2.slot(b"foobar", 7), 1_357_151_166 % 7);
    }

    /// A tansu broker on loopback, in memory, when its binary is here (CI builds it into
    /// `~/.cache/rillet/tools`); the broker dies with the guard.
    struct Broker {
        process: std::process::Child,
        address: String,
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }

    /// A tansu broker on loopback: the binary on PATH or in `$RILLET_CACHE/tools/bin`
    /// (scripts/test.sh builds it there). Missing, the test is skipped, unless
    /// `RILLET_REQUIRE_SERVERS` is set (scripts/test.sh sets it), when it fails.
    fn tansu() -> Option<Broker> {
        let cache = std::env::var_os("RILLET_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| std::path::Path::new(&home).join(".cache/rillet"))
            });
        let cached = cache.map(|dir| dir.join("tools/bin/tansu"));
        let binary = cached.filter(|p| p.is_file()).or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("tansu"))
                    .find(|p| p.is_file())
            })
        });
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("RILLET_REQUIRE_SERVERS").is_none(),
                "no tansu broker binary on PATH or in $RILLET_CACHE/tools/bin, and \
                 RILLET_REQUIRE_SERVERS is set: run scripts/test.sh, which builds it"
            );
            return None;
        };
        // Found, the broker must start: a binary that cannot run is a failure, not a skip.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on loopback")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let process = std::process::Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}", binary.display()));
        let address = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker { process, address })
    }

    /// Every record of the topic's partitions: (partition, key, value, header).
    async fn read_all(client: &Client, topic: &str, partitions: i32) -> Vec<(i32, String, String)> {
        let mut out = Vec::new();
        for p in 0..partitions {
            let pc = client
                .partition_client(topic, p, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            let end = pc.get_offset(OffsetAt::Latest).await.unwrap();
            let mut next = pc.get_offset(OffsetAt::Earliest).await.unwrap();
            while next < end {
                let (records, _) = pc.fetch_records(next, 1..(1 << 20), 0).await.unwrap();
                let from = next;
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    let text =
                        |b: Option<Vec<u8>>| String::from_utf8(b.unwrap_or_default()).unwrap();
                    let header =
                        String::from_utf8(r.record.headers[COMMIT_HEADER].clone()).unwrap();
                    out.push((p, text(r.record.value), header));
                    next = r.offset + 1;
                }
            }
        }
        out.sort();
        out
    }

    /// A sink producing one record per request to `topic`, created with 2 partitions on
    /// `broker`, and a client of the broker.
    fn sink_on_new_topic(broker: &Broker, topic: &str) -> (KafkaSink, Client) {
        let sink = KafkaSink::new(vec![broker.address.clone()], topic, "job-1", None)
            .with_records_per_request(1);
        let client = block_on(sink.client()).unwrap();
        block_on(async {
            client
                .controller_client()
                .unwrap()
                .create_topic(topic, 2, 1, 5_000)
                .await
        })
        .unwrap();
        (sink, client)
    }

    /// The `n` of every record [`read_all`] returned (JSON rows), sorted.
    fn sorted_n(records: &[(i32, String, String)]) -> Vec<i64> {
        let mut values: Vec<i64> = records
            .iter()
            .map(|(_, value, _)| {
                let row: serde_json::Value = serde_json::from_str(value).unwrap();
                row["n"].as_i64().unwrap()
            })
            .collect();
        values.sort();
        values
    }

    fn states(rows: std::ops::Range<i64>) -> Vec<Vec<u8>> {
        // Two sink tasks' staged rows, as their checkpoint states.
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let mid = (rows.start + rows.end) / 2;
        [rows.start..mid, mid..rows.end]
            .into_iter()
            .map(|part| {
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from_iter_values(part))],
                )
                .unwrap();
                let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
                w.write(&batch).unwrap();
                w.finish().unwrap();
                w.into_inner().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_commit_cut_short_is_finished_on_recovery_without_a_duplicate() {
        let Some(broker) = tansu() else {
            eprintln!("skipped: no tansu broker binary (scripts/test.sh builds one)");
            return;
        };
        let scenario = fail::FailScenario::setup();
        let (sink, client) = sink_on_new_topic(&broker, "out");
        let cx = SinkContext::default();

        // Checkpoint 1 commits whole; repeating it (a recovery) adds nothing.
        sink.commit(&cx, 1, &states(0..6)).unwrap();
        sink.recover(&cx, Some(1), &states(0..6)).unwrap();
        assert_eq!(block_on(read_all(&client, "out", 2)).len(), 6);

        // Checkpoint 2's commit dies after its third produce request; the states arrive
        // in another order on recovery, as acknowledgements may.
        fail::cfg("kafka-sink-between-requests", "2*off->return").unwrap();
        assert!(sink.commit(&cx, 2, &states(6..16)).is_err());
        fail::remove("kafka-sink-between-requests");
        assert_eq!(
            block_on(read_all(&client, "out", 2)).len(),
            6 + 3,
            "a partial commit"
        );
        let mut reordered = states(6..16);
        reordered.reverse();
        sink.recover(&cx, Some(2), &reordered).unwrap();
        sink.recover(&cx, Some(2), &reordered).unwrap();

        let all = block_on(read_all(&client, "out", 2));
        assert_eq!(
            sorted_n(&all),
            (0..16).collect::<Vec<_>>(),
            "every row exactly once"
        );
        // A later checkpoint's recovery scan stops at checkpoint 2's records.
        sink.recover(&cx, Some(3), &states(16..18)).unwrap();
        assert_eq!(block_on(read_all(&client, "out", 2)).len(), 18);
        scenario.teardown();
    }

    /// Checkpoint 1 is aborted: its rows ride in checkpoint 2's states and are produced
    /// once, under id 1. A recovery from checkpoint 3 whose states still carry segments 1
    /// and 2 (their commit had not run when its barrier came) recognises them and produces
    /// only checkpoint 3's rows; repeated, nothing.
    #[test]
    fn segments_carried_past_an_abort_are_produced_once_and_recovery_skips_what_landed() {
        let Some(broker) = tansu() else {
            eprintln!("skipped: no tansu broker binary (scripts/test.sh builds one)");
            return;
        };
        // Failpoints are process-wide: this keeps the other test's out of this one.
        let scenario = fail::FailScenario::setup();
        let (sink, client) = sink_on_new_topic(&broker, "carried");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let context = SinkContext {
            checkpointing: true,
            ..SinkContext::default()
        };
        let cx = context.clone();
        let mut writers: Vec<_> = (0..2)
            .map(|task| StagedWriter::boxed(&sink, schema.clone(), task, &context))
            .collect();
        let mut barrier = |checkpoint: u64, rows: std::ops::Range<i64>| -> Vec<Vec<u8>> {
            block_on(async {
                let mut states = Vec::new();
                for (task, writer) in writers.iter_mut().enumerate() {
                    let part = rows.clone().filter(|n| *n as usize % 2 == task);
                    let batch = RecordBatch::try_new(
                        schema.clone(),
                        vec![Arc::new(Int64Array::from_iter_values(part))],
                    )
                    .unwrap();
                    writer.write(batch).await.unwrap();
                    states.push(writer.checkpoint(checkpoint).await.unwrap().unwrap());
                }
                states
            })
        };
        let _aborted = barrier(1, 0..4);
        sink.commit(&cx, 2, &barrier(2, 4..8)).unwrap();
        let third = barrier(3, 8..10);
        sink.recover(&cx, Some(3), &third).unwrap();
        sink.recover(&cx, Some(3), &third).unwrap();
        let all = block_on(read_all(&client, "carried", 2));
        assert_eq!(
            sorted_n(&all),
            (0..10).collect::<Vec<_>>(),
            "every row exactly once"
        );
        let checkpoints: BTreeSet<&str> = all
            .iter()
            .map(|(_, _, header)| header.split(':').nth(2).unwrap())
            .collect();
        assert_eq!(checkpoints, BTreeSet::from(["1", "2", "3"]));
        scenario.teardown();
    }

    /// A keyed commit that a Rillet of before (FNV-1a headers) cut short is finished by
    /// this one as it was planned: each key's rows stay in one partition, none twice.
    #[test]
    fn a_commit_begun_by_an_fnv_rillet_is_finished_with_fnv() {
        let Some(broker) = tansu() else {
            eprintln!("skipped: no tansu broker binary (scripts/test.sh builds one)");
            return;
        };
        // Failpoints are process-wide: this keeps the other tests' out of this one.
        let scenario = fail::FailScenario::setup();
        let (sink, client) = sink_on_new_topic(&broker, "upgraded");
        let sink = KafkaSink {
            key: Some("user".into()),
            ..sink
        };
        let cx = SinkContext::default();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let n = Int64Array::from_iter_values(0..24);
        let users: StringArray = (0..24).map(|i| Some(format!("user-{}", i % 6))).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(users), Arc::new(n)]).unwrap();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let states = vec![w.into_inner().unwrap()];
        let moved = (0..6)
            .map(|u| format!("user-{u}"))
            .filter(|u| {
                Partitioner::Fnv1a.slot(u.as_bytes(), 2)
                    != Partitioner::Murmur2.slot(u.as_bytes(), 2)
            })
            .count();
        assert!(moved > 0, "the two partitioners disagree on some key");

        // The first attempt, by a Rillet of before: half of each partition's records.
        let batches: Vec<RecordBatch> = decode_segments(2, &states)
            .unwrap()
            .into_values()
            .flatten()
            .collect();
        let plan = sink
            .plan(&cx.lineage, 2, &batches, &[0, 1], Partitioner::Fnv1a)
            .unwrap();
        block_on(async {
            let producer = sink.producer().await.unwrap();
            for (partition, mut records) in plan {
                records.truncate(records.len() / 2);
                let pc = producer
                    .partition_client("upgraded", partition, UnknownTopicHandling::Error)
                    .await
                    .unwrap();
                for record in records {
                    pc.produce(vec![record], Compression::NoCompression)
                        .await
                        .unwrap();
                }
            }
        });
        sink.recover(&cx, Some(2), &states).unwrap();

        let all = block_on(read_all(&client, "upgraded", 2));
        assert_eq!(
            sorted_n(&all),
            (0..24).collect::<Vec<_>>(),
            "every row once"
        );
        for (partition, value, header) in &all {
            let row: serde_json::Value = serde_json::from_str(value).unwrap();
            let user = row["user"].as_str().unwrap();
            let fnv = Partitioner::Fnv1a.slot(user.as_bytes(), 2) as i32;
            assert_eq!(*partition, fnv, "{user} where the first attempt put it");
            assert!(!header.ends_with("murmur2"), "{header}");
        }
        // The next commit places keys as Kafka's clients do.
        sink.commit(&cx, 3, &states).unwrap();
        let all = block_on(read_all(&client, "upgraded", 2));
        let next: Vec<_> = all
            .iter()
            .filter(|(_, _, h)| h.ends_with("murmur2"))
            .collect();
        assert_eq!(next.len(), 24);
        for (partition, value, _) in next {
            let row: serde_json::Value = serde_json::from_str(value).unwrap();
            let user = row["user"].as_str().unwrap();
            assert_eq!(
                *partition,
                Partitioner::Murmur2.slot(user.as_bytes(), 2) as i32
            );
        }
        scenario.teardown();
    }
}
