//! Audio inputs in either form (decoded `Audio` or encoded content), read row by row
//! under the shared bad-input policy, and the list and `Audio` columns operators build.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, LargeListArray, ListArray, StructArray, UInt16Array, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Float32Type};
use rillet_common::types::{AudioType, MultimodalType, display_type, same_layout};
use rillet_common::{Result, RilletError};

use super::Waveform;
use super::codec::{self, DEFAULT_MAX_DECODED_BYTES, Probe};
use super::split::range_frames;
use crate::input::{ClipColumn, ClipContent, EncodedColumn, RowFailure, is_clip, is_encoded_input};
use crate::operator::{Call, RowErrors, row_values};

/// A decoded `Audio` column.
pub(super) struct AudioColumn<'a> {
    array: &'a StructArray,
    rates: &'a UInt32Array,
    channels: &'a UInt16Array,
    data: &'a LargeListArray,
    values: &'a [f32],
}

impl<'a> AudioColumn<'a> {
    fn try_new(array: &'a ArrayRef) -> Result<Self> {
        let bad =
            || RilletError::invalid_argument(format!("not an Audio column: {}", array.data_type()));
        let array = array.as_struct_opt().ok_or_else(bad)?;
        let rates = array.column(0).as_primitive_opt().ok_or_else(bad)?;
        let channels = array.column(1).as_primitive_opt().ok_or_else(bad)?;
        let data = array.column(2).as_list_opt::<i64>().ok_or_else(bad)?;
        let values = data
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(bad)?
            .values();
        Ok(Self {
            array,
            rates,
            channels,
            data,
            values,
        })
    }

    fn get(&self, row: usize) -> std::result::Result<Option<Waveform<'a>>, String> {
        if self.array.is_null(row) {
            return Ok(None);
        }
        let (rate, channels) = (self.rates.value(row), self.channels.value(row));
        let offsets = self.data.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        if rate == 0 || channels == 0 || (end - start) % channels as usize != 0 {
            return Err(format!(
                "malformed audio value: {rate} Hz, {channels} channels, {} samples",
                end - start
            ));
        }
        Ok(Some(Waveform {
            rate,
            channels,
            samples: Cow::Borrowed(&self.values[start..end]),
        }))
    }
}

/// True if `field` is a decoded Audio column.
pub(super) fn is_audio(field: &Field) -> bool {
    matches!(MultimodalType::of_field(field), Some(MultimodalType::Audio))
        || same_layout(field.data_type(), &AudioType::storage_type())
}

/// Check that `field` is an audio input (decoded `Audio`, encoded content or clip
/// references).
pub fn expect_audio(operator: &str, field: &Field) -> Result<()> {
    if is_audio(field) || is_encoded_input(field) || is_clip(field) {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: input must be Audio, encoded audio bytes, a File, a path or a Clip; column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// The audio of a clip, cut from a decode of its file that stops at the clip's end.
fn clip_audio(
    clips: &ClipColumn<'_>,
    row: usize,
    max_bytes: u64,
) -> std::result::Result<Option<Waveform<'static>>, RowFailure> {
    let Some(ClipContent { bytes, start, end }) = clips.content(row)? else {
        return Ok(None);
    };
    let extension = clips.files().extension(row);
    let cut =
        codec::decode_span(&bytes, extension.as_deref(), max_bytes, start, end).and_then(|span| {
            let duration = span.total_frames as f64 * 1000.0 / span.audio.rate as f64;
            if start >= duration {
                return Err(past_the_end(duration));
            }
            let (first, last) = range_frames(&span, start, end)?;
            let c = span.audio.channels as usize;
            let mut samples = span.audio.samples.into_owned();
            samples.truncate(last * c);
            samples.drain(..first * c);
            Ok(Waveform::new(span.audio.rate, span.audio.channels, samples))
        });
    cut.map(Some)
        .map_err(|reason| RowFailure::Data(format!("{}: {reason}", clips.identity(row))))
}

/// Why a clip starting past the end of its audio (`duration` ms) is bad data.
fn past_the_end(duration: f64) -> String {
    format!("the clip starts past the end of the audio ({duration:.0} ms)")
}

/// The header facts of a clip's file, its length replaced by the clip's (cut where the
/// file ends).
fn clip_facts(
    clips: &ClipColumn<'_>,
    row: usize,
) -> std::result::Result<Option<Facts>, RowFailure> {
    let Some(ClipContent { bytes, start, end }) = clips.content(row)? else {
        return Ok(None);
    };
    let fail = |reason: String| RowFailure::Data(format!("{}: {reason}", clips.identity(row)));
    let extension = clips.files().extension(row);
    let mut probe = codec::probe(&bytes, extension.as_deref()).map_err(fail)?;
    let duration = probe.duration_ms();
    if start >= duration {
        return Err(fail(past_the_end(duration)));
    }
    let frame_at = |ms: f64| (ms * probe.sample_rate as f64 / 1000.0).round() as u64;
    probe.frames = frame_at(end.min(duration)).saturating_sub(frame_at(start));
    Ok(Some(Facts {
        probe,
        encoded: true,
    }))
}

/// An audio input column of any form.
pub(super) enum AudioInput<'a> {
    Decoded(AudioColumn<'a>),
    Encoded(EncodedColumn<'a>),
    Clips(ClipColumn<'a>),
}

/// Header facts of one row.
pub(super) struct Facts {
    pub(super) probe: Probe,
    /// Codec and container are unknown for audio that is already decoded.
    pub(super) encoded: bool,
}

impl<'a> AudioInput<'a> {
    pub(super) fn try_new(operator: &str, array: &'a ArrayRef) -> Result<Self> {
        let field = Field::new("input", array.data_type().clone(), true);
        if is_audio(&field) {
            Ok(Self::Decoded(AudioColumn::try_new(array)?))
        } else if is_clip(&field) {
            Ok(Self::Clips(ClipColumn::try_new(operator, array)?))
        } else {
            Ok(Self::Encoded(EncodedColumn::try_new(
                operator,
                array,
                "Audio or encoded audio",
            )?))
        }
    }

    pub(super) fn identity(&self, row: usize) -> String {
        match self {
            Self::Decoded(_) => format!("row {row}"),
            Self::Encoded(column) => column.identity(row),
            Self::Clips(column) => column.identity(row),
        }
    }

    pub(super) fn uri(&self, row: usize) -> Option<&'a str> {
        match self {
            Self::Decoded(_) => None,
            Self::Encoded(column) => column.uri(row),
            Self::Clips(column) => column.uri(row),
        }
    }

    /// The waveform of `row`, decoding encoded content (capped at `max_bytes`).
    pub(super) fn get(
        &self,
        row: usize,
        max_bytes: u64,
    ) -> std::result::Result<Option<Waveform<'a>>, RowFailure> {
        match self {
            Self::Decoded(column) => column.get(row).map_err(RowFailure::Data),
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => {
                    codec::decode(&bytes, column.extension(row).as_deref(), max_bytes, None)
                        .map(Some)
                        .map_err(|reason| {
                            RowFailure::Data(format!("{}: {reason}", column.identity(row)))
                        })
                }
            },
            Self::Clips(column) => clip_audio(column, row, max_bytes),
        }
    }

    /// The audio of `row` from `start_ms` to `end_ms`: decoded audio as it is, encoded
    /// content decoded only that far (see [`codec::decode_span`]).
    pub(super) fn span(
        &self,
        row: usize,
        max_bytes: u64,
        (start_ms, end_ms): (f64, f64),
    ) -> std::result::Result<Option<codec::Span<'a>>, RowFailure> {
        match self {
            Self::Decoded(column) => {
                Ok(column
                    .get(row)
                    .map_err(RowFailure::Data)?
                    .map(|audio| codec::Span {
                        total_frames: audio.frames() as u64,
                        audio,
                        first_frame: 0,
                    }))
            }
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => codec::decode_span(
                    &bytes,
                    column.extension(row).as_deref(),
                    max_bytes,
                    start_ms,
                    end_ms,
                )
                .map(Some)
                .map_err(|reason| RowFailure::Data(format!("{}: {reason}", column.identity(row)))),
            },
            // Ranges are within the clip: its audio is the span.
            Self::Clips(column) => {
                Ok(
                    clip_audio(column, row, max_bytes)?.map(|audio| codec::Span {
                        total_frames: audio.frames() as u64,
                        audio,
                        first_frame: 0,
                    }),
                )
            }
        }
    }

    /// Header facts of `row`, without decoding samples of encoded content.
    pub(super) fn facts(&self, row: usize) -> std::result::Result<Option<Facts>, RowFailure> {
        match self {
            Self::Decoded(column) => {
                Ok(column.get(row).map_err(RowFailure::Data)?.map(|w| Facts {
                    probe: Probe {
                        container: "",
                        codec: "",
                        sample_rate: w.rate,
                        channels: w.channels,
                        frames: w.frames() as u64,
                    },
                    encoded: false,
                }))
            }
            Self::Encoded(column) => match column.get(row)? {
                None => Ok(None),
                Some(bytes) => codec::probe(&bytes, column.extension(row).as_deref())
                    .map(|probe| {
                        Some(Facts {
                            probe,
                            encoded: true,
                        })
                    })
                    .map_err(|reason| {
                        RowFailure::Data(format!("{}: {reason}", column.identity(row)))
                    }),
            },
            Self::Clips(column) => clip_facts(column, row),
        }
    }

    /// Where `row`'s audio starts in its file: a clip's start, else 0.
    pub(super) fn offset_ms(&self, row: usize) -> f64 {
        match self {
            Self::Clips(column) => column.window(row).ok().flatten().map_or(0.0, |w| w.0),
            _ => 0.0,
        }
    }
}

/// One value per row of `input` (see [`row_values`]).
pub(super) fn per_row<'a, T, R>(
    input: &AudioInput<'a>,
    call: &Call<'_>,
    errors: &mut RowErrors,
    mut fetch: impl FnMut(&AudioInput<'a>, usize) -> std::result::Result<Option<T>, RowFailure>,
    f: impl FnMut(T, usize) -> std::result::Result<R, String>,
) -> Result<Vec<Option<R>>> {
    row_values(
        call.rows,
        errors,
        |row| input.identity(row),
        |row| fetch(input, row),
        f,
    )
}

/// Each row's waveform (decoded with the default cap), mapped by `f` (given the waveform
/// and its row). Null rows stay null; data problems null the row and record the reason.
pub fn map_waveforms<R>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    f: impl FnMut(Waveform<'_>, usize) -> std::result::Result<R, String>,
) -> Result<Vec<Option<R>>> {
    let input = AudioInput::try_new(operator, &call.inputs[0])?;
    per_row(
        &input,
        call,
        errors,
        |input, row| input.get(row, DEFAULT_MAX_DECODED_BYTES),
        f,
    )
}

/// Each row's header facts.
pub(super) fn row_facts(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
) -> Result<Vec<Option<Facts>>> {
    let input = AudioInput::try_new(operator, &call.inputs[0])?;
    per_row(
        &input,
        call,
        errors,
        |input, row| input.facts(row),
        |facts, _| Ok(facts),
    )
}

/// An `Audio` column from waveforms.
pub(crate) fn audio_array(waves: &[Option<Waveform<'_>>]) -> Result<ArrayRef> {
    let mut offsets = Vec::with_capacity(waves.len() + 1);
    offsets.push(0i64);
    let total: usize = waves.iter().flatten().map(|w| w.samples.len()).sum();
    let mut values = Vec::with_capacity(total);
    let (mut rates, mut channels) = (
        Vec::with_capacity(waves.len()),
        Vec::with_capacity(waves.len()),
    );
    for wave in waves {
        if let Some(w) = wave {
            values.extend_from_slice(&w.samples);
        }
        rates.push(wave.as_ref().map_or(0, |w| w.rate));
        channels.push(wave.as_ref().map_or(0, |w| w.channels));
        offsets.push(values.len() as i64);
    }
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let data = LargeListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )?;
    let valid = NullBuffer::from(waves.iter().map(Option::is_some).collect::<Vec<_>>());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(rates)),
        Arc::new(UInt16Array::from(channels)),
        Arc::new(data),
    ];
    Ok(Arc::new(StructArray::try_new(
        AudioType::storage_fields(),
        columns,
        Some(valid),
    )?))
}

/// A list column whose items are `items` (already flattened), `lengths[row]` per row.
pub fn list_array(item: Field, items: ArrayRef, lengths: &[Option<usize>]) -> Result<ArrayRef> {
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths.iter().map(|l| l.unwrap_or(0)));
    let valid = NullBuffer::from(lengths.iter().map(Option::is_some).collect::<Vec<_>>());
    Ok(Arc::new(ListArray::try_new(
        Arc::new(item),
        offsets,
        items,
        Some(valid),
    )?))
}

pub(crate) fn list_of(item: Field, name: &str) -> Field {
    Field::new(name, DataType::List(Arc::new(item)), true)
}
