//! Encoded content in its natural forms: bytes in a binary column, a path or URI string,
//! or a `File` reference (with an optional byte range). Content behind a reference is read
//! only when a row is processed.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};

use arrow::array::{Array, ArrayRef, AsArray, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field};
use rillet_common::types::{display_type, FileType, MultimodalType, same_layout};
use rillet_common::{Result, RilletError};


/// True if `field` holds encoded content this module can read.
pub fn is_encoded_input(field: &Field) -> bool {
    match field.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        other => matches!(MultimodalType::of_field(field), Some(MultimodalType::File)) || same_layout(other, &FileType::storage_type()),
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

/// A column of encoded content.
pub enum EncodedColumn<'a> {
    /// Bytes in the column.
    Bytes(&'a dyn Array),
    /// Paths or URIs.
    Uris(&'a dyn Array),
    /// `File` references.
    Files {
        /// The struct array.
        files: &'a StructArray,
    },
}

/// Why a row could not be processed.
#[derive(Debug)]
pub enum RowFailure {
    /// The row's data is the problem (missing file, range past the end): null the row.
    Data(String),
    /// The store is the problem (permissions, I/O error): fail the job.
    Infrastructure(RilletError),
}

impl<'a> EncodedColumn<'a> {
    /// View `array` as encoded content, or explain why it is not.
    pub fn try_new(operator: &str, array: &'a ArrayRef, what: &str) -> Result<Self> {
        match array.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Ok(Self::Bytes(array.as_ref())),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(Self::Uris(array.as_ref())),
            t if same_layout(t, &FileType::storage_type()) => Ok(Self::Files { files: array.as_struct() }),
            _ => Err(not_encoded(operator, &Field::new("input", array.data_type().clone(), true), what)),
        }
    }

    /// A short identity for `row` in error messages: its URI when it has one.
    pub fn identity(&self, row: usize) -> String {
        self.uri(row).map(str::to_string).unwrap_or_else(|| format!("row {row}"))
    }

    /// The URI or path of `row`, for columns of references.
    pub fn uri(&self, row: usize) -> Option<&'a str> {
        match self {
            Self::Bytes(_) => None,
            Self::Uris(array) => string_at(*array, row),
            Self::Files { files } => {
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
        if let Self::Files { files } = self
            && (u64_at(files.column(1), row).is_some() || u64_at(files.column(2), row).is_some())
        {
            return None;
        }
        let uri = self.uri(row)?;
        match uri.split_once("://") {
            Some(("file", path)) => Some(path.into()),
            Some(_) => None,
            None => Some(uri.into()),
        }
    }

    /// The lower-case extension of `row`'s path, a hint for format detection.
    pub fn extension(&self, row: usize) -> Option<String> {
        let uri = self.uri(row)?;
        let name = uri.rsplit('/').next()?;
        name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase())
    }

    /// The content of `row`; `Ok(None)` for a null row.
    pub fn get(&self, row: usize) -> std::result::Result<Option<Cow<'a, [u8]>>, RowFailure> {
        match self {
            Self::Bytes(array) => {
                if array.is_null(row) {
                    return Ok(None);
                }
                Ok(Some(Cow::Borrowed(binary_at(*array, row))))
            }
            Self::Uris(array) => match string_at(*array, row) {
                None => Ok(None),
                Some(uri) => read_uri(uri, None, None, true).map(|b| Some(Cow::Owned(b))),
            },
            Self::Files { files } => {
                if files.is_null(row) {
                    return Ok(None);
                }
                let Some(uri) = string_at(files.column(0).as_ref(), row) else {
                    return Ok(None);
                };
                let offset = u64_at(files.column(1), row);
                let length = u64_at(files.column(2), row);
                read_uri(uri, offset, length, true).map(|b| Some(Cow::Owned(b)))
            }
        }
    }

    /// At most the first `n` bytes of `row` (fewer when the content is shorter), reading
    /// no more than that from a file: for format sniffing.
    pub fn head(&self, row: usize, n: u64) -> std::result::Result<Option<Cow<'a, [u8]>>, RowFailure> {
        match self {
            Self::Bytes(array) => {
                if array.is_null(row) {
                    return Ok(None);
                }
                let bytes = binary_at(*array, row);
                Ok(Some(Cow::Borrowed(&bytes[..bytes.len().min(n as usize)])))
            }
            Self::Uris(array) => match string_at(*array, row) {
                None => Ok(None),
                Some(uri) => read_uri(uri, None, Some(n), false).map(|b| Some(Cow::Owned(b))),
            },
            Self::Files { files } => {
                let Some(uri) = self.uri(row) else { return Ok(None) };
                let offset = u64_at(files.column(1), row);
                let length = u64_at(files.column(2), row).map_or(n, |l| l.min(n));
                read_uri(uri, offset, Some(length), false).map(|b| Some(Cow::Owned(b)))
            }
        }
    }
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

/// Read a local path (or `file://` URI), optionally only `length` bytes from `offset`
/// (exactly that many when `exact`, else at most).
fn read_uri(uri: &str, offset: Option<u64>, length: Option<u64>, exact: bool) -> std::result::Result<Vec<u8>, RowFailure> {
    if let Some((scheme, _)) = uri.split_once("://")
        && scheme != "file"
    {
        return Err(RowFailure::Infrastructure(RilletError::invalid_argument(format!(
            "cannot read {uri}: {scheme}:// is not supported by this operator yet (local paths and file:// are)"
        ))));
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    let open = std::fs::File::open(path);
    let mut file = match open {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RowFailure::Data(format!("{uri}: no such file")));
        }
        Err(e) => return Err(RowFailure::Infrastructure(RilletError::Io(std::io::Error::new(e.kind(), format!("cannot read {uri}: {e}"))))),
    };
    let io = |e: std::io::Error| RowFailure::Infrastructure(RilletError::Io(std::io::Error::new(e.kind(), format!("cannot read {uri}: {e}"))));
    let mut buffer = Vec::new();
    if let Some(offset) = offset {
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
    }
    match length {
        Some(length) => {
            (&mut file).take(length).read_to_end(&mut buffer).map_err(io)?;
            if exact && (buffer.len() as u64) < length {
                return Err(RowFailure::Data(format!(
                    "{uri}: range of {length} bytes from offset {} runs past the end of the file",
                    offset.unwrap_or(0)
                )));
            }
        }
        None => {
            file.read_to_end(&mut buffer).map_err(io)?;
        }
    }
    Ok(buffer)
}

/// The media type conventionally meant by a path's extension, if it is a common one.
///
/// ```
/// assert_eq!(rillet_functions::input::media_type_of_path("a/b.JPG"), Some("image/jpeg"));
/// assert_eq!(rillet_functions::input::media_type_of_path("notes"), None);
/// ```
pub fn media_type_of_path(path: &str) -> Option<&'static str> {
    let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" | "oga" => "audio/ogg",
        "m4a" => "audio/mp4",
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" | "jsonl" => "application/json",
        "csv" => "text/csv",
        "parquet" => "application/vnd.apache.parquet",
        _ => return None,
    })
}
