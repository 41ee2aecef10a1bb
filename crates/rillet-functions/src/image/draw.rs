//! Drawing onto images: `image_draw_boxes` outlines detections (the boxes that
//! `detect_objects` and `ocr` give, or plain `[x1, y1, x2, y2]` lists) on a copy of each
//! image, to look at what a model found.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, GenericListArray, OffsetSizeTrait};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::types::{ElementType, ImageMode, ImageType, display_type};
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use super::array::ImageBuilder;
use super::{
    IMAGE_BATCH_ROWS, ImageInput, RowFailure, close_image_row, codec, expect_image, input_mode,
};
use crate::operator::{Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors};

pub(super) fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![Arc::new(OperatorFunction::new(DrawBoxes))]
}

/// `image_draw_boxes(img, boxes, color, thickness, on_error)`: the image with each box of
/// its row outlined, `thickness` pixels wide, drawn inward from the box's edges.
///
/// `boxes` is, per row, a list of `[x1, y1, x2, y2]` (top-left and bottom-right corners in
/// the image's pixels, as floats or integers), or a list of structs with such a `box`
/// field: the output of `detect_objects` and `ocr`. A box covers the pixel columns
/// `round(x1) ..= round(x2) - 1` and rows `round(y1) ..= round(y2) - 1`; the parts of it
/// outside the image are not drawn. A box that is not four finite numbers, or whose
/// corners are reversed, is bad data for its row. A null image or a null list of boxes
/// gives a null; an empty list gives the image unchanged.
///
/// `color` is a name (`red`, `green`, `blue`, `yellow`, `cyan`, `magenta`, `orange`,
/// `white`, `black`) or `#rrggbb`; it is converted to the image's mode (luma for `L`,
/// 16-bit and float scales for the others, alpha opaque).
#[derive(Debug)]
pub struct DrawBoxes;

impl Operator for DrawBoxes {
    fn name(&self) -> &'static str {
        "image_draw_boxes"
    }

    fn inputs(&self) -> usize {
        2
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("color", ParamKind::Str, "red"),
            Param::optional("thickness", ParamKind::Int, "2"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        box_list_type(self.name(), &inputs[1])?;
        parse_color(params.str("color")?)?;
        thickness(params)?;
        Ok(ImageType::new(input_mode(&inputs[0])).field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let color = parse_color(call.params.str("color")?)?;
        let thickness = thickness(call.params)?;
        let boxes = BoxColumn::try_new(self.name(), &call.inputs[1])?;
        let mut input = ImageInput::of_call(self.name(), call)?;
        let mut builder = ImageBuilder::with_capacity(call.rows);
        for row in 0..call.rows {
            let drawn = match boxes.row(row) {
                Ok(None) => Ok(None),
                Ok(Some(row_boxes)) => {
                    input.with_pixels(row, codec::DEFAULT_MAX_PIXELS, |pixels| {
                        let view = pixels.view();
                        builder.append_with(view.width, view.height, view.mode, |dst| {
                            dst.copy_from_slice(view.data);
                            let canvas = Canvas {
                                data: dst,
                                width: view.width,
                                height: view.height,
                                mode: view.mode,
                            };
                            draw_all(canvas, &row_boxes, color, thickness)
                        })
                    })
                }
                Err(reason) => Err(RowFailure::Data(format!("row {row}: {reason}"))),
            };
            close_image_row(&mut builder, errors, row, drawn, || input.identity(row))?;
        }
        Ok(builder.finish())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(IMAGE_BATCH_ROWS)
    }
}

fn thickness(params: &Params) -> Result<u32> {
    let t = params.size("thickness")?;
    if t == 0 {
        return Err(RilletError::invalid_argument(
            "image_draw_boxes: thickness must be at least 1 pixel",
        ));
    }
    Ok(t)
}

/// An RGB colour from a name or `#rrggbb` / `#rgb`.
fn parse_color(text: &str) -> Result<[u8; 3]> {
    let named = match text.to_ascii_lowercase().as_str() {
        "red" => Some([255, 0, 0]),
        "green" => Some([0, 255, 0]),
        "blue" => Some([0, 0, 255]),
        "yellow" => Some([255, 255, 0]),
        "cyan" => Some([0, 255, 255]),
        "magenta" => Some([255, 0, 255]),
        "orange" => Some([255, 165, 0]),
        "white" => Some([255, 255, 255]),
        "black" => Some([0, 0, 0]),
        _ => None,
    };
    if let Some(rgb) = named {
        return Ok(rgb);
    }
    let hex = text
        .strip_prefix('#')
        .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or("");
    let digits: Option<Vec<u8>> = match hex.len() {
        6 => (0..3)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect(),
        3 => (0..3)
            .map(|i| {
                u8::from_str_radix(hex.get(i..i + 1)?, 16)
                    .ok()
                    .map(|v| v * 17)
            })
            .collect(),
        _ => None,
    };
    match digits {
        Some(d) => Ok([d[0], d[1], d[2]]),
        None => Err(RilletError::invalid_argument(format!(
            "image_draw_boxes: unknown color {text:?}; give a name (red, green, blue, yellow, \
             cyan, magenta, orange, white, black) or #rrggbb"
        ))),
    }
}

/// The type of one box's coordinates: a list of numbers.
fn is_number_list(data_type: &DataType) -> bool {
    match data_type {
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            item.data_type().is_numeric()
        }
        _ => false,
    }
}

/// Check that `field` holds, per row, a list of boxes; the type of one box entry.
fn box_list_type(operator: &str, field: &Field) -> Result<()> {
    let ok = match field.data_type() {
        DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
            DataType::Struct(fields) => fields
                .iter()
                .any(|f| f.name() == "box" && is_number_list(f.data_type())),
            other => is_number_list(other),
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: boxes must be, per row, a list of [x1, y1, x2, y2] or a list of \
             structs with a `box` field (what detect_objects and ocr give); column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// The boxes column of a call: per row, a range of entries of `coordinates`.
struct BoxColumn {
    /// Where each row's boxes start and end in `coordinates`; `None` for a null row.
    ranges: Vec<Option<(usize, usize)>>,
    /// One list of numbers per box, as Float64 (a null entry is a null box).
    coordinates: GenericListArray<i32>,
}

impl BoxColumn {
    fn try_new(operator: &str, array: &ArrayRef) -> Result<Self> {
        let field = Field::new("boxes", array.data_type().clone(), true);
        box_list_type(operator, &field)?;
        let (ranges, entries) = match array.data_type() {
            DataType::LargeList(_) => row_ranges(array.as_list::<i64>()),
            _ => row_ranges(array.as_list::<i32>()),
        };
        let boxes = match entries.data_type() {
            DataType::Struct(_) => {
                let structs = entries.as_struct();
                let column = structs.column_by_name("box").ok_or_else(|| {
                    RilletError::internal("image_draw_boxes: struct boxes lost their box field")
                })?;
                // A null struct is a null box, whatever its child holds.
                let nulls = arrow::buffer::NullBuffer::union(
                    structs.nulls(),
                    column.logical_nulls().as_ref(),
                );
                let data = column.to_data().into_builder().nulls(nulls).build()?;
                arrow::array::make_array(data)
            }
            _ => entries,
        };
        let as_f64 = DataType::List(Arc::new(Field::new("item", DataType::Float64, true)));
        let coordinates = arrow::compute::cast(&boxes, &as_f64)?
            .as_list::<i32>()
            .clone();
        Ok(Self {
            ranges,
            coordinates,
        })
    }

    /// The boxes of `row` (`Ok(None)`: a null row), or why one of them is not a box.
    fn row(&self, row: usize) -> std::result::Result<Option<Vec<[f64; 4]>>, String> {
        let Some((start, end)) = self.ranges[row] else {
            return Ok(None);
        };
        (start..end)
            .map(|i| self.entry(i).map_err(|e| format!("box {}: {e}", i - start)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some)
    }

    fn entry(&self, i: usize) -> std::result::Result<[f64; 4], String> {
        if self.coordinates.is_null(i) {
            return Err("is null".into());
        }
        let values = self.coordinates.value(i);
        let values: &Float64Array = values.as_primitive();
        if values.len() != 4 || values.null_count() > 0 {
            return Err(format!(
                "has {} numbers{}; expected [x1, y1, x2, y2]",
                values.len(),
                if values.null_count() > 0 {
                    " with nulls"
                } else {
                    ""
                }
            ));
        }
        let b = [
            values.value(0),
            values.value(1),
            values.value(2),
            values.value(3),
        ];
        if b.iter().any(|v| !v.is_finite()) {
            return Err(format!("{b:?} is not four finite numbers"));
        }
        if b[2] < b[0] || b[3] < b[1] {
            return Err(format!(
                "{b:?} has its corners reversed; expected [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
            ));
        }
        Ok(b)
    }
}

/// Each row's `(start, end)` in the returned values (`None` where the row is null), and
/// those values: only the rows' own, so a call over a slice of a large batch converts its
/// own boxes and no others.
fn row_ranges<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
) -> (Vec<Option<(usize, usize)>>, ArrayRef) {
    let offsets = list.value_offsets();
    let (first, last) = (offsets[0].as_usize(), offsets[list.len()].as_usize());
    let ranges = (0..list.len())
        .map(|row| {
            (!list.is_null(row)).then(|| {
                (
                    offsets[row].as_usize() - first,
                    offsets[row + 1].as_usize() - first,
                )
            })
        })
        .collect();
    (ranges, list.values().slice(first, last - first))
}

/// One image's pixels, drawn on in place.
struct Canvas<'a> {
    data: &'a mut [u8],
    width: u32,
    height: u32,
    mode: ImageMode,
}

impl Canvas<'_> {
    /// Paint pixel `(x, y)` if it lies inside the image.
    fn paint(&mut self, x: i64, y: i64, color: &[u8]) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let pixel = color.len();
        let at = (y as usize * self.width as usize + x as usize) * pixel;
        self.data[at..at + pixel].copy_from_slice(color);
    }
}

/// The bytes of one pixel of `rgb` in `mode` (native-endian, alpha opaque).
fn pixel_bytes(mode: ImageMode, rgb: [u8; 3]) -> Vec<u8> {
    let luma = (0.299 * f64::from(rgb[0]) + 0.587 * f64::from(rgb[1]) + 0.114 * f64::from(rgb[2]))
        .round() as u8;
    let channels: Vec<u8> = match mode.channels() {
        1 => vec![luma],
        2 => vec![luma, 255],
        3 => rgb.to_vec(),
        _ => vec![rgb[0], rgb[1], rgb[2], 255],
    };
    channels
        .into_iter()
        .flat_map(|v| match mode.element_type() {
            ElementType::U16 => (u16::from(v) * 257).to_ne_bytes().to_vec(),
            ElementType::F32 => (f32::from(v) / 255.0).to_ne_bytes().to_vec(),
            _ => vec![v],
        })
        .collect()
}

fn draw_all(
    mut canvas: Canvas<'_>,
    boxes: &[[f64; 4]],
    rgb: [u8; 3],
    thickness: u32,
) -> std::result::Result<(), String> {
    let color = pixel_bytes(canvas.mode, rgb);
    for b in boxes {
        outline(&mut canvas, *b, &color, thickness);
    }
    Ok(())
}

/// Outline one box, `thickness` rings drawn inward from its edges.
fn outline(canvas: &mut Canvas<'_>, [x1, y1, x2, y2]: [f64; 4], color: &[u8], thickness: u32) {
    // Pixel ranges, inclusive; a box thinner than a pixel still covers one.
    let clamp = |v: f64| v.round().clamp(-1e12, 1e12) as i64;
    let (left, top) = (clamp(x1), clamp(y1));
    let right = (clamp(x2) - 1).max(left);
    let bottom = (clamp(y2) - 1).max(top);
    if right < 0 || bottom < 0 || left >= i64::from(canvas.width) || top >= i64::from(canvas.height)
    {
        return;
    }
    // Four bands, each `thickness` deep (or the whole box where it is thinner), clipped to
    // the image first: the work is the pixels painted, whatever the box or thickness.
    let t = i64::from(thickness);
    let bands = [
        (left, top, right, (top + t - 1).min(bottom)),
        (left, (bottom - t + 1).max(top), right, bottom),
        (left, top, (left + t - 1).min(right), bottom),
        ((right - t + 1).max(left), top, right, bottom),
    ];
    for (l, t, r, b) in bands {
        fill(canvas, l, t, r, b, color);
    }
}

/// Paint the pixels of the inclusive rectangle `(l, t)..=(r, b)` that lie in the image.
fn fill(canvas: &mut Canvas<'_>, l: i64, t: i64, r: i64, b: i64, color: &[u8]) {
    let (l, r) = (l.max(0), r.min(i64::from(canvas.width) - 1));
    let (t, b) = (t.max(0), b.min(i64::from(canvas.height) - 1));
    for y in t..=b {
        for x in l..=r {
            canvas.paint(x, y, color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canvas_rgb(width: u32, height: u32) -> Vec<u8> {
        vec![0; (width * height * 3) as usize]
    }

    fn painted(data: &[u8], width: u32) -> Vec<(u32, u32)> {
        data.chunks(3)
            .enumerate()
            .filter(|(_, p)| p != &[0, 0, 0])
            .map(|(i, _)| (i as u32 % width, i as u32 / width))
            .collect()
    }

    #[test]
    fn a_box_outlines_exactly_its_edge_pixels() {
        let mut data = canvas_rgb(8, 10);
        let canvas = Canvas {
            data: &mut data,
            width: 8,
            height: 10,
            mode: ImageMode::Rgb,
        };
        draw_all(canvas, &[[2.0, 3.0, 6.0, 8.0]], [255, 0, 0], 1).unwrap();
        let got = painted(&data, 8);
        let mut want = Vec::new();
        for y in 3..=7 {
            for x in 2..=5 {
                if x == 2 || x == 5 || y == 3 || y == 7 {
                    want.push((x, y));
                }
            }
        }
        want.sort_by_key(|&(x, y)| (y, x));
        assert_eq!(got, want);
        assert_eq!(&data[(3 * 8 + 2) * 3..(3 * 8 + 2) * 3 + 3], &[255, 0, 0]);
    }

    #[test]
    fn a_box_partly_outside_is_clipped_and_one_wholly_outside_draws_nothing() {
        let mut data = canvas_rgb(4, 4);
        let canvas = Canvas {
            data: &mut data,
            width: 4,
            height: 4,
            mode: ImageMode::Rgb,
        };
        draw_all(
            canvas,
            &[[-3.0, -3.0, 2.0, 2.0], [10.0, 10.0, 20.0, 20.0]],
            [0, 255, 0],
            1,
        )
        .unwrap();
        // Only the right and bottom edges (x = 1, y = 1) of the first box are inside.
        assert_eq!(painted(&data, 4), vec![(1, 0), (0, 1), (1, 1)]);
    }

    #[test]
    fn a_huge_box_and_thickness_cost_only_the_pixels_painted() {
        let mut data = canvas_rgb(4, 3);
        let canvas = Canvas {
            data: &mut data,
            width: 4,
            height: 3,
            mode: ImageMode::Rgb,
        };
        // Edges far outside on every side: the image lies inside the box, untouched.
        draw_all(canvas, &[[-1e15, -1e15, 1e15, 1e15]], [1, 1, 1], u32::MAX).unwrap();
        assert_eq!(painted(&data, 4).len(), 0);
        // An edge just outside, bands deeper than the box: every pixel is on the outline.
        let canvas = Canvas {
            data: &mut data,
            width: 4,
            height: 3,
            mode: ImageMode::Rgb,
        };
        draw_all(canvas, &[[-2.0, -2.0, 1e15, 1e15]], [1, 1, 1], u32::MAX).unwrap();
        assert_eq!(painted(&data, 4).len(), 12);
    }

    #[test]
    fn colors_follow_the_mode() {
        assert_eq!(pixel_bytes(ImageMode::L, [255, 0, 0]), vec![76]);
        assert_eq!(pixel_bytes(ImageMode::Rgba, [1, 2, 3]), vec![1, 2, 3, 255]);
        assert_eq!(
            pixel_bytes(ImageMode::L16, [255, 255, 255]),
            65535u16.to_ne_bytes().to_vec()
        );
        assert_eq!(parse_color("#00ff80").unwrap(), [0, 255, 128]);
        assert_eq!(parse_color("#fff").unwrap(), [255, 255, 255]);
        assert!(parse_color("#12345").is_err());
        assert!(parse_color("#+f+f+f").is_err());
        assert!(parse_color("mauve").is_err());
    }
}
