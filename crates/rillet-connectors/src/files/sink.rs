//! Files as a sink: one file per sink task, Parquet, CSV or JSON lines, hive-partitioned on
//! request, exactly-once under checkpoints (files staged in `_pending/` and committed with
//! the checkpoint that covers them).

use std::fmt::Debug;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rillet_common::{Result, RilletError, durable};
use rillet_operator::{BatchWriter, BlockingPool, Sink, SinkContext};

use super::commit::{BatchStaging, FileCommitter, FileTransaction};

/// File formats a [`FileSink`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Apache Parquet, with this page compression.
    Parquet(ParquetCompression),
    /// CSV with a header line.
    Csv,
    /// JSON lines: one object per row.
    Json,
}

/// Page compression of written Parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParquetCompression {
    /// Zstandard level 1: small files at a good speed (the default).
    #[default]
    Zstd,
    /// Snappy: faster, larger files (the default of pyarrow, Spark, Daft).
    Snappy,
    /// LZ4 (raw): about as fast as Snappy.
    Lz4,
    /// Gzip: smallest and slowest.
    Gzip,
    /// No compression.
    Uncompressed,
}

impl std::str::FromStr for ParquetCompression {
    type Err = RilletError;

    /// ```
    /// use rillet_connectors::files::ParquetCompression;
    /// assert_eq!("snappy".parse::<ParquetCompression>().unwrap(), ParquetCompression::Snappy);
    /// assert!("bzip".parse::<ParquetCompression>().is_err());
    /// ```
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "zstd" => Self::Zstd,
            "snappy" => Self::Snappy,
            "lz4" => Self::Lz4,
            "gzip" => Self::Gzip,
            "none" | "uncompressed" => Self::Uncompressed,
            other => {
                return Err(RilletError::invalid_argument(format!(
                    "unknown Parquet compression {other:?}; expected zstd, snappy, lz4, gzip or none"
                )));
            }
        })
    }
}

impl ParquetCompression {
    fn codec(self) -> parquet::basic::Compression {
        use parquet::basic::Compression;
        match self {
            Self::Zstd => Compression::ZSTD(Default::default()),
            Self::Snappy => Compression::SNAPPY,
            Self::Lz4 => Compression::LZ4_RAW,
            Self::Gzip => Compression::GZIP(Default::default()),
            Self::Uncompressed => Compression::UNCOMPRESSED,
        }
    }
}

impl FileFormat {
    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet(_) => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Json => "json",
        }
    }
}

/// What to do with files already in the output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Keep them; new files get names of their own.
    Append,
    /// Replace the directory's files of this format, once the new ones are in place.
    Overwrite,
}

/// Writes a directory of files, one per sink task: `<job>-<task>.<ext>`.
#[derive(Debug)]
pub struct FileSink {
    directory: PathBuf,
    format: FileFormat,
    mode: WriteMode,
    prefix: String,
    /// Set for an exactly-once sink: files are staged and committed at checkpoints.
    committer: Option<FileCommitter>,
    /// Set for a batch write: files are staged and published when the job has succeeded.
    batch: Option<BatchStaging>,
    /// Hive partition columns: files go to `<column>=<value>/` folders (batch writes).
    partition_by: Vec<String>,
}

impl FileSink {
    /// An exactly-once sink writing `format` files into `directory` for job `job`: each
    /// task stages a file per checkpoint interval in `_pending/` (hidden from readers) and
    /// the file is moved into `directory` when the checkpoint that covers its rows
    /// completes (see [`super::commit`]). Files already in `directory` are kept.
    pub fn exactly_once(
        directory: impl Into<PathBuf>,
        format: FileFormat,
        job: &str,
    ) -> Result<Self> {
        let directory = directory.into();
        let committer = FileCommitter::new(&directory)?;
        Ok(Self {
            directory,
            format,
            mode: WriteMode::Append,
            prefix: job.to_string(),
            committer: Some(committer),
            batch: None,
            partition_by: Vec::new(),
        })
    }

    /// A sink writing `format` files into `directory` (created if missing): staged out of
    /// readers' sight and published together when the job has succeeded (see
    /// [`BatchStaging`]); a failed job publishes nothing, and an overwrite removes the
    /// old files only once the new ones are in place.
    pub fn new(directory: impl Into<PathBuf>, format: FileFormat, mode: WriteMode) -> Self {
        let directory = directory.into();
        let prefix = rillet_common::random_tag();
        Self {
            batch: Some(BatchStaging::new(&directory, &prefix)),
            directory,
            format,
            mode,
            prefix,
            committer: None,
            partition_by: Vec::new(),
        }
    }

    /// Write Hive partitions: each row into the folder `<column>=<value>/...` of its values
    /// of `columns` (left out of the files), one file per partition and task. An overwrite
    /// then replaces the files of every partition. Batch writes only.
    ///
    /// ```
    /// use rillet_connectors::files::{FileFormat, FileSink, ParquetCompression, WriteMode};
    /// let sink = FileSink::new("/tmp/out", FileFormat::Parquet(ParquetCompression::Zstd), WriteMode::Append)
    ///     .partitioned_by(vec!["year".into()])
    ///     .unwrap();
    /// # let _ = sink;
    /// ```
    pub fn partitioned_by(mut self, columns: Vec<String>) -> Result<Self> {
        if self.committer.is_some() && !columns.is_empty() {
            return Err(RilletError::invalid_argument(
                "partition_by is for batch writes; a streaming file sink writes one folder",
            ));
        }
        self.partition_by = columns;
        Ok(self)
    }

    /// The writer of task `partition`'s file in folder `folder` ("" for the directory).
    fn file_writer(
        &self,
        folder: &str,
        partition: usize,
        schema: SchemaRef,
        blocking: &BlockingPool,
    ) -> Result<Box<dyn BatchWriter>> {
        let file = format!("{}-{partition:05}.{}", self.prefix, self.format.extension());
        let name = if folder.is_empty() {
            file
        } else {
            format!("{folder}/{file}")
        };
        let published = self.directory.join(&name);
        let path = match &self.batch {
            Some(batch) => batch.path(&name),
            None => published.clone(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(Box::new(FileWriter {
            file: Some(OpenFile {
                path,
                format: self.format,
                schema,
                // Task 0 always writes a file so an empty result still has a schema on
                // disk (a partition's file exists because it has rows).
                always_create: partition == 0 && folder.is_empty(),
                inner: None,
            }),
            thread: blocking.clone(),
            published,
        }))
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        let mode = match self.committer {
            Some(_) => "exactly once, committed at checkpoints".to_string(),
            None => format!("{:?}", self.mode),
        };
        let partitions = if self.partition_by.is_empty() {
            String::new()
        } else {
            format!(", partitioned by {}", self.partition_by.join(", "))
        };
        format!(
            "write {:?} files to {} ({mode}{partitions})",
            self.format,
            self.directory.display(),
        )
    }

    fn commit(&self, _context: &SinkContext, checkpoint: u64, states: &[Vec<u8>]) -> Result<()> {
        let Some(committer) = &self.committer else {
            return Ok(());
        };
        for state in states {
            for transaction in decode_transactions(state)? {
                if transaction.checkpoint <= checkpoint {
                    committer.commit(&transaction)?;
                }
            }
        }
        Ok(())
    }

    fn recover(
        &self,
        context: &SinkContext,
        checkpoint: Option<u64>,
        states: &[Vec<u8>],
    ) -> Result<()> {
        let Some(committer) = &self.committer else {
            return Ok(());
        };
        let mut keep = Vec::new();
        for state in states {
            keep.extend(decode_transactions(state)?);
        }
        if let Some(checkpoint) = checkpoint.filter(|_| !states.is_empty()) {
            self.commit(context, checkpoint, states)?;
        }
        // Files committed after the restored checkpoint exist only when recovery fell
        // back past a corrupt one: their rows are written again from the older state.
        // (`None`: the job never checkpointed, so nothing it committed is withdrawn.)
        let withdrawn = match checkpoint {
            Some(restored) => {
                committer.withdraw_after(&self.prefix, &context.lineage, Some(restored))?
            }
            None => Vec::new(),
        };
        if !withdrawn.is_empty() {
            tracing::warn!(
                "withdrew {} committed file(s) written after the restored checkpoint {:?}: \
                 their rows are written again",
                withdrawn.len(),
                checkpoint
            );
        }
        let discarded = committer.discard_except(&self.prefix, &context.lineage, &keep)?;
        if !discarded.is_empty() {
            tracing::info!(
                "discarded {} file(s) staged by checkpoints that never completed",
                discarded.len()
            );
        }
        Ok(())
    }

    fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.directory)?;
        match &self.batch {
            Some(batch) => batch.prepare(),
            None => Ok(()),
        }
    }

    fn publish(&self) -> Result<()> {
        if let Some(batch) = &self.batch {
            let replace = (self.mode == WriteMode::Overwrite).then(|| self.format.extension());
            batch.publish(replace, !self.partition_by.is_empty())?;
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(batch) = &self.batch {
            batch.discard();
        }
    }

    fn open(
        &self,
        partition: usize,
        schema: SchemaRef,
        blocking: &BlockingPool,
        context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>> {
        if let Some(committer) = &self.committer {
            return Ok(Box::new(StagingWriter {
                committer: committer.clone(),
                job: self.prefix.clone(),
                task: partition,
                format: self.format,
                schema,
                epoch: context.first_checkpoint,
                seq: 0,
                open: None,
                sealed: Vec::new(),
                uncommitted: Vec::new(),
                context: context.clone(),
                thread: blocking.clone(),
            }));
        }
        if self.partition_by.is_empty() {
            return self.file_writer("", partition, schema, blocking);
        }
        let sink = Self {
            directory: self.directory.clone(),
            format: self.format,
            mode: self.mode,
            prefix: self.prefix.clone(),
            committer: None,
            batch: self.batch.clone(),
            partition_by: Vec::new(),
        };
        let blocking = blocking.clone();
        let open: super::partitioned::OpenPartition =
            Box::new(move |folder, schema| sink.file_writer(folder, partition, schema, &blocking));
        Ok(Box::new(super::partitioned::PartitionedWriter::new(
            schema,
            &self.partition_by,
            open,
        )?))
    }
}

enum FormatWriter {
    Parquet(ArrowWriter<File>),
    Csv(arrow::csv::Writer<File>),
    Json(arrow::json::LineDelimitedWriter<File>),
}

/// Writes one file. Encoding and compression are CPU-heavy and file writes block, so they
/// run on the sink's pool, whose threads also keep the encoder's page and compression
/// buffers warm in their allocator from batch to batch.
struct FileWriter {
    /// Away on a pool thread while a write runs.
    file: Option<OpenFile>,
    thread: BlockingPool,
    /// Where the file will be once published (it is written in the staging directory).
    published: PathBuf,
}

struct OpenFile {
    path: PathBuf,
    format: FileFormat,
    schema: SchemaRef,
    always_create: bool,
    inner: Option<FormatWriter>,
}

/// Rows of the first batch looked at to decide each column's dictionary encoding.
const DICTIONARY_SAMPLE_ROWS: usize = 4096;

/// Parquet writer settings for a file whose first batch is `sample`.
///
/// Dictionary encoding only pays when values repeat. The writer's default tries it on every
/// column and keeps the dictionary until it outgrows its page limit, which a 128k-row group
/// of unique 8-byte values never does: every value of an id or a measurement column is then
/// hashed into a dictionary as large as the data (that interning was 40% of the CPU time of
/// the engine-overhead benchmark). So a column whose sampled values are mostly distinct or
/// large (top-level or inside structs: ids, measurements, an image's pixel buffers, file
/// contents) and floating-point values inside lists (embeddings, audio samples) are written
/// plain; everything else keeps the dictionary.
///
/// Row groups end at 128k rows or 16 MiB: the writer holds a row group's encoded pages in
/// memory until it ends, and a larger group of media (64 MiB was tried) only added to the
/// job's peak memory. Statistics keep 64 bytes of a value's minimum and maximum, so that a
/// column of photos does not copy whole photos into the footer.
fn parquet_properties(
    compression: ParquetCompression,
    schema: &SchemaRef,
    sample: Option<&RecordBatch>,
) -> WriterProperties {
    use parquet::basic::Type as PhysicalType;
    let mut builder = WriterProperties::builder()
        .set_compression(compression.codec())
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_max_row_group_bytes(Some(16 << 20))
        .set_statistics_truncate_length(Some(64));
    // A schema the converter rejects fails in `ArrowWriter::try_new` with its own message.
    let Ok(descriptor) = parquet::arrow::ArrowSchemaConverter::new().convert(schema) else {
        return builder.build();
    };
    for column in descriptor.columns() {
        let path = column.path();
        let plain = if column.max_rep_level() > 0 {
            matches!(
                column.physical_type(),
                PhysicalType::FLOAT | PhysicalType::DOUBLE
            )
        } else {
            sample
                .and_then(|batch| struct_leaf(batch, path.parts()))
                .is_some_and(|array| {
                    large_values(array.as_ref()) || mostly_distinct(array.as_ref())
                })
        };
        if plain {
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
        }
    }
    builder.build()
}

/// The array at a column path without lists (a top-level column or a field of structs,
/// such as an image's pixel buffers).
fn struct_leaf(batch: &RecordBatch, parts: &[String]) -> Option<arrow::array::ArrayRef> {
    use arrow::array::AsArray;
    let (first, rest) = parts.split_first()?;
    let mut array = batch.column_by_name(first)?.clone();
    for name in rest {
        array = array.as_struct_opt()?.column_by_name(name)?.clone();
    }
    Some(array)
}

/// Mean size of a value above which a column is written plain however few rows the sample
/// has: a dictionary of photos or documents pays only for exact duplicates.
const LARGE_VALUE_BYTES: usize = 1024;

/// Whether the non-null values of a binary or string `array` average at least
/// [`LARGE_VALUE_BYTES`].
fn large_values(array: &dyn arrow::array::Array) -> bool {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    // From the offsets: a sliced array shares its parent's whole values buffer.
    fn span<O: arrow::array::OffsetSizeTrait>(offsets: &[O]) -> usize {
        offsets
            .last()
            .map_or(0, |last| (*last - offsets[0]).as_usize())
    }
    let bytes = match array.data_type() {
        DataType::Binary => span(array.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => span(array.as_binary::<i64>().value_offsets()),
        DataType::Utf8 => span(array.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => span(array.as_string::<i64>().value_offsets()),
        _ => return false,
    };
    let values = array.len() - array.null_count();
    values > 0 && bytes / values >= LARGE_VALUE_BYTES
}

/// Whether more than half of the first [`DICTIONARY_SAMPLE_ROWS`] non-null values of `array`
/// are distinct.
fn mostly_distinct(array: &dyn arrow::array::Array) -> bool {
    use arrow::row::{RowConverter, SortField};
    let head = array.slice(0, array.len().min(DICTIONARY_SAMPLE_ROWS));
    let Ok(converter) = RowConverter::new(vec![SortField::new(head.data_type().clone())]) else {
        return false;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(&head)) else {
        return false;
    };
    let mut distinct = std::collections::HashSet::new();
    let mut values = 0usize;
    for (i, row) in rows.iter().enumerate() {
        if head.is_valid(i) {
            values += 1;
            distinct.insert(row.data());
        }
    }
    values >= 16 && distinct.len() * 2 > values
}

fn create_writer(
    path: &Path,
    format: FileFormat,
    schema: &SchemaRef,
    sample: Option<&RecordBatch>,
) -> Result<FormatWriter> {
    let file = File::create(path).map_err(|e| {
        RilletError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        ))
    })?;
    Ok(match format {
        FileFormat::Parquet(compression) => {
            let properties = parquet_properties(compression, schema, sample);
            FormatWriter::Parquet(
                ArrowWriter::try_new(file, schema.clone(), Some(properties))
                    .map_err(|e| RilletError::internal(e.to_string()))?,
            )
        }
        FileFormat::Csv => FormatWriter::Csv(arrow::csv::Writer::new(file)),
        FileFormat::Json => FormatWriter::Json(arrow::json::LineDelimitedWriter::new(file)),
    })
}

impl OpenFile {
    /// Write `batch` on a thread of `pool`; the file comes back with the write's outcome
    /// (the caller keeps it even when the write failed, to close or report it).
    async fn write_on(
        mut self,
        pool: &BlockingPool,
        batch: RecordBatch,
    ) -> Result<(Self, Result<()>)> {
        pool.run(None, move || {
            let written = self.write_blocking(&batch);
            Ok((self, written))
        })
        .await
    }

    fn write_blocking(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.inner.is_none() {
            self.inner = Some(create_writer(
                &self.path,
                self.format,
                &self.schema,
                Some(batch),
            )?);
        }
        match self.inner.as_mut().expect("created above") {
            FormatWriter::Parquet(w) => w
                .write(batch)
                .map_err(|e| RilletError::internal(format!("parquet write: {e}")))?,
            FormatWriter::Csv(w) => w.write(batch)?,
            FormatWriter::Json(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn close_blocking(mut self) -> Result<Option<String>> {
        if self.inner.is_none() && self.always_create {
            self.inner = Some(create_writer(&self.path, self.format, &self.schema, None)?);
        }
        let Some(inner) = self.inner else {
            return Ok(None);
        };
        match inner {
            FormatWriter::Parquet(w) => {
                w.close()
                    .map_err(|e| RilletError::internal(format!("parquet close: {e}")))?;
            }
            FormatWriter::Csv(w) => drop(w.into_inner()),
            FormatWriter::Json(mut w) => w.finish()?,
        }
        Ok(Some(self.path.display().to_string()))
    }
}

#[async_trait]
impl BatchWriter for FileWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| RilletError::internal("file writer used after a failed write"))?;
        let (file, written) = file.write_on(&self.thread, batch).await?;
        self.file = Some(file);
        written
    }

    async fn close(self: Box<Self>) -> Result<Vec<String>> {
        let file = self
            .file
            .ok_or_else(|| RilletError::internal("file writer used after a failed write"))?;
        let written = self.thread.run(None, move || file.close_blocking()).await?;
        // Reported where readers will find it.
        Ok(written
            .map(|_| self.published.to_string_lossy().into_owned())
            .into_iter()
            .collect())
    }
}

/// The writer of one task of an exactly-once [`FileSink`]: rows go to a file staged in
/// `_pending/`, a new file after each barrier, named after the checkpoint that will commit
/// it (the barrier's id is the next one's epoch) so that a committed name is never reused.
struct StagingWriter {
    committer: FileCommitter,
    job: String,
    task: usize,
    format: FileFormat,
    schema: SchemaRef,
    /// The id of the first checkpoint that can cover the rows written now.
    epoch: u64,
    /// Files begun in this epoch.
    seq: usize,
    /// The file being written; away on a pool thread while a write runs.
    open: Option<OpenFile>,
    /// Files of this epoch already closed (none yet: one file per epoch; kept for rolling).
    sealed: Vec<String>,
    /// Transactions not yet known committed: those of checkpoints still in flight or
    /// aborted, which the next completed checkpoint commits.
    uncommitted: Vec<FileTransaction>,
    context: SinkContext,
    thread: BlockingPool,
}

impl StagingWriter {
    /// Close the open file, if any, and add it to this epoch's files.
    async fn seal(&mut self) -> Result<()> {
        let Some(file) = self.open.take() else {
            return Ok(());
        };
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| RilletError::internal("staged file without a name"))?;
        // Closed and synced before the checkpoint can complete: a committed name must not
        // point at pages a power cut could still take away.
        let closed = self
            .thread
            .run(None, move || {
                let path = file.close_blocking()?;
                if let Some(path) = &path {
                    // The file's bytes, and its name in the staging directory.
                    let path = std::path::Path::new(path);
                    let staging = path.parent().unwrap_or(path);
                    durable::sync_file(path)
                        .and_then(|()| durable::sync_dir(staging))
                        .map_err(|e| {
                            RilletError::Io(std::io::Error::new(
                                e.kind(),
                                format!("cannot sync {}: {e}", path.display()),
                            ))
                        })?;
                }
                Ok(path)
            })
            .await?;
        if closed.is_some() {
            self.sealed.push(name);
        }
        Ok(())
    }

    fn state(&self) -> Vec<u8> {
        serde_json::to_vec(&self.uncommitted).expect("transactions always encode")
    }
}

fn decode_transactions(state: &[u8]) -> Result<Vec<FileTransaction>> {
    serde_json::from_slice(state)
        .map_err(|e| RilletError::Checkpoint(format!("unreadable file-sink state: {e}")))
}

#[async_trait]
impl BatchWriter for StagingWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let file = match self.open.take() {
            Some(file) => file,
            None => {
                let name = FileCommitter::file_name(
                    &self.job,
                    &self.context.lineage,
                    self.epoch,
                    self.task,
                    self.seq,
                    self.format.extension(),
                );
                self.seq += 1;
                OpenFile {
                    path: self.committer.staging_path(&name),
                    format: self.format,
                    schema: self.schema.clone(),
                    always_create: false,
                    inner: None,
                }
            }
        };
        let (file, written) = file.write_on(&self.thread, batch).await?;
        self.open = Some(file);
        written
    }

    async fn checkpoint(&mut self, checkpoint: u64) -> Result<Option<Vec<u8>>> {
        self.seal().await?;
        // The pre-commit: files sealed and staged, the checkpoint not yet acknowledged.
        fail::fail_point!("sink-pre-commit", |_| Err(RilletError::Checkpoint(
            "failpoint sink-pre-commit".into()
        )));
        let files = std::mem::take(&mut self.sealed);
        if !files.is_empty() {
            self.uncommitted.push(FileTransaction { checkpoint, files });
        }
        let committed = self.context.committed.load(Ordering::SeqCst);
        self.uncommitted.retain(|t| t.checkpoint > committed);
        self.epoch = checkpoint + 1;
        self.seq = 0;
        Ok(Some(self.state()))
    }

    async fn close(mut self: Box<Self>) -> Result<Vec<String>> {
        self.seal().await?;
        if self.context.checkpointing {
            // The final checkpoint sealed everything; rows after it cannot exist.
            if !self.sealed.is_empty() {
                return Err(RilletError::Checkpoint(format!(
                    "sink task {} has rows after the final checkpoint: {:?}",
                    self.task, self.sealed
                )));
            }
            return Ok(Vec::new());
        }
        // No checkpoints: the end of the input is the commit point.
        let transaction = FileTransaction {
            checkpoint: self.epoch,
            files: std::mem::take(&mut self.sealed),
        };
        let committer = self.committer.clone();
        self.thread
            .run(None, move || committer.commit(&transaction).map(|_| ()))
            .await?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Float64Type;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// Which columns of a written file carry a dictionary page, by the first two parts of their path.
    fn dictionary_columns(path: &Path) -> Vec<(String, bool)> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let row_group = reader.metadata().row_group(0);
        row_group
            .columns()
            .iter()
            .map(|c| {
                let dictionary = c
                    .encodings()
                    .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY));
                (
                    c.column_path().parts()[..c.column_path().parts().len().min(2)].join("."),
                    dictionary,
                )
            })
            .collect()
    }

    /// Write `batch` as one Snappy Parquet file into `dir`; its path.
    async fn write_snappy_file(dir: &Path, batch: RecordBatch) -> String {
        let sink = FileSink::new(
            dir,
            FileFormat::Parquet(ParquetCompression::Snappy),
            WriteMode::Overwrite,
        );
        sink.prepare().unwrap();
        let mut writer = sink
            .open(
                0,
                batch.schema(),
                &BlockingPool::new(1),
                &SinkContext::default(),
            )
            .unwrap();
        writer.write(batch).await.unwrap();
        let path = writer.close().await.unwrap().remove(0);
        sink.publish().unwrap();
        sink.finish();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn dictionary_only_where_values_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000i64;
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("id", Arc::new(Int64Array::from_iter_values(0..n))),
            (
                "measure",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 * 0.37),
                )),
            ),
            (
                "city",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["Oslo", "Lima", "Pune"][i as usize % 3]),
                )),
            ),
            (
                "bucket",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 10))),
            ),
            (
                "image",
                Arc::new(arrow::array::StructArray::from(vec![
                    (
                        Arc::new(arrow::datatypes::Field::new(
                            "mode",
                            arrow::datatypes::DataType::Utf8,
                            false,
                        )),
                        Arc::new(StringArray::from_iter_values((0..n).map(|_| "RGB"))) as ArrayRef,
                    ),
                    (
                        Arc::new(arrow::datatypes::Field::new(
                            "data",
                            arrow::datatypes::DataType::Binary,
                            false,
                        )),
                        Arc::new(arrow::array::BinaryArray::from_iter_values(
                            (0..n).map(|i| i.to_le_bytes()),
                        )),
                    ),
                ])),
            ),
            (
                "embedding",
                Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
                    (0..n).map(|i| Some(vec![Some(i as f64), Some(1.0)])),
                )),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let path = write_snappy_file(dir.path(), batch).await;
        let found = dictionary_columns(Path::new(&path));
        let expected = [
            ("id", false),
            ("measure", false),
            ("city", true),
            ("bucket", true),
            ("image.mode", true),
            ("image.data", false),
            ("embedding.list", false),
        ];
        assert_eq!(found, expected.map(|(c, d)| (c.to_string(), d)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_values_are_written_plain_with_short_statistics() {
        let dir = tempfile::tempdir().unwrap();
        // Four 300 KB "photos" (too few rows to judge repetition by) and a small column.
        let photos = arrow::array::LargeBinaryArray::from_iter_values(
            (0..4u8).map(|i| vec![i.wrapping_mul(61); 300_000]),
        );
        let batch = RecordBatch::try_from_iter(vec![
            ("photo", Arc::new(photos) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from_iter_values(["a", "b", "a", "b"])),
            ),
        ])
        .unwrap();
        let path = write_snappy_file(dir.path(), batch.clone()).await;
        let found = dictionary_columns(Path::new(&path));
        assert_eq!(
            found,
            [("photo".to_string(), false), ("name".to_string(), true)]
        );
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let stats = reader
            .metadata()
            .row_group(0)
            .column(0)
            .statistics()
            .unwrap();
        let max = stats.max_bytes_opt().unwrap();
        assert!(
            max.len() <= 64,
            "{} bytes of maximum in the footer",
            max.len()
        );
        // The values themselves are whole.
        let read = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
        assert_eq!(read, batch);
    }
}
