//! Audio containers and codecs: probing (header facts without decoding), decoding to
//! interleaved f32 PCM with a cap on decoded bytes (symphonia), and WAV encoding.

use std::borrow::Cow;
use std::io::Cursor;

use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::Waveform;

/// Decoded audio above this many bytes of f32 samples is bad data unless the operator is
/// told otherwise (`max_decoded_bytes`): 1 GiB, about 46 minutes of 48 kHz stereo.
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 1 << 30;

/// Frames a decode may fall short of the header's count (encoder priming and padding).
const FRAME_SLACK: u64 = 4096;

/// What the container header says about the audio track.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Container short name (`wave`, `mp3`, `flac`, `ogg`, ...).
    pub container: &'static str,
    /// Codec short name (`pcm_s16le`, `mp3`, `flac`, `vorbis`, ...).
    pub codec: &'static str,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u16,
    /// Frames (samples per channel), from the header or by counting packets.
    pub frames: u64,
}

impl Probe {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        self.frames as f64 * 1000.0 / self.sample_rate as f64
    }
}

fn describe(error: SymphoniaError) -> String {
    match error {
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated: the stream ends mid-packet".into()
        }
        SymphoniaError::Unsupported(what) => {
            format!("unsupported or unknown audio format ({what})")
        }
        other => other.to_string(),
    }
}

/// The default audio track's id, its frame count if the container declares one, and its
/// codec parameters.
fn audio_track(
    format: &dyn FormatReader,
) -> Result<(u32, Option<u64>, AudioCodecParameters), String> {
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("no audio track")?;
    Ok((track.id, track.num_frames, params.clone()))
}

/// The next packet of track `track_id`, other tracks' skipped; `None` at the stream's end.
fn next_packet_of(
    format: &mut dyn FormatReader,
    track_id: u32,
) -> Result<Option<symphonia::core::packet::Packet>, String> {
    loop {
        match format.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => return Ok(Some(packet)),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) => return Err(describe(e)),
        }
    }
}

fn open<'a>(
    bytes: &'a [u8],
    extension: Option<&str>,
) -> Result<Box<dyn FormatReader + 'a>, String> {
    if bytes.is_empty() {
        return Err("empty input (0 bytes)".into());
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = extension {
        hint.with_extension(extension);
    }
    symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(describe)
}

/// Read the header facts of encoded audio without decoding samples. Where the header does
/// not give the length (some MP3s), packets are counted (demuxed, not decoded).
///
/// ```
/// let wav = rillet_functions::audio::codec::encode_wav(
///     &rillet_functions::audio::Waveform::new(8000, 1, vec![0.0; 800]), false);
/// let probe = rillet_functions::audio::codec::probe(&wav, None).unwrap();
/// assert_eq!((probe.sample_rate, probe.channels, probe.frames), (8000, 1, 800));
/// ```
pub fn probe(bytes: &[u8], extension: Option<&str>) -> Result<Probe, String> {
    let mut format = open(bytes, extension)?;
    let container = format.format_info().short_name;
    let (track_id, header_frames, params) = audio_track(format.as_ref())?;
    let codec = symphonia::default::get_codecs()
        .get_audio_decoder(params.codec)
        .map(|d| d.codec.info.short_name)
        .ok_or("no decoder for this audio codec")?;
    let (mut sample_rate, mut channels) = (
        params.sample_rate,
        params.channels.as_ref().map(|c| c.count() as u16),
    );
    if sample_rate.is_none() || channels.is_none() {
        // Some streams only tell their layout in the first decoded packet.
        let decoded = decode(bytes, extension, u64::MAX, Some(1))?;
        sample_rate = sample_rate.or(Some(decoded.rate));
        channels = channels.or(Some(decoded.channels));
    }
    let frames = match header_frames {
        Some(frames) => frames,
        None => {
            let mut frames = 0u64;
            while let Some(packet) = next_packet_of(format.as_mut(), track_id)? {
                frames += packet.dur.get();
            }
            frames
        }
    };
    let (sample_rate, channels) = (sample_rate.unwrap_or(0), channels.unwrap_or(0));
    if sample_rate == 0 || channels == 0 {
        return Err(format!(
            "invalid header: {sample_rate} Hz, {channels} channels"
        ));
    }
    Ok(Probe {
        container,
        codec,
        sample_rate,
        channels,
        frames,
    })
}

/// Why `samples` f32 samples may not be decoded under `max_decoded_bytes`.
fn over_cap(samples: u64, max_decoded_bytes: u64) -> String {
    format!(
        "decoded audio would take {} bytes, over max_decoded_bytes = {max_decoded_bytes}",
        samples.saturating_mul(4)
    )
}

/// Decode encoded audio to interleaved f32 PCM. Strict: a malformed or truncated packet,
/// or fewer frames than the header declares, makes the whole input bad data (a partly
/// decoded clip is not silently returned), and so does a result over `max_decoded_bytes`. `max_packets` stops early (probing).
///
/// ```
/// use rillet_functions::audio::{codec, Waveform};
/// let wav = codec::encode_wav(&Waveform::new(16000, 2, vec![0.25; 3200]), true);
/// let audio = codec::decode(&wav, Some("wav"), codec::DEFAULT_MAX_DECODED_BYTES, None).unwrap();
/// assert_eq!((audio.rate, audio.channels, audio.frames()), (16000, 2, 1600));
/// assert!(codec::decode(&wav, None, 100, None).unwrap_err().contains("max_decoded_bytes"));
/// ```
pub fn decode(
    bytes: &[u8],
    extension: Option<&str>,
    max_decoded_bytes: u64,
    max_packets: Option<usize>,
) -> Result<Waveform<'static>, String> {
    let mut collected = Collect(Vec::new());
    let (rate, channels) = decode_with(
        bytes,
        extension,
        max_decoded_bytes,
        max_packets,
        &mut collected,
    )?;
    let samples = collected.0;
    // The samples count against the call's memory budget (see rillet_operator::memory).
    rillet_operator::memory::charge_call_memory(samples.capacity() * 4);
    Ok(Waveform {
        rate,
        channels,
        samples: Cow::Owned(samples),
    })
}

/// Where decoded audio goes, packet by packet ([`decode_with`]): held whole
/// ([`decode`]), or resampled as it comes (`audio_resample`, `audio_standardize`).
pub trait PcmSink {
    /// Room for the next packet's `len` interleaved samples, which the decoder writes.
    fn room(&mut self, len: usize) -> &mut [f32];
    /// The samples just written into [`room`](Self::room) are a packet at `rate` Hz with
    /// `channels` channels (the same for every packet of a stream).
    fn take(&mut self, rate: u32, channels: u16) -> Result<(), String>;
}

/// Samples held whole (the decoder writes each packet at their end).
struct Collect(Vec<f32>);

impl PcmSink for Collect {
    fn room(&mut self, len: usize) -> &mut [f32] {
        let at = self.0.len();
        self.0.resize(at + len, 0.0);
        &mut self.0[at..]
    }

    fn take(&mut self, _rate: u32, _channels: u16) -> Result<(), String> {
        Ok(())
    }
}

/// Decode encoded audio into `sink`, packet by packet, with [`decode`]'s strictness; the
/// stream's rate and channel count. `max_decoded_bytes` caps the samples decoded (a stream
/// whose header declares more is refused before decoding), whether or not the sink holds
/// them; the sink caps what it holds itself.
pub fn decode_with(
    bytes: &[u8],
    extension: Option<&str>,
    max_decoded_bytes: u64,
    max_packets: Option<usize>,
    sink: &mut dyn PcmSink,
) -> Result<(u32, u16), String> {
    let mut format = open(bytes, extension)?;
    let (track_id, declared_frames, params) = audio_track(format.as_ref())?;
    if let (Some(frames), Some(channels)) = (declared_frames, params.channels.as_ref()) {
        let samples = frames.saturating_mul(channels.count() as u64);
        if samples.saturating_mul(4) > max_decoded_bytes {
            return Err(over_cap(samples, max_decoded_bytes));
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(describe)?;
    let mut spec: Option<(u32, u16)> = None;
    let (mut packets, mut decoded_samples) = (0usize, 0u64);
    loop {
        if max_packets.is_some_and(|max| packets >= max) {
            break;
        }
        let Some(packet) = next_packet_of(format.as_mut(), track_id)? else {
            break;
        };
        packets += 1;
        let buffer = decoder.decode(&packet).map_err(describe)?;
        let (rate, channels) = (
            buffer.spec().rate(),
            buffer.spec().channels().count() as u16,
        );
        match spec {
            None => spec = Some((rate, channels)),
            Some(known) if known != (rate, channels) => {
                return Err(format!(
                    "the stream changes format mid-way ({} Hz × {} → {rate} Hz × {channels})",
                    known.0, known.1
                ));
            }
            Some(_) => {}
        }
        let added = buffer.samples_interleaved();
        decoded_samples += added as u64;
        if decoded_samples.saturating_mul(4) > max_decoded_bytes {
            return Err(over_cap(decoded_samples, max_decoded_bytes));
        }
        buffer.copy_to_slice_interleaved(sink.room(added));
        sink.take(rate, channels)?;
    }
    if max_packets.is_none()
        && let (Some(declared), Some((_, channels))) = (declared_frames, spec)
    {
        // Frame-stream formats (MP3, ADTS) end quietly at a cut or skip a damaged stretch;
        // the length the header declares tells. A packet's worth of slack allows for
        // encoder priming and padding.
        let decoded = decoded_samples / channels as u64;
        if decoded + FRAME_SLACK < declared {
            return Err(format!(
                "truncated or corrupt: decoded {decoded} frames of the {declared} the header declares"
            ));
        }
    }
    let (rate, channels) = spec
        .or_else(|| {
            Some((
                params.sample_rate?,
                params.channels.as_ref()?.count() as u16,
            ))
        })
        .ok_or("the stream holds no audio packets")?;
    if rate == 0 || channels == 0 {
        return Err(format!("invalid stream: {rate} Hz, {channels} channels"));
    }
    rillet_operator::record_decoded(decoded_samples as usize * 4);
    Ok((rate, channels))
}

/// Packets decoded, and their samples dropped, before the first packet a span needs, at
/// least: by then the decoder's history is what a decode from the start would have, so the
/// span's samples are that decode's.
const PREROLL_PACKETS: usize = 8;

/// Bytes of main data the preroll packets hold, at least: MP3's bit reservoir reaches up
/// to 511 bytes back, for the first packet kept and for the one before it, whose filter
/// banks overlap it. A frame's first 36 bytes are taken as header and side information.
const PREROLL_MAIN_BYTES: usize = 2 * 511;

/// Packets a preroll may grow to before the span is decoded from the start instead (tiny
/// frames of almost nothing but headers).
const MAX_PREROLL_PACKETS: usize = 2048;

/// Whether the codec's decoder, fed a few packets before a span, gives the span's samples
/// exactly as a decode from the start: PCM and ADPCM packets stand alone, FLAC and ALAC
/// frames too, MPEG audio needs the preroll. Not AAC, whose noise substitution draws from
/// one random sequence from the file's start, nor Vorbis, whose packets do not declare
/// what they decode to alone.
fn restarts_exactly(codec: &str) -> bool {
    ["pcm", "adpcm", "flac", "alac", "mp1", "mp2", "mp3"]
        .iter()
        .any(|prefix| codec.starts_with(prefix))
}

/// The part of a decode that a span asked for (see [`decode_span`]).
#[derive(Debug)]
pub struct Span<'a> {
    /// The decoded frames from `first_frame` on, up to the span's end or the stream's.
    pub audio: Waveform<'a>,
    /// Index, in a decode from the start, of the first frame of `audio`.
    pub first_frame: u64,
    /// Frames of the whole decode (its length).
    pub total_frames: u64,
}

/// Packets read but not decoded, the last ones kept for the preroll.
#[derive(Default)]
struct Preroll {
    packets: std::collections::VecDeque<(u64, symphonia::core::packet::Packet)>,
    main_bytes: usize,
    /// Whether packets were dropped from the front (else it starts at the stream's start).
    dropped: bool,
}

impl Preroll {
    fn main_bytes(packet: &symphonia::core::packet::Packet) -> usize {
        packet.data.len().saturating_sub(36)
    }

    fn push(&mut self, frames: u64, packet: symphonia::core::packet::Packet) {
        self.main_bytes += Self::main_bytes(&packet);
        self.packets.push_back((frames, packet));
        while let Some((_, front)) = self.packets.front() {
            let rest = self.main_bytes - Self::main_bytes(front);
            let enough = self.packets.len() > PREROLL_PACKETS && rest >= PREROLL_MAIN_BYTES;
            if !enough && self.packets.len() <= MAX_PREROLL_PACKETS {
                break;
            }
            self.main_bytes = rest;
            self.packets.pop_front();
            self.dropped = true;
        }
    }

    /// Whether decoding these packets rebuilds the decoder's history.
    fn is_enough(&self) -> bool {
        !self.dropped
            || (self.packets.len() >= PREROLL_PACKETS && self.main_bytes >= PREROLL_MAIN_BYTES)
    }
}

/// Decode only the frames from `start_ms` to `end_ms` of encoded audio, as a decode from
/// the start would give them: packets before the span are read, not decoded (but for the
/// preroll that rebuilds the decoder's history), and after it they are read only to find
/// the stream's length and whether it is cut short. Where skipping packets could change a
/// sample (see [`restarts_exactly`]), decoding starts at the stream's start (and still
/// stops at the span's end); where the container's packet durations do not count the
/// decoder's frames (timestamps not in samples, a packet decoding to another length or
/// format than the container declares), the whole stream is decoded instead.
/// `max_decoded_bytes` caps the frames decoded, not the stream's.
///
/// ```
/// use rillet_functions::audio::{codec, Waveform};
/// let wav = codec::encode_wav(&Waveform::new(1000, 1, (0..5000).map(|i| i as f32 / 8192.0).collect()), true);
/// let span = codec::decode_span(&wav, Some("wav"), codec::DEFAULT_MAX_DECODED_BYTES, 2000.0, 2500.0).unwrap();
/// assert!(span.first_frame <= 2000 && span.first_frame as usize + span.audio.frames() >= 2500);
/// assert_eq!(span.audio.samples[2000 - span.first_frame as usize], 2000.0 / 8192.0);
/// assert_eq!(span.total_frames, 5000);
/// ```
pub fn decode_span(
    bytes: &[u8],
    extension: Option<&str>,
    max_decoded_bytes: u64,
    start_ms: f64,
    end_ms: f64,
) -> Result<Span<'static>, String> {
    let whole = || {
        decode(bytes, extension, max_decoded_bytes, None).map(|audio| Span {
            total_frames: audio.frames() as u64,
            audio,
            first_frame: 0,
        })
    };
    let mut format = open(bytes, extension)?;
    let (track_id, declared_frames, params) = audio_track(format.as_ref())?;
    let time_base = format
        .default_track(TrackType::Audio)
        .and_then(|t| t.time_base);
    let rate = match (params.sample_rate, time_base) {
        (Some(rate), Some(tb)) if tb.numer.get() == 1 && tb.denom.get() == rate => rate,
        _ => return whole(),
    };
    let declared_channels = params.channels.as_ref().map(|c| c.count() as u16);
    let restarts_exactly = symphonia::default::get_codecs()
        .get_audio_decoder(params.codec)
        .is_some_and(|d| restarts_exactly(d.codec.info.short_name));
    let frame_at = |ms: f64| (ms.max(0.0) * rate as f64 / 1000.0).floor() as u64;
    // A decoder that does not restart exactly decodes from the start, up to the span's end.
    let start = if restarts_exactly {
        frame_at(start_ms)
    } else {
        0
    };
    let end = frame_at(end_ms).saturating_add(1);
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(describe)?;
    let mut preroll = Preroll::default();
    // Where the next packet starts in a decode from the start.
    let mut position = 0u64;
    let mut decoding = false;
    let (mut samples, mut first_frame, mut channels) = (Vec::<f32>::new(), 0u64, None);
    while let Some(packet) = next_packet_of(format.as_mut(), track_id)? {
        // What the decoder gives for the packet: its duration less the encoder delay and
        // padding it trims (checked on every packet decoded).
        let frames = packet
            .dur
            .get()
            .saturating_sub(packet.trim_start.get() + packet.trim_end.get());
        if position >= end {
            position += frames; // past the span: only its length
            continue;
        }
        if !decoding && position + frames <= start {
            preroll.push(frames, packet);
            position += frames;
            continue;
        }
        if !decoding {
            decoding = true;
            first_frame = position;
            if !preroll.is_enough() {
                return whole();
            }
            for (declared, packet) in preroll.packets.drain(..) {
                // The first preroll packets may miss what came before them (an error or a
                // short frame): whatever goes wrong here, the whole decode decides.
                match decoder.decode(&packet) {
                    Ok(buffer) if buffer.frames() as u64 == declared => {}
                    _ => return whole(),
                }
            }
        }
        let buffer = decoder.decode(&packet).map_err(describe)?;
        let spec = (
            buffer.spec().rate(),
            buffer.spec().channels().count() as u16,
        );
        if buffer.frames() as u64 != frames
            || spec.0 != rate
            || declared_channels.is_some_and(|c| c != spec.1)
            || *channels.get_or_insert(spec.1) != spec.1
        {
            return whole(); // the container's count or format is not the decoder's
        }
        let at = samples.len();
        let added = buffer.samples_interleaved();
        if ((at + added) as u64).saturating_mul(4) > max_decoded_bytes {
            return Err(over_cap((at + added) as u64, max_decoded_bytes));
        }
        samples.resize(at + added, 0.0);
        buffer.copy_to_slice_interleaved(&mut samples[at..]);
        position += frames;
    }
    if let Some(declared) = declared_frames
        && position + FRAME_SLACK < declared
    {
        return Err(format!(
            "truncated or corrupt: the stream holds {position} frames of the {declared} the header declares"
        ));
    }
    let Some(channels) = channels.or(declared_channels) else {
        return whole(); // nothing decoded and no layout declared
    };
    if !decoding {
        first_frame = position; // the span starts at or past the end
    }
    rillet_operator::memory::charge_call_memory(samples.capacity() * 4);
    rillet_operator::record_decoded(samples.len() * 4);
    Ok(Span {
        audio: Waveform {
            rate,
            channels,
            samples: Cow::Owned(samples),
        },
        first_frame,
        total_frames: position,
    })
}

/// Encode as a RIFF/WAVE file: 16-bit PCM (clipped to [-1, 1]), or 32-bit float when
/// `float` is true.
pub fn encode_wav(audio: &Waveform<'_>, float: bool) -> Vec<u8> {
    let bytes_per_sample: u16 = if float { 4 } else { 2 };
    let data_len = audio.samples.len() as u32 * bytes_per_sample as u32;
    let block_align = audio.channels * bytes_per_sample;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&(if float { 3u16 } else { 1u16 }).to_le_bytes()); // IEEE float : PCM
    out.extend_from_slice(&audio.channels.to_le_bytes());
    out.extend_from_slice(&audio.rate.to_le_bytes());
    out.extend_from_slice(&(audio.rate * block_align as u32).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&(bytes_per_sample * 8).to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &s in audio.samples.iter() {
        if float {
            out.extend_from_slice(&s.to_le_bytes());
        } else {
            // Decoders read 16-bit PCM back as v / 32768: scale the same way, so audio
            // that came from 16-bit PCM round-trips exactly.
            let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}
