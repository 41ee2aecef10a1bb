//! Hive-partitioned file output: a sink task's rows split by the values of the partition
//! columns, one file per partition under `<column>=<value>/` folders, the partition columns
//! left out of the files (their folders hold them).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rillet_common::{Result, RilletError};

use rillet_operator::BatchWriter;

/// The value written for a null partition value (Hive's name for it).
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Opens the writer of one partition: its folder (`year=2024/month=5`) and the schema of
/// the rows it gets.
pub(crate) type OpenPartition = Box<dyn Fn(&str, SchemaRef) -> Result<Box<dyn BatchWriter>> + Send>;

/// Splits each batch by partition and hands the parts to a writer per partition.
pub(crate) struct PartitionedWriter {
    /// Indices of the partition columns in the input, in folder order.
    columns: Vec<usize>,
    /// The input's other columns.
    kept: Vec<usize>,
    data_schema: SchemaRef,
    input_schema: SchemaRef,
    writers: BTreeMap<String, Box<dyn BatchWriter>>,
    open: OpenPartition,
}

impl PartitionedWriter {
    /// A writer of `schema` rows partitioned by the columns `by`, opening partitions with
    /// `open`. Partition columns must exist and hold plain values (numbers, strings,
    /// dates, booleans).
    pub(crate) fn new(schema: SchemaRef, by: &[String], open: OpenPartition) -> Result<Self> {
        let mut columns = Vec::with_capacity(by.len());
        for name in by {
            let (index, field) = schema.column_with_name(name).ok_or_else(|| {
                RilletError::Plan(format!(
                    "partition_by: no column {name:?}; columns: {:?}",
                    schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                ))
            })?;
            if !is_partition_type(field.data_type())
                || field.metadata().contains_key("ARROW:extension:name")
            {
                return Err(RilletError::Plan(format!(
                    "partition_by: column {name:?} is {}; partition by numbers, strings, dates \
                     or booleans",
                    field.data_type()
                )));
            }
            columns.push(index);
        }
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !columns.contains(i))
            .collect();
        if kept.is_empty() {
            return Err(RilletError::Plan(
                "partition_by: every column is a partition column; the files would hold none"
                    .into(),
            ));
        }
        let data_schema = Arc::new(schema.project(&kept)?);
        Ok(Self {
            columns,
            kept,
            data_schema,
            input_schema: schema,
            writers: BTreeMap::new(),
            open,
        })
    }

    /// The folder of each row: `col=value/col2=value2`.
    fn folders(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let options = FormatOptions::default();
        let formatters = self
            .columns
            .iter()
            .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let names: Vec<&str> = self
            .columns
            .iter()
            .map(|&i| self.input_schema.field(i).name().as_str())
            .collect();
        Ok((0..batch.num_rows())
            .map(|row| {
                let parts: Vec<String> = self
                    .columns
                    .iter()
                    .zip(&formatters)
                    .zip(&names)
                    .map(|((&column, formatter), name)| {
                        let value = if batch.column(column).is_null(row) {
                            NULL_PARTITION.to_string()
                        } else {
                            escape(&formatter.value(row).to_string())
                        };
                        format!("{}={value}", escape(name))
                    })
                    .collect();
                parts.join("/")
            })
            .collect())
    }
}

fn is_partition_type(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(
            data_type,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
        )
        || matches!(data_type, DataType::Dictionary(_, v) if is_partition_type(v))
}

/// A partition value as a folder name: characters that a path or Hive's parser would
/// read otherwise are percent-encoded (Hive's own escaping).
///
/// ```
/// assert_eq!(rillet_connectors::files::partitioned::escape("a/b=c d"), "a%2Fb%3Dc d");
/// ```
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\\u{7f}{[]^".contains(c) {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    match out.as_str() {
        // An empty value has no folder name: Hive files it with nulls.
        "" => NULL_PARTITION.to_string(),
        "." | ".." => out.replace('.', "%2E"),
        _ => out,
    }
}

#[async_trait]
impl BatchWriter for PartitionedWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let folders = self.folders(&batch)?;
        // Rows by folder, in the order folders first appear.
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (row, folder) in folders.iter().enumerate() {
            let at = *index.entry(folder.as_str()).or_insert_with(|| {
                groups.push((folder.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[at].1.push(row as u32);
        }
        let whole = groups.len() == 1;
        for (folder, rows) in groups {
            let columns = if whole {
                self.kept.iter().map(|&i| batch.column(i).clone()).collect()
            } else {
                let take = UInt32Array::from(rows);
                self.kept
                    .iter()
                    .map(|&i| arrow::compute::take(batch.column(i).as_ref(), &take, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?
            };
            let part = RecordBatch::try_new(self.data_schema.clone(), columns)?;
            if !self.writers.contains_key(&folder) {
                let writer = (self.open)(&folder, self.data_schema.clone())?;
                self.writers.insert(folder.clone(), writer);
            }
            let writer = self.writers.get_mut(&folder).expect("inserted above");
            writer.write(part).await?;
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<Vec<String>> {
        let mut written = Vec::new();
        for (_, writer) in self.writers {
            written.extend(writer.close().await?);
        }
        Ok(written)
    }
}
