//! Signal processing on interleaved f32 PCM: channel mixing, band-limited resampling
//! (rubato's FFT resampler), slicing by time, silence detection and log-mel spectrograms.

use std::borrow::Cow;

use realfft::RealFftPlanner;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::Waveform;

/// Average all channels into one.
///
/// ```
/// use rillet_functions::audio::{dsp, Waveform};
/// let stereo = Waveform::new(8000, 2, vec![1.0, 0.0, 0.5, 0.5]);
/// assert_eq!(dsp::to_mono(&stereo).samples.as_ref(), &[0.5, 0.5]);
/// ```
pub fn to_mono(audio: &Waveform<'_>) -> Waveform<'static> {
    let c = audio.channels as usize;
    let samples = if c == 1 {
        audio.samples.to_vec()
    } else {
        audio
            .samples
            .chunks_exact(c)
            .map(|frame| frame.iter().sum::<f32>() / c as f32)
            .collect()
    };
    Waveform {
        rate: audio.rate,
        channels: 1,
        samples: Cow::Owned(samples),
    }
}

/// Change the channel count: mono is copied to every channel; anything else is mixed to
/// mono first (a down- or up-mix without a speaker layout is a mono mix).
pub fn remix(audio: &Waveform<'_>, channels: u16) -> Waveform<'static> {
    if audio.channels == channels {
        return audio.to_owned_waveform();
    }
    let mono = to_mono(audio);
    if channels == 1 {
        return mono;
    }
    let samples = mono
        .samples
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, channels as usize))
        .collect();
    Waveform {
        rate: audio.rate,
        channels,
        samples: Cow::Owned(samples),
    }
}

/// The most bytes one computed value (a resampled clip, a spectrogram) may take: the
/// default cap of a decoded one, so parameters cannot ask for more than decoding allows.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 30;

/// Band-limited resampling to `rate` Hz (FFT-based, with the filter delay trimmed so the
/// output lines up with the input).
pub fn resample(audio: &Waveform<'_>, rate: u32) -> Result<Waveform<'static>, String> {
    if audio.rate == rate {
        return Ok(audio.to_owned_waveform());
    }
    let frames = audio.frames();
    let out_bytes =
        (frames as u128 * rate as u128 / audio.rate.max(1) as u128) * audio.channels as u128 * 4;
    if out_bytes > MAX_OUTPUT_BYTES as u128 {
        return Err(format!(
            "resampling {frames} frames from {} Hz to {rate} Hz would make {out_bytes} bytes, \
             over the cap of {MAX_OUTPUT_BYTES} bytes per value",
            audio.rate
        ));
    }
    let mut resampler = StreamResampler::new(audio.rate, rate, audio.channels)?;
    resampler.push(&audio.samples)?;
    resampler.finish()
}

/// Input frames per resampling chunk.
const RESAMPLE_CHUNK: usize = 1024;

/// Band-limited resampling fed piece by piece (a decoder's packets, as they come), giving
/// exactly what [`resample`] gives for the whole input: the input is cut into the same
/// fixed chunks from its first frame whatever the pieces, the filter delay is dropped from
/// the front, and the output is cut to the input's length at the new rate. Only a chunk of
/// input is held, never the whole stream at its own rate.
///
/// ```
/// use rillet_functions::audio::{dsp, Waveform};
/// let tone: Vec<f32> = (0..44100).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
/// let mut stream = dsp::StreamResampler::new(44100, 16000, 1).unwrap();
/// for piece in tone.chunks(1152) {
///     stream.push(piece).unwrap();
/// }
/// let pieces = stream.finish().unwrap();
/// let whole = dsp::resample(&Waveform::new(44100, 1, tone), 16000).unwrap();
/// assert_eq!(pieces, whole);
/// assert_eq!(pieces.frames(), 16000);
/// ```
pub struct StreamResampler {
    /// `None` when the rates are the same: the input passes through.
    resampler: Option<Fft<f32>>,
    rate: u32,
    channels: usize,
    /// Input not yet resampled (interleaved), under two chunks.
    pending: Vec<f32>,
    /// Output so far, the filter delay still at its front.
    output: Vec<f32>,
    /// One chunk's output.
    scratch: Vec<f32>,
    input_frames: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .field("input_frames", &self.input_frames)
            .finish()
    }
}

impl StreamResampler {
    /// A resampler of `channels`-channel audio from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32, channels: u16) -> Result<Self, String> {
        if from == 0 || to == 0 || channels == 0 {
            return Err(format!(
                "cannot resample {channels}-channel audio from {from} Hz to {to} Hz"
            ));
        }
        let resampler = (from != to)
            .then(|| {
                Fft::<f32>::new(
                    from as usize,
                    to as usize,
                    RESAMPLE_CHUNK,
                    channels as usize,
                    FixedSync::Input,
                )
                .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))
            })
            .transpose()?;
        let scratch = resampler
            .as_ref()
            .map_or(0, |r| r.output_frames_max() * channels as usize);
        Ok(Self {
            resampler,
            rate: to,
            channels: channels as usize,
            pending: Vec::new(),
            output: Vec::new(),
            scratch: vec![0.0; scratch],
            input_frames: 0,
        })
    }

    /// Add interleaved samples (a whole number of frames).
    pub fn push(&mut self, samples: &[f32]) -> Result<(), String> {
        if !samples.len().is_multiple_of(self.channels) {
            return Err(format!(
                "{} samples are not whole frames of {} channels",
                samples.len(),
                self.channels
            ));
        }
        self.input_frames += (samples.len() / self.channels) as u64;
        if self.resampler.is_none() {
            self.output.extend_from_slice(samples);
            return self.check_size();
        }
        self.pending.extend_from_slice(samples);
        // The last chunk, whole or not, waits for `finish`: it is resampled as the end.
        while self.pending.len() > RESAMPLE_CHUNK * self.channels {
            self.process(None)?;
        }
        Ok(())
    }

    /// The resampled audio.
    pub fn finish(mut self) -> Result<Waveform<'static>, String> {
        let Some(resampler) = self.resampler.as_ref() else {
            return Ok(Waveform::new(self.rate, self.channels as u16, self.output));
        };
        let delay = resampler.output_delay();
        let expected = (resampler.resample_ratio() * self.input_frames as f64).ceil() as usize;
        if self.input_frames > 0 {
            let frames = self.pending.len() / self.channels;
            self.process(Some(frames))?;
            // Zeros until the delay and the expected length are out.
            while self.output.len() / self.channels < expected + delay {
                self.process(Some(0))?;
            }
        }
        let c = self.channels;
        let mut samples = self.output;
        samples.truncate((delay + expected) * c);
        samples.drain(..(delay * c).min(samples.len()));
        Ok(Waveform::new(self.rate, c as u16, samples))
    }

    /// Resample the next chunk of `pending`: a whole one (`partial` is `None`), or the
    /// last `partial` frames.
    fn process(&mut self, partial: Option<usize>) -> Result<(), String> {
        let c = self.channels;
        let resampler = self
            .resampler
            .as_mut()
            .expect("only called when resampling");
        let frames = partial.unwrap_or(RESAMPLE_CHUNK);
        let input = InterleavedSlice::new(&self.pending[..frames * c], c, frames)
            .map_err(|e| e.to_string())?;
        let capacity = self.scratch.len() / c;
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch, c, capacity).map_err(|e| e.to_string())?;
        let indexing = rubato::Indexing {
            input_offset: 0,
            output_offset: 0,
            active_channels_mask: None,
            partial_len: partial,
        };
        let (used, made) = resampler
            .process_into_buffer(&input, &mut output, Some(&indexing))
            .map_err(|e| format!("resampling failed: {e}"))?;
        // A last chunk is used up whatever the resampler counts (it pads it).
        let used = if partial.is_some() { frames } else { used };
        self.pending.drain(..used.min(frames) * c);
        self.output.extend_from_slice(&self.scratch[..made * c]);
        self.check_size()
    }

    fn check_size(&self) -> Result<(), String> {
        let bytes = self.output.len() as u64 * 4;
        if bytes > MAX_OUTPUT_BYTES {
            return Err(format!(
                "resampled audio would take over {MAX_OUTPUT_BYTES} bytes per value"
            ));
        }
        Ok(())
    }
}

/// The frames between `start_ms` and `end_ms` (clamped to the clip).
pub fn slice_ms(audio: &Waveform<'_>, start_ms: f64, end_ms: f64) -> Waveform<'static> {
    let c = audio.channels as usize;
    let frame_at =
        |ms: f64| ((ms * audio.rate as f64 / 1000.0).round().max(0.0) as usize).min(audio.frames());
    let (start, end) = (frame_at(start_ms), frame_at(end_ms));
    let samples = audio.samples[start * c..end.max(start) * c].to_vec();
    Waveform {
        rate: audio.rate,
        channels: audio.channels,
        samples: Cow::Owned(samples),
    }
}

/// Silent stretches: runs of 10 ms windows whose RMS level (over all channels) is at or
/// below `threshold_db` dBFS, lasting at least `min_silence_ms`. Returns `(start_ms, end_ms)`.
///
/// ```
/// use rillet_functions::audio::{dsp, Waveform};
/// // 0.5 s of a loud square wave, then 0.5 s of silence, at 1 kHz.
/// let mut samples: Vec<f32> = (0..500).map(|i| if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
/// samples.extend(std::iter::repeat_n(0.0, 500));
/// let ranges = dsp::detect_silence(&Waveform::new(1000, 1, samples), -40.0, 200.0);
/// assert_eq!(ranges, vec![(500, 1000)]);
/// ```
pub fn detect_silence(
    audio: &Waveform<'_>,
    threshold_db: f64,
    min_silence_ms: f64,
) -> Vec<(i64, i64)> {
    let c = audio.channels as usize;
    let window = (audio.rate as usize / 100).max(1);
    let total_ms = audio.duration_ms();
    let mut ranges = Vec::new();
    let mut run_start: Option<usize> = None;
    let frames = audio.frames();
    let ms_of = |frame: usize| (frame as f64 * 1000.0 / audio.rate as f64).min(total_ms);
    let close = |start: usize, end: usize, ranges: &mut Vec<(i64, i64)>| {
        let (s, e) = (ms_of(start), ms_of(end));
        if e - s >= min_silence_ms {
            ranges.push((s.round() as i64, e.round() as i64));
        }
    };
    let mut frame = 0;
    while frame < frames {
        let end = (frame + window).min(frames);
        let block = &audio.samples[frame * c..end * c];
        let mean_square =
            block.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / block.len() as f64;
        let db = 10.0 * mean_square.log10(); // 20·log10(rms); -inf for digital silence
        match (db <= threshold_db, run_start) {
            (true, None) => run_start = Some(frame),
            (false, Some(start)) => {
                close(start, frame, &mut ranges);
                run_start = None;
            }
            _ => {}
        }
        frame = end;
    }
    if let Some(start) = run_start {
        close(start, frames, &mut ranges);
    }
    ranges
}

/// Mel-scale triangle filters in the Slaney convention (linear below 1 kHz, logarithmic
/// above, each filter normalised to unit area) — librosa's default, which Whisper uses.
/// Returns `n_mels` rows of `n_fft / 2 + 1` weights.
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<Vec<f64>> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let log_step = 6.4f64.ln() / 27.0;
    let hz_to_mel = |hz: f64| {
        if hz < MIN_LOG_HZ {
            hz / F_SP
        } else {
            MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step
        }
    };
    let mel_to_hz = |mel: f64| {
        if mel < MIN_LOG_MEL {
            mel * F_SP
        } else {
            MIN_LOG_HZ * ((mel - MIN_LOG_MEL) * log_step).exp()
        }
    };
    let max_mel = hz_to_mel(sample_rate as f64 / 2.0);
    let points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let bins = n_fft / 2 + 1;
    let bin_hz: Vec<f64> = (0..bins)
        .map(|k| k as f64 * sample_rate as f64 / n_fft as f64)
        .collect();
    (0..n_mels)
        .map(|m| {
            let (lo, mid, hi) = (points[m], points[m + 1], points[m + 2]);
            let norm = 2.0 / (hi - lo);
            bin_hz
                .iter()
                .map(|&f| {
                    let rising = (f - lo) / (mid - lo);
                    let falling = (hi - f) / (hi - mid);
                    rising.min(falling).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

/// Whisper-style log-mel features of the mono mix: a periodic Hann window of `n_fft`
/// samples every `hop` samples over the reflect-padded signal, power spectrum, Slaney mel
/// filters, `log10` floored at 1e-10, clamped to 8 below the peak, scaled as
/// `(x + 4) / 4`. The last frame is dropped, as Whisper does, so a clip of `n` samples
/// gives `n / hop` frames. Returns `(values in [n_mels, frames] row-major order, frames)`.
pub fn log_mel_spectrogram(
    audio: &Waveform<'_>,
    n_mels: usize,
    n_fft: usize,
    hop: usize,
) -> Result<(Vec<f32>, usize), String> {
    let mono = to_mono(audio);
    let signal = mono.samples.as_ref();
    let pad = n_fft / 2;
    if signal.len() <= pad {
        return Err(format!(
            "clip too short for n_fft = {n_fft}: {} samples",
            signal.len()
        ));
    }
    // Reflect padding (the edge sample is not repeated).
    let mut padded = Vec::with_capacity(signal.len() + 2 * pad);
    padded.extend((1..=pad).rev().map(|i| signal[i]));
    padded.extend_from_slice(signal);
    padded.extend((0..pad).map(|i| signal[signal.len() - 2 - i]));
    let frames = (padded.len() - n_fft) / hop; // one fewer than the STFT has: Whisper drops the last
    if frames == 0 {
        return Err(format!("clip too short for n_fft = {n_fft}, hop = {hop}"));
    }
    let out_bytes = frames as u64 * n_mels as u64 * 4;
    if out_bytes > MAX_OUTPUT_BYTES {
        return Err(format!(
            "a spectrogram of {frames} frames × {n_mels} mels would make {out_bytes} bytes, over \
             the cap of {MAX_OUTPUT_BYTES} bytes per value; use a larger hop (now {hop})"
        ));
    }
    let window: Vec<f64> = (0..n_fft)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos())
        .collect();
    let filters = mel_filters(audio.rate, n_fft, n_mels);
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
    let (mut input, mut spectrum) = (fft.make_input_vec(), fft.make_output_vec());
    let mut power = vec![0.0f64; n_fft / 2 + 1];
    let mut mel = vec![0.0f64; n_mels * frames];
    for t in 0..frames {
        let start = t * hop;
        for (i, x) in input.iter_mut().enumerate() {
            *x = padded[start + i] as f64 * window[i];
        }
        fft.process(&mut input, &mut spectrum)
            .map_err(|e| e.to_string())?;
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for (m, filter) in filters.iter().enumerate() {
            mel[m * frames + t] = filter.iter().zip(&power).map(|(w, p)| w * p).sum();
        }
    }
    let mut log: Vec<f64> = mel.iter().map(|&v| v.max(1e-10).log10()).collect();
    let peak = log.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for v in &mut log {
        *v = (v.max(peak - 8.0) + 4.0) / 4.0;
    }
    Ok((log.into_iter().map(|v| v as f32).collect(), frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What rubato's one-call resampling of the whole input gives.
    fn resample_at_once(samples: &[f32], from: u32, to: u32, channels: usize) -> Vec<f32> {
        let frames = samples.len() / channels;
        let mut resampler =
            Fft::<f32>::new(from as usize, to as usize, 1024, channels, FixedSync::Input).unwrap();
        let input = InterleavedSlice::new(samples, channels, frames).unwrap();
        resampler
            .process_all(&input, frames, None)
            .unwrap()
            .take_data()
    }

    #[test]
    fn resampling_piece_by_piece_gives_what_resampling_at_once_gives() {
        for (from, to) in [
            (44100, 16000),
            (8000, 16000),
            (48000, 44100),
            (22050, 16000),
        ] {
            for channels in [1usize, 2] {
                for frames in [1usize, 100, 1023, 1024, 1025, 2048, 5000, 44_100] {
                    let samples: Vec<f32> = (0..frames * channels)
                        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.8)
                        .collect();
                    let want = resample_at_once(&samples, from, to, channels);
                    for piece in [1usize, 576, 1024, 1152, 4096, usize::MAX] {
                        let mut stream = StreamResampler::new(from, to, channels as u16).unwrap();
                        for part in samples.chunks((piece.min(frames)) * channels) {
                            stream.push(part).unwrap();
                        }
                        let got = stream.finish().unwrap();
                        assert_eq!(
                            got.samples.as_ref(),
                            want.as_slice(),
                            "{from}->{to} Hz, {channels} ch, {frames} frames in pieces of {piece}"
                        );
                    }
                }
            }
        }
        let mut same = StreamResampler::new(16000, 16000, 1).unwrap();
        same.push(&[0.5; 10]).unwrap();
        assert_eq!(same.finish().unwrap().samples.len(), 10);
        assert!(
            StreamResampler::new(16000, 8000, 2)
                .unwrap()
                .push(&[0.0; 3])
                .is_err()
        );
        let empty = StreamResampler::new(44100, 16000, 1)
            .unwrap()
            .finish()
            .unwrap();
        assert!(empty.samples.is_empty() && empty.rate == 16000);
    }

    fn sine(rate: u32, hz: f64, seconds: f64) -> Waveform<'static> {
        let n = (rate as f64 * seconds) as usize;
        Waveform::new(
            rate,
            1,
            (0..n)
                .map(|i| {
                    (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() as f32 * 0.5
                })
                .collect(),
        )
    }

    /// Least-squares fit of `a·sin + b·cos` at `hz`: (amplitude, delay in seconds, residual RMS).
    fn fit_tone(wave: &Waveform<'_>, hz: f64, range: std::ops::Range<usize>) -> (f64, f64, f64) {
        let w = 2.0 * std::f64::consts::PI * hz / wave.rate as f64;
        let (mut ss, mut sc, mut n) = (0.0, 0.0, 0.0);
        for i in range.clone() {
            ss += wave.samples[i] as f64 * (w * i as f64).sin();
            sc += wave.samples[i] as f64 * (w * i as f64).cos();
            n += 1.0;
        }
        let (a, b) = (2.0 * ss / n, 2.0 * sc / n);
        let residual = range
            .map(|i| {
                (wave.samples[i] as f64 - a * (w * i as f64).sin() - b * (w * i as f64).cos())
                    .powi(2)
            })
            .sum::<f64>()
            / n;
        (
            (a * a + b * b).sqrt(),
            -b.atan2(a) / (2.0 * std::f64::consts::PI * hz),
            residual.sqrt(),
        )
    }

    #[test]
    fn resampling_keeps_tones_their_level_and_timing() {
        for hz in [100.0, 440.0, 3000.0] {
            let out = resample(&sine(44100, hz, 1.0), 16000).unwrap();
            assert_eq!(out.rate, 16000);
            assert!(
                (out.frames() as i64 - 16000).abs() <= 1,
                "{} frames",
                out.frames()
            );
            let (amplitude, delay, residual) = fit_tone(&out, hz, 1000..15000);
            assert!(
                (amplitude - 0.5).abs() < 0.005,
                "{hz} Hz: amplitude {amplitude}"
            );
            // Aligned to within one output sample, and nothing but the tone (no aliasing).
            assert!(delay.abs() < 1.0 / 16000.0, "{hz} Hz: delay {delay} s");
            assert!(residual < 1e-3, "{hz} Hz: residual {residual}");
        }
        // A tone above the new Nyquist frequency is filtered out, not aliased.
        let out = resample(&sine(44100, 12000.0, 1.0), 16000).unwrap();
        let rms = (out.samples[1000..15000]
            .iter()
            .map(|s| (*s as f64).powi(2))
            .sum::<f64>()
            / 14000.0)
            .sqrt();
        assert!(rms < 0.01, "rms {rms}");
    }

    #[test]
    fn mel_filters_are_triangles_of_unit_area() {
        let filters = mel_filters(16000, 400, 80);
        assert_eq!((filters.len(), filters[0].len()), (80, 201));
        assert!(
            filters
                .iter()
                .all(|f| f.iter().all(|w| *w >= 0.0) && f.iter().any(|w| *w > 0.0))
        );
    }

    #[test]
    fn mel_frames_follow_whisper() {
        let (values, frames) = log_mel_spectrogram(&sine(16000, 440.0, 1.0), 80, 400, 160).unwrap();
        assert_eq!(frames, 100);
        assert_eq!(values.len(), 80 * 100);
        assert!(log_mel_spectrogram(&sine(16000, 440.0, 0.01), 80, 400, 160).is_err());
    }
}
