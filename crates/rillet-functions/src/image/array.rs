//! Reading and building `Image` columns (the storage struct of
//! [`rillet_common::types::ImageType`]) without copying pixels more than needed.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, LargeBinaryArray, StringArray, StructArray, UInt8Array, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Field;
use image::{DynamicImage, ImageBuffer};
use rillet_common::types::{ImageMode, ImageType, MultimodalType, same_layout};
use rillet_common::{Result, RilletError};

/// One decoded image, borrowed from a column or a buffer.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Pixel layout.
    pub mode: ImageMode,
    /// HWC pixel data, native-endian for 16/32-bit modes.
    pub data: &'a [u8],
}

impl ImageView<'_> {
    /// Copy into an `image` crate image (for operations that crate implements).
    pub fn to_dynamic(&self) -> DynamicImage {
        let (w, h) = (self.width, self.height);
        fn words<T: Copy + Default>(bytes: &[u8]) -> Vec<T> {
            let n = bytes.len() / size_of::<T>();
            let mut out = vec![T::default(); n];
            // SAFETY: `out` has room for exactly `n * size_of::<T>()` bytes; u8 source has no
            // alignment needs and T is a plain number type.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    out.as_mut_ptr() as *mut u8,
                    n * size_of::<T>(),
                );
            }
            out
        }
        let d = self.data;
        let built = match self.mode {
            ImageMode::L => ImageBuffer::from_raw(w, h, d.to_vec()).map(DynamicImage::ImageLuma8),
            ImageMode::La => ImageBuffer::from_raw(w, h, d.to_vec()).map(DynamicImage::ImageLumaA8),
            ImageMode::Rgb => ImageBuffer::from_raw(w, h, d.to_vec()).map(DynamicImage::ImageRgb8),
            ImageMode::Rgba => {
                ImageBuffer::from_raw(w, h, d.to_vec()).map(DynamicImage::ImageRgba8)
            }
            ImageMode::L16 => {
                ImageBuffer::from_raw(w, h, words::<u16>(d)).map(DynamicImage::ImageLuma16)
            }
            ImageMode::La16 => {
                ImageBuffer::from_raw(w, h, words::<u16>(d)).map(DynamicImage::ImageLumaA16)
            }
            ImageMode::Rgb16 => {
                ImageBuffer::from_raw(w, h, words::<u16>(d)).map(DynamicImage::ImageRgb16)
            }
            ImageMode::Rgba16 => {
                ImageBuffer::from_raw(w, h, words::<u16>(d)).map(DynamicImage::ImageRgba16)
            }
            ImageMode::Rgb32F => {
                ImageBuffer::from_raw(w, h, words::<f32>(d)).map(DynamicImage::ImageRgb32F)
            }
            ImageMode::Rgba32F => {
                ImageBuffer::from_raw(w, h, words::<f32>(d)).map(DynamicImage::ImageRgba32F)
            }
        };
        // Lengths are checked when a view is made, so this holds.
        built.unwrap_or_else(|| DynamicImage::new_rgb8(0, 0))
    }
}

/// The mode of an `image` crate image; `None` for layouts Rillet does not store.
pub fn mode_of(image: &DynamicImage) -> Option<ImageMode> {
    Some(match image {
        DynamicImage::ImageLuma8(_) => ImageMode::L,
        DynamicImage::ImageLumaA8(_) => ImageMode::La,
        DynamicImage::ImageRgb8(_) => ImageMode::Rgb,
        DynamicImage::ImageRgba8(_) => ImageMode::Rgba,
        DynamicImage::ImageLuma16(_) => ImageMode::L16,
        DynamicImage::ImageLumaA16(_) => ImageMode::La16,
        DynamicImage::ImageRgb16(_) => ImageMode::Rgb16,
        DynamicImage::ImageRgba16(_) => ImageMode::Rgba16,
        DynamicImage::ImageRgb32F(_) => ImageMode::Rgb32F,
        DynamicImage::ImageRgba32F(_) => ImageMode::Rgba32F,
        _ => return None,
    })
}

/// The mode of an `image` crate image, converting the rare layouts we do not store.
pub fn dynamic_mode(image: DynamicImage) -> (ImageMode, DynamicImage) {
    match mode_of(&image) {
        Some(mode) => (mode, image),
        None => (ImageMode::Rgba, DynamicImage::ImageRgba8(image.to_rgba8())),
    }
}

/// Pillow's ITU-R 601-2 luma for 8-bit RGB, so grey images match Pillow's `convert("L")`.
pub fn pillow_luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Convert to `mode`. Grey from 8-bit colour uses Pillow's luma weights (the `image`
/// crate's differ), so results match what Python users compare against.
pub fn convert(image: DynamicImage, mode: ImageMode) -> DynamicImage {
    if mode_of(&image) == Some(mode) {
        // Already there: no copy (a decoded RGB photo asked for as RGB, the common case).
        return image;
    }
    match (&image, mode) {
        (DynamicImage::ImageRgb8(rgb), ImageMode::L) => {
            return DynamicImage::ImageLuma8(image::GrayImage::from_fn(
                rgb.width(),
                rgb.height(),
                |x, y| {
                    let p = rgb.get_pixel(x, y).0;
                    image::Luma([pillow_luma(p[0], p[1], p[2])])
                },
            ));
        }
        (DynamicImage::ImageRgba8(rgba), ImageMode::L | ImageMode::La) => {
            let (w, h) = (rgba.width(), rgba.height());
            let grey = image::GrayAlphaImage::from_fn(w, h, |x, y| {
                let p = rgba.get_pixel(x, y).0;
                image::LumaA([pillow_luma(p[0], p[1], p[2]), p[3]])
            });
            return if mode == ImageMode::La {
                DynamicImage::ImageLumaA8(grey)
            } else {
                DynamicImage::ImageLuma8(DynamicImage::ImageLumaA8(grey).to_luma8())
            };
        }
        _ => {}
    }
    match mode {
        ImageMode::L => DynamicImage::ImageLuma8(image.to_luma8()),
        ImageMode::La => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        ImageMode::Rgb => DynamicImage::ImageRgb8(image.to_rgb8()),
        ImageMode::Rgba => DynamicImage::ImageRgba8(image.to_rgba8()),
        ImageMode::L16 => DynamicImage::ImageLuma16(image.to_luma16()),
        ImageMode::La16 => DynamicImage::ImageLumaA16(image.to_luma_alpha16()),
        ImageMode::Rgb16 => DynamicImage::ImageRgb16(image.to_rgb16()),
        ImageMode::Rgba16 => DynamicImage::ImageRgba16(image.to_rgba16()),
        ImageMode::Rgb32F => DynamicImage::ImageRgb32F(image.to_rgb32f()),
        ImageMode::Rgba32F => DynamicImage::ImageRgba32F(image.to_rgba32f()),
    }
}

/// True if `field` is an `Image` column (by extension type or storage layout).
pub fn is_image(field: &Field) -> bool {
    matches!(
        MultimodalType::of_field(field),
        Some(MultimodalType::Image(_))
    ) || same_layout(field.data_type(), &ImageType::storage_type())
}

/// The declared mode of an `Image` field, when every row shares it.
pub fn declared_mode(field: &Field) -> Option<ImageMode> {
    match MultimodalType::of_field(field) {
        Some(MultimodalType::Image(t)) => t.mode(),
        _ => None,
    }
}

/// Row access to an `Image` column.
pub struct ImageColumn<'a> {
    array: &'a StructArray,
    heights: &'a UInt32Array,
    widths: &'a UInt32Array,
    modes: &'a StringArray,
    data: &'a LargeBinaryArray,
}

impl<'a> ImageColumn<'a> {
    /// View `array` (an Image storage struct).
    pub fn try_new(array: &'a ArrayRef) -> Result<Self> {
        let invalid =
            || RilletError::internal(format!("not an Image column: {}", array.data_type()));
        let array = array.as_struct_opt().ok_or_else(invalid)?;
        Ok(Self {
            array,
            heights: array
                .column(0)
                .as_any()
                .downcast_ref()
                .ok_or_else(invalid)?,
            widths: array
                .column(1)
                .as_any()
                .downcast_ref()
                .ok_or_else(invalid)?,
            modes: array
                .column(3)
                .as_any()
                .downcast_ref()
                .ok_or_else(invalid)?,
            data: array
                .column(4)
                .as_any()
                .downcast_ref()
                .ok_or_else(invalid)?,
        })
    }

    /// Rows in the column.
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// True if the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// Every row's pixel bytes (empty or meaningless for null rows).
    pub fn pixel_buffers(&self) -> &'a LargeBinaryArray {
        self.data
    }

    /// Which rows are null.
    pub fn nulls(&self) -> Option<&'a arrow::buffer::NullBuffer> {
        self.array.nulls()
    }

    /// The image at `row`: `Ok(None)` when null, `Err` (a reason) when the row's fields do
    /// not describe a valid image.
    pub fn get(&self, row: usize) -> std::result::Result<Option<ImageView<'a>>, String> {
        if self.array.is_null(row) {
            return Ok(None);
        }
        let mode: ImageMode = self
            .modes
            .value(row)
            .parse()
            .map_err(|e: arrow::error::ArrowError| e.to_string())?;
        let (width, height) = (self.widths.value(row), self.heights.value(row));
        let data = self.data.value(row);
        let expected = mode.buffer_len(width as usize, height as usize);
        if data.len() != expected {
            return Err(format!(
                "image data holds {} bytes; a {width}×{height} {mode} image needs {expected}",
                data.len()
            ));
        }
        Ok(Some(ImageView {
            width,
            height,
            mode,
            data,
        }))
    }
}

/// Builds an `Image` column, appending pixels straight into the column's data buffer.
#[derive(Default)]
pub struct ImageBuilder {
    heights: Vec<u32>,
    widths: Vec<u32>,
    channels: Vec<u8>,
    modes: Vec<&'static str>,
    offsets: Vec<i64>,
    data: Vec<u8>,
    valid: Vec<bool>,
    /// Rows the caller expects to append (sizes the first growth of `data`).
    expected_rows: usize,
}

impl ImageBuilder {
    /// An empty builder for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            heights: Vec::with_capacity(rows),
            widths: Vec::with_capacity(rows),
            channels: Vec::with_capacity(rows),
            modes: Vec::with_capacity(rows),
            offsets,
            expected_rows: rows,
            ..Default::default()
        }
    }

    /// Make room for `bytes` more pixel data (room for every expected row at once).
    fn reserve_for(&mut self, bytes: usize) {
        let rows_left = self.expected_rows.saturating_sub(self.widths.len());
        crate::reserve_rows(&mut self.data, bytes, rows_left);
    }

    fn push_header(&mut self, width: u32, height: u32, mode: ImageMode, valid: bool) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.widths.push(width);
        self.heights.push(height);
        self.channels.push(mode.channels() as u8);
        self.modes.push(mode.name());
        self.offsets.push(self.data.len() as i64);
        self.valid.push(valid);
    }

    /// Append an image by copying its pixels.
    pub fn append(&mut self, image: &ImageView<'_>) {
        self.reserve_for(image.data.len());
        self.data.extend_from_slice(image.data);
        self.push_header(image.width, image.height, image.mode, true);
    }

    /// Append an `image` crate image.
    pub fn append_dynamic(&mut self, image: DynamicImage) {
        let (mode, image) = dynamic_mode(image);
        self.reserve_for(image.as_bytes().len());
        self.data.extend_from_slice(image.as_bytes());
        self.push_header(image.width(), image.height(), mode, true);
    }

    /// Append an image whose pixels `fill` writes into the zeroed slice it is given
    /// (exactly `mode.buffer_len(width, height)` bytes). If `fill` fails, nothing is
    /// appended and its error is returned.
    pub fn append_with<E>(
        &mut self,
        width: u32,
        height: u32,
        mode: ImageMode,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let start = self.data.len();
        let len = mode.buffer_len(width as usize, height as usize);
        self.reserve_for(len);
        self.data.resize(start + len, 0);
        if let Err(e) = fill(&mut self.data[start..]) {
            self.data.truncate(start);
            return Err(e);
        }
        self.push_header(width, height, mode, true);
        Ok(())
    }

    /// Append a null row.
    pub fn append_null(&mut self) {
        self.push_header(0, 0, ImageMode::L, false);
    }

    /// Bytes of pixel data appended so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The finished column.
    pub fn finish(mut self) -> ArrayRef {
        // The pixels count against the call's memory budget (see rillet_operator::memory).
        rillet_operator::memory::charge_call_memory(self.data.len());
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let nulls = if self.valid.iter().all(|v| *v) {
            None
        } else {
            Some(NullBuffer::from(self.valid))
        };
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let data = LargeBinaryArray::new(offsets, self.data.into(), None);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.heights)),
            Arc::new(UInt32Array::from(self.widths)),
            Arc::new(UInt8Array::from(self.channels)),
            Arc::new(StringArray::from(self.modes)),
            Arc::new(data),
        ];
        Arc::new(StructArray::new(
            ImageType::storage_fields(),
            columns,
            nulls,
        ))
    }
}
