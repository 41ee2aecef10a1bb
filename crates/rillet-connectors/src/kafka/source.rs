//! Kafka topics as a streaming source, over the Kafka protocol (any broker that speaks it:
//! Apache Kafka, Redpanda, tansu).
//!
//! Each partition of the topic is a split; its position is the next offset to read, so a
//! restored job continues with exactly the records after its checkpoint. Offsets live in
//! Rillet's checkpoints, not in a consumer group: the broker needs no group coordinator and
//! a restore never depends on what the broker remembers. Rows are `(topic, partition,
//! offset, timestamp, key, value)`, the key and value as binary (cast them in the
//! pipeline). Unbounded by default; a bounded source ends each partition at the offset that
//! was its end when the reader started.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{
    BinaryBuilder, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_operator::{SourceReader, SplitAssignment, StreamSource};
use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::RecordAndOffset;
use tokio::task::JoinHandle;

/// The schema of a Kafka source's batches.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Binary, true),
        ]))
    });
    SCHEMA.clone()
}

/// Most bytes asked of the broker per fetch.
const MAX_FETCH_BYTES: i32 = 4 << 20;
/// How long the broker may hold a fetch open waiting for records.
const FETCH_WAIT_MS: i32 = 100;

pub(crate) fn kafka_error(
    brokers: &[String],
    what: &str,
    e: impl std::fmt::Display,
) -> RilletError {
    RilletError::Io(std::io::Error::other(format!(
        "kafka at {}: {what}: {e}",
        brokers.join(",")
    )))
}

/// A Kafka topic read by partition (see the module docs).
#[derive(Debug, Clone)]
pub struct KafkaSource {
    brokers: Vec<String>,
    topic: String,
    partitions: Vec<i32>,
    bounded: bool,
}

impl KafkaSource {
    /// The source for `topic` on `brokers` (`host:port`), with its partitions looked up.
    pub async fn connect(
        brokers: Vec<String>,
        topic: impl Into<String>,
        bounded: bool,
    ) -> Result<Self> {
        let topic = topic.into();
        let client = connect(&brokers, PLANNING_DEADLINE).await?;
        let topics = client
            .list_topics()
            .await
            .map_err(|e| kafka_error(&brokers, "listing topics", e))?;
        let mut partitions: Vec<i32> = topics
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| {
                RilletError::invalid_argument(format!(
                    "kafka at {}: no topic {topic:?}",
                    brokers.join(",")
                ))
            })?
            .partitions
            .into_iter()
            .collect();
        partitions.sort_unstable();
        Ok(Self {
            brokers,
            topic,
            partitions,
            bounded,
        })
    }

    fn split_name(&self, partition: i32) -> String {
        format!("{}/{partition}", self.topic)
    }
}

/// How long a job's reader keeps retrying an unreachable broker before it fails (and the
/// job restarts from its checkpoint).
const READER_DEADLINE: Duration = Duration::from_secs(60);
/// How long planning waits for a broker to answer about the topic.
const PLANNING_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) async fn connect(brokers: &[String], deadline: Duration) -> Result<Client> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(deadline),
    };
    ClientBuilder::new(brokers.to_vec())
        .client_id("rillet")
        .backoff_config(backoff)
        .build()
        .await
        .map_err(|e| kafka_error(brokers, "connecting", e))
}

impl StreamSource for KafkaSource {
    fn describe(&self) -> String {
        format!(
            "kafka {} at {} ({} partitions{})",
            self.topic,
            self.brokers.join(","),
            self.partitions.len(),
            if self.bounded { ", bounded" } else { "" }
        )
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn splits(&self) -> Result<Vec<String>> {
        Ok(self
            .partitions
            .iter()
            .map(|&p| self.split_name(p))
            .collect())
    }

    fn open(&self, assigned: Vec<SplitAssignment>) -> Result<Box<dyn SourceReader>> {
        let partitions = assigned
            .into_iter()
            .map(|a| {
                let partition = a
                    .split
                    .rsplit_once('/')
                    .and_then(|(_, p)| p.parse::<i32>().ok())
                    .ok_or_else(|| {
                        RilletError::Checkpoint(format!("{:?} is not a kafka split", a.split))
                    })?;
                let next = a
                    .position
                    .map(|p| {
                        <[u8; 8]>::try_from(p.as_slice())
                            .map(i64::from_le_bytes)
                            .map_err(|_| {
                                RilletError::Checkpoint(format!(
                                    "kafka split {:?}: unreadable position",
                                    a.split
                                ))
                            })
                    })
                    .transpose()?;
                Ok(PartitionState {
                    split: a.split,
                    partition,
                    client: None,
                    next,
                    end: None,
                    ended: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(KafkaReader {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            bounded: self.bounded,
            client: None,
            partitions,
            turn: 0,
            fetch: None,
            empty_fetches: 0,
        }))
    }
}

struct PartitionState {
    split: String,
    partition: i32,
    client: Option<Arc<PartitionClient>>,
    /// The next offset to read; `None` until the partition's earliest offset is known.
    next: Option<i64>,
    /// A bounded source's end offset (exclusive), fixed when the reader first reads.
    end: Option<i64>,
    ended: bool,
}

/// A fetch running as its own task: the partition (index), the offset it reads from.
struct Fetch {
    index: usize,
    from: i64,
    task: JoinHandle<Result<Vec<RecordAndOffset>>>,
}

struct KafkaReader {
    brokers: Vec<String>,
    topic: String,
    bounded: bool,
    client: Option<Arc<Client>>,
    partitions: Vec<PartitionState>,
    /// The partition read next, so that every partition gets its turn.
    turn: usize,
    /// A fetch under way: which partition, from which offset. It runs as its own task so
    /// that a barrier (which drops `next_batch`) does not throw it away: a broker may hold
    /// a fetch open for its whole wait, longer than the time between barriers.
    fetch: Option<Fetch>,
    /// Fetches in a row that found nothing: after a round of them the reader pauses.
    empty_fetches: usize,
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            fetch.task.abort();
        }
    }
}

impl KafkaReader {
    /// The partition's client and its starting point, set up on first use. Each step is
    /// kept as soon as it is done: a barrier drops this future, and the next call must go
    /// on from where it stopped rather than start over (or it might never finish).
    async fn prepare(&mut self, index: usize) -> Result<Arc<PartitionClient>> {
        let state = &self.partitions[index];
        if let Some(ready) = &state.client
            && state.next.is_some()
            && (!self.bounded || state.end.is_some())
        {
            return Ok(ready.clone());
        }
        let brokers = self.brokers.clone();
        let partition = self.partitions[index].partition;
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = Arc::new(connect(&brokers, READER_DEADLINE).await?);
                self.client = Some(client.clone());
                client
            }
        };
        let partition_client = match &self.partitions[index].client {
            Some(partition_client) => partition_client.clone(),
            None => {
                let partition_client = client
                    .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await
                    .map_err(|e| kafka_error(&brokers, &format!("partition {partition}"), e))?;
                let partition_client = Arc::new(partition_client);
                self.partitions[index].client = Some(partition_client.clone());
                partition_client
            }
        };
        if self.partitions[index].next.is_none() {
            let earliest = partition_client
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(|e| kafka_error(&brokers, "earliest offset", e))?;
            self.partitions[index].next = Some(earliest);
        }
        if self.bounded && self.partitions[index].end.is_none() {
            let latest = partition_client
                .get_offset(OffsetAt::Latest)
                .await
                .map_err(|e| kafka_error(&brokers, "latest offset", e))?;
            self.partitions[index].end = Some(latest);
        }
        Ok(partition_client)
    }

    fn to_batch(&self, partition: i32, records: &[RecordAndOffset]) -> Result<RecordBatch> {
        let rows = records.len();
        let mut keys = BinaryBuilder::with_capacity(rows, 0);
        let mut values = BinaryBuilder::with_capacity(rows, 0);
        for r in records {
            keys.append_option(r.record.key.as_deref());
            values.append_option(r.record.value.as_deref());
        }
        let columns: Vec<Arc<dyn arrow::array::Array>> = vec![
            Arc::new(StringArray::from(vec![self.topic.as_str(); rows])),
            Arc::new(Int32Array::from(vec![partition; rows])),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.offset),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    records
                        .iter()
                        .map(|r| r.record.timestamp.timestamp_millis()),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(keys.finish()),
            Arc::new(values.finish()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.fetch.is_none() {
                let open: Vec<usize> = (0..self.partitions.len())
                    .filter(|&i| !self.partitions[i].ended)
                    .collect();
                if open.is_empty() {
                    return Ok(None);
                }
                if !self.bounded && self.empty_fetches >= open.len() {
                    // Every partition is drained: wait before asking again.
                    tokio::time::sleep(Duration::from_millis(FETCH_WAIT_MS as u64)).await;
                    self.empty_fetches = 0;
                }
                let index = open[self.turn % open.len()];
                self.turn = self.turn.wrapping_add(1);
                let client = self.prepare(index).await?;
                let state = &self.partitions[index];
                let next = state.next.expect("prepared");
                if state.end.is_some_and(|end| next >= end) {
                    self.partitions[index].ended = true;
                    continue;
                }
                // A bounded read does not wait for records that will not come.
                let wait = if self.bounded { 0 } else { FETCH_WAIT_MS };
                let (brokers, split) = (self.brokers.clone(), state.split.clone());
                let task = tokio::spawn(async move {
                    client
                        .fetch_records(next, 1..MAX_FETCH_BYTES, wait)
                        .await
                        .map(|(records, _high_watermark)| records)
                        .map_err(|e| kafka_error(&brokers, &format!("fetch from {split}"), e))
                });
                self.fetch = Some(Fetch {
                    index,
                    from: next,
                    task,
                });
            }
            let fetch = self.fetch.as_mut().expect("set above");
            let fetched = (&mut fetch.task)
                .await
                .map_err(|e| RilletError::internal(format!("kafka fetch task: {e}")))?;
            let Fetch {
                index, from: next, ..
            } = self.fetch.take().expect("set above");
            let end = self.partitions[index].end;
            let records: Vec<_> = fetched?
                .into_iter()
                .filter(|r| r.offset >= next && end.is_none_or(|end| r.offset < end))
                .collect();
            let Some(last) = records.last().map(|r| r.offset) else {
                self.empty_fetches += 1;
                continue;
            };
            self.empty_fetches = 0;
            let batch = self.to_batch(self.partitions[index].partition, &records)?;
            self.partitions[index].next = Some(last + 1);
            return Ok(Some(batch));
        }
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.partitions
            .iter()
            .filter_map(|p| {
                p.next
                    .map(|next| (p.split.clone(), next.to_le_bytes().to_vec()))
            })
            .collect()
    }
}
