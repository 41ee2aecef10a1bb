//! Sources: in-memory data, generated ranges, files (Parquet, CSV, JSON lines) and file
//! listings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use rillet_common::types::{FileType, media_type_of_path};
use rillet_common::{Result, RilletError};
use rillet_connectors::sequence::SequenceSource;
use rillet_runtime::StreamSource;

use crate::dataframe::{DataFrame, ReadFormat};
use crate::session::Session;

impl Session {
    /// A DataFrame over record batches held in memory.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use arrow::array::{Int32Array, RecordBatch};
    /// use arrow::datatypes::{DataType, Field, Schema};
    /// let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
    /// let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap();
    /// let df = rillet_plan::Session::default().from_batches(schema, vec![batch]).unwrap();
    /// assert_eq!(df.count().unwrap(), 2);
    /// ```
    pub fn from_batches(&self, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<DataFrame> {
        let table = MemTable::try_new(schema, vec![batches])?;
        let df = self.context().read_table(Arc::new(table))?;
        DataFrame::new(self.clone(), df)
    }

    /// A DataFrame over a streaming source. `bounded`: the source ends, so a batch job
    /// (`collect`, `write_*`) may read it too; a streaming job (`start_files`) reads any.
    pub fn read_stream(&self, source: Arc<dyn StreamSource>, bounded: bool) -> Result<DataFrame> {
        let table = crate::streaming::StreamTable::new(source, bounded);
        let df = self.context().read_table(Arc::new(table))?;
        DataFrame::new(self.clone(), df)
    }

    /// The deterministic sequence source (`source`, `partition`, `seq`, `value`):
    /// `partitions` splits of `rows` rows each (`None`: without end), optionally throttled
    /// to `rows_per_second` per split. What the exactly-once tests run on.
    ///
    /// ```
    /// let df = rillet_plan::Session::default().read_sequence("seq", 3, Some(100), None, None).unwrap();
    /// assert_eq!(df.count().unwrap(), 300);
    /// ```
    pub fn read_sequence(
        &self,
        name: &str,
        partitions: u32,
        rows: Option<u64>,
        rows_per_second: Option<f64>,
        batch_rows: Option<usize>,
    ) -> Result<DataFrame> {
        let mut source = SequenceSource::new(name, partitions, rows).with_rate(rows_per_second);
        if let Some(batch_rows) = batch_rows {
            source = source.with_batch_rows(batch_rows);
        }
        self.read_stream(Arc::new(source), rows.is_some())
    }

    /// The integers `0..n` in a column named `id`, generated lazily.
    ///
    /// ```
    /// assert_eq!(rillet_plan::Session::default().range(1000).unwrap().count().unwrap(), 1000);
    /// ```
    pub fn range(&self, n: u64) -> Result<DataFrame> {
        let df = self.block_on(
            self.context()
                .sql(&format!("SELECT value AS id FROM range({n})")),
        )?;
        DataFrame::new(self.clone(), df)
    }

    /// Read files of `format` from local paths or `s3://` / `http(s)://` URLs: files,
    /// directories (every file of the format inside; a URL ending in `/`) or glob patterns. Parquet files are split into morsels (row-group
    /// ranges) so one large file is read by every core.
    pub fn read(&self, format: ReadFormat, paths: &[String]) -> Result<DataFrame> {
        if paths.is_empty() {
            return Err(RilletError::invalid_argument("no path given to read"));
        }
        let (urls, any_dir) = normalise_paths(paths)?;
        // Local Parquet files, listed once: their footers are checked and their folders
        // give the Hive partitions.
        let partitions = match format {
            ReadFormat::Parquet => {
                let listed = local_parquet_files(paths)?;
                check_parquet_footers(&listed)?;
                hive_partitions(paths, &listed)?
            }
            _ => Vec::new(),
        };
        // One registration per bucket or origin, however many objects a glob matched.
        let mut registered = std::collections::HashSet::new();
        for url in urls.iter().filter(|u| rillet_io::is_remote(u)) {
            self.register_store(url, &mut registered)?;
        }
        // Directories select files by extension; explicit files and globs take any name.
        let extension = if any_dir { format.extension() } else { "" };
        let ctx = self.context();
        let df = self.block_on(async {
            match format {
                ReadFormat::Parquet => {
                    ctx.read_parquet(
                        urls,
                        ParquetReadOptions::default()
                            .file_extension(extension)
                            .table_partition_cols(partitions),
                    )
                    .await
                }
                ReadFormat::Csv => {
                    ctx.read_csv(urls, CsvReadOptions::default().file_extension(extension))
                        .await
                }
                ReadFormat::Json => {
                    let options = JsonReadOptions {
                        file_extension: extension,
                        ..Default::default()
                    };
                    ctx.read_json(urls, options).await
                }
            }
        })?;
        DataFrame::new(self.clone(), df)
    }

    /// One row per file matching `pattern` (a glob, a directory — read recursively — or a
    /// file; local, or an `s3://` glob, prefix or key, or one `http(s)://` URL), with its `path`, `size` in bytes, `modified` time and a `file` reference
    /// ([`FileType`]) that operators such as `image_decode` read lazily. Contents are not
    /// read here. A pattern that matches nothing is an error (a typo must not look like an
    /// empty dataset) unless `allow_empty`.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
    /// let session = rillet_plan::Session::default();
    /// let df = session.read_files(&format!("{}/*.txt", dir.path().display()), false).unwrap();
    /// assert_eq!(df.count().unwrap(), 1);
    /// let none = format!("{}/*.jpg", dir.path().display());
    /// assert!(session.read_files(&none, false).is_err());
    /// assert_eq!(session.read_files(&none, true).unwrap().count().unwrap(), 0);
    /// ```
    pub fn read_files(&self, pattern: &str, allow_empty: bool) -> Result<DataFrame> {
        let entries = rillet_io::list_files(pattern)?;
        if entries.is_empty() && !allow_empty {
            return Err(RilletError::Plan(format!(
                "read_files: no files match {pattern:?}{}; check the path, or pass \
                 allow_empty=True to get an empty frame",
                relative_hint(pattern)
            )));
        }
        let paths: Vec<String> = entries.iter().map(|e| e.uri.clone()).collect();
        let sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
        let modified: Vec<Option<i64>> = entries.iter().map(|e| e.modified_micros).collect();
        // The version a later read checks: a remote object's entity tag, a local file's
        // modification time.
        let versions: Vec<Option<String>> = entries
            .iter()
            .map(|e| {
                e.etag
                    .clone()
                    .or_else(|| e.modified_micros.map(|m| m.to_string()))
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
            Field::new(
                "modified",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            FileType.field("file"),
        ]));
        // The File reference: the path, its version (so a later read can tell the object
        // changed) and a media type guessed from the extension.
        let files = StructArray::new(
            FileType::storage_fields(),
            vec![
                Arc::new(StringArray::from(paths.clone())),
                Arc::new(UInt64Array::new_null(paths.len())),
                Arc::new(UInt64Array::new_null(paths.len())),
                Arc::new(StringArray::from(versions)),
                Arc::new(StringArray::from_iter(
                    paths.iter().map(|p| media_type_of_path(p)),
                )),
            ],
            None,
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(paths)),
                Arc::new(UInt64Array::from(sizes)),
                Arc::new(TimestampMicrosecondArray::from(modified).with_timezone("UTC")),
                Arc::new(files),
            ],
        )?;
        self.from_batches(schema, vec![batch])
    }

    /// Run a SQL query over the given named DataFrames.
    ///
    /// ```
    /// let session = rillet_plan::Session::default();
    /// let numbers = session.range(10).unwrap();
    /// let df = session.sql("SELECT sum(id) AS total FROM numbers", &[("numbers", numbers)]).unwrap();
    /// assert_eq!(df.count().unwrap(), 1);
    /// ```
    pub fn sql(&self, query: &str, tables: &[(&str, DataFrame)]) -> Result<DataFrame> {
        // The state's catalog is shared with the session, so the names are registered only
        // while the query is planned (the plan holds the tables themselves) and removed
        // afterwards, whether planning worked or not: names never leak between queries.
        let ctx = datafusion::prelude::SessionContext::new_with_state(self.context().state());
        let mut registered = Vec::new();
        let mut planned = Ok(());
        for (name, df) in tables {
            match ctx.register_table(*name, df.inner().clone().into_view()) {
                Ok(_) => registered.push(*name),
                Err(e) => {
                    planned = Err(e);
                    break;
                }
            }
        }
        let df = planned.and_then(|()| self.block_on(ctx.sql(query)));
        for name in registered {
            ctx.deregister_table(name)?;
        }
        DataFrame::new(self.clone(), df?)
    }
}

impl Session {
    /// Let DataFusion read `url`'s bucket or origin through the same configured store
    /// (and connections) the operators use.
    fn register_store(
        &self,
        url: &str,
        registered: &mut std::collections::HashSet<String>,
    ) -> Result<()> {
        let parsed = url::Url::parse(url)
            .map_err(|e| RilletError::invalid_argument(format!("bad URL {url:?}: {e}")))?;
        let key = rillet_io::store_key(&parsed);
        if registered.insert(key.clone()) {
            let (store, _) = rillet_io::store_for(url)?;
            let base =
                url::Url::parse(&key).map_err(|e| RilletError::invalid_argument(e.to_string()))?;
            self.context().register_object_store(&base, store);
        }
        Ok(())
    }
}

/// Turn user paths into DataFusion table URLs; directories get a trailing `/`.
fn normalise_paths(paths: &[String]) -> Result<(Vec<String>, bool)> {
    let mut any_dir = false;
    let mut urls = Vec::with_capacity(paths.len());
    for path in paths {
        if rillet_io::is_remote(path) {
            if path.contains(['*', '?', '[']) {
                // DataFusion expands globs only in local paths: list the objects here.
                let matched = rillet_io::list_files(path)?;
                if matched.is_empty() {
                    return Err(RilletError::Io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no objects match {path}"),
                    )));
                }
                urls.extend(matched.into_iter().map(|entry| entry.uri));
            } else {
                any_dir |= path.ends_with('/');
                urls.push(path.clone());
            }
            continue;
        }
        let is_glob = path.contains(['*', '?', '[']);
        let p = Path::new(path);
        if !is_glob && !p.exists() {
            return Err(RilletError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such file or directory: {path}"),
            )));
        }
        let absolute = if p.is_absolute() || is_glob && path.starts_with('/') {
            path.clone()
        } else {
            std::env::current_dir()?.join(path).display().to_string()
        };
        if !is_glob && p.is_dir() {
            any_dir = true;
            urls.push(format!("{}/", absolute.trim_end_matches('/')));
        } else {
            urls.push(absolute);
        }
    }
    Ok((urls, any_dir))
}

/// The Parquet files each local path of `paths` names (a file, a glob, or the `.parquet`
/// files below a directory), canonical; remote paths are left to the scan.
fn local_parquet_files(paths: &[String]) -> Result<Vec<Vec<PathBuf>>> {
    paths
        .iter()
        .filter(|p| !rillet_io::is_remote(p))
        .map(|path| {
            let directory = Path::new(path).is_dir();
            let mut files = Vec::new();
            for entry in rillet_io::list_files(path)? {
                let file = entry.uri.strip_prefix("file://").unwrap_or(&entry.uri);
                if !directory || file.ends_with(".parquet") {
                    files.push(std::fs::canonicalize(file)?);
                }
            }
            Ok(files)
        })
        .collect()
}

/// Read the footer of every listed file, so one damaged file among many is named in the
/// error instead of failing the job later with "Corrupt footer" or "Unexpected EOF" and
/// no path.
fn check_parquet_footers(listed: &[Vec<PathBuf>]) -> Result<()> {
    for file in listed.iter().flatten() {
        let opened = std::fs::File::open(file).map_err(RilletError::Io)?;
        if let Err(error) = parquet::file::reader::SerializedFileReader::new(opened) {
            return Err(RilletError::invalid_data(format!(
                "read_parquet: {} is not a readable Parquet file ({error}); remove or replace it",
                file.display()
            )));
        }
    }
    Ok(())
}

/// The Hive partition columns of one local directory (`year=2024/month=05/part-0.parquet`
/// gives `year` and `month`, as strings), from its `listed` files: only when every one sits
/// in folders naming the same columns in the same order. Anything else — files outside the
/// partition folders, layouts that disagree — reads the files without partition columns,
/// so no file is ever skipped.
fn hive_partitions(paths: &[String], listed: &[Vec<PathBuf>]) -> Result<Vec<(String, DataType)>> {
    let ([path], [files]) = (paths, listed) else {
        return Ok(Vec::new());
    };
    if !Path::new(path).is_dir() {
        return Ok(Vec::new());
    }
    let root = std::fs::canonicalize(path)?;
    let mut layout: Option<Vec<String>> = None;
    for file in files {
        let Ok(relative) = file.strip_prefix(&root) else {
            return Ok(Vec::new());
        };
        let keys: Option<Vec<String>> = relative
            .parent()
            .into_iter()
            .flat_map(Path::iter)
            .map(|f| Some(f.to_str()?.split_once('=')?.0.to_string()))
            .collect();
        let Some(keys) = keys else {
            return Ok(Vec::new());
        };
        match &layout {
            None => layout = Some(keys),
            Some(seen) if *seen != keys => return Ok(Vec::new()),
            Some(_) => {}
        }
    }
    Ok(layout
        .unwrap_or_default()
        .into_iter()
        .map(|name| (name, DataType::Utf8))
        .collect())
}

/// For a relative local pattern, where it was looked for.
fn relative_hint(pattern: &str) -> String {
    let local = !pattern.contains("://") && !std::path::Path::new(pattern).is_absolute();
    match std::env::current_dir() {
        Ok(dir) if local => format!(" (relative to {})", dir.display()),
        _ => String::new(),
    }
}
