//! Decoding (with EXIF orientation and pixel caps) and encoding. JPEGs go through
//! libjpeg-turbo ([`super::turbo`]), the fastest decoder here at every scale; every other
//! format, and the JPEGs it does not take (CMYK, lossless, 12-bit, damaged), through the
//! `image` crate.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use rillet_common::types::ImageMode;

use super::array::{ImageBuilder, convert, dynamic_mode};
use super::turbo;

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

/// A decoder over bytes in memory.
type BytesReader<'a> = ImageReader<Cursor<&'a [u8]>>;

fn reader(bytes: &[u8], max_pixels: u64) -> Result<(BytesReader<'_>, ImageFormat), String> {
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
        let image = DynamicImage::from_decoder(self.decoder).map_err(|e| e.to_string())?;
        rillet_operator::record_decoded(image.as_bytes().len());
        Ok(upright_in(image, self.orientation, mode))
    }
}

/// A decoded `image` turned upright by `orientation` and converted to `mode` (or to the
/// Rillet mode nearest its own).
fn upright_in(
    mut image: DynamicImage,
    orientation: Orientation,
    mode: Option<ImageMode>,
) -> DynamicImage {
    image.apply_orientation(orientation);
    match mode {
        Some(mode) => convert(image, mode),
        None => dynamic_mode(image).1,
    }
}

/// How an operator will shrink each image, so that a JPEG much larger than the result can
/// be decoded at a reduced size.
///
/// ```
/// use rillet_functions::image::codec::Shrink;
/// // A 1000×500 photo fitted within 100×100 shrinks by 1/10; resized to exactly 100×100,
/// // by 1/5 (the reduced image must still cover 100 rows).
/// assert_eq!(Shrink::FitWithin(100, 100).factor((1000, 500)), 0.1);
/// assert_eq!(Shrink::To(100, 100).factor((1000, 500)), 0.2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shrink {
    /// To fit within a `width × height` box, keeping its aspect (letterbox, resize with
    /// `keep_aspect`, model inputs).
    FitWithin(u32, u32),
    /// To exactly `width × height` (resize): each axis shrinks by its own factor.
    To(u32, u32),
    /// By a factor known before decoding, whatever the image's size: a crop of a fixed
    /// size resized to a fixed size.
    By(f64),
}

impl Shrink {
    /// The largest factor by which an axis of an `upright`-sized image shrinks: a reduced
    /// decode must be no smaller than this, so the result never upscales from it.
    pub fn factor(self, upright: (u32, u32)) -> f64 {
        let axis = |target: u32, side: u32| f64::from(target.max(1)) / f64::from(side.max(1));
        match self {
            Self::FitWithin(w, h) => f64::min(axis(w, upright.0), axis(h, upright.1)),
            Self::To(w, h) => f64::max(axis(w, upright.0), axis(h, upright.1)),
            Self::By(factor) => factor,
        }
    }
}

/// An image decoded at a reduced size when the operator will shrink it anyway: a JPEG in
/// the DCT domain ([`decode_jpeg_reduced`]), a WebP scaled by libwebp as it converts to
/// RGB ([`decode_webp_reduced`]). `None` where neither applies; the caller decodes in full.
pub(crate) fn decode_reduced(
    bytes: &[u8],
    shrink: Shrink,
    mode: Option<ImageMode>,
    max_pixels: u64,
) -> Option<Reduced> {
    match sniff_format(bytes)? {
        ImageFormat::Jpeg => decode_jpeg_reduced(bytes, shrink, mode, max_pixels),
        ImageFormat::WebP => decode_webp_reduced(bytes, shrink, mode, max_pixels),
        _ => None,
    }
}

/// How much larger than the result a WebP is scaled by libwebp: its rescaler averages the
/// pixels each output pixel covers (a box filter), which the resize after it must shrink
/// by at least this much to hide, as for JPEG's 1/8 scale.
const WEBP_MARGIN: f64 = 3.0;

/// A still WebP (no EXIF orientation) scaled while decoding to `WEBP_MARGIN` times the
/// result's size, when that is smaller than the image on both axes; `None` otherwise.
pub(crate) fn decode_webp_reduced(
    bytes: &[u8],
    shrink: Shrink,
    mode: Option<ImageMode>,
    max_pixels: u64,
) -> Option<Reduced> {
    let features = super::webp::features(bytes)?;
    let full = (features.width, features.height);
    check_pixels(full.0, full.1, max_pixels).ok()?;
    let factor = shrink.factor(full) * WEBP_MARGIN;
    if factor >= 1.0 {
        return None;
    }
    let side = |s: u32| ((f64::from(s) * factor).ceil() as u32).clamp(1, s);
    let (width, height) = (side(full.0), side(full.1));
    let channels = if features.alpha { 4 } else { 3 };
    let mut pixels = vec![0; width as usize * height as usize * channels];
    super::webp::decode_scaled(bytes, features, (width, height), &mut pixels).ok()?;
    rillet_operator::record_decoded(pixels.len());
    let image = if features.alpha {
        image::RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
    }?;
    let image = upright_in(image, Orientation::NoTransforms, mode);
    let content = Content {
        left: 0.0,
        top: 0.0,
        width: f64::from(width),
        height: f64::from(height),
    };
    Some(Reduced {
        image,
        full,
        content,
    })
}

/// A JPEG decoded at a reduced size, when the image will be shrunk (`shrink`) anyway: at
/// the smallest of 1/8, 1/4 or 1/2 of its size (libjpeg-turbo's DCT scaling, as Pillow's
/// `draft` uses it) that still covers the result on both axes with the margin of
/// [`turbo::REDUCTIONS`], so the result never upscales from it. For photos much larger than
/// the target this skips most of the decoding work. `None` where this does not apply (not a
/// JPEG libjpeg-turbo decodes, no scale small enough, a stream it rejects), and the caller
/// decodes in full, reporting any error.
pub(crate) fn decode_jpeg_reduced(
    bytes: &[u8],
    shrink: Shrink,
    mode: Option<ImageMode>,
    max_pixels: u64,
) -> Option<Reduced> {
    let jpeg = TurboJpeg::open(bytes, max_pixels)?;
    let upright = jpeg.upright();
    let reduction = turbo::reduction_for(jpeg.header, shrink.factor(upright))?;
    let image = jpeg.image(bytes, reduction, mode).ok()?;
    let content = Content::of(&image, upright, reduction, jpeg.orientation);
    Some(Reduced {
        image,
        full: upright,
        content,
    })
}

/// The upright `window` of a JPEG, decoded alone when that is much less work than the
/// whole image (libjpeg-turbo's partial decode: the blocks left and right of the window
/// are not transformed, the rows above it not colour-converted), the same pixels as
/// decoding the whole image and cropping it. The window is mapped through the EXIF
/// orientation to the stored image, widened by an iMCU on each side (chroma upsampling
/// reads the neighbouring blocks) and to an iMCU boundary on the left, and decoded down to
/// the image's last row: libjpeg-turbo skips the rows below a region without reading
/// them, so damage there would go unnoticed where a full decode refuses the file. Then
/// it is cut exactly and turned upright. `None` where this does not apply (not a JPEG
/// libjpeg-turbo decodes, a window that does not fit or covers most of the image, a
/// stream it rejects): the caller decodes in full and reports any error.
pub(crate) fn decode_jpeg_window(
    bytes: &[u8],
    window: super::Window,
    mode: Option<ImageMode>,
    max_pixels: u64,
) -> Option<DynamicImage> {
    let jpeg = TurboJpeg::open(bytes, max_pixels)?;
    let placed = window.place(jpeg.upright()).ok()?;
    let (width, height) = (jpeg.header.width, jpeg.header.height);
    let (x, y, w, h) = stored_rect(placed, jpeg.orientation, (width, height));
    let mcu = jpeg.header.mcu_width;
    if mcu == 0 {
        return None;
    }
    // Margins of one iMCU (at most 32 pixels) around the window, within the image.
    let margin = 32;
    let left = x.saturating_sub(margin) / mcu * mcu;
    let top = y.saturating_sub(margin);
    let right = (x + w).saturating_add(margin).min(width);
    let bottom = height; // read to the end, as a full decode does (see above)
    let region = (left, top, right - left, bottom - top);
    if u64::from(region.2) * u64::from(region.3) * 2 > u64::from(width) * u64::from(height) {
        return None; // most of the image: a full decode costs about the same
    }
    let mut pixels = vec![0; jpeg.native.buffer_len(region.2 as usize, region.3 as usize)];
    rillet_operator::memory::charge_call_transient_memory(pixels.len());
    turbo::with_decompressor(|d| d.decode_region(bytes, jpeg.header, region, &mut pixels)).ok()?;
    rillet_operator::record_decoded(pixels.len());
    let decoded = match jpeg.native {
        ImageMode::L => {
            image::GrayImage::from_raw(region.2, region.3, pixels).map(DynamicImage::ImageLuma8)
        }
        _ => image::RgbImage::from_raw(region.2, region.3, pixels).map(DynamicImage::ImageRgb8),
    }?;
    let cut = decoded.crop_imm(x - left, y - top, w, h);
    Some(upright_in(cut, jpeg.orientation, mode))
}

/// The rectangle of a stored `size` image that shows the upright `(x, y, width, height)`
/// once `orientation` turns it upright.
fn stored_rect(
    (x, y, w, h): (u32, u32, u32, u32),
    orientation: Orientation,
    (width, height): (u32, u32),
) -> (u32, u32, u32, u32) {
    use Orientation::*;
    // Where the upright pixel (ux, uy) is stored.
    let stored = |ux: u32, uy: u32| match orientation {
        NoTransforms => (ux, uy),
        FlipHorizontal => (width - 1 - ux, uy),
        FlipVertical => (ux, height - 1 - uy),
        Rotate180 => (width - 1 - ux, height - 1 - uy),
        Rotate90 => (uy, height - 1 - ux),
        Rotate270 => (width - 1 - uy, ux),
        Rotate90FlipH => (uy, ux),
        Rotate270FlipH => (width - 1 - uy, height - 1 - ux),
    };
    let (a, b) = (stored(x, y), stored(x + w - 1, y + h - 1));
    let (left, top) = (a.0.min(b.0), a.1.min(b.1));
    (left, top, a.0.max(b.0) - left + 1, a.1.max(b.1) - top + 1)
}

/// A JPEG decoded at a reduced size ([`decode_jpeg_reduced`]).
#[derive(Debug)]
pub struct Reduced {
    /// The image, upright.
    pub image: DynamicImage,
    /// The size of the full image, upright.
    pub full: (u32, u32),
    /// Where the full image lies in `image`'s pixels.
    pub content: Content,
}

/// The part of a reduced decode that shows the image, in its pixels. libjpeg rounds a
/// scaled side up: a 473-pixel side at 1/4 gives 119 pixels, the last of which covers one
/// real pixel and three of the encoder's padding, so the image spans 118.25 of them. A
/// resize from this box, not from the whole 119, keeps every pixel where it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Content {
    /// First column (fractional).
    pub left: f64,
    /// First row (fractional).
    pub top: f64,
    /// Width in pixels (fractional).
    pub width: f64,
    /// Height in pixels (fractional).
    pub height: f64,
}

impl Content {
    /// The box of an `upright`-sized image decoded at `1/reduction` into `image` (already
    /// turned by `orientation`): the padding is on the stored right and bottom, which the
    /// orientation moves.
    fn of(
        image: &DynamicImage,
        upright: (u32, u32),
        reduction: u32,
        orientation: Orientation,
    ) -> Self {
        let (width, height) = (
            f64::from(upright.0) / f64::from(reduction),
            f64::from(upright.1) / f64::from(reduction),
        );
        // Whether the stored right or bottom padding now lies left or on top.
        use Orientation::*;
        let (pad_left, pad_top) = match orientation {
            NoTransforms | Rotate90FlipH => (false, false),
            FlipHorizontal | Rotate90 => (true, false),
            FlipVertical | Rotate270 => (false, true),
            Rotate180 | Rotate270FlipH => (true, true),
        };
        let spare = |side: u32, used: f64, padded_first: bool| {
            if padded_first {
                f64::from(side) - used
            } else {
                0.0
            }
        };
        Self {
            left: spare(image.width(), width, pad_left),
            top: spare(image.height(), height, pad_top),
            width,
            height,
        }
    }
}

/// True if `orientation` swaps width and height.
fn turns(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The EXIF orientation of a JPEG, read from its APP1 segment; upright when it has none
/// or it cannot be read.
fn exif_orientation(bytes: &[u8]) -> Orientation {
    jpeg_exif(bytes)
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// The EXIF data of a JPEG (after `Exif\0\0` in the first such APP1 segment before the
/// first scan).
fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    turbo::segments(bytes)
        .filter(|(marker, _)| *marker == 0xE1)
        .find_map(|(_, body)| body.strip_prefix(b"Exif\0\0"))
}

/// A JPEG that libjpeg-turbo decodes in full (8-bit lossy, grey or colour, within the
/// pixel cap), with what its header and EXIF data told. Every other image, and a JPEG
/// libjpeg-turbo fails on, goes to the `image` crate, which reports the error.
struct TurboJpeg {
    header: turbo::Header,
    orientation: Orientation,
    /// The mode the pixels come out in: L or RGB.
    native: ImageMode,
}

impl TurboJpeg {
    fn open(bytes: &[u8], max_pixels: u64) -> Option<Self> {
        if sniff_format(bytes) != Some(ImageFormat::Jpeg) || !has_jpeg_end(bytes) {
            return None;
        }
        let header = turbo::with_decompressor(|d| d.header(bytes, max_pixels)).ok()??;
        check_pixels(header.width, header.height, max_pixels).ok()?;
        let native = match header.colour {
            turbo::Colour::Rgb => ImageMode::Rgb,
            turbo::Colour::Grey => ImageMode::L,
            turbo::Colour::Other => return None,
        };
        Some(Self {
            header,
            orientation: exif_orientation(bytes),
            native,
        })
    }

    /// Width and height once turned upright.
    fn upright(&self) -> (u32, u32) {
        let (width, height) = (self.header.width, self.header.height);
        if turns(self.orientation) {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// The mode of the decoded pixels when they can be used as they are: no rotation to
    /// apply and no conversion to `mode`.
    fn direct_mode(&self, mode: Option<ImageMode>) -> Option<ImageMode> {
        (self.orientation == Orientation::NoTransforms && mode.is_none_or(|m| m == self.native))
            .then_some(self.native)
    }

    /// Decode at `1/reduction` of the size into `out`, exactly the scaled image's bytes in
    /// the native mode.
    fn decode(&self, bytes: &[u8], reduction: u32, out: &mut [u8]) -> Result<(), String> {
        turbo::with_decompressor(|d| d.decode(bytes, self.header, reduction, out))?;
        rillet_operator::record_decoded(out.len());
        Ok(())
    }

    /// Decode at `1/reduction` of the size into a new image, upright and converted to
    /// `mode`.
    fn image(
        &self,
        bytes: &[u8],
        reduction: u32,
        mode: Option<ImageMode>,
    ) -> Result<DynamicImage, String> {
        let width = turbo::scaled(self.header.width, reduction);
        let height = turbo::scaled(self.header.height, reduction);
        let mut pixels = vec![0; self.native.buffer_len(width as usize, height as usize)];
        self.decode(bytes, reduction, &mut pixels)?;
        let image = match self.native {
            ImageMode::L => {
                image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
            }
            _ => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
        }
        .ok_or("decoded pixels of the wrong size")?;
        Ok(upright_in(image, self.orientation, mode))
    }
}

/// `len` bytes of `scratch` to decode into, growing it first if it is shorter.
fn room(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len {
        // A fresh zeroed buffer rather than growing: growing would copy the old pixels.
        // The old one goes first, so both are never held at once. A quarter more room
        // spares a regrowth for the next, slightly larger photo.
        *scratch = Vec::new();
        *scratch = vec![0; len + len / 4];
    }
    rillet_operator::memory::charge_call_transient_memory(scratch.len());
    &mut scratch[..len]
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
    if let Some(jpeg) = TurboJpeg::open(bytes, max_pixels) {
        let (width, height) = (jpeg.header.width, jpeg.header.height);
        match jpeg.direct_mode(mode) {
            Some(native) => {
                let len = native.buffer_len(width as usize, height as usize);
                // libjpeg-turbo writes every byte, so old pixels never show through.
                if jpeg.decode(bytes, 1, room(scratch, len)).is_ok() {
                    return Ok(super::Pixels::View(super::array::ImageView {
                        width,
                        height,
                        mode: native,
                        data: &scratch[..len],
                    }));
                }
            }
            None => {
                if let Ok(image) = jpeg.image(bytes, 1, mode) {
                    rillet_operator::memory::charge_call_transient_memory(image.as_bytes().len());
                    return Ok(super::Pixels::Owned(image));
                }
            }
        }
    }
    let opened = Opened::new(bytes, max_pixels)?;
    let Some(native) = opened.direct_mode(mode) else {
        let image = opened.into_image(mode)?;
        rillet_operator::memory::charge_call_transient_memory(image.as_bytes().len());
        return Ok(super::Pixels::Owned(image));
    };
    let (width, height) = (opened.width, opened.height);
    let len = native.buffer_len(width as usize, height as usize);
    // The decoder writes every byte of the slice, so old pixels never show through.
    opened
        .decoder
        .read_image_boxed(room(scratch, len))
        .map_err(|e| e.to_string())?;
    rillet_operator::record_decoded(len);
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
    if let Some(jpeg) = TurboJpeg::open(bytes, max_pixels) {
        let (width, height) = (jpeg.header.width, jpeg.header.height);
        let decoded = match jpeg.direct_mode(mode) {
            Some(native) => builder.append_with(width, height, native, |buffer| {
                jpeg.decode(bytes, 1, buffer)
            }),
            None => jpeg
                .image(bytes, 1, mode)
                .map(|image| builder.append_dynamic(image)),
        };
        if decoded.is_ok() {
            return Ok(());
        }
    }
    let opened = Opened::new(bytes, max_pixels)?;
    if let Some(native) = opened.direct_mode(mode) {
        let (width, height, decoder) = (opened.width, opened.height, opened.decoder);
        return builder.append_with(width, height, native, |buffer| {
            decoder
                .read_image_boxed(buffer)
                .map_err(|e| e.to_string())?;
            rillet_operator::record_decoded(buffer.len());
            Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth colour gradient (so DCT scaling and resampling agree closely) as a JPEG.
    fn gradient_jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        });
        encode(&DynamicImage::ImageRgb8(image), ImageFormat::Jpeg, 95).unwrap()
    }

    #[test]
    fn a_large_jpeg_is_decoded_at_the_smallest_scale_that_still_covers_the_fit() {
        let bytes = gradient_jpeg(1600, 1200);
        // Fitting 1600x1200 in 320x320 gives 320x240: 1/4 (400x300) covers it with the
        // margin of 1.2, 1/8 does not.
        let reduced =
            decode_jpeg_reduced(&bytes, Shrink::FitWithin(320, 320), None, u64::MAX).unwrap();
        let (image, full) = (reduced.image, reduced.full);
        assert_eq!(
            (image.width(), image.height(), full),
            (400, 300, (1600, 1200))
        );
        // 1/8 keeps only block means: it is taken when it covers three times the result
        // (64x48 for a 64x64 box), not merely the result (200x150 for a 200x200 box).
        let image = decode_jpeg_reduced(&bytes, Shrink::FitWithin(200, 200), None, u64::MAX)
            .unwrap()
            .image;
        assert_eq!((image.width(), image.height()), (400, 300));
        let image = decode_jpeg_reduced(&bytes, Shrink::FitWithin(64, 64), None, u64::MAX)
            .unwrap()
            .image;
        assert_eq!((image.width(), image.height()), (200, 150));
        // The pixels are the image's: close to decoding in full and shrinking.
        let full_image =
            DynamicImage::from_decoder(reader(&bytes, u64::MAX).unwrap().0.into_decoder().unwrap())
                .unwrap()
                .resize_exact(200, 150, image::imageops::FilterType::Triangle)
                .to_rgb8();
        let reduced = image.to_rgb8();
        let diff: u64 = full_image
            .as_raw()
            .iter()
            .zip(reduced.as_raw())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        let mean = diff as f64 / full_image.as_raw().len() as f64;
        assert!(mean < 3.0, "mean absolute difference {mean}");
    }

    #[test]
    fn reduced_decoding_stays_out_of_the_way_where_it_does_not_apply() {
        let bytes = gradient_jpeg(600, 400);
        // Less than twice the fitted size: decoded in full by the caller.
        assert!(decode_jpeg_reduced(&bytes, Shrink::FitWithin(320, 320), None, u64::MAX).is_none());
        // Over the pixel cap: the caller's full decode reports it.
        assert!(decode_jpeg_reduced(&bytes, Shrink::FitWithin(64, 64), None, 1000).is_none());
        // Not a JPEG, or a truncated one.
        let png = encode(&DynamicImage::new_rgb8(800, 800), ImageFormat::Png, 0).unwrap();
        assert!(decode_jpeg_reduced(&png, Shrink::FitWithin(64, 64), None, u64::MAX).is_none());
        assert!(
            decode_jpeg_reduced(
                &bytes[..bytes.len() / 2],
                Shrink::FitWithin(64, 64),
                None,
                u64::MAX
            )
            .is_none()
        );
        // The mode asked for is honoured.
        let grey = decode_jpeg_reduced(
            &bytes,
            Shrink::FitWithin(64, 64),
            Some(ImageMode::L),
            u64::MAX,
        )
        .unwrap()
        .image;
        assert_eq!(grey.color(), ColorType::L8);
    }
}
