//! Decoding (with EXIF orientation and pixel caps) and encoding.

use std::io::Cursor;

use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use rillet_common::types::ImageMode;

use super::array::{ImageBuilder, convert, dynamic_mode};

/// Largest decoded image accepted by default, in pixels (about 11600 × 11600): a header
/// that claims more is treated as bad data, not allocated.
pub const DEFAULT_MAX_PIXELS: u64 = 134_217_728;

/// The container format of encoded bytes, sniffed from their first bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes).ok()
}

/// Lower-case name of a format (`"jpeg"`, `"png"`, …).
pub fn format_name(format: ImageFormat) -> &'static str {
    format
        .extensions_str()
        .first()
        .copied()
        .map(|e| if e == "jpg" { "jpeg" } else { e })
        .unwrap_or("unknown")
}

/// True if a JPEG stream ends with its end-of-image marker (trailing padding allowed).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|b| *b != 0 && *b != b'\n' && *b != b'\r' && *b != b' ')
        .map_or(0, |i| i + 1);
    end >= 2 && bytes[end - 2..end] == [0xFF, 0xD9]
}

fn reader(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<(ImageReader<Cursor<&[u8]>>, ImageFormat), String> {
    if bytes.is_empty() {
        return Err("empty input (0 bytes)".to_string());
    }
    let format = sniff_format(bytes).ok_or_else(|| "not a recognised image format".to_string())?;
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing; a missing
        // end-of-image marker is how truncation shows.
        return Err("truncated JPEG (no end-of-image marker)".to_string());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Allocation cap: the decoded frame at 16 bytes per pixel (RGBA f32) plus slack.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    Ok((reader, format))
}

/// Header facts of encoded bytes, without decoding pixels.
pub struct Header {
    /// Width in pixels (before EXIF rotation).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Decoded mode.
    pub mode: ImageMode,
    /// Container format.
    pub format: ImageFormat,
}

/// Read the header of encoded bytes.
pub fn read_header(bytes: &[u8]) -> Result<Header, String> {
    let (reader, format) = reader(bytes, u64::MAX / 16)?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (mut width, mut height) = decoder.dimensions();
    if let Ok(orientation) = decoder.orientation() {
        use image::metadata::Orientation::*;
        if matches!(
            orientation,
            Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
        ) {
            std::mem::swap(&mut width, &mut height);
        }
    }
    Ok(Header {
        width,
        height,
        mode: mode_of(decoder.color_type()),
        format,
    })
}

fn mode_of(color: ColorType) -> ImageMode {
    match color {
        ColorType::L8 => ImageMode::L,
        ColorType::La8 => ImageMode::La,
        ColorType::Rgb8 => ImageMode::Rgb,
        ColorType::Rgba8 => ImageMode::Rgba,
        ColorType::L16 => ImageMode::L16,
        ColorType::La16 => ImageMode::La16,
        ColorType::Rgb16 => ImageMode::Rgb16,
        ColorType::Rgba16 => ImageMode::Rgba16,
        ColorType::Rgb32F => ImageMode::Rgb32F,
        ColorType::Rgba32F => ImageMode::Rgba32F,
        _ => ImageMode::Rgba,
    }
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), String> {
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(format!(
            "image of {width}×{height} pixels is over the cap of {max_pixels} pixels (max_pixels)"
        ));
    }
    if pixels == 0 {
        return Err(format!("image has no pixels ({width}×{height})"));
    }
    Ok(())
}

/// A decoder over encoded bytes whose header passed the checks, with what it told.
struct Opened<'b> {
    decoder: Box<dyn ImageDecoder + 'b>,
    width: u32,
    height: u32,
    orientation: image::metadata::Orientation,
}

impl<'b> Opened<'b> {
    fn new(bytes: &'b [u8], max_pixels: u64) -> Result<Self, String> {
        let (reader, _) = reader(bytes, max_pixels)?;
        let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
        let (width, height) = decoder.dimensions();
        check_pixels(width, height, max_pixels)?;
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        Ok(Self {
            decoder: Box::new(decoder),
            width,
            height,
            orientation,
        })
    }

    /// The mode the pixels come out in, when they can be used as they are: no rotation
    /// to apply, no conversion to `mode`, and a layout Rillet stores.
    fn direct_mode(&self, mode: Option<ImageMode>) -> Option<ImageMode> {
        let color = self.decoder.color_type();
        let native = mode_of(color);
        (self.orientation == image::metadata::Orientation::NoTransforms
            && mode.is_none_or(|m| m == native)
            && color == native_color(native))
        .then_some(native)
    }

    /// Decode into a new image, rotated upright and converted to `mode`.
    fn into_image(self, mode: Option<ImageMode>) -> Result<DynamicImage, String> {
        let mut image = DynamicImage::from_decoder(self.decoder).map_err(|e| e.to_string())?;
        image.apply_orientation(self.orientation);
        Ok(match mode {
            Some(mode) => convert(image, mode),
            None => dynamic_mode(image).1,
        })
    }
}

thread_local! {
    /// The decode buffer of the last call on this thread, for the next one.
    static SPARE_SCRATCH: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
}

/// A buffer that photos are decoded into, one after the other ([`decode_reusing`]). It is
/// this thread's spare buffer, given back when dropped, so the calls of a pool thread share
/// one buffer (up to [`super::spare::MAX_KEPT_BYTES`]).
#[derive(Debug)]
pub(crate) struct Scratch(Vec<u8>);

impl Scratch {
    /// This thread's spare buffer (empty if another `Scratch` on the thread holds it).
    pub(crate) fn take() -> Self {
        Self(super::spare::take(&SPARE_SCRATCH))
    }

    /// Bytes of the buffer.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let bytes = buffer.len();
        super::spare::give_back(&SPARE_SCRATCH, buffer, bytes);
    }
}

/// Decode `bytes` for use within one row, applying EXIF orientation and converting to `mode`
/// when given. Fails (with a reason) on unknown formats, corrupt or truncated data, and
/// images over `max_pixels`. In the common case (no rotation, no mode conversion) the pixels
/// are decoded into `scratch`, which the caller keeps from row to row (and the thread from
/// call to call), so photos do not each allocate and zero their own buffer. The image
/// is charged to the call as transient memory (its largest row counts, not the sum).
pub(crate) fn decode_reusing<'s>(
    bytes: &[u8],
    mode: Option<ImageMode>,
    max_pixels: u64,
    scratch: &'s mut Scratch,
) -> Result<super::Pixels<'s>, String> {
    let scratch = &mut scratch.0;
    let opened = Opened::new(bytes, max_pixels)?;
    let Some(native) = opened.direct_mode(mode) else {
        let image = opened.into_image(mode)?;
        rillet_runtime::memory::charge_call_transient_memory(image.as_bytes().len());
        return Ok(super::Pixels::Owned(image));
    };
    let (width, height) = (opened.width, opened.height);
    let len = native.buffer_len(width as usize, height as usize);
    if scratch.len() < len {
        // A fresh zeroed buffer rather than growing: growing would copy the old pixels.
        // The old one goes first, so both are never held at once. A quarter more room
        // spares a regrowth for the next, slightly larger photo.
        *scratch = Vec::new();
        *scratch = vec![0; len + len / 4];
    }
    rillet_runtime::memory::charge_call_transient_memory(scratch.len());
    // The decoder writes every byte of the slice, so old pixels never show through.
    opened
        .decoder
        .read_image_boxed(&mut scratch[..len])
        .map_err(|e| e.to_string())?;
    Ok(super::Pixels::View(super::array::ImageView {
        width,
        height,
        mode: native,
        data: &scratch[..len],
    }))
}

/// Decode `bytes` and append the image to `builder`. In the common case (no rotation, no
/// mode conversion) pixels are decoded straight into the column's buffer.
pub fn decode_into(
    bytes: &[u8],
    mode: Option<ImageMode>,
    max_pixels: u64,
    builder: &mut ImageBuilder,
) -> Result<(), String> {
    let opened = Opened::new(bytes, max_pixels)?;
    if let Some(native) = opened.direct_mode(mode) {
        let (width, height, decoder) = (opened.width, opened.height, opened.decoder);
        return builder.append_with(width, height, native, |buffer| {
            decoder.read_image_boxed(buffer).map_err(|e| e.to_string())
        });
    }
    builder.append_dynamic(opened.into_image(mode)?);
    Ok(())
}

fn native_color(mode: ImageMode) -> ColorType {
    match mode {
        ImageMode::L => ColorType::L8,
        ImageMode::La => ColorType::La8,
        ImageMode::Rgb => ColorType::Rgb8,
        ImageMode::Rgba => ColorType::Rgba8,
        ImageMode::L16 => ColorType::L16,
        ImageMode::La16 => ColorType::La16,
        ImageMode::Rgb16 => ColorType::Rgb16,
        ImageMode::Rgba16 => ColorType::Rgba16,
        ImageMode::Rgb32F => ColorType::Rgb32F,
        ImageMode::Rgba32F => ColorType::Rgba32F,
    }
}

/// Output formats for encoding.
pub fn parse_format(name: &str) -> Result<ImageFormat, String> {
    match name.to_ascii_lowercase().as_str() {
        "png" => Ok(ImageFormat::Png),
        "jpeg" | "jpg" => Ok(ImageFormat::Jpeg),
        "webp" => Ok(ImageFormat::WebP),
        "bmp" => Ok(ImageFormat::Bmp),
        "tiff" | "tif" => Ok(ImageFormat::Tiff),
        "gif" => Ok(ImageFormat::Gif),
        other => Err(format!(
            "unknown output format {other:?}; expected png, jpeg, webp, bmp, tiff or gif"
        )),
    }
}

/// Encode `image` as `format` (JPEG at `quality`, 1–100).
pub fn encode(image: &DynamicImage, format: ImageFormat, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            // JPEG holds 8-bit L or RGB only.
            let rgb = match image {
                DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image.clone(),
                other if other.color().has_color() => DynamicImage::ImageRgb8(other.to_rgb8()),
                other => DynamicImage::ImageLuma8(other.to_luma8()),
            };
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            rgb.write_with_encoder(encoder).map_err(|e| e.to_string())?;
        }
        ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp => {
            // These encoders take 8-bit images.
            let eight = match image.color().has_alpha() {
                true => DynamicImage::ImageRgba8(image.to_rgba8()),
                false => DynamicImage::ImageRgb8(image.to_rgb8()),
            };
            eight
                .write_to(&mut out, format)
                .map_err(|e| e.to_string())?;
        }
        _ => {
            let writable = match image {
                DynamicImage::ImageRgb32F(_) => DynamicImage::ImageRgb16(image.to_rgb16()),
                DynamicImage::ImageRgba32F(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
                other => other.clone(),
            };
            writable
                .write_to(&mut out, format)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(out.into_inner())
}
