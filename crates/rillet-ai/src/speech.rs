//! `detect_speech`: voice activity with the Silero VAD ONNX model. The model reads 32 ms
//! windows (512 samples at 16 kHz, 256 at 8 kHz, each after the previous window's last
//! 64 / 32 samples) and carries a recurrent state from window to window; a call runs the
//! clips of its batch side by side, one model run per window step. Window probabilities
//! become segments with hysteresis (start at `threshold`, end after `min_silence_ms` below
//! `threshold - 0.15`), short segments are dropped and the rest padded.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::{Result, RilletError};
use rillet_functions::audio::{expect_audio, list_array, map_waveforms, range_fields};
use rillet_functions::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};

use crate::model::{resolve, shared};
use crate::onnx::{Input, OnnxModel, Parallelism};

/// Width of the recurrent state per clip.
const STATE: usize = 128;

/// A loaded voice activity model.
#[derive(Debug)]
pub struct SpeechDetector {
    model: OnnxModel,
}

/// Samples per window and of context before it, at a supported rate.
fn window(rate: u32) -> Option<(usize, usize)> {
    match rate {
        16_000 => Some((512, 64)),
        8_000 => Some((256, 32)),
        _ => None,
    }
}

impl SpeechDetector {
    /// The detector of model `name_or_path` (a directory holding `model.onnx`), loaded on
    /// first use and shared by every caller in the process.
    pub fn shared(name_or_path: &str) -> Result<Arc<Self>> {
        let dir = resolve(name_or_path)?;
        shared("speech-detector", &dir, || Self::load(&dir))
    }

    /// Load `dir/model.onnx`, checking it takes Silero's inputs.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.onnx");
        // Each window step is a tiny run: one single-threaded session per core, the clips
        // split between them, beats spreading each step over the cores.
        let model = OnnxModel::load_with(&path, Parallelism::Sessions)?;
        let names: Vec<&str> = model.inputs().iter().map(|p| p.name.as_str()).collect();
        if names != ["input", "state", "sr"] || model.outputs().len() < 2 {
            return Err(RilletError::Model(format!(
                "{}: inputs {names:?}, expected Silero VAD's [input, state, sr] and two outputs",
                path.display()
            )));
        }
        Ok(Self { model })
    }

    /// Speech probability of every window of each mono clip (all at `rate`, 16 or 8 kHz).
    /// The clips are dealt, longest first, into one group per session of the model, and
    /// the groups run side by side (see [`Parallelism::Sessions`]).
    pub fn probabilities(&self, clips: &[&[f32]], rate: u32) -> Result<Vec<Vec<f32>>> {
        let (size, context) = window(rate).ok_or_else(|| {
            RilletError::invalid_data(format!(
                "voice activity needs 16 or 8 kHz audio, not {rate} Hz"
            ))
        })?;
        let ways = self.model.parallelism().min(clips.len());
        if ways <= 1 {
            return self.side_by_side(clips, size, context, rate);
        }
        let mut order: Vec<usize> = (0..clips.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(clips[i].len()));
        let groups: Vec<Vec<usize>> = (0..ways)
            .map(|g| order.iter().copied().skip(g).step_by(ways).collect())
            .collect();
        let parts: Vec<Vec<&[f32]>> = groups
            .iter()
            .map(|group| group.iter().map(|&i| clips[i]).collect())
            .collect();
        // As many parts as sessions: each of run_each's threads takes one.
        let found = self
            .model
            .run_each(&parts, |part| self.side_by_side(part, size, context, rate))?;
        let mut probs: Vec<Vec<f32>> = vec![Vec::new(); clips.len()];
        for (group, group_probs) in groups.iter().zip(found) {
            for (&i, p) in group.iter().zip(group_probs) {
                probs[i] = p;
            }
        }
        Ok(probs)
    }

    /// [`probabilities`](Self::probabilities) of clips side by side in one session: one
    /// run per window step, the batch shrinking as short clips end.
    fn side_by_side(
        &self,
        clips: &[&[f32]],
        size: usize,
        context: usize,
        rate: u32,
    ) -> Result<Vec<Vec<f32>>> {
        // Longest first, so the clips still running are always a prefix.
        let mut order: Vec<usize> = (0..clips.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(clips[i].len()));
        let windows = |i: usize| clips[i].len().div_ceil(size);
        let mut probs: Vec<Vec<f32>> = clips
            .iter()
            .map(|c| Vec::with_capacity(c.len() / size + 1))
            .collect();
        let mut state = vec![0f32; 2 * order.len() * STATE];
        let mut active = order.len();
        let mut step = 0;
        loop {
            while active > 0 && windows(order[active - 1]) <= step {
                active -= 1;
            }
            if active == 0 {
                break;
            }
            let width = context + size;
            let mut input = vec![0f32; active * width];
            for (slot, &clip) in order[..active].iter().enumerate() {
                let samples = clips[clip];
                let start = (step * size).saturating_sub(context);
                let end = (step * size + size).min(samples.len());
                // The first window's context is silence; the last window is zero-padded.
                let offset = if step == 0 { context } else { 0 };
                let row = &mut input[slot * width..(slot + 1) * width];
                row[offset..offset + (end - start)].copy_from_slice(&samples[start..end]);
            }
            let inputs = vec![
                (
                    "input".to_string(),
                    Input::F32(vec![active as i64, width as i64], input),
                ),
                (
                    "state".to_string(),
                    Input::F32(
                        vec![2, active as i64, STATE as i64],
                        take_state(&state, active, order.len()),
                    ),
                ),
                ("sr".to_string(), Input::I64(Vec::new(), vec![rate as i64])),
            ];
            let mut outputs = self.model.run(inputs, &[0, 1])?;
            let next = outputs.pop().expect("two outputs");
            let out = outputs.pop().expect("two outputs");
            if out.data.len() != active || next.data.len() != 2 * active * STATE {
                return Err(RilletError::Model(format!(
                    "{}: outputs of shapes {:?} and {:?} for a batch of {active}",
                    self.model.path().display(),
                    out.shape,
                    next.shape
                )));
            }
            put_state(&mut state, &next.data, active, order.len());
            for (slot, &clip) in order[..active].iter().enumerate() {
                probs[clip].push(out.data[slot]);
            }
            step += 1;
        }
        Ok(probs)
    }
}

/// The `[2, active, STATE]` state of the first `active` clips out of the `[2, all, STATE]`
/// state.
fn take_state(state: &[f32], active: usize, all: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * active * STATE);
    for layer in 0..2 {
        let start = layer * all * STATE;
        out.extend_from_slice(&state[start..start + active * STATE]);
    }
    out
}

/// Write the first `active` clips' new state back.
fn put_state(state: &mut [f32], next: &[f32], active: usize, all: usize) {
    for layer in 0..2 {
        let (to, from) = (layer * all * STATE, layer * active * STATE);
        state[to..to + active * STATE].copy_from_slice(&next[from..from + active * STATE]);
    }
}

/// How window probabilities become speech segments.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// Probability that starts speech.
    pub threshold: f32,
    /// Shorter speech is dropped.
    pub min_speech_ms: f64,
    /// Silence (below `threshold - 0.15`) this long ends a segment.
    pub min_silence_ms: f64,
    /// Added before and after each segment (halving the gap where neighbours would overlap).
    pub pad_ms: f64,
}

/// Speech segments, `(start_ms, end_ms)`, of a clip of `samples` samples at `rate` from its
/// window probabilities.
///
/// ```
/// use rillet_ai::speech::{SegmentOptions, segments};
/// let options = SegmentOptions { threshold: 0.5, min_speech_ms: 100.0, min_silence_ms: 100.0, pad_ms: 0.0 };
/// // 32 ms windows: silence, 10 windows of speech, silence.
/// let mut probs = vec![0.0; 5];
/// probs.extend([0.9; 10]);
/// probs.extend([0.0; 10]);
/// assert_eq!(segments(&probs, 16_000, 25 * 512, options), vec![(160, 480)]);
/// ```
pub fn segments(
    probs: &[f32],
    rate: u32,
    samples: usize,
    options: SegmentOptions,
) -> Vec<(i64, i64)> {
    let size = window(rate).map(|w| w.0).unwrap_or(512);
    let per_ms = rate as f64 / 1000.0;
    let (min_speech, min_silence, pad) = (
        (options.min_speech_ms * per_ms) as usize,
        (options.min_silence_ms * per_ms) as usize,
        (options.pad_ms * per_ms) as usize,
    );
    let low = (options.threshold - 0.15).max(0.01);
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut start: Option<usize> = None;
    let mut quiet_since: Option<usize> = None;
    for (i, &p) in probs.iter().enumerate() {
        let at = i * size;
        if p >= options.threshold {
            quiet_since = None;
            start.get_or_insert(at);
            continue;
        }
        let Some(begun) = start else { continue };
        if p < low {
            let since = *quiet_since.get_or_insert(at);
            if at + size - since >= min_silence {
                if since - begun >= min_speech {
                    found.push((begun, since));
                }
                start = None;
                quiet_since = None;
            }
        }
    }
    if let Some(begun) = start
        && samples.saturating_sub(begun) >= min_speech
    {
        found.push((begun, samples));
    }
    // Pad, sharing a gap shorter than two pads between its neighbours.
    let mut padded: Vec<(usize, usize)> = found
        .iter()
        .map(|&(s, e)| (s.saturating_sub(pad), (e + pad).min(samples)))
        .collect();
    for i in 1..padded.len() {
        let (previous_end, this_start) = (found[i - 1].1, found[i].0);
        if this_start - previous_end < 2 * pad {
            let middle = previous_end + (this_start - previous_end) / 2;
            padded[i - 1].1 = middle;
            padded[i].0 = middle;
        }
    }
    let ms = |sample: usize| (sample as f64 / per_ms).round() as i64;
    padded.into_iter().map(|(s, e)| (ms(s), ms(e))).collect()
}

/// `detect_speech(audio, model, threshold, min_speech_ms, min_silence_ms, pad_ms,
/// on_error)`: the stretches of speech, a list of struct{start_ms, end_ms}, the shape
/// `audio_split_by_ranges` takes. Audio must be at 16 or 8 kHz (resample first); channels
/// are mixed to mono.
#[derive(Debug)]
pub struct DetectSpeech;

const SPEECH_PARAMS: &[Param] = &[
    Param::optional("model", ParamKind::Str, "silero-vad"),
    Param::optional("threshold", ParamKind::Float, "0.5"),
    Param::optional("min_speech_ms", ParamKind::Float, "250"),
    Param::optional("min_silence_ms", ParamKind::Float, "100"),
    Param::optional("pad_ms", ParamKind::Float, "30"),
    Param::ON_ERROR,
];

fn options(params: &Params) -> Result<SegmentOptions> {
    let threshold = params.float("threshold")?;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(RilletError::invalid_argument(format!(
            "detect_speech: threshold must be between 0 and 1, not {threshold}"
        )));
    }
    let duration = |name: &str| -> Result<f64> {
        let value = params.float(name)?;
        if value >= 0.0 {
            Ok(value)
        } else {
            Err(RilletError::invalid_argument(format!(
                "detect_speech: {name} must not be negative, not {value}"
            )))
        }
    };
    Ok(SegmentOptions {
        threshold: threshold as f32,
        min_speech_ms: duration("min_speech_ms")?,
        min_silence_ms: duration("min_silence_ms")?,
        pad_ms: duration("pad_ms")?,
    })
}

impl Operator for DetectSpeech {
    fn name(&self) -> &'static str {
        "detect_speech"
    }

    fn params(&self) -> &'static [Param] {
        SPEECH_PARAMS
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        options(params)?;
        // The model loads on the first call (shown as the operator waiting for "model
        // loading"), not while planning; here it only has to exist.
        resolve(params.str("model")?)?;
        Ok(Field::new(
            self.name(),
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(range_fields()),
                true,
            ))),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let detector = SpeechDetector::shared(call.params.str("model")?)?;
        let options = options(call.params)?;
        // Mono samples per row, grouped by rate.
        let clips = map_waveforms(self.name(), call, errors, |wave, _| {
            if window(wave.rate).is_none() {
                return Err(format!(
                    "detect_speech needs 16 kHz or 8 kHz audio, this is {} Hz: resample it first \
                     (col(...).audio.resample(16000))",
                    wave.rate
                ));
            }
            let c = wave.channels.max(1) as usize;
            let mono: Vec<f32> = if c == 1 {
                wave.samples.into_owned()
            } else {
                wave.samples
                    .chunks_exact(c)
                    .map(|frame| frame.iter().sum::<f32>() / c as f32)
                    .collect()
            };
            Ok((wave.rate, mono))
        })?;
        let mut found: Vec<Option<Vec<(i64, i64)>>> = vec![None; clips.len()];
        for rate in [16_000, 8_000] {
            let rows: Vec<usize> = (0..clips.len())
                .filter(|&r| matches!(&clips[r], Some((r8, _)) if *r8 == rate))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let samples: Vec<&[f32]> = rows
                .iter()
                .map(|&r| clips[r].as_ref().expect("filtered").1.as_slice())
                .collect();
            let probs = detector.probabilities(&samples, rate)?;
            for ((&row, p), s) in rows.iter().zip(probs).zip(&samples) {
                found[row] = Some(segments(&p, rate, s.len(), options));
            }
        }
        let (starts, ends): (Vec<i64>, Vec<i64>) =
            found.iter().flatten().flatten().copied().unzip();
        let items = StructArray::try_new(
            range_fields(),
            vec![
                Arc::new(Int64Array::from(starts)),
                Arc::new(Int64Array::from(ends)),
            ],
            None,
        )?;
        let lengths: Vec<Option<usize>> = found.iter().map(|f| f.as_ref().map(Vec::len)).collect();
        list_array(
            Field::new("item", DataType::Struct(range_fields()), true),
            Arc::new(items),
            &lengths,
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(32)
    }
}
