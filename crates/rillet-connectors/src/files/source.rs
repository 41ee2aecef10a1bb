//! A directory of files as a streaming source: the files there now and, unless bounded,
//! every file that arrives later (Flink's continuously monitored file source).
//!
//! The directory's files are dealt into `buckets` splits by a fixed hash of their names, so
//! that several tasks read at once and a file always belongs to the same split. A split's
//! position is the set of files it has read completely plus, for the file it is in the
//! middle of, the rows already emitted: a restored job skips those and goes on with the
//! next row. Files are read in name order within a split. Names starting with `.` or `_`
//! are ignored: writers should write under such a name and rename into place when done,
//! so that no half-written file is read (Rillet's own file sink does).
//!
//! Parquet, CSV (with a header) and JSON lines; the schema is the first file's.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rillet_common::{Result, RilletError};
use rillet_operator::{SourceReader, SplitAssignment, StreamSource};
use serde::{Deserialize, Serialize};

use crate::stable_bucket;

/// Rows per batch read from a file.
const BATCH_ROWS: usize = 8192;

/// The file formats a directory source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// Newline-delimited JSON objects.
    Json,
}

impl DirectoryFormat {
    /// `"parquet"`, `"csv"` or `"json"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "jsonl" => Ok(Self::Json),
            other => Err(RilletError::invalid_argument(format!(
                "a directory source reads parquet, csv or json files, not {other:?}"
            ))),
        }
    }

    fn schema(self, path: &Path) -> Result<SchemaRef> {
        let mut file = open(path)?;
        Ok(match self {
            Self::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| unreadable(path, e))?
                .schema()
                .clone(),
            Self::Csv => {
                let format = arrow::csv::reader::Format::default().with_header(true);
                let (schema, _) = format.infer_schema(&mut file, Some(1000))?;
                Arc::new(schema)
            }
            Self::Json => {
                let (schema, _) =
                    arrow::json::reader::infer_json_schema(BufReader::new(file), Some(1000))?;
                Arc::new(schema)
            }
        })
    }

    /// The batches of the file at `path`, read with `schema`.
    fn read(self, path: &Path, schema: &SchemaRef) -> Result<Batches> {
        let file = open(path)?;
        Ok(match self {
            Self::Parquet => Box::new(
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| unreadable(path, e))?
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| unreadable(path, e))?
                    .map(|b| b.map_err(RilletError::from)),
            ),
            Self::Csv => Box::new(
                arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_batch_size(BATCH_ROWS)
                    .build(file)?
                    .map(|b| b.map_err(RilletError::from)),
            ),
            Self::Json => Box::new(
                arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(BATCH_ROWS)
                    .build(BufReader::new(file))?
                    .map(|b| b.map_err(RilletError::from)),
            ),
        })
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> RilletError {
    RilletError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    ))
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        RilletError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })
}

/// A file name's split: it never changes between runs or builds, so a file stays in its
/// split across restarts.
fn bucket_of(name: &str, buckets: usize) -> usize {
    stable_bucket(name.as_bytes(), buckets)
}

/// The readable files of `dir` in `bucket`, by name.
fn list(dir: &Path, bucket: usize, buckets: usize) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        RilletError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", dir.display()),
        ))
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') || !entry.file_type()?.is_file() {
            continue;
        }
        if bucket_of(&name, buckets) == bucket {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A directory read as a stream of files (see the module docs).
#[derive(Debug, Clone)]
pub struct DirectorySource {
    dir: PathBuf,
    format: DirectoryFormat,
    schema: SchemaRef,
    buckets: usize,
    bounded: bool,
    poll_interval: Duration,
}

impl DirectorySource {
    /// The files of `dir` in `format`, dealt into `buckets` splits; the schema is the first
    /// file's (by name), so the directory must have one.
    pub fn new(
        dir: impl Into<PathBuf>,
        format: DirectoryFormat,
        buckets: usize,
        bounded: bool,
    ) -> Result<Self> {
        let dir = dir.into();
        // Every file is in the one bucket of a single split: the first name overall.
        let Some(first) = list(&dir, 0, 1)?.into_iter().next() else {
            return Err(RilletError::invalid_argument(format!(
                "{} has no files yet to take the schema from",
                dir.display()
            )));
        };
        let schema = format.schema(&dir.join(&first))?;
        Ok(Self {
            dir,
            format,
            schema,
            buckets: buckets.max(1),
            bounded,
            poll_interval: Duration::from_millis(200),
        })
    }

    /// How often an unbounded source looks for new files (default 200 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

impl StreamSource for DirectorySource {
    fn describe(&self) -> String {
        format!(
            "files in {} ({:?}, {} splits{})",
            self.dir.display(),
            self.format,
            self.buckets,
            if self.bounded {
                ", bounded"
            } else {
                ", watched"
            }
        )
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn splits(&self) -> Result<Vec<String>> {
        Ok((0..self.buckets).map(|b| format!("files#{b}")).collect())
    }

    fn open(&self, assigned: Vec<SplitAssignment>) -> Result<Box<dyn SourceReader>> {
        let splits = assigned
            .into_iter()
            .map(|a| {
                let bucket = a
                    .split
                    .strip_prefix("files#")
                    .and_then(|b| b.parse::<usize>().ok())
                    .ok_or_else(|| {
                        RilletError::Checkpoint(format!("{:?} is not a directory split", a.split))
                    })?;
                let position = a
                    .position
                    .map(|p| {
                        serde_json::from_slice::<FilesPosition>(&p).map_err(|e| {
                            RilletError::Checkpoint(format!(
                                "directory split {:?}: unreadable position: {e}",
                                a.split
                            ))
                        })
                    })
                    .transpose()?
                    .unwrap_or_default();
                // A bounded source reads the files there now: fix the list at the start.
                let fixed = if self.bounded {
                    Some(list(&self.dir, bucket, self.buckets)?)
                } else {
                    None
                };
                Ok(SplitReader {
                    split: a.split,
                    bucket,
                    position,
                    open: None,
                    fixed,
                    ended: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(DirectoryReader {
            source: self.clone(),
            splits,
            turn: 0,
        }))
    }
}

/// Where a split stands: the files read completely, and the file being read with the
/// rows of it already emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FilesPosition {
    done: BTreeSet<String>,
    current: Option<(String, u64)>,
}

struct SplitReader {
    split: String,
    bucket: usize,
    position: FilesPosition,
    /// The current file's remaining batches.
    open: Option<Batches>,
    /// A bounded source's files (fixed at the start); `None` when watching.
    fixed: Option<Vec<String>>,
    ended: bool,
}

impl SplitReader {
    /// The next batch of this split's files, if one is there now. Blocking file IO.
    fn next_batch(&mut self, source: &DirectorySource) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(batches) = self.open.as_mut() {
                let (name, emitted) = self.position.current.as_mut().expect("open file");
                match batches.next().transpose()? {
                    Some(batch) => {
                        *emitted += batch.num_rows() as u64;
                        return Ok(Some(batch));
                    }
                    None => {
                        self.position.done.insert(name.clone());
                        self.position.current = None;
                        self.open = None;
                    }
                }
            }
            let (name, skip) = match self.position.current.clone() {
                // Restored in the middle of a file: reopen it past the rows emitted.
                Some(current) => current,
                None => {
                    let names = match &self.fixed {
                        Some(fixed) => fixed.clone(),
                        None => list(&source.dir, self.bucket, source.buckets)?,
                    };
                    let Some(next) = names.into_iter().find(|n| !self.position.done.contains(n))
                    else {
                        self.ended = self.fixed.is_some();
                        return Ok(None);
                    };
                    (next, 0)
                }
            };
            let mut batches = source
                .format
                .read(&source.dir.join(&name), &source.schema)?;
            let mut skipped = 0u64;
            let mut first: Option<RecordBatch> = None;
            while skipped < skip {
                let Some(batch) = batches.next().transpose()? else {
                    break;
                };
                let rows = batch.num_rows() as u64;
                if skipped + rows > skip {
                    let keep = (skipped + rows - skip) as usize;
                    first = Some(batch.slice(batch.num_rows() - keep, keep));
                }
                skipped += rows.min(skip - skipped);
            }
            self.position.current = Some((name, skip));
            self.open = Some(match first {
                Some(first) => Box::new(std::iter::once(Ok(first)).chain(batches)),
                None => batches,
            });
        }
    }
}

struct DirectoryReader {
    source: DirectorySource,
    splits: Vec<SplitReader>,
    /// The split read next, so that each gets its turn.
    turn: usize,
}

#[async_trait]
impl SourceReader for DirectoryReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let open: Vec<usize> = (0..self.splits.len())
                .filter(|&i| !self.splits[i].ended)
                .collect();
            if open.is_empty() {
                return Ok(None);
            }
            for step in 0..open.len() {
                let index = open[(self.turn + step) % open.len()];
                let (source, split) = (&self.source, &mut self.splits[index]);
                // No await between reading and returning: cancel-safe.
                let batch = tokio::task::block_in_place(|| split.next_batch(source))?;
                if let Some(batch) = batch {
                    self.turn = self.turn.wrapping_add(step + 1);
                    return Ok(Some(batch));
                }
            }
            if self.splits.iter().all(|s| s.ended) {
                return Ok(None);
            }
            tokio::time::sleep(self.source.poll_interval).await;
        }
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.splits
            .iter()
            .map(|s| {
                let position = serde_json::to_vec(&s.position).expect("positions always encode");
                (s.split.clone(), position)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn write(dir: &Path, name: &str, ids: std::ops::Range<i64>) {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(ids))],
        )
        .unwrap();
        let file = File::create(dir.join(name)).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    fn drain(reader: &mut Box<dyn SourceReader>, rt: &tokio::runtime::Runtime) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        while let Some(batch) = rt.block_on(reader.next_batch()).unwrap() {
            out.push(batch);
        }
        out
    }

    #[test]
    fn a_restore_in_the_middle_of_a_file_goes_on_with_the_next_row() {
        let dir = std::env::temp_dir().join(format!("rillet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, "a.parquet", 0..20_000);
        write(&dir, "b.parquet", 20_000..20_100);
        write(&dir, "_staging.parquet", 0..5);
        let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        let source = DirectorySource::new(&dir, DirectoryFormat::Parquet, 1, true).unwrap();
        let assign = |position| {
            vec![SplitAssignment {
                split: "files#0".into(),
                position,
            }]
        };
        let mut reader = source.open(assign(None)).unwrap();
        let first = rt.block_on(reader.next_batch()).unwrap().unwrap();
        assert_eq!(first.num_rows(), BATCH_ROWS, "one batch of a.parquet");
        let position = reader.positions().remove(0).1;
        // A crash here: the restored reader starts at row BATCH_ROWS of a.parquet.
        let mut restored = source.open(assign(Some(position))).unwrap();
        let rest = ids(&drain(&mut restored, &rt));
        assert_eq!(rest, (BATCH_ROWS as i64..20_100).collect::<Vec<_>>());
        let done = restored.positions().remove(0).1;
        let mut finished = source.open(assign(Some(done))).unwrap();
        assert!(drain(&mut finished, &rt).is_empty(), "every file was done");
        let damaged = source.open(assign(Some(b"{".to_vec())));
        assert!(damaged.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_keep_their_split_and_an_empty_directory_is_a_clear_error() {
        assert_eq!(
            bucket_of("part-7.parquet", 4),
            bucket_of("part-7.parquet", 4)
        );
        let spread: BTreeSet<usize> = (0..40)
            .map(|i| bucket_of(&format!("f{i}.json"), 4))
            .collect();
        assert_eq!(spread.len(), 4, "names spread over every split");
        let dir = std::env::temp_dir().join(format!("rillet-files-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = DirectorySource::new(&dir, DirectoryFormat::Json, 2, false).unwrap_err();
        assert!(err.to_string().contains("no files yet"), "{err}");
        let err =
            DirectorySource::new(dir.join("nope"), DirectoryFormat::Json, 2, false).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
