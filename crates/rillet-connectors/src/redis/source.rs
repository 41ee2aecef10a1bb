//! Redis Streams as a streaming source: each stream key is a split, its position the id of
//! the last entry read, so a restore continues with the entry after it (`XRANGE` with an
//! exclusive start).
//!
//! Rows are `(stream, id, <field>...)`, every field a nullable string (an entry without
//! the field gives a null); cast them in the pipeline. An unbounded source polls a stream
//! that has nothing new every `poll_interval`; a bounded one ends a stream once it has no
//! entry left (a stream written before the job starts).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use rillet_common::{Result, RilletError};
use rillet_operator::{SourceReader, SplitAssignment, StreamSource};

/// A set of Redis streams read as one source (see the module docs).
///
/// ```
/// use rillet_connectors::redis::RedisStreamSource;
/// use rillet_operator::StreamSource;
/// let source = RedisStreamSource::new("redis://127.0.0.1:6379", vec!["orders".into()], vec!["amount".into()]);
/// assert_eq!(source.schema().fields().len(), 3); // stream, id, amount
/// assert_eq!(source.splits().unwrap(), vec!["orders"]);
/// ```
#[derive(Debug, Clone)]
pub struct RedisStreamSource {
    url: String,
    streams: Vec<String>,
    fields: Vec<String>,
    bounded: bool,
    batch_rows: usize,
    poll_interval: Duration,
    schema: SchemaRef,
}

impl RedisStreamSource {
    /// Read `streams` at `url` (`redis://host:port/db`), keeping entry fields `fields`.
    pub fn new(url: impl Into<String>, streams: Vec<String>, fields: Vec<String>) -> Self {
        let mut columns = vec![
            Field::new("stream", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
        ];
        columns.extend(fields.iter().map(|f| Field::new(f, DataType::Utf8, true)));
        Self {
            url: url.into(),
            streams,
            fields,
            bounded: false,
            batch_rows: 1024,
            poll_interval: Duration::from_millis(50),
            schema: Arc::new(Schema::new(columns)),
        }
    }

    /// End each stream once it has no entry left (default: wait for more).
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.bounded = bounded;
        self
    }

    /// Entries per read (default 1,024).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// How long an unbounded reader waits before asking an idle stream again (default
    /// 50 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Whether the source ends.
    pub fn is_bounded(&self) -> bool {
        self.bounded
    }
}

impl StreamSource for RedisStreamSource {
    fn describe(&self) -> String {
        format!(
            "redis streams {:?} at {}{}",
            self.streams,
            self.url,
            if self.bounded { " (to their end)" } else { "" }
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn splits(&self) -> Result<Vec<String>> {
        Ok(self.streams.clone())
    }

    fn open(&self, assigned: Vec<SplitAssignment>) -> Result<Box<dyn SourceReader>> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| RilletError::invalid_argument(format!("redis url {:?}: {e}", self.url)))?;
        let streams = assigned
            .into_iter()
            .map(|a| {
                let last = a
                    .position
                    .map(|p| {
                        String::from_utf8(p).map_err(|_| {
                            RilletError::Checkpoint(format!(
                                "redis stream {:?}: unreadable position",
                                a.split
                            ))
                        })
                    })
                    .transpose()?;
                Ok(StreamState {
                    key: a.split,
                    last,
                    ended: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(RedisStreamReader {
            client,
            connection: None,
            url: self.url.clone(),
            streams,
            fields: self.fields.clone(),
            next: 0,
            bounded: self.bounded,
            batch_rows: self.batch_rows,
            poll_interval: self.poll_interval,
            schema: self.schema.clone(),
        }))
    }
}

struct StreamState {
    key: String,
    /// The id of the last entry read.
    last: Option<String>,
    ended: bool,
}

struct RedisStreamReader {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    url: String,
    streams: Vec<StreamState>,
    fields: Vec<String>,
    next: usize,
    bounded: bool,
    batch_rows: usize,
    poll_interval: Duration,
    schema: SchemaRef,
}

impl RedisStreamReader {
    fn unreachable(&self, e: redis::RedisError) -> RilletError {
        RilletError::Io(std::io::Error::other(format!("redis at {}: {e}", self.url)))
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    fn to_batch(&self, key: &str, reply: &StreamRangeReply) -> Result<RecordBatch> {
        let rows = reply.ids.len();
        let mut stream = StringBuilder::with_capacity(rows, rows * key.len());
        let mut id = StringBuilder::with_capacity(rows, rows * 16);
        let mut fields: Vec<StringBuilder> =
            self.fields.iter().map(|_| StringBuilder::new()).collect();
        for entry in &reply.ids {
            stream.append_value(key);
            id.append_value(&entry.id);
            for (builder, name) in fields.iter_mut().zip(&self.fields) {
                match entry.map.get(name) {
                    None => builder.append_null(),
                    Some(value) => match redis::from_redis_value_ref::<String>(value) {
                        Ok(text) => builder.append_value(text),
                        Err(_) => builder.append_null(),
                    },
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(stream.finish()), Arc::new(id.finish())];
        columns.extend(fields.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl SourceReader for RedisStreamReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.streams.iter().all(|s| s.ended) {
                return Ok(None);
            }
            let mut connection = self.connection().await?;
            // One pass over the streams, from the one after the last read.
            for _ in 0..self.streams.len() {
                let i = self.next;
                self.next = (self.next + 1) % self.streams.len();
                if self.streams[i].ended {
                    continue;
                }
                let start = match &self.streams[i].last {
                    Some(last) => format!("({last}"),
                    None => "-".to_string(),
                };
                let reply: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&self.streams[i].key)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(self.batch_rows)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let Some(last) = reply.ids.last() else {
                    if self.bounded {
                        self.streams[i].ended = true;
                    }
                    continue;
                };
                let last = last.id.clone();
                let batch = self.to_batch(&self.streams[i].key, &reply)?;
                // Only now is the position advanced: a read dropped before this point is
                // simply asked again.
                self.streams[i].last = Some(last);
                return Ok(Some(batch));
            }
            if !self.bounded {
                tokio::time::sleep(self.poll_interval).await;
            }
        }
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.streams
            .iter()
            .filter_map(|s| Some((s.key.clone(), s.last.clone()?.into_bytes())))
            .collect()
    }
}
