//! Video operators through FFmpeg (Debian's libav*, the crate's `video` feature): metadata
//! without decoding frames, clip references, frame extraction as RGB images, and the
//! audio track as `Audio`.
//!
//! Inputs are a path, a `File` or encoded bytes. FFmpeg reads local files directly; bytes
//! (and byte ranges) are written to a temporary file first, deleted after the row.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, StructBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleLayout;
use ffmpeg::media::Type as Medium;
use ffmpeg_next as ffmpeg;
use rillet_common::types::{AudioType, ClipType, display_type};
use rillet_common::{Result, RilletError};
use rillet_operator::ArrayFunction;

use crate::audio::{Waveform, audio_array, clip_lists, list_of, segment_ms, segments};
use crate::input::{ClipColumn, EncodedColumn, RowFailure, Window, is_clip, is_encoded_input};
use crate::operator::{
    Call, Operator, OperatorFunction, Param, ParamKind, Params, RowErrors, row_values,
};

mod frames;

pub use frames::Frames;

/// Rows per call: each row is a whole video.
const VIDEO_BATCH_ROWS: usize = 2;

/// Decoded frames (or audio) of one video above this many bytes are bad data unless the
/// operator is told otherwise (`max_decoded_bytes`).
const DEFAULT_MAX_DECODED_BYTES: &str = "1073741824";

/// Every video operator, ready to register.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(Metadata)),
        Arc::new(OperatorFunction::new(Split)),
        Arc::new(OperatorFunction::new(Frames {
            collect: false,
            downscale: None,
        })),
        Arc::new(OperatorFunction::new(Frames {
            collect: true,
            downscale: None,
        })),
        Arc::new(OperatorFunction::new(AudioTrack)),
    ]
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration cannot fail on the libav* versions we build against; if it did, every
        // open below would report it.
        let _ = ffmpeg::init();
        // Bad input is reported per row; FFmpeg's own console chatter is noise.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
    });
}

fn expect_video(operator: &str, field: &Field) -> Result<()> {
    if is_encoded_input(field) {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "{operator}: input must be a path, a File or encoded video bytes; column {:?} is {}",
            field.name(),
            display_type(field)
        )))
    }
}

/// [`expect_video`] for an operator that also takes clip references `{uri, start_ms,
/// end_ms}` of videos.
fn expect_video_or_clip(operator: &str, field: &Field) -> Result<()> {
    if is_clip(field) {
        return Ok(());
    }
    expect_video(operator, field).map_err(|_| {
        RilletError::invalid_argument(format!(
            "{operator}: input must be a path, a File, encoded video bytes or a Clip; column {:?} is {}",
            field.name(),
            display_type(field)
        ))
    })
}

/// A local file FFmpeg can open for one row: the row's own path, or a temporary copy of
/// its bytes.
struct Source {
    path: PathBuf,
    _temporary: Option<tempfile::TempPath>,
}

fn source(
    column: &EncodedColumn<'_>,
    row: usize,
) -> std::result::Result<Option<Source>, RowFailure> {
    if let Some(path) = column.local_path(row) {
        if !path.exists() {
            return Err(RowFailure::Data(format!(
                "{}: no such file",
                path.display()
            )));
        }
        return Ok(Some(Source {
            path,
            _temporary: None,
        }));
    }
    let Some(bytes) = column.get(row)? else {
        return Ok(None);
    };
    let io = |e: std::io::Error| RowFailure::Infrastructure(RilletError::Io(e));
    let mut file = tempfile::Builder::new()
        .prefix("rillet-video-")
        .tempfile()
        .map_err(io)?;
    std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
    let temporary = file.into_temp_path();
    Ok(Some(Source {
        path: temporary.to_path_buf(),
        _temporary: Some(temporary),
    }))
}

fn open(path: &Path) -> std::result::Result<ffmpeg::format::context::Input, String> {
    init();
    ffmpeg::format::input(path).map_err(|e| format!("not a readable video: {e}"))
}

/// Stream facts of one video.
#[derive(Debug, Default)]
struct Facts {
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<f64>,
    duration_ms: f64,
    frame_count: Option<u64>,
    codec: Option<&'static str>,
    audio_codec: Option<&'static str>,
    audio_sample_rate: Option<u32>,
    streams: u32,
}

fn facts(path: &Path) -> std::result::Result<Facts, String> {
    let input = open(path)?;
    let mut facts = Facts {
        streams: input.nb_streams(),
        ..Default::default()
    };
    let container_ms = input.duration() as f64 / 1000.0; // AV_TIME_BASE is microseconds
    if let Some(video) = input.streams().best(Medium::Video) {
        let parameters = video.parameters();
        facts.codec = Some(parameters.id().name());
        if let Ok(decoder) = ffmpeg::codec::context::Context::from_parameters(parameters)
            .and_then(|c| c.decoder().video())
        {
            facts.width = Some(decoder.width());
            facts.height = Some(decoder.height());
        }
        let rate = f64::from(video.avg_frame_rate());
        facts.fps = (rate.is_finite() && rate > 0.0).then_some(rate);
        facts.frame_count = (video.frames() > 0).then_some(video.frames() as u64);
        if video.duration() > 0 {
            facts.duration_ms = video.duration() as f64 * f64::from(video.time_base()) * 1000.0;
        }
    }
    if let Some(audio) = input.streams().best(Medium::Audio) {
        facts.audio_codec = Some(audio.parameters().id().name());
        facts.audio_sample_rate =
            ffmpeg::codec::context::Context::from_parameters(audio.parameters())
                .and_then(|c| c.decoder().audio())
                .ok()
                .map(|d| d.rate());
    }
    if facts.duration_ms <= 0.0 && container_ms > 0.0 {
        facts.duration_ms = container_ms;
    }
    if facts.codec.is_none() && facts.audio_codec.is_none() {
        return Err("no video or audio stream".into());
    }
    Ok(facts)
}

/// Each row's value from its local source; data problems null the row with a reason.
fn per_video<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    mut f: impl FnMut(&Path, usize) -> std::result::Result<T, String>,
) -> Result<Vec<Option<T>>> {
    let column = EncodedColumn::try_new(operator, &call.inputs[0], "a video")?;
    // The source (and any temporary copy) lives until `f` is done with the row.
    row_values(
        call.rows,
        errors,
        |row| column.identity(row),
        |row| source(&column, row),
        |source, row| f(&source.path, row),
    )
}

/// [`per_video`] for an operator that also takes clip references: `f` gets the row's clip
/// `(start_ms, end_ms)` in its file, or `None` for a whole video.
fn per_video_clip<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    mut f: impl FnMut(&Path, Option<Window>) -> std::result::Result<T, String>,
) -> Result<Vec<Option<T>>> {
    if !is_clip(&Field::new(
        "input",
        call.inputs[0].data_type().clone(),
        true,
    )) {
        return per_video(operator, call, errors, |path, _| f(path, None));
    }
    let clips = ClipColumn::try_new(operator, &call.inputs[0])?;
    row_values(
        call.rows,
        errors,
        |row| clips.identity(row),
        |row| {
            let Some(window) = clips.window(row).map_err(RowFailure::Data)? else {
                return Ok(None);
            };
            Ok(source(clips.files(), row)?.map(|source| (source, window)))
        },
        |(source, window), _| f(&source.path, Some(window)),
    )
}

fn metadata_fields() -> Fields {
    Fields::from(vec![
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("fps", DataType::Float64, true),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("frame_count", DataType::UInt64, true),
        Field::new("codec", DataType::Utf8, true),
        Field::new("audio_codec", DataType::Utf8, true),
        Field::new("audio_sample_rate", DataType::UInt32, true),
        Field::new("streams", DataType::UInt32, true),
    ])
}

/// `video_metadata(x, on_error)`: struct{width, height, fps, duration_ms, frame_count,
/// codec, audio_codec, audio_sample_rate, streams} from the container and stream headers,
/// without decoding frames. Video fields are null for a file with only audio.
#[derive(Debug)]
pub struct Metadata;

impl Operator for Metadata {
    fn name(&self) -> &'static str {
        "video_metadata"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_video(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::Struct(metadata_fields()),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = per_video(self.name(), call, errors, |path, _| facts(path))?;
        let mut out = StructBuilder::from_fields(metadata_fields(), rows.len());
        for facts in &rows {
            let f = facts.as_ref();
            out.field_builder::<UInt32Builder>(0)
                .expect("u32")
                .append_option(f.and_then(|f| f.width));
            out.field_builder::<UInt32Builder>(1)
                .expect("u32")
                .append_option(f.and_then(|f| f.height));
            out.field_builder::<Float64Builder>(2)
                .expect("f64")
                .append_option(f.and_then(|f| f.fps));
            out.field_builder::<Float64Builder>(3)
                .expect("f64")
                .append_option(f.map(|f| f.duration_ms));
            out.field_builder::<UInt64Builder>(4)
                .expect("u64")
                .append_option(f.and_then(|f| f.frame_count));
            out.field_builder::<StringBuilder>(5)
                .expect("utf8")
                .append_option(f.and_then(|f| f.codec));
            out.field_builder::<StringBuilder>(6)
                .expect("utf8")
                .append_option(f.and_then(|f| f.audio_codec));
            out.field_builder::<UInt32Builder>(7)
                .expect("u32")
                .append_option(f.and_then(|f| f.audio_sample_rate));
            out.field_builder::<UInt32Builder>(8)
                .expect("u32")
                .append_option(f.map(|f| f.streams));
            out.append(f.is_some());
        }
        Ok(Arc::new(out.finish()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(VIDEO_BATCH_ROWS)
    }
}

/// `video_split(x, segment_ms, on_error)`: clip references `{uri, start_ms, end_ms}` of
/// consecutive `segment_ms` stretches (the last may be shorter), as a list to explode. Reads
/// only the headers and copies nothing; needs a File or path input.
#[derive(Debug)]
pub struct Split;

impl Operator for Split {
    fn name(&self) -> &'static str {
        "video_split"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::required("segment_ms", ParamKind::Float),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_video(self.name(), &inputs[0])?;
        segment_ms(params)?;
        Ok(list_of(ClipType.field("item"), self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let segment = segment_ms(call.params)?;
        let column = EncodedColumn::try_new(self.name(), &call.inputs[0], "a video")?;
        let rows = per_video(self.name(), call, errors, |path, row| {
            let uri = column
                .uri(row)
                .ok_or("video_split needs a File or path to refer to, not bytes")?;
            Ok((uri.to_string(), segments(facts(path)?.duration_ms, segment)))
        })?;
        clip_lists(&rows)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(VIDEO_BATCH_ROWS)
    }
}

/// Interleaved f32 samples of one decoded audio frame, whatever FFmpeg's sample format.
fn interleave(
    frame: &ffmpeg::util::frame::audio::Audio,
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    let (samples, channels) = (frame.samples(), frame.channels() as usize);
    let (size, convert): (usize, fn(&[u8]) -> f32) = match frame.format() {
        Sample::U8(_) => (1, |b| (b[0] as f32 - 128.0) / 128.0),
        Sample::I16(_) => (2, |b| i16::from_ne_bytes([b[0], b[1]]) as f32 / 32768.0),
        Sample::I32(_) => (4, |b| {
            i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0
        }),
        Sample::F32(_) => (4, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        Sample::F64(_) => (8, |b| {
            f64::from_ne_bytes(b[..8].try_into().unwrap_or([0; 8])) as f32
        }),
        other => return Err(format!("unsupported audio sample format {other:?}")),
    };
    let planar = matches!(
        frame.format(),
        Sample::U8(SampleLayout::Planar)
            | Sample::I16(SampleLayout::Planar)
            | Sample::I32(SampleLayout::Planar)
            | Sample::F32(SampleLayout::Planar)
            | Sample::F64(SampleLayout::Planar)
    );
    out.reserve(samples * channels);
    for i in 0..samples {
        for c in 0..channels {
            let (plane, at) = if planar {
                (c, i * size)
            } else {
                (0, (i * channels + c) * size)
            };
            let data = frame.data(plane);
            let bytes = data
                .get(at..at + size)
                .ok_or("audio frame shorter than it claims")?;
            out.push(convert(bytes));
        }
    }
    Ok(())
}

/// Decode the best audio stream of a media file to interleaved f32.
fn audio_track(path: &Path, max_bytes: u64) -> std::result::Result<Waveform<'static>, String> {
    let mut input = open(path)?;
    let stream = input
        .streams()
        .best(Medium::Audio)
        .ok_or("no audio stream")?;
    let index = stream.index();
    let context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| e.to_string())?;
    let mut decoder = context
        .decoder()
        .audio()
        .map_err(|e| format!("cannot decode the audio stream: {e}"))?;
    let (mut samples, mut spec) = (Vec::new(), None::<(u32, u16)>);
    let mut decoded = ffmpeg::util::frame::audio::Audio::empty();
    let mut drain = |decoder: &mut ffmpeg::decoder::Audio,
                     samples: &mut Vec<f32>|
     -> std::result::Result<(), String> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            let this = (decoded.rate(), decoded.channels());
            if *spec.get_or_insert(this) != this {
                return Err("the audio stream changes format mid-way".into());
            }
            interleave(&decoded, samples)?;
            if samples.len() as u64 * 4 > max_bytes {
                return Err(format!(
                    "decoded audio would take over max_decoded_bytes = {max_bytes}"
                ));
            }
        }
        Ok(())
    };
    for (stream, packet) in input.packets() {
        if stream.index() == index && decoder.send_packet(&packet).is_ok() {
            drain(&mut decoder, &mut samples)?;
        }
    }
    let _ = decoder.send_eof();
    drain(&mut decoder, &mut samples)?;
    let (rate, channels) = spec.ok_or("no decodable audio frames")?;
    Ok(Waveform {
        rate,
        channels,
        samples: Cow::Owned(samples),
    })
}

/// `video_audio(x, max_decoded_bytes, on_error)`: the audio track as Audio (f32 PCM at the
/// track's rate and channel count), decoded by FFmpeg (so any codec FFmpeg has, Opus
/// included). A file without an audio stream is bad data.
#[derive(Debug)]
pub struct AudioTrack;

impl Operator for AudioTrack {
    fn name(&self) -> &'static str {
        "video_audio"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional(
                "max_decoded_bytes",
                ParamKind::Int,
                DEFAULT_MAX_DECODED_BYTES,
            ),
            Param::ON_ERROR,
        ];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field> {
        expect_video(self.name(), &inputs[0])?;
        params.int("max_decoded_bytes")?;
        Ok(AudioType.field(self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let max = u64::try_from(call.params.int("max_decoded_bytes")?).unwrap_or(0);
        let rows = per_video(self.name(), call, errors, |path, _| audio_track(path, max))?;
        audio_array(&rows)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(VIDEO_BATCH_ROWS)
    }
}
