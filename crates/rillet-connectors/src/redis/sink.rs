//! A Redis stream as an exactly-once sink.
//!
//! Rows wait in the job's checkpoint (see [`crate::staged`]); when the checkpoint
//! completes, one Lua script per segment (the rows sealed at one barrier) appends them to
//! the stream (`XADD`, one entry per row, a field per non-null column, values as text) and
//! records the segment's checkpoint id in a marker key,
//! `<stream>:rillet:<job>:<lineage>` (the lineage of the job's checkpoint store, so that
//! the same job id checkpointing elsewhere keeps a marker of its own), atomically. A
//! repeated commit of a segment the marker already covers appends nothing, so recovery may
//! repeat the restored checkpoint's commit safely, and a segment carried past an aborted
//! checkpoint is appended once. A job that starts without any checkpoint resets its
//! marker; a job without checkpoints appends at its end and keeps no marker.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_operator::{BatchWriter, BlockingPool, Sink, SinkContext};

use crate::staged::{RowsOut, StagedWriter, decode_segments};

/// Appends rows to a stream unless the marker already covers the checkpoint. ARGV: the
/// checkpoint id (0: no checkpoints, always append), the column count n, n names, then
/// the values row by row, each `v<text>` or `-` for null.
const APPEND: &str = r"
local id = tonumber(ARGV[1])
if id > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= id then return 0 end
local n = tonumber(ARGV[2])
local rows = 0
local at = 3 + n
while at <= #ARGV do
  local entry = {}
  for i = 1, n do
    local v = ARGV[at + i - 1]
    if string.sub(v, 1, 1) == 'v' then
      entry[#entry + 1] = ARGV[2 + i]
      entry[#entry + 1] = string.sub(v, 2)
    end
  end
  if #entry == 0 then entry = {'_', ''} end
  redis.call('XADD', KEYS[1], '*', unpack(entry))
  at = at + n
  rows = rows + 1
end
if id > 0 then redis.call('SET', KEYS[2], id) end
return rows
";

/// Appends to a Redis stream exactly once (see the module docs).
#[derive(Debug, Clone)]
pub struct RedisStreamSink {
    url: String,
    stream: String,
    job: String,
}

impl RedisStreamSink {
    /// Append to `stream` at `url` (`redis://host:port`) for job `job`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, job: &str) -> Self {
        Self {
            url: url.into(),
            stream: stream.into(),
            job: job.to_string(),
        }
    }

    /// The key recording the newest checkpoint appended in `lineage` (without one in a
    /// checkpoint store from before lineages).
    fn marker(&self, lineage: &str) -> String {
        if lineage.is_empty() {
            return format!("{}:rillet:{}", self.stream, self.job);
        }
        format!("{}:rillet:{}:{lineage}", self.stream, self.job)
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> RilletError {
        RilletError::Io(std::io::Error::other(format!(
            "redis stream {} at {}: {what}: {e}",
            self.stream, self.url
        )))
    }

    fn connection(&self) -> Result<redis::Connection> {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .map_err(|e| self.error("connecting", e))
    }

    /// Append `batches` as checkpoint `checkpoint`'s segment under `marker` (0: no
    /// checkpoints, append without one).
    fn append(&self, marker: &str, checkpoint: u64, batches: &[RecordBatch]) -> Result<()> {
        if batches.is_empty() && checkpoint == 0 {
            return Ok(());
        }
        // Without rows the script still moves the marker up to the checkpoint (never
        // down: a resume from an older savepoint must not re-open later commits).
        let fields = batches.first().map(|b| b.schema().fields().clone());
        let append = redis::Script::new(APPEND);
        let mut script = append.prepare_invoke();
        script
            .key(&self.stream)
            .key(marker)
            .arg(checkpoint)
            .arg(fields.as_ref().map_or(0, |f| f.len()));
        for field in fields.iter().flatten() {
            script.arg(field.name());
        }
        for batch in batches {
            let texts: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                for text in &texts {
                    let text = text.as_string::<i32>();
                    if text.is_null(row) {
                        script.arg("-");
                    } else {
                        script.arg(format!("v{}", text.value(row)));
                    }
                }
            }
        }
        let mut connection = self.connection()?;
        script
            .invoke::<i64>(&mut connection)
            .map_err(|e| self.error("appending", e))?;
        Ok(())
    }
}

impl RowsOut for RedisStreamSink {
    fn write_out(&self, context: &SinkContext, batches: &[RecordBatch]) -> Result<()> {
        self.append(&self.marker(&context.lineage), 0, batches)
    }
}

#[async_trait]
impl Sink for RedisStreamSink {
    fn describe(&self) -> String {
        format!("append to redis stream {}", self.stream)
    }

    fn prepare(&self) -> Result<()> {
        let mut connection = self.connection()?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .map_err(|e| self.error("ping", e))?;
        Ok(())
    }

    fn open(
        &self,
        partition: usize,
        schema: SchemaRef,
        _blocking: &BlockingPool,
        context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>> {
        Ok(StagedWriter::boxed(self, schema, partition, context))
    }

    fn commit(&self, context: &SinkContext, checkpoint: u64, states: &[Vec<u8>]) -> Result<()> {
        // Each segment under its own id: the marker skips one an earlier commit appended.
        let marker = self.marker(&context.lineage);
        let mut segments = decode_segments(checkpoint, states)?;
        segments.entry(checkpoint).or_default();
        for (id, batches) in segments {
            self.append(&marker, id, &batches)?;
        }
        Ok(())
    }

    fn recover(
        &self,
        context: &SinkContext,
        checkpoint: Option<u64>,
        states: &[Vec<u8>],
    ) -> Result<()> {
        match checkpoint {
            Some(id) if id > 0 => self.commit(context, id, states),
            // Starting over: commits of an earlier life of this job id must not hide the
            // new ones. (With every checkpoint lost, what they appended stays.)
            _ => {
                let mut connection = self.connection()?;
                redis::cmd("DEL")
                    .arg(self.marker(&context.lineage))
                    .query::<()>(&mut connection)
                    .map_err(|e| self.error("resetting the commit marker", e))
            }
        }
    }
}
