//! Image → value operators: metadata, size, validity, perceptual hashes, sharpness and a
//! simple quality score. Metadata of encoded input is read from the header alone.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, StringBuilder, StructArray, UInt8Builder, UInt32Builder,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use image::imageops::FilterType;
use rillet_common::types::display_type;
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use super::array::{ImageView, is_image};
use super::{
    IMAGE_BATCH_ROWS, ImageInput, MAX_PIXELS, RowFailure, codec, expect_image, image_values,
    max_pixels,
};
use crate::input::EncodedColumn;
use crate::operator::{
    Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors, row_values,
};

pub(super) fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Metadata)),
        Arc::new(OperatorFunction::new(Dimension::Width)),
        Arc::new(OperatorFunction::new(Dimension::Height)),
        Arc::new(OperatorFunction::new(Dimension::AspectRatio)),
        Arc::new(OperatorFunction::new(IsValid)),
        Arc::new(OperatorFunction::new(Hash::Perceptual)),
        Arc::new(OperatorFunction::new(Hash::Difference)),
        Arc::new(OperatorFunction::new(Hamming)),
        Arc::new(OperatorFunction::new(Score::Sharpness)),
        Arc::new(OperatorFunction::new(Score::Quality)),
    ]
}

/// Facts of one row: width, height, mode, format (for encoded input).
struct Facts {
    width: u32,
    height: u32,
    mode: rillet_common::types::ImageMode,
    format: Option<&'static str>,
}

/// Header facts for every row without decoding pixels.
fn facts(call: &Call<'_>, errors: &mut RowErrors, operator: &str) -> Result<Vec<Option<Facts>>> {
    let field = Field::new("input", call.inputs[0].data_type().clone(), true);
    if is_image(&field) {
        let column = super::array::ImageColumn::try_new(&call.inputs[0])?;
        let fetch = |row| column.get(row).map_err(crate::input::RowFailure::Data);
        return row_values(
            call.rows,
            errors,
            |row| format!("row {row}"),
            fetch,
            |v, _| {
                Ok(Facts {
                    width: v.width,
                    height: v.height,
                    mode: v.mode,
                    format: None,
                })
            },
        );
    }
    let column = EncodedColumn::try_new(operator, &call.inputs[0], "an Image or encoded image")?;
    row_values(
        call.rows,
        errors,
        |row| column.identity(row),
        |row| column.get(row),
        |bytes, _| {
            let h = codec::read_header(&bytes)?;
            Ok(Facts {
                width: h.width,
                height: h.height,
                mode: h.mode,
                format: Some(codec::format_name(h.format)),
            })
        },
    )
}

fn metadata_fields() -> Fields {
    Fields::from(vec![
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("channels", DataType::UInt8, true),
        Field::new("mode", DataType::Utf8, true),
        Field::new("format", DataType::Utf8, true),
    ])
}

/// `image_metadata(x, on_error)`: struct{width, height, channels, mode, format}. Encoded
/// input is read from its header only (orientation applied to width and height); `format`
/// is null for decoded images.
#[derive(Debug)]
pub struct Metadata;

impl Operator for Metadata {
    fn name(&self) -> &'static str {
        "image_metadata"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(metadata_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let facts = facts(call, errors, self.name())?;
        let (mut w, mut h, mut c, mut m, mut f) = (
            UInt32Builder::new(),
            UInt32Builder::new(),
            UInt8Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut valid = Vec::with_capacity(facts.len());
        for fact in &facts {
            w.append_option(fact.as_ref().map(|f| f.width));
            h.append_option(fact.as_ref().map(|f| f.height));
            c.append_option(fact.as_ref().map(|f| f.mode.channels() as u8));
            m.append_option(fact.as_ref().map(|f| f.mode.name()));
            f.append_option(fact.as_ref().and_then(|f| f.format));
            valid.push(fact.is_some());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(w.finish()),
            Arc::new(h.finish()),
            Arc::new(c.finish()),
            Arc::new(m.finish()),
            Arc::new(f.finish()),
        ];
        Ok(Arc::new(StructArray::try_new(
            metadata_fields(),
            columns,
            Some(valid.into()),
        )?))
    }
}

/// `image_width(x)`, `image_height(x)`, `image_aspect_ratio(x)` (width / height), from the
/// header for encoded input.
#[derive(Debug)]
pub enum Dimension {
    /// width in pixels
    Width,
    /// height in pixels
    Height,
    /// width / height
    AspectRatio,
}

impl Operator for Dimension {
    fn name(&self) -> &'static str {
        match self {
            Self::Width => "image_width",
            Self::Height => "image_height",
            Self::AspectRatio => "image_aspect_ratio",
        }
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        let t = if matches!(self, Self::AspectRatio) {
            DataType::Float64
        } else {
            DataType::UInt32
        };
        Ok(Field::new(self.name(), t, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let facts = facts(call, errors, self.name())?;
        Ok(match self {
            Self::Width => Arc::new(
                facts
                    .iter()
                    .map(|f| f.as_ref().map(|f| f.width))
                    .collect::<arrow::array::UInt32Array>(),
            ),
            Self::Height => Arc::new(
                facts
                    .iter()
                    .map(|f| f.as_ref().map(|f| f.height))
                    .collect::<arrow::array::UInt32Array>(),
            ),
            Self::AspectRatio => Arc::new(
                facts
                    .iter()
                    .map(|f| {
                        f.as_ref()
                            .filter(|f| f.height > 0)
                            .map(|f| f.width as f64 / f.height as f64)
                    })
                    .collect::<arrow::array::Float64Array>(),
            ),
        })
    }
}

/// `image_is_valid(x, max_pixels, mode)`: true when the row decodes completely (within
/// `max_pixels`, and in `mode` when one is given); false otherwise, including null rows.
#[derive(Debug)]
pub struct IsValid;

impl Operator for IsValid {
    fn name(&self) -> &'static str {
        "image_is_valid"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[MAX_PIXELS, Param::optional("mode", ParamKind::Str, "")];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        max_pixels(params)?;
        wanted_mode(params)?;
        Ok(Field::new(self.name(), DataType::Boolean, false))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let cap = max_pixels(call.params)?;
        let mode = wanted_mode(call.params)?;
        let mut input = ImageInput::of_call(self.name(), call)?;
        let mut out = BooleanBuilder::with_capacity(call.rows);
        for row in 0..call.rows {
            let fits = |pixels: super::Pixels<'_>| {
                let v = pixels.view();
                v.width as u64 * v.height as u64 <= cap && mode.is_none_or(|m| m == v.mode)
            };
            let ok = match input.with_pixels(row, cap, fits) {
                Ok(Some(fits)) => fits,
                Ok(None) | Err(RowFailure::Data(_)) => false,
                Err(RowFailure::Infrastructure(e)) => return Err(e),
            };
            out.append_value(ok);
        }
        Ok(Arc::new(out.finish()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }
}

fn wanted_mode(params: &Params) -> Result<Option<rillet_common::types::ImageMode>> {
    match params.str("mode")? {
        "" => Ok(None),
        m => m
            .parse()
            .map(Some)
            .map_err(|e: arrow::error::ArrowError| RilletError::invalid_argument(e.to_string())),
    }
}

/// Greyscale `size × size` thumbnail as f64 values, resampled with a triangle filter.
fn grey_thumbnail(view: &ImageView<'_>, width: u32, height: u32) -> Vec<f64> {
    let grey = view.to_dynamic().to_luma8();
    let small = image::imageops::resize(&grey, width, height, FilterType::Triangle);
    small.into_raw().into_iter().map(f64::from).collect()
}

/// The 2-D DCT-II of an `n × n` block, unnormalised (only relative order matters here).
fn dct2(block: &[f64], n: usize) -> Vec<f64> {
    let cos: Vec<f64> = (0..n * n)
        .map(|i| {
            let (k, x) = (i / n, i % n);
            (std::f64::consts::PI * (2 * x + 1) as f64 * k as f64 / (2 * n) as f64).cos()
        })
        .collect();
    let mut rows = vec![0.0; n * n];
    for y in 0..n {
        for k in 0..n {
            rows[y * n + k] = (0..n).map(|x| block[y * n + x] * cos[k * n + x]).sum();
        }
    }
    let mut out = vec![0.0; n * n];
    for k in 0..n {
        for x in 0..n {
            out[k * n + x] = (0..n).map(|y| rows[y * n + x] * cos[k * n + y]).sum();
        }
    }
    out
}

fn phash(view: &ImageView<'_>) -> u64 {
    let pixels = grey_thumbnail(view, 32, 32);
    let dct = dct2(&pixels, 32);
    let low: Vec<f64> = (0..8)
        .flat_map(|y| (0..8).map(move |x| (y, x)))
        .map(|(y, x)| dct[y * 32 + x])
        .collect();
    let mut sorted = low.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = (sorted[31] + sorted[32]) / 2.0;
    low.iter().enumerate().fold(
        0u64,
        |h, (i, v)| if *v > median { h | (1 << (63 - i)) } else { h },
    )
}

fn dhash(view: &ImageView<'_>) -> u64 {
    let pixels = grey_thumbnail(view, 9, 8);
    let mut h = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            if pixels[y * 9 + x + 1] > pixels[y * 9 + x] {
                h |= 1 << (63 - (y * 8 + x));
            }
        }
    }
    h
}

/// `image_phash(x)` (DCT perceptual hash) and `image_dhash(x)` (difference hash): 64-bit
/// signatures whose Hamming distance (`image_hamming`) is small for near-duplicates.
#[derive(Debug)]
pub enum Hash {
    /// pHash: the sign of the low 8×8 DCT coefficients of a 32×32 grey thumbnail against
    /// their median.
    Perceptual,
    /// dHash: left/right brightness gradients of a 9×8 grey thumbnail.
    Difference,
}

impl Operator for Hash {
    fn name(&self) -> &'static str {
        match self {
            Self::Perceptual => "image_phash",
            Self::Difference => "image_dhash",
        }
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::UInt64, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let hashes = image_values(self.name(), call, errors, |pixels| {
            let view = pixels.view();
            Ok(match self {
                Self::Perceptual => phash(&view),
                Self::Difference => dhash(&view),
            })
        })?;
        Ok(Arc::new(hashes.into_iter().collect::<UInt64Array>()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}

/// `image_hamming(a, b)`: the number of differing bits between two 64-bit hashes.
#[derive(Debug)]
pub struct Hamming;

impl Operator for Hamming {
    fn name(&self) -> &'static str {
        "image_hamming"
    }

    fn inputs(&self) -> usize {
        2
    }

    fn params(&self) -> &'static [Param] {
        &[]
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        for field in inputs {
            if !field.data_type().is_integer() {
                return Err(RilletError::invalid_argument(format!(
                    "image_hamming compares integer hashes (image_phash / image_dhash); column {:?} is {}",
                    field.name(),
                    display_type(field)
                )));
            }
        }
        Ok(Field::new(self.name(), DataType::UInt32, true))
    }

    fn evaluate(&self, call: &Call<'_>, _errors: &mut RowErrors) -> Result<ArrayRef> {
        let as_u64 =
            |a: &ArrayRef| -> Result<ArrayRef> { Ok(arrow::compute::cast(a, &DataType::UInt64)?) };
        let (a, b) = (as_u64(&call.inputs[0])?, as_u64(&call.inputs[1])?);
        let (a, b) = (
            a.as_any().downcast_ref::<UInt64Array>(),
            b.as_any().downcast_ref::<UInt64Array>(),
        );
        let (Some(a), Some(b)) = (a, b) else {
            return Err(RilletError::internal("hamming inputs did not cast to u64"));
        };
        Ok(Arc::new(
            (0..call.rows)
                .map(|i| {
                    (a.is_valid(i) && b.is_valid(i)).then(|| (a.value(i) ^ b.value(i)).count_ones())
                })
                .collect::<arrow::array::UInt32Array>(),
        ))
    }
}

/// Variance of the 4-neighbour Laplacian over the interior pixels of the grey image.
fn sharpness(view: &ImageView<'_>) -> f64 {
    let grey = view.to_dynamic().to_luma8();
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let p = grey.as_raw();
    let (mut sum, mut sum_sq, mut n) = (0.0, 0.0, 0.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let c = p[y * w + x] as f64;
            let lap = p[(y - 1) * w + x] as f64
                + p[(y + 1) * w + x] as f64
                + p[y * w + x - 1] as f64
                + p[y * w + x + 1] as f64
                - 4.0 * c;
            sum += lap;
            sum_sq += lap * lap;
            n += 1.0;
        }
    }
    let mean = sum / n;
    sum_sq / n - mean * mean
}

/// A composite in [0, 1]: the mean of a sharpness term `s / (s + 100)`, an exposure term
/// `1 - |mean grey - 128| / 128` and a size term `min(1, pixels / 1 MP)`.
fn quality(view: &ImageView<'_>) -> f64 {
    let s = sharpness(view);
    let grey = view.to_dynamic().to_luma8();
    let n = grey.as_raw().len().max(1) as f64;
    let mean = grey.as_raw().iter().map(|v| *v as f64).sum::<f64>() / n;
    let exposure = 1.0 - (mean - 128.0).abs() / 128.0;
    let size = (view.width as f64 * view.height as f64 / 1_000_000.0).min(1.0);
    (s / (s + 100.0) + exposure + size) / 3.0
}

/// `image_sharpness(x)`: variance of the Laplacian (higher is sharper; blurred photos score
/// low). `image_quality_score(x)`: a simple non-model composite of sharpness, exposure and
/// size in [0, 1].
#[derive(Debug)]
pub enum Score {
    /// variance of the Laplacian
    Sharpness,
    /// composite score
    Quality,
}

impl Operator for Score {
    fn name(&self) -> &'static str {
        match self {
            Self::Sharpness => "image_sharpness",
            Self::Quality => "image_quality_score",
        }
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Float64, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let scores = image_values(self.name(), call, errors, |pixels| {
            let view = pixels.view();
            Ok(match self {
                Self::Sharpness => sharpness(&view),
                Self::Quality => quality(&view),
            })
        })?;
        Ok(Arc::new(
            scores.into_iter().collect::<arrow::array::Float64Array>(),
        ))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}
