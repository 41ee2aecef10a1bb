//! Image → image operators (resize, letterbox, crop, flip, rotate, mode, blur, adjust,
//! border trimming) and image → tensor.

use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, StructArray, UInt32Builder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use fast_image_resize::images::{Image as FirImage, ImageRef as FirImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;
use rillet_common::types::{ElementType, ImageMode, ImageType, TensorType};
use rillet_common::{Result, RilletError};
use rillet_operator::{ArrayFunction, Downscale};

use super::array::{ImageBuilder, ImageColumn, ImageView, convert, pillow_luma};
use super::{
    IMAGE_BATCH_ROWS, ImageInput, Pixels, RowFailure, codec, expect_image, input_mode, map_images,
    map_images_within, map_input, spare,
};
use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};
use crate::tensor::TensorBuilder;

pub(super) fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Resize)),
        Arc::new(OperatorFunction::new(Letterbox)),
        Arc::new(OperatorFunction::new(Crop)),
        Arc::new(OperatorFunction::new(CenterCrop)),
        Arc::new(OperatorFunction::new(Flip)),
        Arc::new(OperatorFunction::new(Rotate)),
        Arc::new(OperatorFunction::new(ConvertMode)),
        Arc::new(OperatorFunction::new(Blur)),
        Arc::new(OperatorFunction::new(Adjust)),
        Arc::new(OperatorFunction::new(CropBlackBorder)),
        Arc::new(OperatorFunction::new(ToTensor)),
    ]
}

fn pixel_type(mode: ImageMode) -> PixelType {
    match mode {
        ImageMode::L => PixelType::U8,
        ImageMode::La => PixelType::U8x2,
        ImageMode::Rgb => PixelType::U8x3,
        ImageMode::Rgba => PixelType::U8x4,
        ImageMode::L16 => PixelType::U16,
        ImageMode::La16 => PixelType::U16x2,
        ImageMode::Rgb16 => PixelType::U16x3,
        ImageMode::Rgba16 => PixelType::U16x4,
        ImageMode::Rgb32F => PixelType::F32x3,
        ImageMode::Rgba32F => PixelType::F32x4,
    }
}

fn resize_alg(method: &str) -> Result<ResizeAlg> {
    Ok(match method.to_ascii_lowercase().as_str() {
        "nearest" => ResizeAlg::Nearest,
        "box" => ResizeAlg::Convolution(FilterType::Box),
        "bilinear" => ResizeAlg::Convolution(FilterType::Bilinear),
        "hamming" => ResizeAlg::Convolution(FilterType::Hamming),
        "bicubic" | "catmullrom" => ResizeAlg::Convolution(FilterType::CatmullRom),
        "mitchell" => ResizeAlg::Convolution(FilterType::Mitchell),
        "lanczos3" | "lanczos" => ResizeAlg::Convolution(FilterType::Lanczos3),
        other => {
            return Err(RilletError::invalid_argument(format!(
                "unknown resize method {other:?}; expected nearest, box, bilinear, hamming, bicubic, mitchell or lanczos3"
            )));
        }
    })
}

thread_local! {
    /// The resizer of the last call on this thread, for the next one.
    static SPARE_RESIZER: std::cell::Cell<Option<Resizer>> = const { std::cell::Cell::new(None) };
}

/// This thread's resizer, given back when dropped, so the calls of a pool thread share one
/// set of convolution buffers. One that served an intermediate image over
/// [`spare::MAX_KEPT_BYTES`] is dropped instead of kept.
struct ThreadResizer {
    resizer: Resizer,
    /// Largest intermediate image resized so far, in bytes (source height × target width).
    largest: usize,
}

impl ThreadResizer {
    fn take() -> Self {
        Self {
            resizer: spare::take(&SPARE_RESIZER),
            largest: 0,
        }
    }
}

impl Drop for ThreadResizer {
    fn drop(&mut self) {
        let resizer = std::mem::take(&mut self.resizer);
        spare::give_back(&SPARE_RESIZER, resizer, self.largest);
    }
}

/// Resize `src` to `width × height` into `dst` (exactly `mode.buffer_len(width, height)`
/// bytes), with SIMD convolution.
fn resize_into(
    thread_resizer: &mut ThreadResizer,
    src: &ImageView<'_>,
    width: u32,
    height: u32,
    alg: ResizeAlg,
    content: Option<codec::Content>,
    dst: &mut [u8],
) -> std::result::Result<(), String> {
    let pixel = pixel_type(src.mode);
    let mut options = ResizeOptions::new().resize_alg(alg);
    if let Some(c) = content {
        options = options.crop(c.left, c.top, c.width, c.height);
    }
    thread_resizer.largest = thread_resizer
        .largest
        .max(src.height as usize * width as usize * src.mode.buffer_len(1, 1));
    let resizer = &mut thread_resizer.resizer;
    // 16- and 32-bit pixels must be aligned; column slices may not be, so copy them.
    let aligned_src: Vec<u32>;
    let src_bytes = if is_aligned(src.mode, src.data) {
        src.data
    } else {
        aligned_src = aligned_copy(src.data);
        &bytes_of(&aligned_src)[..src.data.len()]
    };
    let source =
        FirImageRef::new(src.width, src.height, src_bytes, pixel).map_err(|e| e.to_string())?;
    if is_aligned(src.mode, dst) {
        let mut target =
            FirImage::from_slice_u8(width, height, dst, pixel).map_err(|e| e.to_string())?;
        resizer
            .resize(&source, &mut target, &options)
            .map_err(|e| e.to_string())
    } else {
        let mut target = FirImage::new(width, height, pixel);
        resizer
            .resize(&source, &mut target, &options)
            .map_err(|e| e.to_string())?;
        dst.copy_from_slice(target.buffer());
        Ok(())
    }
}

/// True if `bytes` may be viewed as pixels of `mode` (16- and 32-bit values need their
/// natural alignment).
fn is_aligned(mode: ImageMode, bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(mode.element_type().size())
}

fn aligned_copy(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    // SAFETY: `words` holds at least `bytes.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len())
    };
    words
}

fn bytes_of(words: &[u32]) -> &[u8] {
    // SAFETY: any u32 slice is a valid byte slice of four times the length.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4) }
}

/// The size that fits `w × h` inside `max_w × max_h` keeping the aspect ratio (what
/// [`letterbox_rgb8`] scales an image to); at least 1 × 1.
///
/// ```
/// assert_eq!(rillet_functions::image::fitted_size(960, 720, 320, 320), (320, 240));
/// ```
pub fn fitted_size(w: u32, h: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    let scale = (max_w as f64 / w as f64).min(max_h as f64 / h as f64);
    (
        ((w as f64 * scale).round() as u32).clamp(1, max_w.max(1)),
        ((h as f64 * scale).round() as u32).clamp(1, max_h.max(1)),
    )
}

/// The widest blur: a Gaussian kernel spans about 6 sigma.
const MAX_SIGMA: f64 = 4096.0;

/// A size in pixels: one message for zero, negative and too large values alike.
fn positive_size(params: &Params, name: &str) -> Result<u32> {
    let v = params.int(name)?;
    match u32::try_from(v) {
        Ok(size) if size > 0 => Ok(size),
        _ => Err(RilletError::invalid_argument(format!(
            "{}: {name} must be a whole number of pixels from 1 to {}, not {v}",
            params.operator(),
            u32::MAX
        ))),
    }
}

/// The `width × height` an operator is asked to produce: positive, and no more pixels
/// than one image may have (the decode cap), so a slip of the keyboard fails the plan
/// instead of allocating gigabytes per row.
fn output_size(params: &Params) -> Result<(u32, u32)> {
    let (w, h) = (
        positive_size(params, "width")?,
        positive_size(params, "height")?,
    );
    let pixels = w as u64 * h as u64;
    if pixels > codec::DEFAULT_MAX_PIXELS {
        return Err(RilletError::invalid_argument(format!(
            "{}: an output of {w}×{h} = {pixels} pixels is over the cap of {} pixels per \
             image (the decode cap); ask for a smaller size",
            params.operator(),
            codec::DEFAULT_MAX_PIXELS
        )));
    }
    Ok((w, h))
}

/// The target box and filter of resize and letterbox.
fn resize_options(params: &Params) -> Result<(u32, u32, ResizeAlg)> {
    let (w, h) = output_size(params)?;
    Ok((w, h, resize_alg(params.str("method")?)?))
}

fn image_result(operator: &str, input: &FieldRef, mode: Option<ImageMode>) -> Result<Field> {
    expect_image(operator, input)?;
    Ok(ImageType::new(mode).field(operator))
}

/// `image_resize(img, width, height, method, keep_aspect, on_error)`: resample with a
/// SIMD convolution filter (nearest, bilinear, bicubic, lanczos3, …). With
/// `keep_aspect`, the image fits inside `width × height`.
#[derive(Debug)]
pub struct Resize;

impl Operator for Resize {
    fn name(&self) -> &'static str {
        "image_resize"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("width", ParamKind::Int),
            Param::required("height", ParamKind::Int),
            Param::optional("method", ParamKind::Str, "bilinear"),
            Param::optional("keep_aspect", ParamKind::Bool, "false"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        resize_options(params)?;
        image_result(self.name(), &inputs[0], input_mode(&inputs[0]))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (w, h, alg) = resize_options(call.params)?;
        let keep = call.params.bool("keep_aspect")?;
        let mut resizer = ThreadResizer::take();
        // A JPEG well over the result's size is decoded at 1/2, 1/4 or 1/8 scale in the
        // DCT domain, never below the result on either axis (see `decode_jpeg_reduced`),
        // and the resize filter does the rest, as Pillow's `draft` followed by `resize`.
        // With a fused crop, by how much the window shrinks.
        let target = if keep {
            codec::Shrink::FitWithin(w, h)
        } else {
            codec::Shrink::To(w, h)
        };
        let shrink = match call.window {
            Some(window) => codec::Shrink::By(target.factor(window.size())),
            None => target,
        };
        let mut window_pixels = Vec::new();
        map_images_within(
            call,
            errors,
            codec::DEFAULT_MAX_PIXELS,
            Some(shrink),
            |pixels, out| {
                // The window (or the whole image) in full-size pixels, also when it was
                // decoded reduced, and where that lies in the decoded pixels.
                let full = pixels.original_size();
                let whole = pixels.view();
                let (src, region, part) = match call.window {
                    None => (whole, pixels.content(), full),
                    Some(window) => {
                        let placed = window.place(full)?;
                        let part = (placed.2, placed.3);
                        if pixels.content().is_some() {
                            // Decoded reduced: read the window where it lies (the filter
                            // may reach past its edges, within the quality guard).
                            (whole, Some(window_in(&pixels, placed)), part)
                        } else {
                            // Full pixels: a copy of the window, so the filter sees
                            // exactly what a crop would give it.
                            (window_copy(&whole, placed, &mut window_pixels), None, part)
                        }
                    }
                };
                let (tw, th) = if keep {
                    fitted_size(part.0, part.1, w, h)
                } else {
                    (w, h)
                };
                out.append_with(tw, th, src.mode, |dst| {
                    resize_into(&mut resizer, &src, tw, th, alg, region, dst)
                })
            },
            self.name(),
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn shrinks_images(&self) -> bool {
        true
    }

    fn fuses_crop(&self) -> bool {
        true
    }

    fn downscale(&self, params: &Params) -> Option<Downscale> {
        let (width, height, _) = resize_options(params).ok()?;
        Some(Downscale {
            width,
            height,
            method: params.str("method").ok()?.to_string(),
            keep_aspect: params.bool("keep_aspect").ok()?,
        })
    }
}

/// `width × height` RGB pixels, rows `stride` bytes apart, as [`Resize`] would shrink
/// them for `downscale`: the result's width, height and pixels.
pub(crate) fn downscale_rgb(
    data: &[u8],
    stride: usize,
    (width, height): (u32, u32),
    downscale: &Downscale,
) -> std::result::Result<(u32, u32, Vec<u8>), String> {
    let alg = resize_alg(&downscale.method).map_err(|e| e.to_string())?;
    let (tw, th) = if downscale.keep_aspect {
        fitted_size(width, height, downscale.width, downscale.height)
    } else {
        (downscale.width, downscale.height)
    };
    let row = 3 * width as usize;
    let rows;
    let src = if stride == row {
        &data[..row * height as usize]
    } else {
        rows = (0..height as usize)
            .flat_map(|y| &data[y * stride..y * stride + row])
            .copied()
            .collect::<Vec<u8>>();
        &rows[..]
    };
    let view = ImageView {
        width,
        height,
        mode: ImageMode::Rgb,
        data: src,
    };
    let mut out = vec![0; ImageMode::Rgb.buffer_len(tw as usize, th as usize)];
    let mut resizer = ThreadResizer::take();
    resize_into(&mut resizer, &view, tw, th, alg, None, &mut out)?;
    Ok((tw, th, out))
}

/// `image_letterbox(img, width, height, fill, on_error)`: resize to fit inside
/// `width × height` keeping the aspect ratio, centred on a `fill`-valued canvas (detector
/// input).
#[derive(Debug)]
pub struct Letterbox;

impl Operator for Letterbox {
    fn name(&self) -> &'static str {
        "image_letterbox"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("width", ParamKind::Int),
            Param::required("height", ParamKind::Int),
            Param::optional("fill", ParamKind::Int, "114"),
            Param::optional("method", ParamKind::Str, "bilinear"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        resize_options(params)?;
        image_result(self.name(), &inputs[0], input_mode(&inputs[0]))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (w, h, alg) = resize_options(call.params)?;
        let fill = call.params.int("fill")?.clamp(0, 255) as u8;
        let mut resizer = ThreadResizer::take();
        map_images_within(
            call,
            errors,
            codec::DEFAULT_MAX_PIXELS,
            Some(codec::Shrink::FitWithin(w, h)),
            |pixels, out| {
                let (full_w, full_h) = pixels.original_size();
                let src = pixels.view();
                require_8_bit("letterbox", src.mode)?;
                // The fitted size of the full image, also when it was decoded reduced.
                let (tw, th) = fitted_size(full_w, full_h, w, h);
                let mut scaled = vec![0u8; src.mode.buffer_len(tw as usize, th as usize)];
                resize_into(
                    &mut resizer,
                    &src,
                    tw,
                    th,
                    alg,
                    pixels.content(),
                    &mut scaled,
                )?;
                let c = src.mode.channels();
                out.append_with(w, h, src.mode, |dst| {
                    dst.fill(fill);
                    if c == 2 || c == 4 {
                        // The padding is opaque.
                        for px in dst.chunks_exact_mut(c) {
                            px[c - 1] = 255;
                        }
                    }
                    paste_centered(dst, w, h, &scaled, tw, th, c);
                    Ok::<(), String>(())
                })
            },
            self.name(),
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn shrinks_images(&self) -> bool {
        true
    }
}

/// An 8-bit image scaled to fit a detector's input box, keeping its aspect ratio, and
/// centred on a `fill`-valued canvas: the pixels, and how to map a point of the canvas back
/// to the source image (`source_x = (canvas_x - left) / scale_x`, the same for y). The two
/// scales differ only by the rounding of the scaled size to whole pixels.
#[derive(Debug, Clone)]
pub struct Letterboxed {
    /// `width × height` RGB pixels, HWC.
    pub rgb: Vec<u8>,
    /// Source pixels to canvas pixels, horizontally.
    pub scale_x: f64,
    /// Source pixels to canvas pixels, vertically.
    pub scale_y: f64,
    /// Left padding, in canvas pixels.
    pub left: u32,
    /// Top padding, in canvas pixels.
    pub top: u32,
}

/// Letterbox `src` (any 8-bit mode; alpha is dropped, grey is spread over three channels)
/// into a `width × height` RGB canvas, bilinear, for a model's input.
///
/// ```
/// use rillet_common::types::ImageMode;
/// use rillet_functions::image::array::ImageView;
/// use rillet_functions::image::letterbox_rgb8;
/// let pixels = vec![200u8; 40 * 20 * 3];
/// let src = ImageView { width: 40, height: 20, mode: ImageMode::Rgb, data: &pixels };
/// let boxed = letterbox_rgb8(&src, 32, 32, 114).unwrap();
/// assert_eq!((boxed.scale_x, boxed.scale_y, boxed.left, boxed.top), (0.8, 0.8, 0, 8));
/// assert_eq!(boxed.rgb[0], 114); // padding above the image
/// assert_eq!(boxed.rgb[(16 * 32 + 16) * 3], 200);
/// ```
pub fn letterbox_rgb8(
    src: &ImageView<'_>,
    width: u32,
    height: u32,
    fill: u8,
) -> std::result::Result<Letterboxed, String> {
    letterbox_rgb8_of(src, (src.width, src.height), width, height, fill)
}

/// [`letterbox_rgb8`] of pixels `src` that stand for an image of `full` size (decoded
/// reduced): the geometry, scales included, is that of the full image.
pub fn letterbox_rgb8_of(
    src: &ImageView<'_>,
    full: (u32, u32),
    width: u32,
    height: u32,
    fill: u8,
) -> std::result::Result<Letterboxed, String> {
    if src.width == 0 || src.height == 0 || full.0 == 0 || full.1 == 0 {
        return Err(format!(
            "cannot letterbox a {}x{} image into {width}x{height}",
            full.0, full.1
        ));
    }
    let (tw, th) = fitted_size(full.0, full.1, width.max(1), height.max(1));
    let scaled = resize_rgb8(src, tw, th)?;
    let (scale_x, scale_y) = (tw as f64 / full.0 as f64, th as f64 / full.1 as f64);
    let mut rgb = vec![fill; width as usize * height as usize * 3];
    let (left, top) = paste_centered(&mut rgb, width, height, &scaled, tw, th, 3);
    Ok(Letterboxed {
        rgb,
        scale_x,
        scale_y,
        left,
        top,
    })
}

/// Copy the `tw × th` pixels `src` (`channels` bytes each) into the middle of the
/// `width × height` canvas `dst`; returns the left and top padding.
fn paste_centered(
    dst: &mut [u8],
    width: u32,
    height: u32,
    src: &[u8],
    tw: u32,
    th: u32,
    channels: usize,
) -> (u32, u32) {
    let (left, top) = ((width - tw) / 2, (height - th) / 2);
    let row_bytes = tw as usize * channels;
    for y in 0..th as usize {
        let start = ((top as usize + y) * width as usize + left as usize) * channels;
        dst[start..start + row_bytes].copy_from_slice(&src[y * row_bytes..(y + 1) * row_bytes]);
    }
    (left, top)
}

/// `src` (any 8-bit mode; alpha is dropped, grey is spread over three channels) resized to
/// exactly `width × height` RGB pixels, HWC, bilinear, for a model's input.
///
/// ```
/// use rillet_common::types::ImageMode;
/// use rillet_functions::image::array::ImageView;
/// use rillet_functions::image::resize_rgb8;
/// let grey = vec![7u8; 8 * 4];
/// let src = ImageView { width: 8, height: 4, mode: ImageMode::L, data: &grey };
/// assert_eq!(resize_rgb8(&src, 4, 4).unwrap(), vec![7u8; 4 * 4 * 3]);
/// ```
pub fn resize_rgb8(
    src: &ImageView<'_>,
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, String> {
    require_8_bit("resize", src.mode)?;
    if width == 0 || height == 0 || src.width == 0 || src.height == 0 {
        return Err(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            src.width, src.height
        ));
    }
    let rgb_source;
    let src = if src.mode == ImageMode::Rgb {
        *src
    } else {
        let c = src.mode.channels();
        let mut rgb = Vec::with_capacity(src.width as usize * src.height as usize * 3);
        for px in src.data.chunks_exact(c) {
            match c {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
        rgb_source = rgb;
        ImageView {
            width: src.width,
            height: src.height,
            mode: ImageMode::Rgb,
            data: &rgb_source,
        }
    };
    let mut out = vec![0u8; width as usize * height as usize * 3];
    let mut resizer = ThreadResizer::take();
    resize_into(
        &mut resizer,
        &src,
        width,
        height,
        ResizeAlg::Convolution(FilterType::Bilinear),
        None,
        &mut out,
    )?;
    Ok(out)
}

/// Copy the `w × h` window at `(x, y)` of `src` into a new row of `out`.
fn crop_view(
    src: &ImageView<'_>,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    out: &mut ImageBuilder,
) -> std::result::Result<(), String> {
    if w == 0
        || h == 0
        || x.checked_add(w).is_none_or(|r| r > src.width)
        || y.checked_add(h).is_none_or(|b| b > src.height)
    {
        return Err(format!(
            "crop window {w}×{h} at ({x}, {y}) does not fit inside the {}×{} image",
            src.width, src.height
        ));
    }
    out.append_with(w, h, src.mode, |dst| {
        copy_window(src, (x, y, w, h), dst);
        Ok(())
    })
}

/// Copy the `(x, y, width, height)` window of `src` (which must fit) into `dst`, exactly
/// its bytes, rows packed.
fn copy_window(src: &ImageView<'_>, (x, y, width, height): (u32, u32, u32, u32), dst: &mut [u8]) {
    let px = src.mode.channels() * src.mode.element_type().size();
    let (row_bytes, stride) = (width as usize * px, src.width as usize * px);
    for (r, out) in dst
        .chunks_exact_mut(row_bytes)
        .take(height as usize)
        .enumerate()
    {
        let start = (y as usize + r) * stride + x as usize * px;
        out.copy_from_slice(&src.data[start..start + row_bytes]);
    }
}

/// The window of an image that a crop keeps, where a resize fused with the crop reads.
///
/// ```
/// use rillet_functions::image::Window;
/// let centre = Window::Centre { width: 200, height: 100 };
/// assert_eq!(centre.place((640, 480)), Ok((220, 190, 200, 100)));
/// assert!(centre.place((150, 480)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `width × height` with its top-left corner at `(x, y)` (`image_crop`).
    At {
        /// Left column.
        x: u32,
        /// Top row.
        y: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The centred `width × height` (`image_center_crop`).
    Centre {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

impl Window {
    /// Width and height of the window.
    pub fn size(self) -> (u32, u32) {
        match self {
            Self::At { width, height, .. } | Self::Centre { width, height } => (width, height),
        }
    }

    /// `(x, y, width, height)` of the window in an image of `size`, or why it does not fit.
    pub fn place(self, size: (u32, u32)) -> std::result::Result<(u32, u32, u32, u32), String> {
        let (image_w, image_h) = size;
        match self {
            Self::At {
                x,
                y,
                width,
                height,
            } => {
                if width == 0
                    || height == 0
                    || x.checked_add(width).is_none_or(|r| r > image_w)
                    || y.checked_add(height).is_none_or(|b| b > image_h)
                {
                    return Err(format!(
                        "crop window {width}×{height} at ({x}, {y}) does not fit inside the \
                         {image_w}×{image_h} image"
                    ));
                }
                Ok((x, y, width, height))
            }
            Self::Centre { width, height } => {
                if width > image_w || height > image_h {
                    return Err(format!(
                        "cannot take a {width}×{height} centre crop of a {image_w}×{image_h} image"
                    ));
                }
                Ok(((image_w - width) / 2, (image_h - height) / 2, width, height))
            }
        }
    }
}

/// For a fused resize: the window, fused decode and row policy of a crop function called
/// with `literals`, or `None` when `function` is not a crop.
pub(crate) fn crop_window_of(
    function: &dyn std::any::Any,
    literals: &[Option<&ScalarValue>],
) -> Option<(Window, Option<Params>, crate::operator::OnError)> {
    if let Some(crop) = function.downcast_ref::<OperatorFunction<Crop>>() {
        return crop.fusable_window(literals);
    }
    function
        .downcast_ref::<OperatorFunction<CenterCrop>>()?
        .fusable_window(literals)
}

/// The `(x, y, width, height)` window of `src` copied into `buffer` (reused from row to
/// row), as a view.
fn window_copy<'b>(
    src: &ImageView<'_>,
    window: (u32, u32, u32, u32),
    buffer: &'b mut Vec<u8>,
) -> ImageView<'b> {
    let (width, height) = (window.2, window.3);
    buffer.resize(src.mode.buffer_len(width as usize, height as usize), 0);
    copy_window(src, window, buffer);
    ImageView {
        width,
        height,
        mode: src.mode,
        data: buffer,
    }
}

/// Where `window` (of the full image, upright) lies in the pixels of `pixels`, which may
/// have been decoded reduced: the box a resize reads.
fn window_in(pixels: &Pixels<'_>, window: (u32, u32, u32, u32)) -> codec::Content {
    let full = pixels.original_size();
    let content = pixels.content().unwrap_or(codec::Content {
        left: 0.0,
        top: 0.0,
        width: f64::from(full.0),
        height: f64::from(full.1),
    });
    let (sx, sy) = (
        content.width / f64::from(full.0.max(1)),
        content.height / f64::from(full.1.max(1)),
    );
    let (x, y, w, h) = window;
    codec::Content {
        left: content.left + f64::from(x) * sx,
        top: content.top + f64::from(y) * sy,
        width: f64::from(w) * sx,
        height: f64::from(h) * sy,
    }
}

/// `image_crop(img, x, y, width, height, on_error)`: the window whose top-left corner is
/// `(x, y)`. A window that does not fit is bad data for that row.
#[derive(Debug)]
pub struct Crop;

impl Operator for Crop {
    fn name(&self) -> &'static str {
        "image_crop"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("x", ParamKind::Int),
            Param::required("y", ParamKind::Int),
            Param::required("width", ParamKind::Int),
            Param::required("height", ParamKind::Int),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        for name in ["x", "y"] {
            params.size(name)?;
        }
        output_size(params)?;
        image_result(self.name(), &inputs[0], input_mode(&inputs[0]))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        crop_images(self.name(), self.window(call.params)?, call, errors)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn decodes_regions(&self) -> bool {
        true
    }

    fn crop_window(&self, params: &Params) -> Option<Result<Window>> {
        Some(self.window(params))
    }
}

impl Crop {
    fn window(&self, p: &Params) -> Result<Window> {
        Ok(Window::At {
            x: p.size("x")?,
            y: p.size("y")?,
            width: p.size("width")?,
            height: p.size("height")?,
        })
    }
}

/// Every image's `window`, copied out.
fn crop_images(
    operator: &str,
    window: Window,
    call: &Call<'_>,
    errors: &mut RowErrors,
) -> Result<ArrayRef> {
    // Of a JPEG only the window is decoded, where that is much less work.
    let input = ImageInput::of_call(operator, call)?.cropping(window);
    map_input(
        input,
        call,
        errors,
        codec::DEFAULT_MAX_PIXELS,
        |pixels, out| {
            let src = pixels.view();
            let (x, y, w, h) = match pixels {
                Pixels::Window(_) => (0, 0, src.width, src.height),
                _ => window.place((src.width, src.height))?,
            };
            crop_view(&src, x, y, w, h, out)
        },
    )
}

/// `image_center_crop(img, width, height, on_error)`: the centred `width × height` window.
#[derive(Debug)]
pub struct CenterCrop;

impl Operator for CenterCrop {
    fn name(&self) -> &'static str {
        "image_center_crop"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("width", ParamKind::Int),
            Param::required("height", ParamKind::Int),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        output_size(params)?;
        image_result(self.name(), &inputs[0], input_mode(&inputs[0]))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        crop_images(self.name(), self.window(call.params)?, call, errors)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn decodes_regions(&self) -> bool {
        true
    }

    fn crop_window(&self, params: &Params) -> Option<Result<Window>> {
        Some(self.window(params))
    }
}

impl CenterCrop {
    fn window(&self, p: &Params) -> Result<Window> {
        Ok(Window::Centre {
            width: p.size("width")?,
            height: p.size("height")?,
        })
    }
}

/// An operator that maps each image through an `image` crate function of the options.
macro_rules! dynamic_image_operator {
    ($(#[$doc:meta])* $ty:ident, $name:literal, [$($param:expr),*], |$params:ident| $check:block, |$img:ident, $p:ident| $body:block) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl Operator for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn params(&self) -> &'static [Param] {
                const P: &[Param] = &[$($param,)* Param::ON_ERROR];
                P
            }

            fn result_field(&self, inputs: &[FieldRef], $params: &Params) -> Result<Field> {
                let mode: Option<Option<ImageMode>> = $check;
                image_result(self.name(), &inputs[0], mode.unwrap_or_else(|| input_mode(&inputs[0])))
            }

            fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
                let $p = call.params;
                map_images(call, errors, codec::DEFAULT_MAX_PIXELS, |pixels: Pixels<'_>, out: &mut ImageBuilder| {
                    let $img = pixels.into_dynamic();
                    let result: std::result::Result<DynamicImage, String> = $body;
                    out.append_dynamic(result?);
                    Ok(())
                }, self.name())
            }

            fn batch_size(&self) -> Option<usize> {
                Some(IMAGE_BATCH_ROWS)
            }

            fn fuses_image_decode(&self) -> bool {
                true
            }
        }
    };
}

dynamic_image_operator!(
    /// `image_flip(img, horizontal, vertical, on_error)`: mirror left–right and/or top–bottom.
    Flip, "image_flip",
    [Param::optional("horizontal", ParamKind::Bool, "true"), Param::optional("vertical", ParamKind::Bool, "false")],
    |params| { params.bool("horizontal")?; params.bool("vertical")?; None },
    |img, p| {
        let mut img = img;
        if p.bool("horizontal").map_err(|e| e.to_string())? {
            img = img.fliph();
        }
        if p.bool("vertical").map_err(|e| e.to_string())? {
            img = img.flipv();
        }
        Ok(img)
    }
);

fn check_degrees(params: &Params) -> Result<i64> {
    let d = params.int("degrees")?.rem_euclid(360);
    if d % 90 != 0 {
        return Err(RilletError::invalid_argument(format!(
            "rotate takes 90, 180 or 270 degrees, not {}",
            params.int("degrees")?
        )));
    }
    Ok(d)
}

dynamic_image_operator!(
    /// `image_rotate(img, degrees, on_error)`: rotate clockwise by 90, 180 or 270 degrees.
    Rotate, "image_rotate",
    [Param::required("degrees", ParamKind::Int)],
    |params| { check_degrees(params)?; None },
    |img, p| {
        Ok(match check_degrees(p).map_err(|e| e.to_string())? {
            90 => img.rotate90(),
            180 => img.rotate180(),
            270 => img.rotate270(),
            _ => img,
        })
    }
);

fn parse_mode(params: &Params) -> Result<ImageMode> {
    params
        .str("mode")?
        .parse()
        .map_err(|e: arrow::error::ArrowError| RilletError::invalid_argument(e.to_string()))
}

dynamic_image_operator!(
    /// `image_convert_mode(img, mode, on_error)`: convert to RGB, RGBA, L, LA, RGB16, … (grey
    /// from 8-bit colour uses Pillow's luma weights).
    ConvertMode, "image_convert_mode",
    [Param::required("mode", ParamKind::Str)],
    |params| { Some(Some(parse_mode(params)?)) },
    |img, p| { Ok(convert(img, parse_mode(p).map_err(|e| e.to_string())?)) }
);

dynamic_image_operator!(
    /// `image_blur(img, sigma, on_error)`: Gaussian blur.
    Blur, "image_blur",
    [Param::required("sigma", ParamKind::Float)],
    |params| {
        let s = params.float("sigma")?;
        if s > MAX_SIGMA {
            return Err(RilletError::invalid_argument(format!(
                "image_blur: sigma must be at most {MAX_SIGMA} (a kernel about 6 sigma wide), \
                 not {s}"
            )));
        }
        if !(s > 0.0 && s.is_finite()) {
            return Err(RilletError::invalid_argument(format!("sigma must be positive, not {s}")));
        }
        None
    },
    |img, p| { Ok(img.blur(p.float("sigma").map_err(|e| e.to_string())? as f32)) }
);

/// Blend every colour channel of `img` (8-bit) towards `degenerate(pixel)` like Pillow's
/// `ImageEnhance`: `out = degenerate + factor * (pixel - degenerate)`.
fn enhance(data: &mut [u8], channels: usize, factor: f64, degenerate: impl Fn(&[u8]) -> [f64; 3]) {
    let colour = if channels >= 3 { 3 } else { 1 };
    for px in data.chunks_exact_mut(channels) {
        let base = degenerate(px);
        for c in 0..colour {
            // Truncated, as Pillow's blend does.
            let v = base[c] + factor * (px[c] as f64 - base[c]);
            px[c] = v.clamp(0.0, 255.0) as u8;
        }
    }
}

fn adjust(
    img: DynamicImage,
    brightness: f64,
    contrast: f64,
    saturation: f64,
) -> std::result::Result<DynamicImage, String> {
    let Some(mode) = super::array::mode_of(&img).filter(|m| m.element_type() == ElementType::U8)
    else {
        return Err("adjust supports 8-bit images; convert_mode first".to_string());
    };
    let channels = mode.channels();
    let (w, h) = (img.width(), img.height());
    let mut data = img.into_bytes();
    let grey = |px: &[u8]| {
        if channels >= 3 {
            pillow_luma(px[0], px[1], px[2]) as f64
        } else {
            px[0] as f64
        }
    };
    if brightness != 1.0 {
        enhance(&mut data, channels, brightness, |_| [0.0; 3]);
    }
    if contrast != 1.0 {
        let n = (w as usize * h as usize).max(1) as f64;
        let mean = (data.chunks_exact(channels).map(grey).sum::<f64>() / n + 0.5).floor();
        enhance(&mut data, channels, contrast, |_| [mean; 3]);
    }
    if saturation != 1.0 && channels >= 3 {
        enhance(&mut data, channels, saturation, |px| [grey(px); 3]);
    }
    let view = ImageView {
        width: w,
        height: h,
        mode,
        data: &data,
    };
    Ok(view.to_dynamic())
}

dynamic_image_operator!(
    /// `image_adjust(img, brightness, contrast, saturation, on_error)`: factors as in
    /// Pillow's `ImageEnhance` (1.0 leaves the image unchanged, 0.0 gives black, flat grey
    /// or greyscale respectively). 8-bit images.
    Adjust, "image_adjust",
    [
        Param::optional("brightness", ParamKind::Float, "1.0"),
        Param::optional("contrast", ParamKind::Float, "1.0"),
        Param::optional("saturation", ParamKind::Float, "1.0")
    ],
    |params| {
        for name in ["brightness", "contrast", "saturation"] {
            let f = params.float(name)?;
            if !(f >= 0.0 && f.is_finite()) {
                return Err(RilletError::invalid_argument(format!("{name} must be a factor >= 0, not {f}")));
            }
        }
        None
    },
    |img, p| {
        let get = |n| p.float(n).map_err(|e| e.to_string());
        adjust(img, get("brightness")?, get("contrast")?, get("saturation")?)
    }
);

/// The bounding box `(x, y, w, h)` of pixels brighter than `threshold` in any colour
/// channel, or `None` if every pixel is dark.
fn content_box(view: &ImageView<'_>, threshold: u8) -> Option<(u32, u32, u32, u32)> {
    let c = view.mode.channels();
    let colour = if c >= 3 { 3 } else { 1 };
    let (w, h) = (view.width as usize, view.height as usize);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let px = &view.data[(y * w + x) * c..(y * w + x) * c + colour];
            if px.iter().any(|v| *v > threshold) {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    (x0 != usize::MAX).then(|| {
        (
            x0 as u32,
            y0 as u32,
            (x1 - x0 + 1) as u32,
            (y1 - y0 + 1) as u32,
        )
    })
}

/// `image_crop_black_border(img, threshold, on_error)`: trim the dark frame around an
/// image (rows and columns whose every pixel is at or below `threshold`). An all-dark
/// image is returned unchanged. 8-bit images.
#[derive(Debug)]
pub struct CropBlackBorder;

impl Operator for CropBlackBorder {
    fn name(&self) -> &'static str {
        "image_crop_black_border"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("threshold", ParamKind::Int, "10"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        params.int("threshold")?;
        image_result(self.name(), &inputs[0], input_mode(&inputs[0]))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let threshold = call.params.int("threshold")?.clamp(0, 255) as u8;
        map_images(
            call,
            errors,
            codec::DEFAULT_MAX_PIXELS,
            |pixels, out| {
                let view = pixels.view();
                require_8_bit("crop_black_border", view.mode)?;
                match content_box(&view, threshold) {
                    Some((x, y, w, h)) => crop_view(&view, x, y, w, h, out),
                    None => {
                        out.append(&view);
                        Ok(())
                    }
                }
            },
            self.name(),
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}

/// `image_to_tensor(img, dtype, layout, mean, std, on_error)`: pixels as a tensor of shape
/// `[C, H, W]` (`layout="CHW"`) or `[H, W, C]`. With `dtype="f32"` (or `"f64"`) values are
/// scaled to [0, 1] and then normalised per channel, `(x - mean[c]) / std[c]`; with
/// `dtype="u8"` the 8-bit values are kept as they are.
#[derive(Debug)]
pub struct ToTensor;

fn tensor_dtype(params: &Params) -> Result<ElementType> {
    let dtype: ElementType = params
        .str("dtype")?
        .parse()
        .map_err(|e: arrow::error::ArrowError| RilletError::invalid_argument(e.to_string()))?;
    match dtype {
        ElementType::F32 | ElementType::F64 | ElementType::U8 => Ok(dtype),
        other => Err(RilletError::invalid_argument(format!(
            "to_tensor produces f32, f64 or u8, not {other}"
        ))),
    }
}

fn chw(params: &Params) -> Result<bool> {
    match params.str("layout")?.to_ascii_uppercase().as_str() {
        "CHW" => Ok(true),
        "HWC" => Ok(false),
        other => Err(RilletError::invalid_argument(format!(
            "layout must be \"CHW\" or \"HWC\", not {other:?}"
        ))),
    }
}

impl Operator for ToTensor {
    fn name(&self) -> &'static str {
        "image_to_tensor"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("dtype", ParamKind::Str, "f32"),
            Param::optional("layout", ParamKind::Str, "CHW"),
            Param::optional("mean", ParamKind::FloatList, ""),
            Param::optional("std", ParamKind::FloatList, ""),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        let dtype = tensor_dtype(params)?;
        chw(params)?;
        let (mean, std) = (params.float_list("mean")?, params.float_list("std")?);
        if std.contains(&0.0) {
            return Err(RilletError::invalid_argument("std values must not be 0"));
        }
        if dtype == ElementType::U8 && !(mean.is_empty() && std.is_empty()) {
            return Err(RilletError::invalid_argument(
                "mean/std need a float dtype (f32 or f64)",
            ));
        }
        Ok(TensorType::new(dtype, None).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let dtype = tensor_dtype(call.params)?;
        let planar = chw(call.params)?;
        let (mean, std) = (
            call.params.float_list("mean")?,
            call.params.float_list("std")?,
        );
        let mut input = ImageInput::of_call(self.name(), call)?;
        if let ImageInput::Decoded(column) = &input
            && dtype == ElementType::U8
            && !planar
            && mean.is_empty()
            && std.is_empty()
            && let Some(tensors) = shared_hwc_tensors(column)
        {
            return Ok(tensors);
        }
        let mut tensors = TensorBuilder::new(dtype, call.rows);
        for row in 0..call.rows {
            let append = |pixels: Pixels<'_>| {
                append_tensor(&pixels.view(), planar, &mean, &std, &mut tensors)
            };
            let appended = match input.with_pixels(row, codec::DEFAULT_MAX_PIXELS, append) {
                Ok(Some(result)) => {
                    result.map_err(|reason| format!("{}: {reason}", input.identity(row)))
                }
                Ok(None) => Ok(false),
                Err(RowFailure::Data(reason)) => Err(reason),
                Err(RowFailure::Infrastructure(e)) => return Err(e),
            };
            let valid_row = appended.unwrap_or_else(|reason| {
                errors.fail(row, reason);
                false
            });
            if !valid_row {
                tensors.append_null();
            }
        }
        Ok(tensors.finish())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}

/// 8-bit HWC tensors of every image in `column` that share its pixel buffers: an 8-bit image
/// already is its HWC tensor, byte for byte. `None` when a row is not a valid 8-bit image
/// (the copying path then reports it).
fn shared_hwc_tensors(column: &ImageColumn<'_>) -> Option<ArrayRef> {
    let mut shapes = ListBuilder::with_capacity(UInt32Builder::new(), column.len());
    for row in 0..column.len() {
        match column.get(row) {
            Ok(None) => shapes.append(true),
            Ok(Some(view)) if view.mode.element_type() == ElementType::U8 => {
                let values = shapes.values();
                values.append_value(view.height);
                values.append_value(view.width);
                values.append_value(view.mode.channels() as u32);
                shapes.append(true);
            }
            _ => return None,
        }
    }
    let DataType::Struct(fields) = TensorType::storage_type_of(ElementType::U8, None) else {
        unreachable!("variable-shape tensors are structs")
    };
    let data: ArrayRef = Arc::new(column.pixel_buffers().clone());
    let tensors = StructArray::try_new(
        fields,
        vec![data, Arc::new(shapes.finish())],
        column.nulls().cloned(),
    );
    tensors.ok().map(|t| Arc::new(t) as ArrayRef)
}

/// A row error unless `mode` has 8-bit channels (for operators that only handle those).
fn require_8_bit(operator: &str, mode: ImageMode) -> std::result::Result<(), String> {
    if mode.element_type() == ElementType::U8 {
        Ok(())
    } else {
        Err(format!(
            "{operator} supports 8-bit images; this one is {mode}"
        ))
    }
}

/// Append one image's tensor; `Ok(true)` when appended, `Err` (a reason, nothing appended)
/// when the options do not fit this image.
fn append_tensor(
    view: &ImageView<'_>,
    planar: bool,
    mean: &[f64],
    std: &[f64],
    tensors: &mut TensorBuilder,
) -> std::result::Result<bool, String> {
    let dtype = tensors.dtype();
    let c = view.mode.channels();
    let per_channel = |list: &[f64], default: f64, name: &str| match list.len() {
        0 => Ok(vec![default; c]),
        1 => Ok(vec![list[0]; c]),
        n if n == c => Ok(list.to_vec()),
        n => Err(format!("{name} has {n} values; the image has {c} channels")),
    };
    let (m, s) = (
        per_channel(mean, 0.0, "mean")?,
        per_channel(std, 1.0, "std")?,
    );
    if dtype == ElementType::U8 && view.mode.element_type() != ElementType::U8 {
        return Err(format!(
            "dtype u8 needs an 8-bit image; this one is {}",
            view.mode
        ));
    }
    let (h, w) = (view.height as usize, view.width as usize);
    let shape = if planar { [c, h, w] } else { [h, w, c] };
    tensors.append_with(&shape, |out| {
        append_pixels(view, dtype, planar, &m, &s, out)
    });
    Ok(true)
}

/// Append an image's pixels to `out` as little-endian `dtype` values (u8 as they are; floats
/// scaled to [0, 1], then normalised by `mean` and `std` per channel), HWC or CHW.
fn append_pixels(
    view: &ImageView<'_>,
    dtype: ElementType,
    planar: bool,
    mean: &[f64],
    std: &[f64],
    out: &mut Vec<u8>,
) {
    let c = view.mode.channels();
    let n = view.width as usize * view.height as usize;
    let (scale, values): (f64, Box<dyn Fn(usize) -> f64 + '_>) = match view.mode.element_type() {
        ElementType::U16 => (
            65535.0,
            Box::new(|i| u16::from_ne_bytes([view.data[2 * i], view.data[2 * i + 1]]) as f64),
        ),
        ElementType::F32 => (
            1.0,
            Box::new(|i| {
                f32::from_ne_bytes(view.data[4 * i..4 * i + 4].try_into().unwrap_or([0; 4])) as f64
            }),
        ),
        _ => (255.0, Box::new(|i| view.data[i] as f64)),
    };
    let order = |k: usize| if planar { (k % n) * c + k / n } else { k };
    let normalised = |k: usize| {
        let i = order(k);
        let ch = i % c;
        (values(i) / scale - mean[ch]) / std[ch]
    };
    match dtype {
        // HWC u8 is the image's own layout: one copy.
        ElementType::U8 if !planar => out.extend_from_slice(&view.data[..n * c]),
        ElementType::U8 => out.extend((0..n * c).map(|k| view.data[order(k)])),
        ElementType::F64 => {
            for k in 0..n * c {
                out.extend_from_slice(&normalised(k).to_le_bytes());
            }
        }
        _ => {
            for k in 0..n * c {
                out.extend_from_slice(&(normalised(k) as f32).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this thread has a spare resizer, leaving it in place.
    fn spare_resizer() -> bool {
        SPARE_RESIZER.with(|spare| {
            let resizer = spare.take();
            let kept = resizer.is_some();
            spare.set(resizer);
            kept
        })
    }

    #[test]
    fn a_thread_keeps_its_resizer_unless_it_served_a_huge_image() {
        let pixels = vec![7u8; 64 * 48 * 3];
        let src = ImageView {
            width: 64,
            height: 48,
            mode: ImageMode::Rgb,
            data: &pixels,
        };
        let mut out = vec![0u8; 16 * 12 * 3];
        let bilinear = ResizeAlg::Convolution(FilterType::Bilinear);
        let mut first = ThreadResizer::take();
        resize_into(&mut first, &src, 16, 12, bilinear, None, &mut out).unwrap();
        assert!(out.iter().all(|v| *v == 7), "a flat image stays flat");
        assert_eq!(first.largest, 48 * 16 * 3);
        // While the thread's resizer is out, a second caller gets a new one.
        assert!(!spare_resizer());
        drop(first);
        assert!(spare_resizer(), "the next call on this thread reuses it");
        let mut huge = ThreadResizer::take();
        assert!(!spare_resizer());
        huge.largest = spare::MAX_KEPT_BYTES + 1;
        drop(huge);
        assert!(
            !spare_resizer(),
            "a resizer grown for a huge image is not kept"
        );
    }
}
