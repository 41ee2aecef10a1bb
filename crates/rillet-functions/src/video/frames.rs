//! `video_frames` / `video_extract_frames`: the frames a selector picks, as RGB images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use ffmpeg::format::Pixel;
use ffmpeg::media::Type as Medium;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ffmpeg;
use rillet_common::types::{ImageMode, ImageType};
use rillet_common::{Result, RilletError};
use rillet_operator::Downscale;

use super::{DEFAULT_MAX_DECODED_BYTES, expect_video_or_clip, open, per_video_clip};
use crate::audio::{list_array, list_of};
use crate::image::array::{ImageBuilder, ImageView};
use crate::image::transform::downscale_rgb;
use crate::input::Window;
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
    /// The resize that reads every kept frame, done here (see [`Frames::downscale`]).
    downscale: Option<Downscale>,
}

fn frame_options(params: &Params, downscale: Option<&Downscale>) -> Result<FrameOptions> {
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
        downscale: downscale.cloned(),
    })
}

/// One extracted frame: presentation time and RGB pixels.
struct Frame {
    pts_ms: i64,
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

/// Decode the best video stream and keep the frames `options` select, as RGB: of the
/// whole video, or of the clip shown from `window.0` up to (not including) `window.1` ms.
fn extract_frames(
    path: &Path,
    options: &FrameOptions,
    window: Option<Window>,
) -> std::result::Result<Vec<Frame>, String> {
    let mut reader = FrameReader::open(path, options, window)?;
    reader.run()?;
    if reader.frames.is_empty() && reader.decoded_count == 0 && !reader.past_window {
        return Err("no decodable video frames".into());
    }
    if let Some((start, _)) = window
        && !reader.reached_window
    {
        // A clip starting while the last frame is still shown holds no new frame.
        let frame_ms = if reader.fps > 0.0 {
            1000.0 / reader.fps
        } else {
            0.0
        };
        if reader
            .last_shown_ms
            .is_some_and(|last| start + TIME_TOLERANCE_MS < last + frame_ms)
        {
            return Ok(Vec::new());
        }
        return Err(format!(
            "the clip starts at {start} ms, past the end of the video"
        ));
    }
    Ok(reader.frames)
}

/// Demuxer errors in a row after which a file is taken to end there.
const READ_ERRORS_IN_A_ROW: usize = 64;

/// Seeks landing before where they were made from, at most, before a file is read on
/// without seeking.
const BACKWARD_LANDINGS: u32 = 4;

/// Times in ticks are not exact in ms (3,700 ms in 1/15,360 s ticks is
/// 3,699.9999999999995): every comparison of times allows this much.
const TIME_TOLERANCE_MS: f64 = 1e-6;

/// What extraction does after taking the frames the decoder has ready.
enum Step {
    /// Keep reading packets.
    Read,
    /// `max_frames` are taken.
    Done,
}

/// One video's frame extraction: the demuxer, the decoder and what has been kept so far.
///
/// The interval selector reads only what it needs, and keeps exactly the frames decoding
/// every frame would: before each wanted time it asks the container's seek index (MP4,
/// Matroska) for the key frame before it and, when the file holds that key frame past what
/// has been read, seeks there instead of decoding the frames between; a seek whose first
/// frame is not a whole key frame at or before the wanted time is not trusted, and the file
/// is read again from the start. Frames before the wanted time that no other frame refers
/// to are not decoded at all (`AVDISCARD_NONREF`, for the codecs whose FFmpeg decoder then
/// leaves every other frame as it was). The key-frame selector has the decoder skip every
/// other frame.
struct FrameReader<'o> {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    index: usize,
    /// Seconds per timestamp tick.
    time_base: f64,
    fps: f64,
    decoder: ffmpeg::decoder::Video,
    options: &'o FrameOptions,
    decoded: ffmpeg::util::frame::video::Video,
    /// The RGB converter for the frames' shape, and the frame it writes into (one for the
    /// whole video: a fresh one a frame is a fresh mapping the kernel must zero).
    scaler: Option<(Scaler, (Pixel, u32, u32), ffmpeg::util::frame::video::Video)>,
    frames: Vec<Frame>,
    bytes: u64,
    decoded_count: u64,
    /// The interval selector's next wanted time (the clip's start for the other selectors).
    next_ms: f64,
    /// The clip to keep frames of, `(start_ms, end_ms)`; `None` for the whole video.
    window: Option<Window>,
    /// Whether a frame (or a packet) shown at or after the clip's start has been read.
    reached_window: bool,
    /// The latest time a packet read is shown at (for clips).
    last_shown_ms: Option<f64>,
    /// Whether reading stopped at a key frame past the clip (nothing more to decode).
    past_window: bool,
    /// Whether packets carry timestamps (decided at the first packet): without, a frame's
    /// time is its place in the output, so every frame must be decoded and none sought.
    timed: Option<bool>,
    /// Whether frames before the wanted time that no frame refers to are skipped.
    skip_non_reference: bool,
    /// Whether the interval selector may seek: a trusted seek index, and no seek has gone
    /// wrong.
    seekable: bool,
    /// Whether the seek for `next_ms` has been considered.
    seek_considered: bool,
    /// Byte position in the file of the last packet read from the stream.
    position: Option<i64>,
    /// After a seek, until its first frame shows whether it can be trusted (see
    /// [`FrameReader::landing_is_wrong`]).
    landed: Option<Landing>,
    /// After a seek, until the first packet is read: the position it was made from.
    seek_from: Option<i64>,
    /// Seeks that landed before the position they were made from (the seek index and the
    /// demuxer's own search disagreeing, or a crafted index): each reads part of the file
    /// again, so after a few the file is read on without seeking.
    backward_landings: u32,
}

/// A seek whose first frame is still to come.
struct Landing {
    wanted_ms: f64,
}

/// A video's demuxer, the index of its best video stream and that stream's decoder.
type Track = (
    ffmpeg::format::context::Input,
    usize,
    ffmpeg::decoder::Video,
);

/// Open `path` for decoding its best video stream.
fn open_track(path: &Path) -> std::result::Result<Track, String> {
    let input = open(path)?;
    let stream = input
        .streams()
        .best(Medium::Video)
        .ok_or("no video stream")?;
    let index = stream.index();
    let context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| e.to_string())?;
    let decoder = context
        .decoder()
        .video()
        .map_err(|e| format!("cannot decode the video stream: {e}"))?;
    Ok((input, index, decoder))
}

/// Containers whose seek index lists real key frames, by their demuxer's name: MP4 and
/// QuickTime (`stss`), Matroska and WebM (cues). Others are read from the start: MPEG-TS
/// and MPEG-PS index every packet they time as a key frame, FLV indexes decode times.
fn has_trusted_index(demuxer: &str) -> bool {
    demuxer.starts_with("mov,") || demuxer.starts_with("matroska")
}

/// Codecs whose FFmpeg decoder skips a non-reference frame whole, leaving every other
/// frame's pixels as a full decode makes them.
fn skips_non_reference_exactly(codec: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(
        codec,
        Id::H264 | Id::MPEG1VIDEO | Id::MPEG2VIDEO | Id::MPEG4
    )
}

impl<'o> FrameReader<'o> {
    fn open(
        path: &Path,
        options: &'o FrameOptions,
        window: Option<Window>,
    ) -> std::result::Result<Self, String> {
        let (input, index, decoder) = open_track(path)?;
        let stream = input.stream(index).ok_or("no video stream")?;
        let (time_base, fps) = (
            f64::from(stream.time_base()),
            f64::from(stream.avg_frame_rate()),
        );
        // A clip is sought to and its frames before the start skipped, whatever the selector.
        let interval = matches!(options.selector, Selector::Interval(_)) || window.is_some();
        let start = window.map_or(0.0, |w| w.0);
        let demuxer = input.format().name().to_string();
        let mut reader = Self {
            path: path.to_path_buf(),
            input,
            index,
            time_base,
            fps,
            skip_non_reference: interval && skips_non_reference_exactly(decoder.id()),
            decoder,
            options,
            decoded: ffmpeg::util::frame::video::Video::empty(),
            scaler: None,
            frames: Vec::new(),
            bytes: 0,
            decoded_count: 0,
            next_ms: start,
            window,
            reached_window: window.is_none(),
            last_shown_ms: None,
            past_window: false,
            timed: None,
            seekable: interval && has_trusted_index(&demuxer),
            seek_considered: start <= 0.0,
            position: None,
            landed: None,
            seek_from: None,
            backward_landings: 0,
        };
        if reader.seekable && demuxer.starts_with("matroska") {
            reader.load_cues()?;
        }
        Ok(reader)
    }

    /// Matroska reads its cues (the seek index) only when first asked to seek; until then
    /// the index holds the key frames read so far. A seek to the start loads them; if it
    /// fails, the file is opened afresh and read from the start.
    fn load_cues(&mut self) -> std::result::Result<(), String> {
        // SAFETY: the context is open and the range valid (min ≤ ts ≤ max).
        let sought = unsafe {
            ffmpeg::ffi::avformat_seek_file(self.input.as_mut_ptr(), -1, i64::MIN, 0, 0, 0)
        };
        if sought < 0 {
            self.read_from_the_start()?;
        }
        Ok(())
    }

    /// Open the file afresh and decode it from the start, never seeking again: what a seek
    /// that failed or landed where it cannot be trusted falls back to. The frames kept so
    /// far all come before the wanted time, which the frames decoded again do not reach
    /// until they are past what was kept.
    fn read_from_the_start(&mut self) -> std::result::Result<(), String> {
        let (input, _, decoder) = open_track(&self.path)?;
        (self.input, self.decoder) = (input, decoder);
        self.seekable = false;
        self.position = None;
        self.landed = None;
        self.seek_from = None;
        Ok(())
    }

    fn run(&mut self) -> std::result::Result<(), String> {
        let mut packet = ffmpeg::Packet::empty();
        let mut errors = 0;
        loop {
            // Considered once the first packet has told where reading is.
            if !self.seek_considered && self.position.is_some() {
                self.seek_considered = true;
                self.seek_if_ahead()?;
            }
            match packet.read(&mut self.input) {
                Ok(()) => errors = 0,
                Err(ffmpeg::Error::Eof) => break,
                // A corrupt packet: the demuxer resyncs; a file that only errs ends here.
                Err(_) if errors < READ_ERRORS_IN_A_ROW => {
                    errors += 1;
                    continue;
                }
                Err(_) => break,
            }
            if packet.stream() != self.index {
                continue;
            }
            self.position = Some(packet.position() as i64).filter(|p| *p >= 0);
            // The stream reaches the clip even where no frame in it is kept (key frames).
            if let (Some((start, end)), Some(pts)) = (self.window, packet.pts()) {
                let shown = self.ms(pts);
                self.reached_window |= shown + TIME_TOLERANCE_MS >= start;
                self.last_shown_ms = Some(self.last_shown_ms.map_or(shown, |l| l.max(shown)));
                // Key frames come in showing order: one past the clip ends it.
                if matches!(self.options.selector, Selector::Keyframes)
                    && packet.is_key()
                    && shown + TIME_TOLERANCE_MS >= end
                {
                    self.past_window = true;
                    break;
                }
            }
            self.count_backward_landing();
            let timed = *self.timed.get_or_insert(packet.pts().is_some());
            if timed && matches!(self.options.selector, Selector::Keyframes) {
                if let Step::Done = self.decode_alone(&packet)? {
                    return Ok(());
                }
                continue;
            }
            let discard = self.discard(&packet, timed);
            self.decoder.skip_frame(discard);
            if self.decoder.send_packet(&packet).is_err() {
                continue; // a damaged packet: the decoder resyncs at the next key frame
            }
            if let Step::Done = self.receive()? {
                return Ok(());
            }
        }
        let _ = self.decoder.send_eof();
        self.receive().map(|_| ())
    }

    /// The key-frame selector: a key frame's packet decoded on its own (it refers to no
    /// other frame), the decoder drained and reset after it, every other packet not sent.
    /// Letting the decoder skip the others instead (`AVDISCARD_NONKEY`) loses the open-GOP
    /// key frames it holds back for reordering: 3 of 6 came out, last first.
    fn decode_alone(&mut self, packet: &ffmpeg::Packet) -> std::result::Result<Step, String> {
        if !packet.is_key() {
            return Ok(Step::Read);
        }
        if self.decoder.send_packet(packet).is_err() {
            self.decoder.flush();
            return Ok(Step::Read); // a damaged key frame: none from it
        }
        let _ = self.decoder.send_eof();
        let step = self.receive();
        self.decoder.flush();
        step
    }

    /// Which frames the decoder may skip for `packet`: every frame but key frames for the
    /// key-frame selector; before the wanted time, the frames no other frame refers to.
    /// Only in streams with timestamps: without, a frame's time is its place in the output,
    /// which a skipped frame would shift.
    fn discard(&self, packet: &ffmpeg::Packet, timed: bool) -> ffmpeg::Discard {
        let before = |ms: f64| {
            packet
                .pts()
                .is_some_and(|pts| self.ms(pts) + TIME_TOLERANCE_MS < ms)
        };
        let skipping = timed && self.skip_non_reference;
        match self.options.selector {
            Selector::Keyframes if timed => ffmpeg::Discard::NonKey,
            Selector::Interval(_) if skipping && before(self.next_ms) => {
                ffmpeg::Discard::NonReference
            }
            Selector::All if skipping && self.window.is_some_and(|w| before(w.0)) => {
                ffmpeg::Discard::NonReference
            }
            _ => ffmpeg::Discard::Default,
        }
    }

    fn ms(&self, ticks: i64) -> f64 {
        ticks as f64 * self.time_base * 1000.0
    }

    fn ticks(&self, ms: f64) -> i64 {
        (ms / 1000.0 / self.time_base).ceil() as i64
    }

    /// Seek to the key frame before `next_ms` when the file holds it past what has been
    /// read (byte positions: index times are decode times in some containers, show times
    /// in others).
    fn seek_if_ahead(&mut self) -> std::result::Result<(), String> {
        let (true, Some(position), Some(true)) = (self.seekable, self.position, self.timed) else {
            return Ok(());
        };
        let target = self.ticks(self.next_ms);
        if self
            .key_frame_position(target)
            .is_none_or(|key| key <= position)
        {
            return Ok(());
        }
        // SAFETY: the context is open for the reader's lifetime; the range is valid
        // (min ≤ ts ≤ max) and in the stream's own time base.
        let sought = unsafe {
            ffmpeg::ffi::avformat_seek_file(
                self.input.as_mut_ptr(),
                self.index as i32,
                i64::MIN,
                target,
                target,
                0,
            )
        };
        if sought < 0 {
            // A failed seek may still have moved the demuxer: where it reads is unknown.
            return self.read_from_the_start();
        }
        self.decoder.flush();
        self.landed = Some(Landing {
            wanted_ms: self.next_ms,
        });
        self.seek_from = Some(position);
        Ok(())
    }

    /// At the first packet after a seek: whether it landed before where it was made from.
    fn count_backward_landing(&mut self) {
        let Some(from) = self.seek_from.take() else {
            return;
        };
        if self.position.is_some_and(|landed| landed < from) {
            self.backward_landings += 1;
            if self.backward_landings >= BACKWARD_LANDINGS {
                self.seekable = false;
            }
        }
    }

    /// The byte position of the key frame shown at or before `ticks`, from the seek index.
    fn key_frame_position(&self, ticks: i64) -> Option<i64> {
        let stream = self.input.stream(self.index)?;
        // SAFETY: the stream belongs to the open context and the function only reads it;
        // the entry is read at once, before anything else can touch the index.
        unsafe {
            let stream = stream.as_ptr() as *mut ffmpeg::ffi::AVStream;
            let entry = ffmpeg::ffi::avformat_index_get_entry_from_timestamp(
                stream,
                ticks,
                ffmpeg::ffi::AVSEEK_FLAG_BACKWARD,
            );
            entry.as_ref().map(|e| e.pos).filter(|pos| *pos >= 0)
        }
    }

    /// After a seek, whether its first frame shows that decoding from there gives the
    /// frames decoding from the start would: a whole key frame, shown at or before the
    /// wanted time. Otherwise (an open group of pictures, intra refresh, a container that
    /// times key frames by decoding, a failed seek) the file is read again from the start.
    fn landing_is_wrong(&mut self, pts_ms: f64) -> std::result::Result<bool, String> {
        let Some(Landing { wanted_ms }) = self.landed.take() else {
            return Ok(false);
        };
        let trusted = self.decoded.is_key()
            && !self.decoded.is_corrupt()
            && pts_ms <= wanted_ms + TIME_TOLERANCE_MS;
        if !trusted {
            self.read_from_the_start()?;
        }
        Ok(!trusted)
    }

    /// Take the frames the decoder has ready.
    fn receive(&mut self) -> std::result::Result<Step, String> {
        while self.decoder.receive_frame(&mut self.decoded).is_ok() {
            rillet_operator::record_decoded(
                (0..self.decoded.planes())
                    .map(|i| self.decoded.data(i).len())
                    .sum(),
            );
            // The frame's own time where it has one: FFmpeg's best-effort guess depends on
            // the frames decoded before, which seeking and skipping change.
            let pts_ms = match self.decoded.pts().or(self.decoded.timestamp()) {
                Some(ts) => self.ms(ts),
                None if self.fps > 0.0 => self.decoded_count as f64 * 1000.0 / self.fps,
                None => 0.0,
            };
            self.decoded_count += 1;
            if self.landing_is_wrong(pts_ms)? {
                return Ok(Step::Read);
            }
            if let Some((start, end)) = self.window {
                if pts_ms + TIME_TOLERANCE_MS < start {
                    continue;
                }
                self.reached_window = true;
                if pts_ms + TIME_TOLERANCE_MS >= end {
                    // Frames come out in showing order, but for key frames alone, whose
                    // decoder may hold some back (open groups of pictures).
                    if matches!(self.options.selector, Selector::Keyframes) {
                        continue;
                    }
                    return Ok(Step::Done);
                }
            }
            if !self.wanted(pts_ms) {
                continue;
            }
            self.keep(pts_ms)?;
            if self.options.max_frames > 0 && self.frames.len() >= self.options.max_frames {
                return Ok(Step::Done);
            }
        }
        Ok(Step::Read)
    }

    fn wanted(&mut self, pts_ms: f64) -> bool {
        match self.options.selector {
            Selector::All => true,
            Selector::Keyframes => self.decoded.is_key(),
            Selector::Interval(interval) => {
                let pts_ms = pts_ms + TIME_TOLERANCE_MS;
                let due = pts_ms >= self.next_ms;
                if due {
                    // Multiples of the interval from the clip's start (or the video's).
                    let anchor = self.window.map_or(0.0, |w| w.0);
                    self.next_ms =
                        anchor + (((pts_ms - anchor) / interval).floor() + 1.0) * interval;
                    self.seek_considered = false;
                }
                due
            }
        }
    }

    /// Convert the decoded frame to RGB (and shrink it, for a fused resize) and keep it.
    fn keep(&mut self, pts_ms: f64) -> std::result::Result<(), String> {
        let (w, h) = (self.decoded.width(), self.decoded.height());
        // Full-size bytes, shrunk or not: a fused resize does not change what the cap allows.
        self.bytes += 3 * w as u64 * h as u64;
        if self.bytes > self.options.max_bytes {
            return Err(format!(
                "decoded frames would take over max_decoded_bytes = {}",
                self.options.max_bytes
            ));
        }
        let shape = (self.decoded.format(), w, h);
        if self.scaler.as_ref().is_none_or(|(_, s, _)| *s != shape) {
            let context = Scaler::get(shape.0, w, h, Pixel::RGB24, w, h, Flags::BILINEAR)
                .map_err(|e| format!("cannot convert {:?} frames to RGB: {e}", shape.0))?;
            let rgb = ffmpeg::util::frame::video::Video::new(Pixel::RGB24, w, h);
            self.scaler = Some((context, shape, rgb));
        }
        let (context, _, rgb) = self.scaler.as_mut().expect("set above");
        context.run(&self.decoded, rgb).map_err(|e| e.to_string())?;
        let (stride, row) = (rgb.stride(0), 3 * w as usize);
        let data = rgb.data(0);
        let (width, height, pixels) = match &self.options.downscale {
            Some(downscale) => downscale_rgb(data, stride, (w, h), downscale)?,
            None => {
                let mut pixels = Vec::with_capacity(row * h as usize);
                for y in 0..h as usize {
                    pixels.extend_from_slice(&data[y * stride..y * stride + row]);
                }
                (w, h, pixels)
            }
        };
        self.frames.push(Frame {
            pts_ms: pts_ms.round() as i64,
            width,
            height,
            rgb: pixels,
        });
        Ok(())
    }
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
///
/// When a resize reads every frame's image after an explode, and nothing else reads the
/// full-size image, the planner has `video_frames` shrink each frame as that resize would,
/// pixel for pixel ([`Operator::downscaled`]): plans show `video_frames+image_resize`, and
/// full-size frames never leave the decoder's thread.
#[derive(Debug)]
pub struct Frames {
    /// A list of images (`video_extract_frames`) rather than {pts_ms, image} structs.
    pub(super) collect: bool,
    /// The resize fused into the frames, if any.
    pub(super) downscale: Option<Downscale>,
}

impl Operator for Frames {
    fn name(&self) -> &'static str {
        match (self.collect, &self.downscale) {
            (true, _) => "video_extract_frames",
            (false, None) => "video_frames",
            (false, Some(_)) => "video_frames+image_resize",
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
        expect_video_or_clip(self.name(), &inputs[0])?;
        frame_options(params, None)?;
        let item = if self.collect {
            ImageType::new(Some(ImageMode::Rgb)).field("item")
        } else {
            Field::new("item", DataType::Struct(frame_fields()), true)
        };
        Ok(list_of(item, self.name()))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let options = frame_options(call.params, self.downscale.as_ref())?;
        let rows = per_video_clip(self.name(), call, errors, |path, window| {
            extract_frames(path, &options, window)
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

    fn downscaled(&self, downscale: &Downscale) -> Option<Self> {
        // Only frames exploded to rows of {pts_ms, image}: the planner finds the resize
        // reading `image`.
        (!self.collect && self.downscale.is_none()).then(|| Frames {
            collect: false,
            downscale: Some(downscale.clone()),
        })
    }

    fn batch_size(&self) -> Option<usize> {
        // One video a call: videos differ in length, and a call's rows run one after the
        // other, so calls of one row keep every core busy to the end.
        Some(1)
    }
}
