//! `ocr`: text in images with PaddleOCR's PP-OCR ONNX models. The detector's probability map
//! (the image scaled to at most 960 px, sides a multiple of 32) is thresholded into regions;
//! each region's box is grown (the detector marks the text's core) and mapped back to the
//! image; the recogniser reads each crop at height 48 and CTC-decodes its characters with
//! the character set stored in the model. Boxes are axis-aligned: text rotated by more than
//! a few degrees is read poorly (the direction classifier is not used).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, FieldRef};
use rillet_common::types::ElementType;
use rillet_common::{Result, RilletError};
use rillet_functions::image::array::ImageView;
use rillet_functions::image::{expect_image, image_values, resize_rgb8};
use rillet_functions::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};

use crate::columns::ScoredBoxes;
use crate::model::{resolve, shared};
use crate::onnx::{Input, OnnxModel};

/// Longest side the detector sees.
const DETECT_SIDE: u32 = 960;
/// Probability over which a pixel is text.
const PIXEL_THRESHOLD: f32 = 0.3;
/// Mean probability a region needs to count as text.
const REGION_THRESHOLD: f32 = 0.6;
/// How much a region's box grows: by `area × UNCLIP / perimeter` on every side.
const UNCLIP: f32 = 1.5;
/// Height of the recogniser's input.
const LINE_HEIGHT: u32 = 48;
/// Widest crop the recogniser reads at once, in pixels at `LINE_HEIGHT`.
const MAX_LINE_WIDTH: u32 = 2048;
/// Crops per recogniser run.
const LINES_PER_RUN: usize = 8;

/// One line of text found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct TextLine {
    /// The characters read.
    pub text: String,
    /// Mean confidence of the characters, 0 to 1.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in the image's pixels.
    pub bbox: [f32; 4],
}

/// PP-OCR's detector and recogniser with the recogniser's character set.
#[derive(Debug)]
pub struct TextReader {
    detector: OnnxModel,
    recogniser: OnnxModel,
    /// Index 0 is CTC's blank; the model's characters follow, then a space.
    characters: Vec<String>,
}

impl TextReader {
    /// The reader of model `name_or_path` (a directory holding `det.onnx` and `rec.onnx`),
    /// loaded on first use and shared by every caller in the process.
    pub fn shared(name_or_path: &str) -> Result<Arc<Self>> {
        let dir = resolve(name_or_path)?;
        shared("text-reader", &dir, || Self::load(&dir))
    }

    /// Load `dir/det.onnx` and `dir/rec.onnx`; the character set is the recogniser's
    /// `character` metadata.
    pub fn load(dir: &Path) -> Result<Self> {
        let detector = OnnxModel::load(&dir.join("det.onnx"))?;
        let recogniser = OnnxModel::load(&dir.join("rec.onnx"))?;
        let listed = recogniser.metadata("character")?.ok_or_else(|| {
            RilletError::Model(format!(
                "{}: no character set in its metadata",
                recogniser.path().display()
            ))
        })?;
        let mut characters = vec![String::new()];
        characters.extend(listed.split('\n').map(String::from));
        characters.push(" ".to_string());
        Ok(Self {
            detector,
            recogniser,
            characters,
        })
    }

    /// The lines of text in `image`, top to bottom, then left to right. Lines read with a
    /// mean confidence under `min_score` are left out.
    pub fn read(&self, image: &ImageView<'_>, min_score: f32) -> Result<Vec<TextLine>> {
        let boxes = self.find_text(image)?;
        let mut lines = Vec::new();
        // Similar widths together, so a run pads little.
        let mut crops: Vec<(usize, Vec<u8>, u32)> = Vec::new();
        for (i, bbox) in boxes.iter().enumerate() {
            if let Some((rgb, width)) = line_crop(image, bbox) {
                crops.push((i, rgb, width));
            }
        }
        crops.sort_by_key(|c| c.2);
        let mut read: Vec<Option<(String, f32)>> = vec![None; boxes.len()];
        for run in crops.chunks(LINES_PER_RUN) {
            for ((i, _, _), found) in run.iter().zip(self.recognise(run)?) {
                read[*i] = Some(found);
            }
        }
        for (bbox, found) in boxes.iter().zip(read) {
            if let Some((text, score)) = found
                && score >= min_score
                && !text.trim().is_empty()
            {
                lines.push(TextLine {
                    text,
                    score,
                    bbox: *bbox,
                });
            }
        }
        Ok(lines)
    }

    /// Text boxes in the image's pixels, top to bottom, then left to right.
    fn find_text(&self, image: &ImageView<'_>) -> Result<Vec<[f32; 4]>> {
        let (w0, h0) = (image.width, image.height);
        if w0 == 0 || h0 == 0 {
            return Ok(Vec::new());
        }
        let scale = (DETECT_SIDE as f64 / w0.max(h0) as f64).min(1.0);
        let side = |v: u32| (((v as f64 * scale) / 32.0).round() as u32 * 32).max(32);
        let (w, h) = (side(w0), side(h0));
        let rgb = resize_rgb8(image, w, h).map_err(RilletError::invalid_data)?;
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        let plane = (w * h) as usize;
        let mut x = vec![0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                x[c * plane + i] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        let input = self.detector.inputs()[0].name.clone();
        let prob = self
            .detector
            .run(
                vec![(input, Input::F32(vec![1, 3, h as i64, w as i64], x))],
                &[0],
            )?
            .remove(0);
        if prob.data.len() != plane {
            return Err(RilletError::Model(format!(
                "{}: probability map of shape {:?} for a {w}x{h} input",
                self.detector.path().display(),
                prob.shape
            )));
        }
        let (sx, sy) = (w0 as f32 / w as f32, h0 as f32 / h as f32);
        let mut boxes: Vec<[f32; 4]> = regions(&prob.data, w as usize, h as usize)
            .into_iter()
            .map(|[x1, y1, x2, y2]| {
                [
                    (x1 * sx).clamp(0.0, w0 as f32),
                    (y1 * sy).clamp(0.0, h0 as f32),
                    (x2 * sx).clamp(0.0, w0 as f32),
                    (y2 * sy).clamp(0.0, h0 as f32),
                ]
            })
            .collect();
        // Reading order: by line (boxes whose tops are within half a line), then left to right.
        boxes.sort_by(|a, b| a[1].total_cmp(&b[1]));
        let mut ordered: Vec<[f32; 4]> = Vec::with_capacity(boxes.len());
        let mut line: Vec<[f32; 4]> = Vec::new();
        for bbox in boxes {
            if let Some(first) = line.first()
                && bbox[1] - first[1] > (first[3] - first[1]) / 2.0
            {
                line.sort_by(|a, b| a[0].total_cmp(&b[0]));
                ordered.append(&mut line);
            }
            line.push(bbox);
        }
        line.sort_by(|a, b| a[0].total_cmp(&b[0]));
        ordered.append(&mut line);
        Ok(ordered)
    }

    /// Read one run of crops (RGB at `LINE_HEIGHT`, each its width) padded to the widest.
    fn recognise(&self, run: &[(usize, Vec<u8>, u32)]) -> Result<Vec<(String, f32)>> {
        let width = run.iter().map(|c| c.2).max().unwrap_or(1) as usize;
        let height = LINE_HEIGHT as usize;
        let plane = width * height;
        let mut x = vec![0f32; run.len() * 3 * plane];
        for ((_, rgb, w), item) in run.iter().zip(x.chunks_exact_mut(3 * plane)) {
            let w = *w as usize;
            for row in 0..height {
                for col in 0..w {
                    let px = &rgb[(row * w + col) * 3..(row * w + col) * 3 + 3];
                    for c in 0..3 {
                        item[c * plane + row * width + col] = (px[c] as f32 / 255.0 - 0.5) / 0.5;
                    }
                }
            }
        }
        let input = self.recogniser.inputs()[0].name.clone();
        let out = self
            .recogniser
            .run(
                vec![(
                    input,
                    Input::F32(vec![run.len() as i64, 3, height as i64, width as i64], x),
                )],
                &[0],
            )?
            .remove(0);
        let classes = self.characters.len();
        if out.shape.len() != 3
            || out.shape[0] != run.len() as i64
            || out.shape[2] != classes as i64
        {
            return Err(RilletError::Model(format!(
                "{}: output of shape {:?}, expected [{}, steps, {classes}]",
                self.recogniser.path().display(),
                out.shape,
                run.len()
            )));
        }
        let steps = out.shape[1] as usize;
        Ok(out
            .data
            .chunks_exact(steps * classes)
            .map(|item| self.ctc_decode(item, steps, classes))
            .collect())
    }

    /// Greedy CTC: the best class per step, repeats collapsed, blanks dropped; the score is
    /// the mean probability of the characters kept.
    fn ctc_decode(&self, item: &[f32], steps: usize, classes: usize) -> (String, f32) {
        let mut text = String::new();
        let (mut total, mut kept) = (0f32, 0usize);
        let mut previous = 0usize;
        for step in item.chunks_exact(classes).take(steps) {
            let (best, p) = step
                .iter()
                .copied()
                .enumerate()
                .fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
            if best != 0 && best != previous {
                text.push_str(&self.characters[best]);
                total += p;
                kept += 1;
            }
            previous = best;
        }
        let score = if kept == 0 { 0.0 } else { total / kept as f32 };
        (text, score)
    }
}

/// Boxes (`[x1, y1, x2, y2]`, detector pixels) of the connected regions of `prob` over
/// `PIXEL_THRESHOLD` whose mean probability reaches `REGION_THRESHOLD`, each grown by the
/// unclip distance.
fn regions(prob: &[f32], width: usize, height: usize) -> Vec<[f32; 4]> {
    let mut seen = vec![false; prob.len()];
    let mut found = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..prob.len() {
        if seen[start] || prob[start] <= PIXEL_THRESHOLD {
            continue;
        }
        seen[start] = true;
        queue.push_back(start);
        let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
        let (mut sum, mut count) = (0f32, 0usize);
        while let Some(i) = queue.pop_front() {
            let (x, y) = (i % width, i / width);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y));
            sum += prob[i];
            count += 1;
            let mut visit = |j: usize| {
                if !seen[j] && prob[j] > PIXEL_THRESHOLD {
                    seen[j] = true;
                    queue.push_back(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - width);
            }
            if y + 1 < height {
                visit(i + width);
            }
        }
        let (w, h) = ((x2 - x1 + 1) as f32, (y2 - y1 + 1) as f32);
        if w.min(h) < 3.0 || sum / (count as f32) < REGION_THRESHOLD {
            continue;
        }
        let grow = w * h * UNCLIP / (2.0 * (w + h));
        found.push([
            x1 as f32 - grow,
            y1 as f32 - grow,
            x2 as f32 + 1.0 + grow,
            y2 as f32 + 1.0 + grow,
        ]);
    }
    found
}

/// The pixels of `bbox` in `image`, as RGB resized to `LINE_HEIGHT` high (width following
/// the aspect ratio, at most `MAX_LINE_WIDTH`), and that width; `None` for an empty box.
fn line_crop(image: &ImageView<'_>, bbox: &[f32; 4]) -> Option<(Vec<u8>, u32)> {
    let x1 = bbox[0].floor().max(0.0) as u32;
    let y1 = bbox[1].floor().max(0.0) as u32;
    let x2 = (bbox[2].ceil() as u32).min(image.width);
    let y2 = (bbox[3].ceil() as u32).min(image.height);
    if x2 <= x1 || y2 <= y1 {
        return None;
    }
    let (cw, ch) = (x2 - x1, y2 - y1);
    let c = image.mode.buffer_len(1, 1);
    let mut pixels = Vec::with_capacity(cw as usize * ch as usize * c);
    for y in y1..y2 {
        let start = (y as usize * image.width as usize + x1 as usize) * c;
        pixels.extend_from_slice(&image.data[start..start + cw as usize * c]);
    }
    let crop = ImageView {
        width: cw,
        height: ch,
        mode: image.mode,
        data: &pixels,
    };
    let width =
        ((LINE_HEIGHT as f32 * cw as f32 / ch as f32).ceil() as u32).clamp(8, MAX_LINE_WIDTH);
    resize_rgb8(&crop, width, LINE_HEIGHT)
        .ok()
        .map(|rgb| (rgb, width))
}

/// `ocr(image, model, min_score, on_error)`: per image, a list of `{text, score, box: [x1,
/// y1, x2, y2]}` in reading order.
#[derive(Debug)]
pub struct Ocr;

const OCR_PARAMS: &[Param] = &[
    Param::optional("model", ParamKind::Str, "pp-ocrv4"),
    Param::optional("min_score", ParamKind::Float, "0.5"),
    Param::ON_ERROR,
];

impl Operator for Ocr {
    fn name(&self) -> &'static str {
        "ocr"
    }

    fn params(&self) -> &'static [Param] {
        OCR_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        params.float("min_score")?;
        // The model loads on the first call (shown as the operator waiting for "model
        // loading"), not while planning; here it only has to exist.
        resolve(params.str("model")?)?;
        Ok(Field::new(
            self.name(),
            ScoredBoxes::data_type("text"),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let reader = TextReader::shared(call.params.str("model")?)?;
        let min_score = call.params.float("min_score")? as f32;
        // A model failure is not the row's fault: it comes out of the closure and fails
        // the call below.
        let rows = image_values(self.name(), call, errors, |pixels| {
            let view = pixels.view();
            if view.mode.element_type() != ElementType::U8 {
                return Err(format!("ocr reads 8-bit images; this one is {}", view.mode));
            }
            Ok(reader.read(&view, min_score))
        })?;
        let mut column = ScoredBoxes::new("text");
        for row in rows {
            let valid = row.is_some();
            if let Some(lines) = row {
                for line in lines? {
                    column.push(line.text, line.score, line.bbox);
                }
            }
            column.end_row(valid);
        }
        column.finish()
    }

    fn batch_size(&self) -> Option<usize> {
        Some(4)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_grown_boxes_of_confident_blobs() {
        // A 20 x 10 map: one confident 6 x 4 blob, one faint blob, one sliver.
        let (w, h) = (20, 10);
        let mut prob = vec![0f32; w * h];
        for y in 2..6 {
            for x in 3..9 {
                prob[y * w + x] = 0.9;
            }
        }
        for y in 2..6 {
            for x in 12..16 {
                prob[y * w + x] = 0.4; // text-like pixels, but not confident as a region
            }
        }
        prob[8 * w + 18] = 0.9; // too small
        let found = regions(&prob, w, h);
        assert_eq!(found.len(), 1);
        let grow = 6.0 * 4.0 * UNCLIP / 20.0;
        assert_eq!(found[0], [3.0 - grow, 2.0 - grow, 9.0 + grow, 6.0 + grow]);
    }
}
