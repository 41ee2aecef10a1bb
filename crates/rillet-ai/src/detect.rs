//! `detect_objects`: YOLO-style (v8 head) ONNX detectors. Each image is letterboxed to the
//! model's input (or, for a graph of any size, only to the next multiple of its stride),
//! images of one input size run together, and the boxes that pass the confidence threshold
//! go through per-class non-maximum suppression and are mapped back to the original
//! image's pixel coordinates.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, FieldRef};
use rillet_common::{Result, RilletError};
use rillet_functions::image::{
    Letterboxed, expect_image, fitted_size, image_values_within, letterbox_rgb8_of,
};
use rillet_functions::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};

use crate::columns::ScoredBoxes;
use crate::model::{resolve, shared};
use crate::onnx::{Input, OnnxModel, Parallelism};

/// Detections kept per image at most, after suppression.
const MAX_DETECTIONS: usize = 300;

/// Images per model run when the graph takes any batch size. On a single-threaded session
/// a run of a few images is faster per image than one of many (a layer's activations for
/// 4 images at 320 px stay in the CPU cache; for 16 they do not): measured 1.65 s against
/// 1.75 s (runs of 8) and 1.98 s (16) for 300 photos on two sessions.
const RUN_IMAGES: usize = 4;

/// Grey of the letterbox padding (what YOLO-family models are trained with).
const PADDING: u8 = 114;

/// One detected object, in the source image's pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Index into [`Detector::labels`].
    pub class: usize,
    /// Class confidence, 0 to 1.
    pub score: f32,
    /// `[x1, y1, x2, y2]`: top-left and bottom-right corners.
    pub bbox: [f32; 4],
}

/// A loaded detector: the model, its input size and its class names.
pub struct Detector {
    model: OnnxModel,
    input: String,
    /// The graph's fixed batch size, if it has one: every run then has exactly this many
    /// images (short runs padded); otherwise runs have up to [`RUN_IMAGES`].
    batch: Option<usize>,
    width: u32,
    height: u32,
    /// The graph's stride when it takes any height and width: an image is then padded only
    /// to the next multiple of it ("rectangular" inference) instead of to the full square,
    /// which skips the model's work on grey padding (a fifth of it for a 4:3 photo).
    stride: Option<u32>,
    labels: Vec<String>,
    /// Input tensors of finished runs, filled again by the next ones (at most one per
    /// session), so each run does not fault in megabytes of fresh memory.
    spare_tensors: Mutex<Vec<Vec<f32>>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.model)
            .field("input", &self.input)
            .field("batch", &self.batch)
            .field("size", &(self.width, self.height))
            .field("stride", &self.stride)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// The detector of model `name_or_path` (a directory holding `model.onnx`), loaded on
    /// first use and shared by every caller in the process.
    pub fn shared(name_or_path: &str) -> Result<Arc<Self>> {
        let dir = resolve(name_or_path)?;
        shared("detector", &dir, || Self::load(&dir))
    }

    /// Load `dir/model.onnx`. The input size comes from the graph (or its `imgsz`
    /// metadata, as Ultralytics exports write it), class names from its `names` metadata,
    /// and, for a graph of any height and width, the stride from its `stride` metadata.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.onnx");
        // A small detector's batch splits better across single-threaded sessions than
        // one run's operators across threads.
        let model = OnnxModel::load_with(&path, Parallelism::Sessions)?;
        let bad = |what: &str| RilletError::Model(format!("{}: {what}", path.display()));
        let input = model
            .inputs()
            .first()
            .ok_or_else(|| bad("the graph has no input"))?;
        if input.shape.len() != 4 || (input.shape[1] != 3 && input.shape[1] != -1) {
            return Err(bad(
                "expected one image input shaped batch × 3 × height × width",
            ));
        }
        let from_graph = (input.shape[2] > 0 && input.shape[3] > 0)
            .then(|| (input.shape[3] as u32, input.shape[2] as u32));
        let from_metadata = model.metadata("imgsz")?.and_then(|text| parse_size(&text));
        let (width, height) = from_graph
            .or(from_metadata)
            .ok_or_else(|| bad("the input size is neither in the graph nor in imgsz metadata"))?;
        if width == 0 || height == 0 {
            return Err(bad(&format!("an input size of {width}x{height}")));
        }
        // Rectangular inputs only where every stride multiple up to the model's size is a
        // size the graph can take.
        let stride = match from_graph {
            Some(_) => None,
            None => model
                .metadata("stride")?
                .and_then(|text| text.trim().parse::<u32>().ok())
                .filter(|&stride| stride > 0 && width % stride == 0 && height % stride == 0),
        };
        let outputs = model.outputs();
        let classes = outputs
            .first()
            .and_then(|o| (o.shape.len() == 3 && o.shape[1] > 4).then(|| o.shape[1] as usize - 4));
        let names = model.metadata("names")?.map(|text| parse_names(&text));
        let labels = match (names, classes) {
            (Some(names), _) if !names.is_empty() => names,
            (_, Some(n)) => (0..n).map(|i| format!("class_{i}")).collect(),
            _ => {
                return Err(bad(
                    "no class names and no batch × (4 + classes) × anchors output",
                ));
            }
        };
        if let Some(declared) = classes
            && declared != labels.len()
        {
            return Err(bad(&format!(
                "the names metadata lists {} classes, the output has {declared}",
                labels.len()
            )));
        }
        Ok(Self {
            input: input.name.clone(),
            batch: (input.shape[0] > 0).then(|| input.shape[0] as usize),
            model,
            width,
            height,
            stride,
            labels,
            spare_tensors: Mutex::new(Vec::new()),
        })
    }

    /// Class names, by class index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model's input size, `(width, height)`.
    pub fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Letterbox one image for this model.
    pub fn prepare(
        &self,
        image: &rillet_functions::image::array::ImageView<'_>,
    ) -> std::result::Result<Prepared, String> {
        self.prepare_of(image, (image.width, image.height))
    }

    /// Letterbox pixels that stand for an image of `full` size (decoded reduced); boxes
    /// come back in the full image's coordinates.
    pub fn prepare_of(
        &self,
        image: &rillet_functions::image::array::ImageView<'_>,
        full: (u32, u32),
    ) -> std::result::Result<Prepared, String> {
        let canvas = self.canvas_for(full);
        let boxed = letterbox_rgb8_of(image, full, canvas.0, canvas.1, PADDING)?;
        Ok(Prepared {
            boxed,
            canvas,
            source: full,
        })
    }

    /// The input an image of `size` is letterboxed into: the model's size, or (a graph of
    /// any size) the image fitted within it and padded to the next multiple of the stride.
    /// Either way the image is fitted within the model's size (one side fills it).
    fn canvas_for(&self, size: (u32, u32)) -> (u32, u32) {
        match self.stride {
            Some(stride) => stride_canvas(size, (self.width, self.height), stride),
            None => (self.width, self.height),
        }
    }

    /// Detect objects in prepared images: the images sorted by input size and cut into runs
    /// of up to [`RUN_IMAGES`] images of one size (or of the graph's fixed batch size),
    /// which the model's sessions take side by side ([`OnnxModel::run_each`]). The results
    /// come back in the images' order.
    pub fn detect(
        &self,
        images: &[&Prepared],
        confidence: f32,
        iou: f32,
    ) -> Result<Vec<Vec<Detection>>> {
        let mut order: Vec<usize> = (0..images.len()).collect();
        order.sort_by_key(|&i| images[i].canvas);
        let sorted: Vec<&Prepared> = order.iter().map(|&i| images[i]).collect();
        // Runs of one input size, as many as the sessions take side by side.
        let most = self.batch.unwrap_or(RUN_IMAGES);
        let mut runs: Vec<&[&Prepared]> = Vec::new();
        let mut start = 0;
        while start < sorted.len() {
            let canvas = sorted[start].canvas;
            let mut end = start + 1;
            while end < sorted.len() && end - start < most && sorted[end].canvas == canvas {
                end += 1;
            }
            runs.push(&sorted[start..end]);
            start = end;
        }
        let found = self
            .model
            .run_each(&runs, |run| self.detect_run(run, confidence, iou))?;
        let mut out = vec![Vec::new(); images.len()];
        for (i, detections) in order.into_iter().zip(found.into_iter().flatten()) {
            out[i] = detections;
        }
        Ok(out)
    }

    /// One run of the model on images of one input size.
    fn detect_run(
        &self,
        images: &[&Prepared],
        confidence: f32,
        iou: f32,
    ) -> Result<Vec<Vec<Detection>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (w, h) = (images[0].canvas.0 as usize, images[0].canvas.1 as usize);
        let plane = w * h;
        // A graph of fixed batch size takes exactly that many images: a short run is
        // padded with blank ones, whose detections are dropped.
        let rows = self.batch.unwrap_or(images.len()).max(images.len());
        let mut tensor = self.spare_tensors.lock().pop().unwrap_or_default();
        tensor.clear();
        tensor.resize(rows * 3 * plane, 0.0);
        // Interleaved RGB bytes to planar 0-1 floats.
        for (image, chw) in images.iter().zip(tensor.chunks_exact_mut(3 * plane)) {
            let (r, gb) = chw.split_at_mut(plane);
            let (g, b) = gb.split_at_mut(plane);
            debug_assert_eq!(
                image.boxed.rgb.len(),
                3 * plane,
                "letterboxed to its canvas"
            );
            for (i, px) in image.boxed.rgb.chunks_exact(3).enumerate().take(plane) {
                r[i] = f32::from(px[0]) / 255.0;
                g[i] = f32::from(px[1]) / 255.0;
                b[i] = f32::from(px[2]) / 255.0;
            }
        }
        let shape = vec![rows as i64, 3, h as i64, w as i64];
        let output = self.model.run(
            vec![(self.input.clone(), Input::F32View(shape, &tensor))],
            &[0],
        );
        {
            let mut spare = self.spare_tensors.lock();
            if spare.len() < self.model.parallelism() {
                spare.push(tensor);
            }
        }
        let output = output?.remove(0);
        let classes = self.labels.len();
        if output.shape.len() != 3
            || output.shape[0] != rows as i64
            || output.shape[1] != 4 + classes as i64
        {
            return Err(RilletError::Model(format!(
                "{}: output of shape {:?}, expected [{rows}, {}, anchors]",
                self.model.path().display(),
                output.shape,
                4 + classes
            )));
        }
        let anchors = output.shape[2] as usize;
        Ok(images
            .iter()
            .zip(output.data.chunks_exact((4 + classes) * anchors))
            .map(|(image, rows)| decode(image, rows, anchors, classes, confidence, iou))
            .collect())
    }
}

/// An image letterboxed for a detector, with its original size.
#[derive(Debug, Clone)]
pub struct Prepared {
    boxed: Letterboxed,
    /// The input size it was letterboxed into, `(width, height)`.
    canvas: (u32, u32),
    source: (u32, u32),
}

/// The smallest input of `stride` multiples (at most `model`) that an image of `size`,
/// fitted within `model`, goes into.
fn stride_canvas(size: (u32, u32), model: (u32, u32), stride: u32) -> (u32, u32) {
    let (w, h) = fitted_size(size.0.max(1), size.1.max(1), model.0, model.1);
    (
        (w.div_ceil(stride) * stride).min(model.0),
        (h.div_ceil(stride) * stride).min(model.1),
    )
}

/// Candidate boxes of one image above `confidence`, suppressed per class and mapped back.
fn decode(
    image: &Prepared,
    rows: &[f32],
    anchors: usize,
    classes: usize,
    confidence: f32,
    iou: f32,
) -> Vec<Detection> {
    let at = |row: usize, anchor: usize| rows[row * anchors + anchor];
    let (source_w, source_h) = (image.source.0 as f32, image.source.1 as f32);
    let (scale_x, scale_y, left, top) = (
        image.boxed.scale_x as f32,
        image.boxed.scale_y as f32,
        image.boxed.left as f32,
        image.boxed.top as f32,
    );
    let mut candidates = Vec::new();
    for anchor in 0..anchors {
        let (class, score) = (0..classes)
            .map(|c| (c, at(4 + c, anchor)))
            .fold((0, f32::MIN), |best, x| if x.1 > best.1 { x } else { best });
        if score < confidence {
            continue;
        }
        let (cx, cy, bw, bh) = (at(0, anchor), at(1, anchor), at(2, anchor), at(3, anchor));
        let back = |v: f32, pad: f32, scale: f32, limit: f32| ((v - pad) / scale).clamp(0.0, limit);
        candidates.push(Detection {
            class,
            score,
            bbox: [
                back(cx - bw / 2.0, left, scale_x, source_w),
                back(cy - bh / 2.0, top, scale_y, source_h),
                back(cx + bw / 2.0, left, scale_x, source_w),
                back(cy + bh / 2.0, top, scale_y, source_h),
            ],
        });
    }
    suppress(candidates, iou)
}

/// Greedy non-maximum suppression within each class: the best-scoring box is kept and
/// boxes of its class overlapping it by more than `iou` are dropped.
pub fn suppress(mut candidates: Vec<Detection>, iou: f32) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in candidates {
        if kept.len() == MAX_DETECTIONS {
            break;
        }
        let overlaps = kept
            .iter()
            .any(|k| k.class == candidate.class && overlap(&k.bbox, &candidate.bbox) > iou);
        if !overlaps {
            kept.push(candidate);
        }
    }
    kept
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
fn overlap(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// `"[320, 320]"` → (320, 320) (height and width, equal for square inputs; a single number
/// means a square).
fn parse_size(text: &str) -> Option<(u32, u32)> {
    let numbers: Vec<u32> = text
        .trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')')
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    match numbers.as_slice() {
        [side] => Some((*side, *side)),
        [h, w] => Some((*w, *h)),
        _ => None,
    }
}

/// Class names from an Ultralytics `names` metadata value, a Python dict literal
/// `{0: 'person', 1: 'bicycle'}`, ordered by index.
fn parse_names(text: &str) -> Vec<String> {
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut rest = text.trim().trim_start_matches('{');
    while let Some(colon) = rest.find(':') {
        let Ok(index) = rest[..colon]
            .trim()
            .trim_start_matches(',')
            .trim()
            .parse::<usize>()
        else {
            break;
        };
        let after = rest[colon + 1..].trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            break;
        };
        let Some(end) = after[1..].find(quote) else {
            break;
        };
        names.push((index, after[1..1 + end].to_string()));
        rest = &after[end + 2..];
    }
    names.sort_by_key(|(i, _)| *i);
    names.into_iter().map(|(_, name)| name).collect()
}

/// `detect_objects(image, model, confidence, iou, on_error)`: per image, a list of
/// `{label, score, box: [x1, y1, x2, y2]}` in the image's own pixel coordinates.
#[derive(Debug)]
pub struct DetectObjects;

const DETECT_PARAMS: &[Param] = &[
    Param::optional("model", ParamKind::Str, "nudenet-320n"),
    Param::optional("confidence", ParamKind::Float, "0.25"),
    Param::optional("iou", ParamKind::Float, "0.45"),
    Param::ON_ERROR,
];

fn threshold(params: &Params, name: &str) -> Result<f32> {
    let value = params.float(name)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value as f32)
    } else {
        Err(RilletError::invalid_argument(format!(
            "detect_objects: {name} must be between 0 and 1, not {value}"
        )))
    }
}

impl Operator for DetectObjects {
    fn name(&self) -> &'static str {
        "detect_objects"
    }

    fn params(&self) -> &'static [Param] {
        DETECT_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_image(self.name(), &inputs[0])?;
        threshold(params, "confidence")?;
        threshold(params, "iou")?;
        // The model loads on the first call (shown as the operator waiting for "model
        // loading"), not while planning; here it only has to exist.
        resolve(params.str("model")?)?;
        Ok(Field::new(
            self.name(),
            ScoredBoxes::data_type("label"),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let detector = Detector::shared(call.params.str("model")?)?;
        let confidence = threshold(call.params, "confidence")?;
        let iou = threshold(call.params, "iou")?;
        let fit = Some(detector.input_size());
        let prepared = image_values_within(self.name(), call, errors, fit, |pixels| {
            detector.prepare_of(&pixels.view(), pixels.original_size())
        })?;
        let present: Vec<&Prepared> = prepared.iter().flatten().collect();
        let mut found = detector.detect(&present, confidence, iou)?.into_iter();
        let mut column = ScoredBoxes::new("label");
        for row in &prepared {
            if row.is_some() {
                for detection in found.next().expect("one result per image") {
                    let label = detector.labels()[detection.class].clone();
                    column.push(label, detection.score, detection.bbox);
                }
            }
            column.end_row(row.is_some());
        }
        column.finish()
    }

    fn batch_size(&self) -> Option<usize> {
        Some(16)
    }

    fn fuses_image_decode(&self) -> bool {
        true
    }

    fn shrinks_images(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ultralytics_metadata_parses() {
        assert_eq!(parse_size("[320, 320]"), Some((320, 320)));
        assert_eq!(parse_size("[480, 640]"), Some((640, 480)));
        assert_eq!(
            parse_names("{0: 'FACE_FEMALE', 1: \"it's\", 2: 'a, b'}"),
            vec!["FACE_FEMALE", "it's", "a, b"]
        );
    }

    #[test]
    fn rectangular_inputs_pad_to_the_stride_only() {
        // A 4:3 photo fits 320 x 240 and pads to 256, not 320; a square one fills the input.
        assert_eq!(stride_canvas((960, 720), (320, 320), 32), (320, 256));
        assert_eq!(stride_canvas((720, 960), (320, 320), 32), (256, 320));
        assert_eq!(stride_canvas((500, 500), (320, 320), 32), (320, 320));
        // A panorama keeps a few stride rows; a sliver keeps one.
        assert_eq!(stride_canvas((4000, 1000), (320, 320), 32), (320, 96));
        assert_eq!(stride_canvas((5000, 3), (320, 320), 32), (320, 32));
    }

    #[test]
    fn suppression_keeps_the_best_box_per_class() {
        let d = |class, score, x| Detection {
            class,
            score,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        let kept = suppress(
            vec![
                d(0, 0.5, 1.0),
                d(0, 0.9, 0.0),
                d(1, 0.4, 0.0),
                d(0, 0.3, 50.0),
            ],
            0.45,
        );
        assert_eq!(kept, vec![d(0, 0.9, 0.0), d(1, 0.4, 0.0), d(0, 0.3, 50.0)]);
    }
}
