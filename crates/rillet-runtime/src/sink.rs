//! The collect sink: hands a job's batches back to the caller through a bounded channel
//! (file sinks and the other connectors are in rillet-connectors).

use std::fmt::Debug;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parking_lot::Mutex;
use rillet_common::{Result, RilletError};

use crate::channel::{ChannelReceiver, ChannelSender, byte_channel};
use crate::message::StreamMessage;
use rillet_operator::BlockingPool;
pub use rillet_operator::sink::{BatchWriter, Sink, SinkContext};

/// Hands the job's batches to the caller through a bounded channel (what `collect` and
/// `iter_batches` read). Dropping the [`CollectedBatches`] closes the channel, which stops
/// the job's producers.
#[derive(Debug)]
pub struct CollectSink {
    template: Mutex<Option<SenderTemplate>>,
    schema: SchemaRef,
}

struct SenderTemplate(ChannelSender);

impl Debug for SenderTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSender")
    }
}

/// The caller's end of a [`CollectSink`].
pub struct CollectedBatches {
    receiver: ChannelReceiver,
    schema: SchemaRef,
}

impl CollectSink {
    /// A sink and the receiving end, holding at most `capacity_bytes` of undelivered rows.
    /// Every batch is handed on with `schema` (see [`conform_batch`]).
    pub fn new(schema: SchemaRef, capacity_bytes: usize) -> (Self, CollectedBatches) {
        // The channel ends when every sender is dropped (all sink tasks done and `finish`
        // called), so it never counts End messages.
        let (sender, receiver) = byte_channel(capacity_bytes, usize::MAX, None, None);
        (
            Self {
                template: Mutex::new(Some(SenderTemplate(sender))),
                schema: schema.clone(),
            },
            CollectedBatches { receiver, schema },
        )
    }
}

impl Sink for CollectSink {
    fn describe(&self) -> String {
        "collect batches to the caller".to_string()
    }

    fn open(
        &self,
        _partition: usize,
        _schema: SchemaRef,
        _blocking: &BlockingPool,
        _context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>> {
        let sender = self
            .template
            .lock()
            .as_ref()
            .map(|t| t.0.clone())
            .ok_or(RilletError::Cancelled)?;
        Ok(Box::new(CollectWriter {
            sender,
            schema: self.schema.clone(),
        }))
    }

    fn finish(&self) {
        self.template.lock().take();
    }
}

struct CollectWriter {
    sender: ChannelSender,
    schema: SchemaRef,
}

#[async_trait]
impl BatchWriter for CollectWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = conform_batch(batch, &self.schema)?;
        self.sender
            .send(StreamMessage::Batch(batch))
            .await
            .map_err(|_| RilletError::Cancelled)
    }

    async fn close(self: Box<Self>) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// `batch` with the fields of `schema`, the schema its plan declares: physical operators
/// may mark a column nullable (or drop an extension type's metadata) where the plan knows
/// better, and every batch a caller receives must carry the one declared schema. A column
/// whose type differs only in nested nullability is cast; nulls in a column declared
/// non-null are an error naming the column, never a silent relabelling.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Schema};
///
/// let produced = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).unwrap();
/// let declared = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
/// let out = rillet_runtime::conform_batch(produced, &declared).unwrap();
/// assert_eq!(out.schema(), declared);
/// ```
pub fn conform_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    if batch.num_columns() != schema.fields().len() {
        return Err(RilletError::internal(format!(
            "the plan declares {} columns but produced {}",
            schema.fields().len(),
            batch.num_columns()
        )));
    }
    let rows = batch.num_rows();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            let strict = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            arrow::compute::cast_with_options(column, field.data_type(), &strict).map_err(|e| {
                RilletError::internal(format!(
                    "column {:?} is declared {} but produced as {} ({e})",
                    field.name(),
                    field.data_type(),
                    column.data_type()
                ))
            })?
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(RilletError::internal(format!(
                "column {:?} is declared without nulls but an operator produced {} null(s)",
                field.name(),
                column.null_count()
            )));
        }
        columns.push(column);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

impl CollectedBatches {
    /// Schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next batch, or `None` once the job has no more output (check the job's result to
    /// tell success from failure).
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            match self.receiver.recv().await {
                Some(StreamMessage::Batch(batch)) => return Ok(Some(batch)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
