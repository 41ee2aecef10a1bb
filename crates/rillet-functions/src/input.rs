//! Encoded content in its natural forms: bytes in a binary column, a path or URI string,
//! or a `File` reference (with an optional byte range). Content behind a reference is read
//! only when a row is processed.

use std::borrow::Cow;
use std::cell::RefCell;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Int64Type};
use rillet_common::types::{ClipType, FileType, MultimodalType, display_type, same_layout};
use rillet_common::{Result, RilletError};
use rillet_io::{FetchError, Request};

/// True if `field` holds encoded content this module can read.
pub fn is_encoded_input(field: &Field) -> bool {
    match field.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        other => {
            matches!(MultimodalType::of_field(field), Some(MultimodalType::File))
                || same_layout(other, &FileType::storage_type())
        }
    }
}

/// The error for an input that is not encoded content.
pub fn not_encoded(operator: &str, field: &Field, what: &str) -> RilletError {
    RilletError::invalid_argument(format!(
        "{operator}: input must be {what} bytes, a File or a path string; column {:?} is {}",
        field.name(),
        display_type(field)
    ))
}

/// Where a column's content is.
enum Source<'a> {
    /// Bytes in the column.
    Bytes(&'a dyn Array),
    /// Paths or URIs.
    Uris(&'a dyn Array),
    /// `File` references.
    Files(&'a StructArray),
}

/// Remote reads of one column, fetched together the first time a row needs them.
type Fetched = Vec<Option<std::result::Result<bytes::Bytes, FetchError>>>;

/// A column of encoded content: bytes in the column, paths or URIs (local, `s3://`,
/// `http(s)://`), or `File` references with optional byte ranges. Remote rows are read
/// all at once, concurrently, the first time any of them is asked for (see
/// [`rillet_io::fetch_many`]); local rows are read when asked for.
pub struct EncodedColumn<'a> {
    source: Source<'a>,
    /// Whole contents (or the File's range) of the remote rows.
    contents: RefCell<Option<Fetched>>,
    /// Leading bytes of the remote rows, and how many were asked for.
    heads: RefCell<Option<(u64, Fetched)>>,
}

/// Why a row could not be processed.
#[derive(Debug)]
pub enum RowFailure {
    /// The row's data is the problem (missing file, range past the end): null the row.
    Data(String),
    /// The store is the problem (permissions, I/O error): fail the job.
    Infrastructure(RilletError),
}

impl From<FetchError> for RowFailure {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Data(reason) => Self::Data(reason),
            FetchError::Infrastructure(message) => {
                Self::Infrastructure(RilletError::Io(std::io::Error::other(message)))
            }
        }
    }
}

impl<'a> EncodedColumn<'a> {
    /// View `array` as encoded content, or explain why it is not.
    pub fn try_new(operator: &str, array: &'a ArrayRef, what: &str) -> Result<Self> {
        let source = match array.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                Source::Bytes(array.as_ref())
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Source::Uris(array.as_ref())
            }
            t if same_layout(t, &FileType::storage_type()) => Source::Files(array.as_struct()),
            _ => {
                return Err(not_encoded(
                    operator,
                    &Field::new("input", array.data_type().clone(), true),
                    what,
                ));
            }
        };
        Ok(Self {
            source,
            contents: RefCell::new(None),
            heads: RefCell::new(None),
        })
    }

    /// A short identity for `row` in error messages: its URI when it has one.
    pub fn identity(&self, row: usize) -> String {
        self.uri(row)
            .map(str::to_string)
            .unwrap_or_else(|| format!("row {row}"))
    }

    /// The URI or path of `row`, for columns of references.
    pub fn uri(&self, row: usize) -> Option<&'a str> {
        match self.source {
            Source::Bytes(_) => None,
            Source::Uris(array) => string_at(array, row),
            Source::Files(files) => {
                if files.is_null(row) {
                    None
                } else {
                    string_at(files.column(0).as_ref(), row)
                }
            }
        }
    }

    /// The local file behind `row` when it is one whole local file (a path, a `file://`
    /// URI, or a `File` without a byte range), for readers that want a path.
    pub fn local_path(&self, row: usize) -> Option<std::path::PathBuf> {
        if let Source::Files(files) = self.source
            && (u64_at(files.column(1), row).is_some() || u64_at(files.column(2), row).is_some())
        {
            return None;
        }
        let uri = self.uri(row)?;
        if rillet_io::is_remote(uri) {
            return None;
        }
        Some(uri.strip_prefix("file://").unwrap_or(uri).into())
    }

    /// The lower-case extension of `row`'s path, a hint for format detection.
    pub fn extension(&self, row: usize) -> Option<String> {
        let uri = self.uri(row)?;
        let name = uri.rsplit('/').next()?;
        name.rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
    }

    /// The read `row` needs (its URI, byte range and, for a remote `File`, the version it
    /// was listed at); `None` for null rows and bytes.
    fn request(&self, row: usize) -> Option<Request> {
        let uri = self.uri(row)?;
        let mut request = Request::whole(uri);
        if let Source::Files(files) = self.source {
            request.offset = u64_at(files.column(1), row);
            request.length = u64_at(files.column(2), row);
            if rillet_io::is_remote(uri) {
                request.if_match = string_at(files.column(3).as_ref(), row).map(str::to_string);
            }
        }
        Some(request)
    }

    /// The content of `row`; `Ok(None)` for a null row.
    pub fn get(&self, row: usize) -> std::result::Result<Option<Cow<'a, [u8]>>, RowFailure> {
        if let Source::Bytes(array) = self.source {
            return Ok((!array.is_null(row)).then(|| Cow::Borrowed(binary_at(array, row))));
        }
        let Some(request) = self.request(row) else {
            return Ok(None);
        };
        let bytes = if rillet_io::is_remote(&request.uri) {
            let mut contents = self.contents.borrow_mut();
            let fetched =
                contents.get_or_insert_with(|| self.fetch_remote(|row| self.request(row)));
            fetched[row]
                .take()
                .unwrap_or_else(|| rillet_io::fetch(&request))?
        } else {
            rillet_io::fetch(&request)?
        };
        Ok(Some(Cow::Owned(Vec::from(bytes))))
    }

    /// At most the first `n` bytes of `row` (fewer when the content is shorter), reading
    /// no more than that: for format sniffing.
    pub fn head(
        &self,
        row: usize,
        n: u64,
    ) -> std::result::Result<Option<Cow<'a, [u8]>>, RowFailure> {
        if let Source::Bytes(array) = self.source {
            if array.is_null(row) {
                return Ok(None);
            }
            let bytes = binary_at(array, row);
            return Ok(Some(Cow::Borrowed(&bytes[..bytes.len().min(n as usize)])));
        }
        let head_of = |row: usize| {
            self.request(row).map(|mut request| {
                request.length = Some(request.length.map_or(n, |l| l.min(n)));
                request.exact = false;
                request
            })
        };
        let Some(request) = head_of(row) else {
            return Ok(None);
        };
        let bytes = if rillet_io::is_remote(&request.uri) {
            let mut heads = self.heads.borrow_mut();
            if heads.as_ref().is_none_or(|(asked, _)| *asked != n) {
                *heads = Some((n, self.fetch_remote(head_of)));
            }
            heads.as_mut().expect("just filled").1[row]
                .take()
                .unwrap_or_else(|| rillet_io::fetch(&request))?
        } else {
            rillet_io::fetch(&request)?
        };
        Ok(Some(Cow::Owned(Vec::from(bytes))))
    }

    /// Read every remote row's `request` concurrently; `None` for the other rows.
    fn fetch_remote(&self, request: impl Fn(usize) -> Option<Request>) -> Fetched {
        let rows = match self.source {
            Source::Bytes(array) | Source::Uris(array) => array.len(),
            Source::Files(files) => files.len(),
        };
        let wanted: Vec<(usize, Request)> = (0..rows)
            .filter_map(|row| {
                request(row)
                    .filter(|r| rillet_io::is_remote(&r.uri))
                    .map(|r| (row, r))
            })
            .collect();
        // Rows asking for the same read (clips of one recording) share one download.
        let mut requests: Vec<Request> = Vec::new();
        let slots: Vec<usize> = wanted
            .iter()
            .map(|(_, r)| {
                requests
                    .iter()
                    .position(|known| known == r)
                    .unwrap_or_else(|| {
                        requests.push(r.clone());
                        requests.len() - 1
                    })
            })
            .collect();
        let results = rillet_io::fetch_many(&requests);
        let mut fetched: Fetched = vec![None; rows];
        for ((row, _), slot) in wanted.into_iter().zip(slots) {
            fetched[row] = Some(results[slot].clone());
        }
        fetched
    }
}

/// A clip's `(start_ms, end_ms)` in its file.
pub type Window = (f64, f64);

/// A clip's file content and its window in milliseconds.
pub struct ClipContent {
    /// The file's content (shared by consecutive clips of one file).
    pub bytes: std::rc::Rc<Vec<u8>>,
    /// Where the clip starts.
    pub start: f64,
    /// Where it ends.
    pub end: f64,
}

/// A column of clip references `{uri, start_ms, end_ms}` (what
/// `audio_split_by_duration(..., output="ref")` and `video_split` give): each row is its
/// file between the two times, which the operators that take clips decode only that far.
pub struct ClipColumn<'a> {
    clips: &'a StructArray,
    files: EncodedColumn<'a>,
    starts: &'a Int64Array,
    ends: &'a Int64Array,
    /// The last file read and its content: consecutive clips of one file (what exploding
    /// a split gives) read it once.
    last: RefCell<Option<(String, std::rc::Rc<Vec<u8>>)>>,
}

impl<'a> ClipColumn<'a> {
    /// View `array` as clip references, or explain why it is not.
    pub fn try_new(operator: &str, array: &'a ArrayRef) -> Result<Self> {
        let bad =
            || RilletError::invalid_argument(format!("not a Clip column: {}", array.data_type()));
        let clips = array.as_struct_opt().ok_or_else(bad)?;
        let times = |i: usize| {
            clips
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(bad)
        };
        Ok(Self {
            clips,
            files: EncodedColumn::try_new(operator, clips.column(0), "a clip's file")?,
            starts: times(1)?,
            ends: times(2)?,
            last: RefCell::new(None),
        })
    }

    /// The file of `row`.
    pub fn uri(&self, row: usize) -> Option<&'a str> {
        (!self.clips.is_null(row))
            .then(|| self.files.uri(row))
            .flatten()
    }

    /// The file and window of `row`, for messages.
    pub fn identity(&self, row: usize) -> String {
        match (self.uri(row), self.window(row)) {
            (Some(uri), Ok(Some((start, end)))) => format!("{uri} [{start}..{end} ms]"),
            _ => format!("row {row}"),
        }
    }

    /// The clip's `(start_ms, end_ms)`; `None` for a null clip, bad data for a clip
    /// without a file or times, or with a window that is empty or inverted.
    pub fn window(&self, row: usize) -> std::result::Result<Option<Window>, String> {
        if self.clips.is_null(row) {
            return Ok(None);
        }
        if self.files.uri(row).is_none() || self.starts.is_null(row) || self.ends.is_null(row) {
            return Err(format!(
                "row {row}: a clip needs a uri, start_ms and end_ms"
            ));
        }
        let (start, end) = (self.starts.value(row), self.ends.value(row));
        if start < 0 || end <= start {
            return Err(format!(
                "{}: clip {start}..{end} ms is empty or inverted",
                self.files.identity(row)
            ));
        }
        Ok(Some((start as f64, end as f64)))
    }

    /// The file's content and the clip's window.
    pub fn content(&self, row: usize) -> std::result::Result<Option<ClipContent>, RowFailure> {
        let Some((start, end)) = self.window(row).map_err(RowFailure::Data)? else {
            return Ok(None);
        };
        let uri = self.files.uri(row).unwrap_or_default();
        let mut last = self.last.borrow_mut();
        let bytes = match last.as_ref() {
            Some((known, bytes)) if known == uri => bytes.clone(),
            _ => {
                let Some(content) = self.files.get(row)? else {
                    return Ok(None);
                };
                let bytes = std::rc::Rc::new(content.into_owned());
                *last = Some((uri.to_string(), bytes.clone()));
                bytes
            }
        };
        Ok(Some(ClipContent { bytes, start, end }))
    }

    /// The files the clips refer to, as encoded content.
    pub fn files(&self) -> &EncodedColumn<'a> {
        &self.files
    }
}

/// True if `field` holds clip references `{uri, start_ms, end_ms}`.
pub fn is_clip(field: &Field) -> bool {
    matches!(MultimodalType::of_field(field), Some(MultimodalType::Clip))
        || same_layout(field.data_type(), &ClipType::storage_type())
}

fn u64_at(array: &ArrayRef, row: usize) -> Option<u64> {
    let array = array.as_any().downcast_ref::<UInt64Array>()?;
    (!array.is_null(row)).then(|| array.value(row))
}

fn binary_at(array: &dyn Array, row: usize) -> &[u8] {
    match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().value(row),
        DataType::LargeBinary => array.as_binary::<i64>().value(row),
        DataType::BinaryView => array.as_binary_view().value(row),
        _ => &[],
    }
}

/// The string at `row` of a string array of any offset width; `None` when null.
pub fn string_at(array: &dyn Array, row: usize) -> Option<&str> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(array.as_string_view().value(row)),
        _ => None,
    }
}
