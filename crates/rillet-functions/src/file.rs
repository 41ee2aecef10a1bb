//! File operators: read the content behind a reference, and tell its media type from the
//! content itself (magic bytes), not from the name.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::Result;
use rillet_operator::ArrayFunction;

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
/// content (images, HEIF and AVIF included; audio; video; PDF; Office and OpenDocument
/// files by the parts their ZIP holds; archives; Parquet; JSON, HTML, SVG and plain text),
/// or `application/octet-stream` when nothing matches. Reads at most 4 KiB of a file.
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
/// assert_eq!(sniff(b"\0\0\0\x1cftypheic\0\0\0\0mif1heicmiaf"), "image/heic");
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
        return iso_media(head);
    }
    if at(0, b"\xFF\x0A") || at(0, b"\0\0\0\x0CJXL \r\n\x87\n") {
        return "image/jxl";
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
        return zip_document(head);
    }
    if at(0, b"\x1F\x8B") {
        return "application/gzip";
    }
    if at(0, b"\x28\xB5\x2F\xFD") {
        return "application/zstd";
    }
    if at(0, b"\xFD7zXZ\0") {
        return "application/x-xz";
    }
    // "BZh", the block size '1'-'9', then the first block's magic (pi's digits in BCD).
    if at(0, b"BZh")
        && matches!(head.get(3), Some(b'1'..=b'9'))
        && at(4, b"\x31\x41\x59\x26\x53\x59")
    {
        return "application/x-bzip2";
    }
    if at(0, b"7z\xBC\xAF\x27\x1C") {
        return "application/x-7z-compressed";
    }
    if at(257, b"ustar") {
        return "application/x-tar";
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
    } else if lower.starts_with("<svg") || (lower.starts_with("<?xml") && is_svg(start)) {
        "image/svg+xml"
    } else if lower.starts_with("<?xml") {
        "application/xml"
    } else {
        "text/plain"
    }
}

/// Whether an XML document's root element is `<svg`: the first element after the
/// declaration, comments and a doctype.
fn is_svg(xml: &str) -> bool {
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        return rest.starts_with("svg");
    }
    false
}

/// The type of an ISO base media file (MP4, MOV, HEIF, AVIF, 3GP) by the brands of its
/// `ftyp` box: the major brand at bytes 8-12, compatible brands from byte 16 to the box's
/// end.
fn iso_media(head: &[u8]) -> &'static str {
    let size = head
        .get(0..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let end = size.clamp(16, head.len().max(16)).min(head.len());
    let major = head.get(8..12).unwrap_or_default();
    let compatible: Vec<&[u8]> = head
        .get(16..end)
        .unwrap_or_default()
        .chunks_exact(4)
        .collect();
    let has = |brand: &[u8]| major == brand || compatible.contains(&brand);
    match major {
        b"avif" | b"avis" => "image/avif",
        b"heic" | b"heix" | b"heim" | b"heis" => "image/heic",
        b"hevc" | b"hevx" | b"hevm" | b"hevs" => "image/heic-sequence",
        b"mif1" | b"msf1" if has(b"avif") || has(b"avis") => "image/avif",
        b"mif1" if has(b"heic") || has(b"heix") => "image/heic",
        b"mif1" => "image/heif",
        b"msf1" if has(b"hevc") || has(b"hevx") => "image/heic-sequence",
        b"msf1" => "image/heif-sequence",
        b"M4A " | b"M4B " | b"M4P " => "audio/mp4",
        b"qt  " => "video/quicktime",
        [b'3', b'g', b'2', _] => "video/3gpp2",
        [b'3', b'g', b'p', _] => "video/3gpp",
        _ => "video/mp4",
    }
}

/// The type of a ZIP file by the parts in the local headers within `head`: Office Open
/// XML documents (`word/`, `xl/`, `ppt/`), OpenDocument and EPUB files (their first,
/// stored part `mimetype` names the type), Java archives, or else plain ZIP.
fn zip_document(head: &[u8]) -> &'static str {
    const OPEN_DOCUMENT: &[&str] = &[
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/vnd.oasis.opendocument.graphics",
        "application/epub+zip",
    ];
    // Every local header in reach: a part's compressed size may be unknown in its header
    // (streamed writers), so headers are found by their signature, not by walking sizes.
    let names = head
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x03\x04")
        .filter_map(|(at, _)| {
            let field = |offset: usize| {
                let b = head.get(at + offset..at + offset + 2)?;
                Some(u16::from_le_bytes([b[0], b[1]]) as usize)
            };
            let (name_len, extra_len) = (field(26)?, field(28)?);
            let name = head.get(at + 30..at + 30 + name_len)?;
            // The part's bytes as stored, when its header gives their size.
            let size = field(18)? | field(20)? << 16;
            let start = at + 30 + name_len + extra_len;
            Some((name, head.get(start..start + size)))
        });
    for (index, (name, data)) in names.enumerate() {
        if index == 0 && name == b"mimetype" {
            let data = data.unwrap_or_default();
            if let Some(kind) = OPEN_DOCUMENT.iter().find(|kind| data == kind.as_bytes()) {
                return kind;
            }
        }
        if name.starts_with(b"word/") {
            return "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        }
        if name.starts_with(b"xl/") {
            return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
        }
        if name.starts_with(b"ppt/") {
            return "application/vnd.openxmlformats-officedocument.presentationml.presentation";
        }
        if name == b"META-INF/MANIFEST.MF" {
            return "application/java-archive";
        }
    }
    "application/zip"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ZIP local header for part `name` holding `data` stored; `size_known: false` leaves
    /// the sizes to a data descriptor, as streamed writers do.
    fn part(name: &str, data: &[u8], size_known: bool) -> Vec<u8> {
        let size = if size_known { data.len() as u32 } else { 0 };
        let mut out = b"PK\x03\x04\x14\0".to_vec();
        out.extend_from_slice(&(if size_known { 0u16 } else { 8 }).to_le_bytes());
        out.extend_from_slice(&[0; 6]); // method, time, date
        out.extend_from_slice(&[0; 4]); // crc
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn zip_documents_by_their_parts() {
        let odt = part("mimetype", b"application/vnd.oasis.opendocument.text", true);
        let odt = [odt, part("content.xml", b"<x/>", true)].concat();
        assert_eq!(sniff(&odt), "application/vnd.oasis.opendocument.text");
        // A template's type is not the document's.
        let ott = part(
            "mimetype",
            b"application/vnd.oasis.opendocument.text-template",
            true,
        );
        assert_eq!(sniff(&ott), "application/zip");
        let epub = part("mimetype", b"application/epub+zip", true);
        assert_eq!(sniff(&epub), "application/epub+zip");
        // Streamed: sizes unknown in the headers, parts found by their signatures.
        let docx = [
            part("[Content_Types].xml", b"<Types/>", false),
            part("word/document.xml", b"<w/>", false),
        ]
        .concat();
        assert_eq!(
            sniff(&docx),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        );
        let jar = part("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0", true);
        assert_eq!(sniff(&jar), "application/java-archive");
        // Cut inside a header: plain ZIP, never a panic.
        for end in 0..docx.len() {
            let kind = sniff(&docx[..end]);
            assert!(end < 4 || kind.starts_with("application/"), "{end}: {kind}");
        }
    }

    #[test]
    fn iso_media_by_brands() {
        let ftyp = |major: &[u8], compatible: &[&[u8]]| {
            let size = 16 + 4 * compatible.len() as u32;
            let mut out = size.to_be_bytes().to_vec();
            out.extend_from_slice(b"ftyp");
            out.extend_from_slice(major);
            out.extend_from_slice(&[0; 4]);
            for brand in compatible {
                out.extend_from_slice(brand);
            }
            out
        };
        assert_eq!(sniff(&ftyp(b"mif1", &[b"mif1", b"avif"])), "image/avif");
        assert_eq!(sniff(&ftyp(b"mif1", &[b"mif1", b"heic"])), "image/heic");
        assert_eq!(sniff(&ftyp(b"mif1", &[b"mif1"])), "image/heif");
        assert_eq!(sniff(&ftyp(b"msf1", &[b"hevc"])), "image/heic-sequence");
        assert_eq!(sniff(&ftyp(b"3gp5", &[])), "video/3gpp");
        assert_eq!(sniff(&ftyp(b"isom", &[b"avc1"])), "video/mp4");
        // A box size that lies: read within what is there.
        let mut lying = ftyp(b"mif1", &[b"avif"]);
        lying[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(sniff(&lying), "image/avif");
        assert_eq!(sniff(&lying[..14]), "image/heif");
    }
}
