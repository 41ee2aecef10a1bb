//! File operators: read the content behind a reference, and tell its media type from the
//! content itself (magic bytes), not from the name.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::Result;
use rillet_runtime::ArrayFunction;

use crate::input::{EncodedColumn, is_encoded_input, not_encoded};
use crate::operator::{Call, Operator, OperatorFunction, Param, Params, RowErrors, row_values};

/// Bytes read to sniff a media type.
const SNIFF_BYTES: u64 = 4096;

/// Rows per call of `file_read`: whole files are held.
const READ_BATCH_ROWS: usize = 16;

/// Every file operator.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Read)),
        Arc::new(OperatorFunction::new(MimeType)),
        Arc::new(OperatorFunction::new(Download)),
    ]
}

fn expect_reference(operator: &str, field: &Field) -> Result<()> {
    if is_encoded_input(field) {
        Ok(())
    } else {
        Err(not_encoded(operator, field, "content"))
    }
}

/// Each row's (partial) content mapped by `f`; data problems null the row with a reason.
fn per_row<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    limit: Option<u64>,
    mut f: impl FnMut(&[u8]) -> T,
) -> Result<Vec<Option<T>>> {
    let column = EncodedColumn::try_new(operator, &call.inputs[0], "content")?;
    let fetch = |row| match limit {
        Some(n) => column.head(row, n),
        None => column.get(row),
    };
    row_values(
        call.rows,
        errors,
        |row| column.identity(row),
        fetch,
        |bytes, _| Ok(f(&bytes)),
    )
}

/// `file_read(x, on_error)`: the bytes behind a `File` (its byte range only, when it has
/// one) or a path; bytes pass through. A missing file is bad data (null with a reason);
/// an unreadable store fails the job naming the URI.
#[derive(Debug)]
pub struct Read;

impl Operator for Read {
    fn name(&self) -> &'static str {
        "file_read"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_reference(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Binary, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        read_contents(self.name(), call, errors)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(READ_BATCH_ROWS)
    }
}

/// Every row's whole content as a binary array.
fn read_contents(operator: &str, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
    let rows = per_row(operator, call, errors, None, |bytes| bytes.to_vec())?;
    let mut out =
        BinaryBuilder::with_capacity(rows.len(), rows.iter().flatten().map(Vec::len).sum());
    for bytes in rows {
        out.append_option(bytes);
    }
    Ok(Arc::new(out.finish()))
}

/// `url_download(url, on_error)`: the bytes at each URL (`http(s)://`, `s3://`, `file://`
/// or a local path), fetched concurrently per batch with connection reuse and bounded
/// retries. A missing object (404) is bad data; an unreachable server fails the job
/// naming the URL.
#[derive(Debug)]
pub struct Download;

impl Operator for Download {
    fn name(&self) -> &'static str {
        "url_download"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        if !matches!(
            inputs[0].data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(rillet_common::RilletError::invalid_argument(format!(
                "url_download: input must be a string column of URLs; column {:?} is {}",
                inputs[0].name(),
                rillet_common::types::display_type(&inputs[0])
            )));
        }
        Ok(Field::new(self.name(), DataType::Binary, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        read_contents(self.name(), call, errors)
    }

    fn batch_size(&self) -> Option<usize> {
        // More rows per call than file_read: remote latency is hidden by fetching a
        // batch's URLs concurrently.
        Some(READ_BATCH_ROWS * 4)
    }
}

/// `file_mime_type(x, on_error)`: the media type sniffed from the first bytes of the
/// content (images, audio, video, PDF, archives, Parquet, JSON, HTML, plain text), or
/// `application/octet-stream` when nothing matches. Reads at most 4 KiB of a file.
#[derive(Debug)]
pub struct MimeType;

impl Operator for MimeType {
    fn name(&self) -> &'static str {
        "file_mime_type"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_reference(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = per_row(self.name(), call, errors, Some(SNIFF_BYTES), sniff)?;
        Ok(Arc::new(rows.into_iter().collect::<StringArray>()))
    }
}

/// The media type of content starting with `head`.
///
/// ```
/// use rillet_functions::file::sniff;
/// assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), "image/png");
/// assert_eq!(sniff(b"%PDF-1.7"), "application/pdf");
/// assert_eq!(sniff(b"plain words"), "text/plain");
/// assert_eq!(sniff(&[0, 159, 146, 150]), "application/octet-stream");
/// ```
pub fn sniff(head: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| {
        head.len() >= offset + magic.len() && &head[offset..offset + magic.len()] == magic
    };
    if at(0, b"\xFF\xD8\xFF") {
        return "image/jpeg";
    }
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return "image/png";
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return "image/gif";
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return "image/tiff";
    }
    if at(0, b"BM") && head.len() >= 14 {
        return "image/bmp";
    }
    if at(0, b"RIFF") {
        return match head.get(8..12) {
            Some(b"WEBP") => "image/webp",
            Some(b"WAVE") => "audio/wav",
            Some(b"AVI ") => "video/x-msvideo",
            _ => "application/octet-stream",
        };
    }
    if at(0, b"fLaC") {
        return "audio/flac";
    }
    if at(0, b"OggS") {
        return "audio/ogg";
    }
    if at(0, b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE6 == 0xE2) {
        return "audio/mpeg";
    }
    if at(4, b"ftyp") {
        return match head.get(8..12) {
            Some(b"M4A ") | Some(b"M4B ") => "audio/mp4",
            Some(b"qt  ") => "video/quicktime",
            _ => "video/mp4",
        };
    }
    if at(0, b"\x1A\x45\xDF\xA3") {
        return if head.windows(4).any(|w| w == b"webm") {
            "video/webm"
        } else {
            "video/x-matroska"
        };
    }
    if at(0, b"%PDF-") {
        return "application/pdf";
    }
    if at(0, b"PK\x03\x04") {
        return "application/zip";
    }
    if at(0, b"\x1F\x8B") {
        return "application/gzip";
    }
    if at(0, b"PAR1") {
        return "application/vnd.apache.parquet";
    }
    // Text: valid UTF-8 (allowing a character cut at the end of the sniffed prefix) with no
    // control bytes other than whitespace.
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return "application/octet-stream",
    };
    if head.is_empty() || text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return "application/octet-stream";
    }
    let start = text.trim_start();
    let lower: String = start
        .chars()
        .take(15)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        "text/html"
    } else if start.starts_with('{') || start.starts_with('[') {
        "application/json"
    } else if lower.starts_with("<?xml") {
        "application/xml"
    } else {
        "text/plain"
    }
}
