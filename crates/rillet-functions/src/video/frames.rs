//! `video_frames` / `video_extract_frames`: the frames a selector picks, as RGB images.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use ffmpeg::format::Pixel;
use ffmpeg::media::Type as Medium;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ffmpeg;
use rillet_common::types::{ImageMode, ImageType};
use rillet_common::{Result, RilletError};

use super::{DEFAULT_MAX_DECODED_BYTES, VIDEO_BATCH_ROWS, expect_video, open, per_video};
use crate::audio::{list_array, list_of};
use crate::image::array::{ImageBuilder, ImageView};
use crate::operator::{Call, Operator, Param, ParamKind, Params, RowErrors};

/// Which frames to keep.
#[derive(Debug, Clone, Copy)]
enum Selector {
    /// The first frame at or after every multiple of this many ms.
    Interval(f64),
    /// Key frames only.
    Keyframes,
    /// Every frame.
    All,
}

struct FrameOptions {
    selector: Selector,
    max_frames: usize,
    max_bytes: u64,
}

fn frame_options(params: &Params) -> Result<FrameOptions> {
    let interval = params.float("interval_ms")?;
    let selector = match params.str("selector")? {
        "interval" if interval >= 1.0 => Selector::Interval(interval),
        "interval" => {
            return Err(RilletError::invalid_argument(format!(
                "interval_ms must be at least 1, not {interval}"
            )));
        }
        "keyframes" => Selector::Keyframes,
        "all" => Selector::All,
        other => {
            return Err(RilletError::invalid_argument(format!(
                "selector must be \"interval\", \"keyframes\" or \"all\", not {other:?}"
            )));
        }
    };
    let max_bytes = u64::try_from(params.int("max_decoded_bytes")?)
        .ok()
        .filter(|v| *v > 0);
    Ok(FrameOptions {
        selector,
        max_frames: params.size("max_frames")? as usize,
        max_bytes: max_bytes
            .ok_or_else(|| RilletError::invalid_argument("max_decoded_bytes must be positive"))?,
    })
}

/// One extracted frame: presentation time and RGB pixels.
struct Frame {
    pts_ms: i64,
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

/// Decode the best video stream and keep the frames `options` select, as RGB.
fn extract_frames(path: &Path, options: &FrameOptions) -> std::result::Result<Vec<Frame>, String> {
    let mut input = open(path)?;
    let stream = input
        .streams()
        .best(Medium::Video)
        .ok_or("no video stream")?;
    let (index, time_base) = (stream.index(), f64::from(stream.time_base()));
    let fps = f64::from(stream.avg_frame_rate());
    let context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| e.to_string())?;
    let mut decoder = context
        .decoder()
        .video()
        .map_err(|e| format!("cannot decode the video stream: {e}"))?;
    // Key frames only: the decoder parses the other frames but does not reconstruct them,
    // when the stream has timestamps (without, a frame's time is its place in the output,
    // which the skipped frames must then still take).
    let mut skip_decided = !matches!(options.selector, Selector::Keyframes);
    let mut scaler: Option<(Scaler, (Pixel, u32, u32))> = None;
    let (mut frames, mut bytes, mut decoded_count) = (Vec::new(), 0u64, 0u64);
    let mut next_ms = 0.0f64;
    let mut decoded = ffmpeg::util::frame::video::Video::empty();
    let mut take = |decoder: &mut ffmpeg::decoder::Video,
                    frames: &mut Vec<Frame>|
     -> std::result::Result<bool, String> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            rillet_runtime::record_decoded(
                (0..decoded.planes()).map(|i| decoded.data(i).len()).sum(),
            );
            let pts_ms = match decoded.timestamp() {
                Some(ts) => ts as f64 * time_base * 1000.0,
                None if fps > 0.0 => decoded_count as f64 * 1000.0 / fps,
                None => 0.0,
            };
            decoded_count += 1;
            let keep = match options.selector {
                Selector::All => true,
                Selector::Keyframes => decoded.is_key(),
                Selector::Interval(interval) => {
                    let due = pts_ms + 1e-6 >= next_ms;
                    if due {
                        next_ms = ((pts_ms / interval).floor() + 1.0) * interval;
                    }
                    due
                }
            };
            if !keep {
                continue;
            }
            let (w, h) = (decoded.width(), decoded.height());
            let shape = (decoded.format(), w, h);
            if scaler.as_ref().is_none_or(|(_, s)| *s != shape) {
                let context = Scaler::get(shape.0, w, h, Pixel::RGB24, w, h, Flags::BILINEAR)
                    .map_err(|e| format!("cannot convert {:?} frames to RGB: {e}", shape.0))?;
                scaler = Some((context, shape));
            }
            let mut rgb = ffmpeg::util::frame::video::Video::empty();
            let (context, _) = scaler.as_mut().expect("set above");
            context.run(&decoded, &mut rgb).map_err(|e| e.to_string())?;
            bytes += 3 * w as u64 * h as u64;
            if bytes > options.max_bytes {
                return Err(format!(
                    "decoded frames would take over max_decoded_bytes = {}",
                    options.max_bytes
                ));
            }
            let (stride, row) = (rgb.stride(0), 3 * w as usize);
            let data = rgb.data(0);
            let mut pixels = Vec::with_capacity(row * h as usize);
            for y in 0..h as usize {
                pixels.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            frames.push(Frame {
                pts_ms: pts_ms.round() as i64,
                width: w,
                height: h,
                rgb: pixels,
            });
            if options.max_frames > 0 && frames.len() >= options.max_frames {
                return Ok(true);
            }
        }
        Ok(false)
    };
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        if !skip_decided {
            skip_decided = true;
            if packet.pts().is_some() {
                decoder.skip_frame(ffmpeg::Discard::NonKey);
            }
        }
        if decoder.send_packet(&packet).is_err() {
            continue; // a damaged packet: the decoder resyncs at the next key frame
        }
        if take(&mut decoder, &mut frames)? {
            return Ok(frames);
        }
    }
    let _ = decoder.send_eof();
    take(&mut decoder, &mut frames)?;
    if frames.is_empty() && decoded_count == 0 {
        return Err("no decodable video frames".into());
    }
    Ok(frames)
}

fn frame_fields() -> Fields {
    Fields::from(vec![
        Field::new("pts_ms", DataType::Int64, false),
        ImageType::new(Some(ImageMode::Rgb)).field("image"),
    ])
}

/// `video_frames(x, selector, interval_ms, max_frames, max_decoded_bytes, on_error)`: frames
/// as RGB images, a list of struct{pts_ms, image} to explode (one frame per row). `selector`
/// is `"interval"` (the first frame at or after every `interval_ms`, default 1000),
/// `"keyframes"` or `"all"`; `max_frames` (0 = no limit) stops decoding early.
///
/// `video_extract_frames(...)`: the same frames as a list of images in one row.
#[derive(Debug)]
pub struct Frames {
    /// A list of images (`video_extract_frames`) rather than {pts_ms, image} structs.
    pub(super) collect: bool,
}

impl Operator for Frames {
    fn name(&self) -> &'static str {
        if self.collect {
            "video_extract_frames"
        } else {
            "video_frames"
        }
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[
            Param::optional("selector", ParamKind::Str, "interval"),
            Param::optional("interval_ms", ParamKind::Float, "1000"),
            Param::optional("max_frames", ParamKind::Int, "0"),
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
        frame_options(params)?;
        let item = if self.collect {
            ImageType::new(Some(ImageMode::Rgb)).field("item")
        } else {
            Field::new("item", DataType::Struct(frame_fields()), true)
        };
        Ok(list_of(item, self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let options = frame_options(call.params)?;
        let rows = per_video(self.name(), call, errors, |path, _| {
            extract_frames(path, &options)
        })?;
        let mut images = ImageBuilder::with_capacity(rows.iter().flatten().map(Vec::len).sum());
        let mut pts = Int64Builder::new();
        for frame in rows.iter().flatten().flatten() {
            images.append(&ImageView {
                width: frame.width,
                height: frame.height,
                mode: ImageMode::Rgb,
                data: &frame.rgb,
            });
            pts.append_value(frame.pts_ms);
        }
        let lengths: Vec<Option<usize>> = rows.iter().map(|r| r.as_ref().map(Vec::len)).collect();
        if self.collect {
            return list_array(
                ImageType::new(Some(ImageMode::Rgb)).field("item"),
                images.finish(),
                &lengths,
            );
        }
        let items = StructArray::try_new(
            frame_fields(),
            vec![Arc::new(pts.finish()), images.finish()],
            None,
        )?;
        list_array(
            Field::new("item", DataType::Struct(frame_fields()), true),
            Arc::new(items),
            &lengths,
        )
    }

    fn batch_size(&self) -> Option<usize> {
        Some(VIDEO_BATCH_ROWS)
    }
}
