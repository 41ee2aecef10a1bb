//! Splitting audio into pieces to explode: by duration (as Audio pieces or clip
//! references) and by time ranges.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Builder, StringBuilder, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use rillet_common::types::{AudioType, ClipType, display_type};
use rillet_common::{Result, RilletError};

use super::AUDIO_BATCH_ROWS;
use super::codec::{self, DEFAULT_MAX_DECODED_BYTES};
use super::input::{
    AudioInput, audio_array, expect_audio, is_audio, list_array, list_of, map_waveforms, per_row,
};
use super::{Waveform, dsp};
use crate::input::RowFailure;
use crate::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};

/// `(start_ms, end_ms)` pairs of fixed-length segments covering `duration_ms`; the last may
/// be shorter.
pub(crate) fn segments(duration_ms: f64, segment_ms: f64) -> Vec<(f64, f64)> {
    let count = (duration_ms / segment_ms).ceil() as usize;
    (0..count)
        .map(|i| {
            (
                i as f64 * segment_ms,
                ((i + 1) as f64 * segment_ms).min(duration_ms),
            )
        })
        .collect()
}

/// The clip references of one row: its URI and `(start_ms, end_ms)` ranges.
pub(crate) type ClipRow = (String, Vec<(f64, f64)>);

/// Clip references `{uri, start_ms, end_ms}`, one list per row.
pub(crate) fn clip_lists(rows: &[Option<ClipRow>]) -> Result<ArrayRef> {
    let (mut uris, mut starts, mut ends) = (
        StringBuilder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for (uri, ranges) in rows.iter().flatten() {
        for (s, e) in ranges {
            uris.append_value(uri);
            starts.append_value(s.round() as i64);
            ends.append_value(e.round() as i64);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(uris.finish()),
        Arc::new(starts.finish()),
        Arc::new(ends.finish()),
    ];
    let clips = StructArray::try_new(ClipType::storage_fields(), columns, None)?;
    let lengths: Vec<Option<usize>> = rows
        .iter()
        .map(|r| r.as_ref().map(|(_, ranges)| ranges.len()))
        .collect();
    list_array(ClipType.field("item"), Arc::new(clips), &lengths)
}

/// Audio pieces, one list per row.
fn audio_lists(rows: Vec<Option<Vec<Waveform<'static>>>>) -> Result<ArrayRef> {
    let lengths: Vec<Option<usize>> = rows.iter().map(|r| r.as_ref().map(Vec::len)).collect();
    let pieces: Vec<Option<Waveform<'static>>> =
        rows.into_iter().flatten().flatten().map(Some).collect();
    list_array(AudioType.field("item"), audio_array(&pieces)?, &lengths)
}

/// `audio_split_by_duration(x, segment_ms, output, on_error)`: consecutive segments of
/// `segment_ms` (the last may be shorter), as a list to explode: Audio pieces
/// (`output="waveform"`) or clip references `{uri, start_ms, end_ms}` (`output="ref"`,
/// which reads only the header and copies no samples; it needs a File or path input).
#[derive(Debug)]
pub struct SplitByDuration;

/// The `segment_ms` option of splitting operators: at least 1 ms.
pub(crate) fn segment_ms(params: &Params) -> Result<f64> {
    let segment = params.float("segment_ms")?;
    if segment.is_nan() || segment < 1.0 {
        return Err(RilletError::invalid_argument(format!(
            "segment_ms must be at least 1, not {segment}"
        )));
    }
    Ok(segment)
}

fn split_options(params: &Params) -> Result<(f64, bool)> {
    let segment = segment_ms(params)?;
    match params.str("output")? {
        "waveform" => Ok((segment, false)),
        "ref" => Ok((segment, true)),
        other => Err(RilletError::invalid_argument(format!(
            "output must be \"waveform\" or \"ref\", not {other:?}"
        ))),
    }
}

impl Operator for SplitByDuration {
    fn name(&self) -> &'static str {
        "audio_split_by_duration"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("segment_ms", ParamKind::Float),
            Param::optional("output", ParamKind::Str, "waveform"),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        let (_, refs) = split_options(params)?;
        if refs && is_audio(&inputs[0]) {
            return Err(RilletError::invalid_argument(format!(
                "{}: output=\"ref\" needs a File or path input to refer to; column {:?} is decoded Audio",
                self.name(),
                inputs[0].name()
            )));
        }
        Ok(list_of(
            if refs {
                ClipType.field("item")
            } else {
                AudioType.field("item")
            },
            self.name(),
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let (segment, refs) = split_options(call.params)?;
        if refs {
            let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
            let rows = per_row(
                &input,
                call,
                errors,
                |input, row| {
                    let facts = input.facts(row)?;
                    // A clip's segments are times in its file.
                    let offset = input.offset_ms(row);
                    Ok(facts.map(|f| {
                        let ranges = segments(f.probe.duration_ms(), segment);
                        (
                            input.uri(row).unwrap_or_default().to_string(),
                            ranges
                                .into_iter()
                                .map(|(s, e)| (s + offset, e + offset))
                                .collect(),
                        )
                    }))
                },
                |(uri, ranges), _| {
                    if uri.is_empty() {
                        Err("output=\"ref\" needs a File or path, not bytes".into())
                    } else {
                        Ok((uri, ranges))
                    }
                },
            )?;
            return clip_lists(&rows);
        }
        let rows = map_waveforms(self.name(), call, errors, |wave, _| {
            Ok(segments(wave.duration_ms(), segment)
                .into_iter()
                .map(|(s, e)| dsp::slice_ms(&wave, s, e))
                .collect())
        })?;
        audio_lists(rows)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// The `(start_ms, end_ms)` ranges of one row of a ranges column: a list of
/// struct{start_ms, end_ms} (as `audio_detect_silence` gives) or a flat list of numbers
/// taken in pairs.
fn ranges_at(
    column: &ArrayRef,
    row: usize,
) -> std::result::Result<Option<Vec<(f64, f64)>>, String> {
    if column.is_null(row) {
        return Ok(None);
    }
    let items = match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().value(row),
        DataType::LargeList(_) => column.as_list::<i64>().value(row),
        DataType::FixedSizeList(_, _) => column.as_fixed_size_list().value(row),
        other => return Err(format!("ranges must be a list, not {other}")),
    };
    let floats = |array: &ArrayRef| -> std::result::Result<Vec<f64>, String> {
        let cast =
            arrow::compute::cast(array, &DataType::Float64).map_err(|e| format!("ranges: {e}"))?;
        let cast = cast.as_primitive::<arrow::datatypes::Float64Type>();
        if cast.null_count() > 0 {
            return Err("ranges contain nulls".into());
        }
        Ok(cast.values().to_vec())
    };
    let pairs: Vec<(f64, f64)> = match items.data_type() {
        DataType::Struct(_) => {
            let items = items.as_struct();
            let (Some(start), Some(end)) = (
                items.column_by_name("start_ms"),
                items.column_by_name("end_ms"),
            ) else {
                return Err("range structs need start_ms and end_ms fields".into());
            };
            floats(start)?.into_iter().zip(floats(end)?).collect()
        }
        _ => {
            let flat = floats(&items)?;
            if flat.len() % 2 != 0 {
                return Err(format!(
                    "a flat ranges list needs start/end pairs; this one has {} numbers",
                    flat.len()
                ));
            }
            flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
        }
    };
    Ok(Some(pairs))
}

/// `audio_split_by_ranges(x, ranges, on_error)`: the pieces of the audio between each
/// `(start_ms, end_ms)` of `ranges` (a column or literal: a list of struct{start_ms,
/// end_ms} or a flat list of numbers in pairs), as a list of Audio to explode. A range
/// that is inverted or starts past the end is bad data; one that runs past the end is cut.
/// Encoded audio is decoded only from the earliest start to the latest end where that gives
/// a whole decode's samples ([`codec::decode_span`]).
#[derive(Debug)]
pub struct SplitByRanges;

impl Operator for SplitByRanges {
    fn name(&self) -> &'static str {
        "audio_split_by_ranges"
    }

    fn inputs(&self) -> usize {
        2
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_audio(self.name(), &inputs[0])?;
        if !matches!(
            inputs[1].data_type(),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
        ) {
            return Err(RilletError::invalid_argument(format!(
                "{}: ranges must be a list of struct{{start_ms, end_ms}} or of numbers in pairs; column {:?} is {}",
                self.name(),
                inputs[1].name(),
                display_type(&inputs[1])
            )));
        }
        Ok(list_of(AudioType.field("item"), self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let ranges = &call.inputs[1];
        let input = AudioInput::try_new(self.name(), &call.inputs[0])?;
        // Encoded audio is decoded from the earliest start to the latest end only.
        let rows = per_row(
            &input,
            call,
            errors,
            |input, row| {
                let pairs = ranges_at(ranges, row).map_err(RowFailure::Data)?;
                let valid = |(s, e): &(f64, f64)| *s >= 0.0 && e > s;
                let reach = pairs.iter().flatten().filter(|pair| valid(pair)).fold(
                    None,
                    |reach: Option<(f64, f64)>, &(s, e)| {
                        Some(reach.map_or((s, e), |(a, b)| (a.min(s), b.max(e))))
                    },
                );
                // Without a valid range, the first packets still show the audio is sound.
                let span =
                    input.span(row, DEFAULT_MAX_DECODED_BYTES, reach.unwrap_or((0.0, 0.0)))?;
                Ok(span.map(|span| (span, pairs)))
            },
            |(span, pairs), _| {
                let Some(pairs) = pairs else {
                    return Ok(Vec::new());
                };
                pairs
                    .into_iter()
                    .map(|(s, e)| range_of(&span, s, e))
                    .collect()
            },
        );
        audio_lists(rows?)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(AUDIO_BATCH_ROWS)
    }
}

/// Where the audio from `start_ms` to `end_ms` of a decode from the start lies in
/// `span.audio` (which holds it), in frames: cut where the audio ends; bad data when
/// empty, inverted or past the end.
pub(super) fn range_frames(
    span: &codec::Span<'_>,
    start_ms: f64,
    end_ms: f64,
) -> std::result::Result<(usize, usize), String> {
    let audio = &span.audio;
    let rate = audio.rate as f64;
    let duration = span.total_frames as f64 * 1000.0 / rate;
    if !(start_ms >= 0.0 && end_ms > start_ms && start_ms < duration) {
        return Err(format!(
            "range {start_ms}..{end_ms} ms is empty, inverted or outside the clip ({duration:.0} ms)"
        ));
    }
    let frame_at =
        |ms: f64| ((ms * rate / 1000.0).round().max(0.0) as u64).saturating_sub(span.first_frame);
    let start = (frame_at(start_ms) as usize).min(audio.frames());
    let end = (frame_at(end_ms.min(duration)) as usize).clamp(start, audio.frames());
    Ok((start, end))
}

/// The audio from `start_ms` to `end_ms` out of `span`, copied (see [`range_frames`]).
fn range_of(
    span: &codec::Span<'_>,
    start_ms: f64,
    end_ms: f64,
) -> std::result::Result<Waveform<'static>, String> {
    let (start, end) = range_frames(span, start_ms, end_ms)?;
    let c = span.audio.channels as usize;
    Ok(Waveform {
        rate: span.audio.rate,
        channels: span.audio.channels,
        samples: std::borrow::Cow::Owned(span.audio.samples[start * c..end * c].to_vec()),
    })
}

/// The struct of one time range, `{start_ms, end_ms}` (what `audio_split_by_ranges` takes).
pub fn range_fields() -> Fields {
    Fields::from(vec![
        Field::new("start_ms", DataType::Int64, false),
        Field::new("end_ms", DataType::Int64, false),
    ])
}
