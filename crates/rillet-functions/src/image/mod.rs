//! Image operators: decode and encode, geometric and colour transforms, tensors, metadata,
//! validity, perceptual hashes and quality measures.
//!
//! Every operator that takes an image accepts a decoded `Image` column or encoded content
//! (bytes, a `File`, a path), decoding on the fly in the latter case.

pub mod array;
pub mod codec;
mod draw;
mod measure;
mod spare;
pub(crate) mod transform;
mod turbo;
mod webp;

pub(crate) use transform::crop_window_of;
pub use transform::{
    Letterboxed, Window, fitted_size, letterbox_rgb8, letterbox_rgb8_of, resize_rgb8,
};

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use image::DynamicImage;
use rillet_common::types::{ImageMode, ImageType, display_type};
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use self::array::{ImageBuilder, ImageColumn, ImageView, declared_mode, is_image};
pub(crate) use crate::input::RowFailure;
use crate::input::{EncodedColumn, is_encoded_input};
use crate::operator::{
    Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors, row_value,
};

/// Rows per call for operators that hold decoded images: enough to amortise the call,
/// few enough that a batch of large photos stays within a few hundred MB.
pub(crate) const IMAGE_BATCH_ROWS: usize = 16;

/// Every image operator, ready to register.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    let mut all: Vec<Arc<dyn ArrayFunction>> = vec![
        Arc::new(OperatorFunction::new(Decode)),
        Arc::new(OperatorFunction::new(Encode)),
        Arc::new(OperatorFunction::new(ConvertFormat)),
    ];
    all.extend(transform::functions());
    all.extend(measure::functions());
    all.extend(draw::functions());
    all
}

/// An image of one row: borrowed from a decoded column or decoded from bytes.
pub enum Pixels<'a> {
    /// Borrowed from a decoded `Image` column.
    View(ImageView<'a>),
    /// Decoded from encoded content for this row.
    Owned(DynamicImage),
    /// Decoded from encoded content at a reduced size (the operator shrinks it anyway),
    /// with the upright size of the full image and where it lies in the pixels.
    Reduced(codec::Reduced),
    /// Only the window a cropping operator keeps, decoded alone from a JPEG (see
    /// [`ImageInput::cropping`]); its size is the window's.
    Window(DynamicImage),
}

impl Pixels<'_> {
    /// Borrow as a view.
    pub fn view(&self) -> ImageView<'_> {
        match self {
            Self::View(v) => *v,
            Self::Owned(image)
            | Self::Window(image)
            | Self::Reduced(codec::Reduced { image, .. }) => {
                // Decoded images are always in one of Rillet's modes (see
                // `codec::decode_reusing`).
                let mode = array::mode_of(image).unwrap_or(ImageMode::Rgba);
                ImageView {
                    width: image.width(),
                    height: image.height(),
                    mode,
                    data: image.as_bytes(),
                }
            }
        }
    }

    /// As an `image` crate image (copies a borrowed view).
    pub fn into_dynamic(self) -> DynamicImage {
        match self {
            Self::View(v) => v.to_dynamic(),
            Self::Owned(image)
            | Self::Window(image)
            | Self::Reduced(codec::Reduced { image, .. }) => array::dynamic_mode(image).1,
        }
    }

    /// Width and height of the image as stored: for a reduced decode, of the full image,
    /// the size results (box coordinates, scales) refer to.
    pub fn original_size(&self) -> (u32, u32) {
        match self {
            Self::Reduced(reduced) => reduced.full,
            other => {
                let view = other.view();
                (view.width, view.height)
            }
        }
    }

    /// Where the image lies in [`view`](Self::view)'s pixels when it was decoded reduced
    /// (see [`codec::Content`]); `None` when it fills them.
    pub fn content(&self) -> Option<codec::Content> {
        match self {
            Self::Reduced(reduced) => Some(reduced.content),
            _ => None,
        }
    }
}

/// An image input column of either form.
pub(crate) enum ImageInput<'a> {
    Decoded(ImageColumn<'a>),
    Encoded {
        column: EncodedColumn<'a>,
        /// The mode to convert to (from a fused `image_decode`); `None` keeps the file's.
        mode: Option<ImageMode>,
        /// The pixel cap of a fused `image_decode`, over the operator's own.
        max_pixels: Option<u64>,
        /// Pixels of the row being worked on, reused from row to row.
        scratch: codec::Scratch,
        /// How the operator shrinks each image, if it does: JPEGs much larger than the
        /// result are decoded at a reduced size.
        shrink: Option<codec::Shrink>,
        /// The window the operator keeps of each image, if it only crops: of a JPEG, only
        /// that region is decoded.
        window: Option<Window>,
    },
}

impl<'a> ImageInput<'a> {
    /// The first input of `call`, decoded with the options of a fused `image_decode` when
    /// the call has one (see [`Call::decode`](crate::operator::Call::decode)).
    pub(crate) fn of_call(operator: &str, call: &Call<'a>) -> Result<Self> {
        let array = &call.inputs[0];
        let field = Field::new("input", array.data_type().clone(), true);
        if call.decode.is_none() && is_image(&field) {
            return Ok(Self::Decoded(ImageColumn::try_new(array)?));
        }
        let (mode, max_pixels) = match call.decode {
            Some(decode) => (optional_mode(decode, "mode")?, Some(max_pixels(decode)?)),
            None => (None, None),
        };
        Ok(Self::Encoded {
            column: EncodedColumn::try_new(operator, array, "an Image or encoded image")?,
            mode,
            max_pixels,
            scratch: codec::Scratch::take(),
            shrink: None,
            window: None,
        })
    }

    /// Declare that the operator keeps only `window` of every image, so of a JPEG only
    /// that region may be decoded ([`Pixels::Window`]).
    pub(crate) fn cropping(mut self, to: Window) -> Self {
        if let Self::Encoded { window, .. } = &mut self {
            *window = Some(to);
        }
        self
    }

    /// Declare how the operator shrinks every image, so large JPEGs may be decoded at a
    /// reduced size.
    pub(crate) fn shrinking(mut self, how: codec::Shrink) -> Self {
        if let Self::Encoded { shrink, .. } = &mut self {
            *shrink = Some(how);
        }
        self
    }

    /// `f` of the image of `row` (`Ok(None)` for a null row), decoding encoded content
    /// (capped at `max_pixels`). The image lives for the call of `f` only.
    pub(crate) fn with_pixels<R>(
        &mut self,
        row: usize,
        max_pixels: u64,
        f: impl FnOnce(Pixels<'_>) -> R,
    ) -> std::result::Result<Option<R>, RowFailure> {
        match self {
            Self::Decoded(column) => match column.get(row) {
                Ok(view) => Ok(view.map(|v| f(Pixels::View(v)))),
                Err(reason) => Err(RowFailure::Data(reason)),
            },
            Self::Encoded {
                column,
                mode,
                max_pixels: decode_cap,
                scratch,
                shrink,
                window,
            } => {
                let Some(bytes) = column.get(row)? else {
                    return Ok(None);
                };
                let cap = decode_cap.unwrap_or(max_pixels);
                if let Some(image) =
                    window.and_then(|w| codec::decode_jpeg_window(&bytes, w, *mode, cap))
                {
                    let bytes = image.as_bytes().len();
                    rillet_operator::memory::charge_call_transient_memory(bytes);
                    return Ok(Some(f(Pixels::Window(image))));
                }
                if let Some(reduced) =
                    shrink.and_then(|how| codec::decode_reduced(&bytes, how, *mode, cap))
                {
                    let bytes = reduced.image.as_bytes().len();
                    rillet_operator::memory::charge_call_transient_memory(bytes);
                    return Ok(Some(f(Pixels::Reduced(reduced))));
                }
                match codec::decode_reusing(&bytes, *mode, cap, scratch) {
                    Ok(pixels) => Ok(Some(f(pixels))),
                    Err(reason) => Err(RowFailure::Data(format!(
                        "{}: {reason}",
                        column.identity(row)
                    ))),
                }
            }
        }
    }

    /// Identity of `row` for messages.
    pub(crate) fn identity(&self, row: usize) -> String {
        match self {
            Self::Decoded(_) => format!("row {row}"),
            Self::Encoded { column, .. } => column.identity(row),
        }
    }
}

/// Check that `field` is an image input (decoded or encoded).
pub fn expect_image(operator: &str, field: &Field) -> Result<()> {
    if is_image(field) || is_encoded_input(field) {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: input must be an Image, encoded image bytes, a File or a path; column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// The mode rows of `field` will have when decoded: known for decoded columns of one mode.
pub(crate) fn input_mode(field: &Field) -> Option<ImageMode> {
    if is_image(field) {
        declared_mode(field)
    } else {
        None
    }
}

/// Run `f` on every row's image, building an Image column; data problems null the row.
pub(crate) fn map_images(
    call: &Call<'_>,
    errors: &mut RowErrors,
    max_pixels: u64,
    f: impl FnMut(Pixels<'_>, &mut ImageBuilder) -> std::result::Result<(), String>,
    operator: &str,
) -> Result<ArrayRef> {
    map_images_within(call, errors, max_pixels, None, f, operator)
}

/// [`map_images`] for an operator that shrinks every image to fit within `fit_within`
/// (see [`ImageInput::fitting_within`]).
pub(crate) fn map_images_within(
    call: &Call<'_>,
    errors: &mut RowErrors,
    max_pixels: u64,
    shrink: Option<codec::Shrink>,
    f: impl FnMut(Pixels<'_>, &mut ImageBuilder) -> std::result::Result<(), String>,
    operator: &str,
) -> Result<ArrayRef> {
    let mut input = ImageInput::of_call(operator, call)?;
    if let Some(how) = shrink {
        input = input.shrinking(how);
    }
    map_input(input, call, errors, max_pixels, f)
}

/// [`map_images`] over an input already declared (see [`ImageInput::shrinking`] and
/// [`ImageInput::cropping`]).
pub(crate) fn map_input(
    mut input: ImageInput<'_>,
    call: &Call<'_>,
    errors: &mut RowErrors,
    max_pixels: u64,
    mut f: impl FnMut(Pixels<'_>, &mut ImageBuilder) -> std::result::Result<(), String>,
) -> Result<ArrayRef> {
    let mut builder = ImageBuilder::with_capacity(call.rows);
    for row in 0..call.rows {
        let outcome = input.with_pixels(row, max_pixels, |pixels| f(pixels, &mut builder));
        close_image_row(&mut builder, errors, row, outcome, || input.identity(row))?;
    }
    Ok(builder.finish())
}

/// Finish row `row` of an Image result from what computing it gave: appended already
/// (`Ok(Some(Ok(())))`), a null row, or a data problem (the row is null and its reason
/// recorded, `f`'s own reasons prefixed with `identity()`). An infrastructure problem
/// fails the call.
pub(crate) fn close_image_row(
    builder: &mut ImageBuilder,
    errors: &mut RowErrors,
    row: usize,
    outcome: std::result::Result<Option<std::result::Result<(), String>>, RowFailure>,
    identity: impl FnOnce() -> String,
) -> Result<()> {
    match outcome {
        Ok(Some(Ok(()))) => return Ok(()),
        Ok(None) => {}
        Ok(Some(Err(reason))) => errors.fail(row, format!("{}: {reason}", identity())),
        Err(RowFailure::Data(reason)) => errors.fail(row, reason),
        Err(RowFailure::Infrastructure(e)) => return Err(e),
    }
    builder.append_null();
    Ok(())
}

/// One value per row computed by `f` from the row's image. Null rows stay null; data
/// problems (reading, decoding, or `f`'s own `Err`) null the row and record the reason.
/// Encoded rows are decoded one at a time (and, when an `image_decode` call was fused in,
/// with its options), so only one full-size image lives at once.
pub fn image_values<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    f: impl FnMut(Pixels<'_>) -> std::result::Result<T, String>,
) -> Result<Vec<Option<T>>> {
    image_values_within(operator, call, errors, None, f)
}

/// [`image_values`] for an operator that shrinks every image to fit within `fit_within`
/// (keeping its aspect): JPEGs at least twice that size are decoded at 1/2, 1/4 or 1/8
/// size, and [`Pixels::original_size`] gives the full image's size for results.
pub fn image_values_within<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    fit_within: Option<(u32, u32)>,
    mut f: impl FnMut(Pixels<'_>) -> std::result::Result<T, String>,
) -> Result<Vec<Option<T>>> {
    let mut input = ImageInput::of_call(operator, call)?;
    if let Some(size) = fit_within {
        input = input.shrinking(codec::Shrink::FitWithin(size.0, size.1));
    }
    let mut out = Vec::with_capacity(call.rows);
    for row in 0..call.rows {
        let computed = input.with_pixels(row, codec::DEFAULT_MAX_PIXELS, &mut f);
        out.push(row_value(row, errors, computed, || input.identity(row))?);
    }
    Ok(out)
}

/// The `max_pixels` option shared by decoding operators.
pub(crate) const MAX_PIXELS: Param = Param::optional("max_pixels", ParamKind::Int, "134217728");

pub(crate) fn max_pixels(params: &Params) -> Result<u64> {
    let v = params.int("max_pixels")?;
    u64::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
        RilletError::invalid_argument(format!("max_pixels must be positive, not {v}"))
    })
}

fn optional_mode(params: &Params, name: &str) -> Result<Option<ImageMode>> {
    match params.str(name)? {
        "" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|e: arrow::error::ArrowError| RilletError::invalid_argument(e.to_string())),
    }
}

/// The options of an `image_decode` call from its literal option values.
pub(crate) fn decode_params(
    literals: &[Option<datafusion::common::ScalarValue>],
) -> Result<Params> {
    let params = Params::parse(Decode.name(), Decode.params(), literals)?;
    max_pixels(&params)?;
    optional_mode(&params, "mode")?;
    Ok(params)
}

/// The field `image_decode` with these options returns for `input` (an error unless
/// `input` is encoded images).
pub(crate) fn decoded_field(input: &FieldRef, decode: &Params) -> Result<FieldRef> {
    Decode
        .result_field(std::slice::from_ref(input), decode)
        .map(Arc::new)
}

/// `image_decode(x, mode, max_pixels, on_error)`: bytes / File / path → Image. Applies EXIF
/// orientation; `mode` converts (e.g. `"RGB"`); images over `max_pixels` are bad data.
#[derive(Debug)]
pub struct Decode;

impl Operator for Decode {
    fn name(&self) -> &'static str {
        "image_decode"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("mode", ParamKind::Str, ""),
            MAX_PIXELS,
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        if !is_encoded_input(&inputs[0]) {
            return Err(crate::input::not_encoded(
                self.name(),
                &inputs[0],
                "encoded image",
            ));
        }
        max_pixels(params)?;
        Ok(ImageType::new(optional_mode(params, "mode")?).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let mode = optional_mode(call.params, "mode")?;
        let cap = max_pixels(call.params)?;
        let input = EncodedColumn::try_new(self.name(), &call.inputs[0], "encoded image")?;
        let mut builder = ImageBuilder::with_capacity(call.rows);
        for row in 0..call.rows {
            match input.get(row) {
                Ok(None) => builder.append_null(),
                Ok(Some(bytes)) => {
                    if let Err(reason) = codec::decode_into(&bytes, mode, cap, &mut builder) {
                        errors.fail(row, format!("{}: {reason}", input.identity(row)));
                        builder.append_null();
                    }
                }
                Err(RowFailure::Data(reason)) => {
                    errors.fail(row, reason);
                    builder.append_null();
                }
                Err(RowFailure::Infrastructure(e)) => return Err(e),
            }
        }
        Ok(builder.finish())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }
}

fn encode_rows(call: &Call<'_>, errors: &mut RowErrors, operator: &str) -> Result<ArrayRef> {
    let format =
        codec::parse_format(call.params.str("format")?).map_err(RilletError::invalid_argument)?;
    let quality = call.params.int("quality")?.clamp(1, 100) as u8;
    let encoded = image_values(operator, call, errors, |pixels| {
        codec::encode(&pixels.into_dynamic(), format, quality)
    })?;
    Ok(Arc::new(encoded.into_iter().collect::<BinaryArray>()))
}

fn check_format(params: &Params) -> Result<()> {
    codec::parse_format(params.str("format")?)
        .map(drop)
        .map_err(RilletError::invalid_argument)?;
    let q = params.int("quality")?;
    if !(1..=100).contains(&q) {
        return Err(RilletError::invalid_argument(format!(
            "quality must be between 1 and 100, not {q}"
        )));
    }
    Ok(())
}

/// `image_encode(img, format, quality, on_error)`: Image → PNG / JPEG / WebP / … bytes.
#[derive(Debug)]
pub struct Encode;

impl Operator for Encode {
    fn name(&self) -> &'static str {
        "image_encode"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("format", ParamKind::Str, "png"),
            Param::optional("quality", ParamKind::Int, "90"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        check_format(params)?;
        Ok(Field::new(self.name(), DataType::Binary, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        encode_rows(call, errors, self.name())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}

/// `image_convert_format(bytes, format, quality, on_error)`: re-encode encoded images
/// (e.g. PNG → JPEG at quality 80) in one step.
#[derive(Debug)]
pub struct ConvertFormat;

impl Operator for ConvertFormat {
    fn name(&self) -> &'static str {
        "image_convert_format"
    }

    fn params(&self) -> &'static [Param] {
        Encode.params()
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        if !is_encoded_input(&inputs[0]) {
            return Err(crate::input::not_encoded(
                self.name(),
                &inputs[0],
                "encoded image",
            ));
        }
        check_format(params)?;
        Ok(Field::new(self.name(), DataType::Binary, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        encode_rows(call, errors, self.name())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, BinaryArray, StringArray};
    use arrow::datatypes::UInt32Type;

    use super::*;

    fn function(name: &str) -> Arc<dyn ArrayFunction> {
        crate::functions()
            .into_iter()
            .find(|f| f.name() == name)
            .expect("registered")
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        codec::encode(&DynamicImage::ImageRgb8(image), image::ImageFormat::Png, 90).unwrap()
    }

    fn literal(value: &str, rows: usize) -> ArrayRef {
        Arc::new(StringArray::from(vec![value; rows]))
    }

    #[test]
    fn decode_then_resize_keeps_rows_and_nulls_bad_ones() {
        let good = png(40, 30);
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(good.as_slice()),
            Some(&good[..20]),
            None,
        ]));
        let decoded = function("image_decode").call(&[input], 3).unwrap();
        assert_eq!(decoded.null_count(), 2);
        let width: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![8; 3]));
        let height: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![6; 3]));
        let resized = function("image_resize")
            .call(&[decoded, width, height], 3)
            .unwrap();
        let widths = function("image_width").call(&[resized], 3).unwrap();
        let widths = widths.as_primitive::<UInt32Type>();
        assert_eq!(widths.iter().collect::<Vec<_>>(), vec![Some(8), None, None]);
    }

    #[test]
    fn on_error_column_carries_the_reason_and_raise_names_the_row() {
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![b"junk".as_slice()]));
        let decode = function("image_decode");
        let out = decode
            .call(
                &[
                    input.clone(),
                    literal("", 1),
                    Arc::new(arrow::array::Int64Array::from(vec![1000])),
                    literal("column", 1),
                ],
                1,
            )
            .unwrap();
        let errors = out
            .as_struct()
            .column_by_name("error")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string();
        assert!(errors.contains("not a recognised image format"), "{errors}");
        let err = decode
            .call(
                &[
                    input,
                    literal("", 1),
                    Arc::new(arrow::array::Int64Array::from(vec![1000])),
                    literal("raise", 1),
                ],
                1,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("image_decode failed on row 0"),
            "{err}"
        );
    }

    #[test]
    fn options_are_checked_at_planning_time() {
        let resize = function("image_resize");
        let field: FieldRef = Arc::new(Field::new("b", DataType::Binary, true));
        let w = datafusion::common::ScalarValue::Int64(Some(0));
        let h = datafusion::common::ScalarValue::Int64(Some(10));
        let err = resize
            .return_field(
                &[field.clone(), field.clone(), field.clone()],
                &[None, Some(&w), Some(&h)],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("width must be a whole number of pixels from 1"),
            "{err}"
        );
        let int: FieldRef = Arc::new(Field::new("n", DataType::Int64, true));
        let w = datafusion::common::ScalarValue::Int64(Some(10));
        let err = resize
            .return_field(&[int, field.clone(), field], &[None, Some(&w), Some(&h)])
            .unwrap_err();
        assert!(err.to_string().contains("input must be an Image"), "{err}");
    }

    fn gray_png(width: u32, height: u32) -> Vec<u8> {
        let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x * y) as u8]));
        codec::encode(
            &DynamicImage::ImageLuma8(image),
            image::ImageFormat::Png,
            90,
        )
        .unwrap()
    }

    /// Arguments of one call: `input` and each option repeated over `rows`.
    fn call_args(input: &ArrayRef, options: &[&ScalarValue], rows: usize) -> Vec<ArrayRef> {
        std::iter::once(Ok(input.clone()))
            .chain(options.iter().map(|v| v.to_array_of_size(rows)))
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    fn with_input<'a>(options: &[&'a ScalarValue]) -> Vec<Option<&'a ScalarValue>> {
        std::iter::once(None)
            .chain(options.iter().map(|v| Some(*v)))
            .collect()
    }

    use datafusion::common::ScalarValue;

    #[test]
    fn a_thread_keeps_one_decode_buffer_from_call_to_call() {
        let mut first = codec::Scratch::take();
        codec::decode_reusing(&png(30, 20), None, u64::MAX, &mut first).unwrap();
        let kept = first.len();
        assert!(kept >= 30 * 20 * 3);
        // A second buffer taken while the first is out starts empty.
        let second = codec::Scratch::take();
        assert_eq!(second.len(), 0);
        drop(second);
        drop(first);
        // The next call on this thread gets the first one's buffer back.
        assert_eq!(codec::Scratch::take().len(), kept);
    }

    #[test]
    fn a_decode_fused_into_the_operator_gives_what_the_two_calls_give() {
        let (rgb, gray) = (png(40, 30), gray_png(50, 20));
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(rgb.as_slice()),
            Some(&rgb[..30]),
            None,
            Some(gray.as_slice()),
            Some(png(60, 60).as_slice()), // over the 2,000-pixel cap below
        ]));
        let rows = input.len();
        let field: FieldRef = Arc::new(Field::new("bytes", DataType::Binary, true));
        let (decode, resize) = (function("image_decode"), function("image_resize"));
        let str_value = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
        let (mode, cap) = (str_value("RGB"), ScalarValue::Int64(Some(2000)));
        let (w, h, method, keep) = (
            ScalarValue::Int64(Some(8)),
            ScalarValue::Int64(Some(6)),
            str_value("bilinear"),
            ScalarValue::Boolean(Some(false)),
        );
        for policy in ["null", "raise"] {
            let on_error = str_value(policy);
            let decode_options = [&mode, &cap, &on_error];
            let resize_options = [&w, &h, &method, &keep, &on_error];
            let fused = resize
                .fuse_input(
                    decode.as_ref(),
                    &with_input(&decode_options),
                    &with_input(&resize_options),
                )
                .expect("resize fuses a decode with the same on_error");
            assert_eq!(fused.name(), "image_decode[dct≤1/8]+image_resize");

            // Planned type: what resize returns for decode's result.
            let decoded_field: FieldRef = Arc::new(
                decode
                    .return_field(std::slice::from_ref(&field), &with_input(&decode_options))
                    .unwrap(),
            );
            let two_calls = resize
                .return_field(&vec![decoded_field; 6], &with_input(&resize_options))
                .unwrap();
            let fused_options: Vec<&ScalarValue> = decode_options
                .iter()
                .chain(&resize_options)
                .copied()
                .collect();
            let one_call = fused
                .return_field(&vec![field.clone(); 9], &with_input(&fused_options))
                .unwrap();
            assert_eq!(one_call, two_calls);

            let fused_result = fused.call(&call_args(&input, &fused_options, rows), rows);
            let decoded = decode.call(&call_args(&input, &decode_options, rows), rows);
            let separate =
                decoded.and_then(|d| resize.call(&call_args(&d, &resize_options, rows), rows));
            match policy {
                "null" => {
                    let (one, two) = (fused_result.unwrap(), separate.unwrap());
                    assert_eq!(one.to_data(), two.to_data());
                    assert_eq!(one.null_count(), 3);
                    let modes = one.as_struct().column(3).as_string::<i32>().clone();
                    assert_eq!((modes.value(0), modes.value(3)), ("RGB", "RGB"));
                }
                _ => {
                    let err = fused_result.unwrap_err().to_string();
                    assert!(separate.is_err());
                    assert!(err.contains("image_resize failed on row 1"), "{err}");
                }
            }
        }
        // Calls on one thread share its decode buffer: a call after one that decoded a
        // larger photo still gives what the separate calls give.
        let null_policy = str_value("null");
        let options: Vec<&ScalarValue> = [&mode, &cap, &null_policy]
            .into_iter()
            .chain([&w, &h, &method, &keep, &null_policy])
            .collect();
        let fused = resize
            .fuse_input(
                decode.as_ref(),
                &with_input(&options[..3]),
                &with_input(&options[3..]),
            )
            .unwrap();
        for bytes in [png(44, 40), gray_png(9, 7), png(12, 5)] {
            let one: ArrayRef = Arc::new(BinaryArray::from(vec![Some(bytes.as_slice())]));
            let fused_result = fused.call(&call_args(&one, &options, 1), 1).unwrap();
            let decoded = decode.call(&call_args(&one, &options[..3], 1), 1).unwrap();
            let separate = resize
                .call(&call_args(&decoded, &options[3..], 1), 1)
                .unwrap();
            assert_eq!(fused_result.to_data(), separate.to_data());
        }

        // Different policies, or an error column, keep the calls apart.
        let (null, raise, column) = (str_value("null"), str_value("raise"), str_value("column"));
        for (inner, outer) in [(&null, &raise), (&raise, &null), (&column, &column)] {
            assert!(
                resize
                    .fuse_input(
                        decode.as_ref(),
                        &with_input(&[&mode, &cap, inner]),
                        &with_input(&[&w, &h, &method, &keep, outer]),
                    )
                    .is_none()
            );
        }
        // Operators that read headers only (width) keep their own path.
        assert!(
            function("image_width")
                .fuse_input(decode.as_ref(), &with_input(&[&mode]), &[None])
                .is_none()
        );
    }

    #[test]
    fn an_8_bit_hwc_tensor_shares_the_image_pixels() {
        let (rgb, gray) = (png(40, 30), gray_png(50, 20));
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(rgb.as_slice()),
            None,
            Some(gray.as_slice()),
        ]));
        let images = function("image_decode")
            .call(std::slice::from_ref(&input), 3)
            .unwrap();
        let to_tensor = function("image_to_tensor");
        let (u8_type, hwc) = (
            ScalarValue::Utf8(Some("u8".into())),
            ScalarValue::Utf8(Some("HWC".into())),
        );
        let shared = to_tensor
            .call(&call_args(&images, &[&u8_type, &hwc], 3), 3)
            .unwrap();
        // The encoded input takes the copying path: the same tensors.
        let copied = to_tensor
            .call(&call_args(&input, &[&u8_type, &hwc], 3), 3)
            .unwrap();
        assert_eq!(shared.to_data(), copied.to_data());
        assert_eq!(shared.null_count(), 1);
        let pixels =
            |a: &ArrayRef, i: usize| a.as_struct().column(i).as_binary::<i64>().values().as_ptr();
        assert_eq!(pixels(&shared, 0), pixels(&images, 4), "no copy");
        assert_ne!(pixels(&copied, 0), pixels(&images, 4));
    }

    #[test]
    fn a_header_claiming_huge_dimensions_is_refused_before_allocating() {
        let mut builder = array::ImageBuilder::with_capacity(1);
        let mut bytes = png(4, 4);
        // Patch the IHDR width and height to 100000 (CRC now wrong: either reason is fine,
        // what matters is that nothing tries to allocate 30 GB).
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(codec::decode_into(&bytes, None, codec::DEFAULT_MAX_PIXELS, &mut builder).is_err());
        assert_eq!(builder.data_len(), 0);
    }
}
