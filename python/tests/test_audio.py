"""Audio operators on real speech (espeak-ng) in WAV, FLAC, MP3, Ogg Vorbis and M4A/AAC
(ffmpeg), checked against Python's ``wave`` module and numpy references, the corrupt-audio
corpus, the on_error policies, SQL, and Audio type round trips."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_speech


@pytest.fixture(scope="module")
def speech():
    """{name: path} for the sample speech files."""
    return {p.name: p for p in sample_speech()}


def _read_wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        return data.reshape(-1, w.getnchannels()), w.getframerate()


def _audio_df(samples: np.ndarray, rate: int) -> rl.DataFrame:
    return rl.from_pydict({"a": [(samples.astype(np.float32), rate)]})


def _one(df: rl.DataFrame, expr: rl.Expr):
    return df.select(expr.alias("out")).to_pydict()["out"][0]


def test_decode_matches_the_wave_module_and_lossless_formats_exactly(speech):
    reference, rate = _read_wav(speech["speech0.wav"])
    df = rl.from_pydict({"path": [str(speech["speech0.wav"]), str(speech["speech0.flac"])]})
    decoded = df.select(col("path").audio.decode().alias("a")).to_pydict()["a"]
    for samples, r in decoded:
        assert r == rate
        assert samples.shape == reference.shape
        np.testing.assert_array_equal(samples, reference)


@pytest.mark.parametrize("name", ["speech0.mp3", "speech0.ogg", "speech0.m4a"])
def test_lossy_formats_decode_to_the_same_speech(speech, name):
    reference, rate = _read_wav(speech["speech0.wav"])
    samples, r = _one(rl.from_pydict({"p": [str(speech[name])]}), col("p").audio.decode())
    assert r == rate and samples.shape[1] == 1
    # AAC in MP4 keeps the encoder's priming frames (symphonia does not apply edit lists):
    # up to two 1024-frame packets more than the source.
    assert -1024 <= len(samples) - len(reference) <= 2048, (len(samples), len(reference))
    # Same loudness, and strongly correlated with the source at the best small lag.
    x, y = reference[:, 0], samples[: len(reference), 0]
    n = min(len(x), len(y)) - 4096
    assert 0.8 < np.sqrt(np.mean(y[:n] ** 2) / np.mean(x[:n] ** 2)) < 1.25
    # Normalised cross-correlation over lags 0..4095 (encoder delay), by FFT.
    size = 1 << int(np.ceil(np.log2(len(y) + n)))
    xcorr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x[:n], size)), size)[:4096]
    energy = np.sqrt(np.sum(x[:n] ** 2) * np.array([np.sum(y[k: k + n] ** 2) for k in range(0, 4096, 64)]).max())
    best = xcorr.max() / energy
    assert best > 0.9, best


def test_metadata_and_duration_from_the_header(speech):
    reference, rate = _read_wav(speech["speech0.wav"])
    names = ["speech0.wav", "speech0.flac", "speech0.mp3", "speech0.ogg", "speech0.m4a"]
    df = rl.from_pydict({"p": [str(speech[n]) for n in names]})
    facts = df.select(col("p").audio.metadata().alias("m"), col("p").audio.duration().alias("d"))
    out = facts.to_pydict()
    # From the headers: no samples decoded (the decoded-bytes metric of every operator).
    assert all(op["decoded_bytes"] == 0 for op in facts.stats()["operators"]), facts.stats()["operators"]
    decoding = df.select(col("p").audio.decode().alias("a"))
    samples = sum(a[0].size for a in decoding.to_pydict()["a"])
    assert sum(op["decoded_bytes"] for op in decoding.stats()["operators"]) == 4 * samples
    codecs = [m["codec"] for m in out["m"]]
    assert codecs == ["pcm_s16le", "flac", "mp3", "vorbis", "aac"]
    assert [m["container"] for m in out["m"]] == ["wave", "flac", "mp3", "ogg", "isomp4"]
    for m, d in zip(out["m"], out["d"]):
        assert (m["sample_rate"], m["channels"]) == (rate, 1)
        assert abs(m["frames"] - len(reference)) < 0.05 * rate
        assert d == pytest.approx(m["duration_ms"] / 1000)
    assert out["m"][0]["frames"] == len(reference)
    # Decoded audio: the same facts, codec and container unknown.
    meta = _one(_audio_df(reference, rate), col("a").audio.metadata())
    assert meta == {"sample_rate": rate, "channels": 1, "frames": len(reference),
                    "duration_ms": pytest.approx(len(reference) * 1000 / rate), "codec": None, "container": None}


def _ideal_resample(x: np.ndarray, n_out: int) -> np.ndarray:
    """Band-limited resampling by truncating the spectrum (the ideal low-pass)."""
    spectrum = np.fft.rfft(x.astype(np.float64))
    keep = np.zeros(n_out // 2 + 1, complex)
    m = min(len(keep), len(spectrum))
    keep[:m] = spectrum[:m]
    return np.fft.irfft(keep, n_out) * (n_out / len(x))


def test_resample_matches_an_ideal_band_limited_reference(speech):
    reference, rate = _read_wav(speech["speech1.wav"])
    samples, r = _one(_audio_df(reference, rate), col("a").audio.resample(16000))
    expected = _ideal_resample(reference[:, 0], round(len(reference) * 16000 / rate))
    assert r == 16000 and abs(len(samples) - len(expected)) <= 1
    n = min(len(samples), len(expected))
    ours, ideal = samples[:n, 0].astype(np.float64), expected[:n]
    # Aligned: the cross-correlation peaks at lag 0.
    lags = range(-5, 6)
    corr = [np.dot(ours[100 + k: n - 100 + k], ideal[100: n - 100]) for k in lags]
    assert list(lags)[int(np.argmax(corr))] == 0
    # The same spectrum: band energies (250 Hz bands up to 7 kHz, 90% of the new Nyquist
    # frequency) agree within 0.5 dB wherever the speech has energy.
    def bands(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / 16000)
        return np.array([power[(freqs >= lo) & (freqs < lo + 250)].sum() for lo in range(0, 7000, 250)])
    a, b = bands(ours), bands(ideal)
    loud = b > b.max() * 1e-4
    assert loud.sum() > 10
    assert np.all(np.abs(10 * np.log10(a[loud] / b[loud])) < 0.5), 10 * np.log10(a[loud] / b[loud])


def test_to_mono_and_standardize():
    rng = np.random.default_rng(7)
    stereo = rng.uniform(-0.5, 0.5, (4410, 2)).astype(np.float32)
    df = _audio_df(stereo, 44100)
    mono, rate = _one(df, col("a").audio.to_mono())
    assert rate == 44100
    np.testing.assert_allclose(mono[:, 0], stereo.mean(axis=1), rtol=1e-6, atol=1e-7)
    samples, rate = _one(df, col("a").audio.standardize())
    assert (rate, samples.shape) == (16000, (1600, 1))
    samples, rate = _one(df, col("a").audio.standardize(rate=8000, channels=2))
    assert (rate, samples.shape) == (8000, (800, 2))
    # Mono to stereo copies the channel.
    samples, rate = _one(_audio_df(stereo[:, :1], 44100), col("a").audio.standardize(rate=8000, channels=2))
    assert (rate, samples.shape) == (8000, (800, 2))
    np.testing.assert_array_equal(samples[:, 0], samples[:, 1])


def test_encode_writes_wav_that_reads_back(speech):
    reference, rate = _read_wav(speech["speech2.wav"])
    df = _audio_df(reference, rate)
    wav_bytes = _one(df, col("a").audio.encode())
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (rate, 1, 2, len(reference))
        back = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    np.testing.assert_array_equal(back, reference[:, 0])
    float_wav = _one(df, col("a").audio.encode(sample_format="f32"))
    samples, r = _one(rl.from_pydict({"b": [float_wav]}), col("b").audio.decode())
    np.testing.assert_array_equal(samples, reference)
    with pytest.raises(rl.RilletError, match="sample_format"):
        df.select(col("a").audio.encode(sample_format="s8"))


def _tone_and_silence(rate: int = 16000) -> np.ndarray:
    t = np.arange(rate // 2) / rate
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    quiet = np.zeros(rate, np.float32) + np.float32(1e-4)  # -80 dBFS, not digital silence
    return np.concatenate([tone, quiet, tone, np.zeros(rate // 4, np.float32)])


def test_detect_silence_finds_the_gaps():
    samples = _tone_and_silence()
    ranges = _one(_audio_df(samples[:, None], 16000), col("a").audio.detect_silence(threshold_db=-40, min_silence_ms=200))
    assert ranges == [{"start_ms": 500, "end_ms": 1500}, {"start_ms": 2000, "end_ms": 2250}]
    # Gaps shorter than min_silence_ms are ignored.
    ranges = _one(_audio_df(samples[:, None], 16000), col("a").audio.detect_silence(min_silence_ms=500))
    assert ranges == [{"start_ms": 500, "end_ms": 1500}]


def test_detect_silence_on_speech_finds_the_pause_between_sentences(speech):
    ranges = _one(rl.from_pydict({"p": [str(speech["speech3.wav"])]}), col("p").audio.detect_silence(min_silence_ms=250))
    reference, rate = _read_wav(speech["speech3.wav"])
    assert ranges, "espeak leaves a pause after each sentence"
    for r in ranges:
        piece = reference[r["start_ms"] * rate // 1000: r["end_ms"] * rate // 1000, 0]
        assert np.sqrt(np.mean(piece ** 2)) < 0.01  # really quiet: below -40 dBFS
    assert any(1000 < r["start_ms"] < len(reference) * 1000 / rate - 1000 for r in ranges)


def test_split_by_duration_pieces_cover_the_clip_and_explode_with_their_parent(speech):
    reference, rate = _read_wav(speech["speech1.wav"])
    path = str(speech["speech1.wav"])
    df = rl.from_pydict({"id": [7], "p": [path]})
    pieces = df.select("id", col("p").audio.split_by_duration(1000).alias("piece")).explode("piece").to_pydict()
    assert set(pieces["id"]) == {7}
    assert len(pieces["piece"]) == int(np.ceil(len(reference) / rate))
    assert all(s.shape[0] == rate for s, _ in pieces["piece"][:-1])
    np.testing.assert_array_equal(np.concatenate([s for s, _ in pieces["piece"]]), reference)
    # References copy nothing: {uri, start_ms, end_ms} from the header alone.
    clips = _one(df, col("p").audio.split_by_duration(2500, output="ref"))
    duration_ms = round(len(reference) * 1000 / rate)
    assert [c["uri"] for c in clips] == [path] * 3
    assert [(c["start_ms"], c["end_ms"]) for c in clips] == [(0, 2500), (2500, 5000), (5000, duration_ms)]
    with pytest.raises(rl.RilletError, match="File or path"):
        _audio_df(reference, rate).select(col("a").audio.split_by_duration(1000, output="ref"))


def test_split_by_ranges_from_literals_and_from_detected_silence():
    samples = _tone_and_silence()[:, None]
    df = _audio_df(samples, 16000)
    pieces = _one(df, col("a").audio.split_by_ranges([(0, 500), (1500, 2000)]))
    assert [p[0].shape[0] for p in pieces] == [8000, 8000]
    np.testing.assert_array_equal(pieces[1][0], samples[24000:32000])
    gaps = df.with_column("gaps", col("a").audio.detect_silence(min_silence_ms=200))
    quiet = _one(gaps, col("a").audio.split_by_ranges(col("gaps")))
    assert [p[0].shape[0] for p in quiet] == [16000, 4000]
    bad = _one(df, col("a").audio.split_by_ranges([(3000, 4000)], on_error="column"))
    assert bad["value"] is None and "outside the clip" in bad["error"]


def _reference_log_mel(x: np.ndarray, rate: int, n_mels: int = 80, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """Whisper's log-mel recipe in plain numpy, with librosa's Slaney mel filters."""
    def hz_to_mel(f):
        f = np.asarray(f, float)
        return np.where(f < 1000, f * 3 / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def mel_to_hz(m):
        m = np.asarray(m, float)
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = mel_to_hz(np.linspace(0, hz_to_mel(rate / 2), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    filters = np.maximum(0, np.minimum(lower, upper)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + (len(padded) - n_fft) // hop
    stft = np.stack([np.fft.rfft(padded[t * hop: t * hop + n_fft] * window) for t in range(frames)], axis=1)
    power = np.abs(stft[:, :-1]) ** 2
    log = np.log10(np.maximum(filters @ power, 1e-10))
    return (np.maximum(log, log.max() - 8) + 4) / 4


def test_mel_spectrogram_matches_the_whisper_recipe(speech):
    df = rl.from_pydict({"p": [str(speech["speech0.wav"])]}).with_column("a", col("p").audio.standardize(16000))
    samples, _ = _one(df, col("a"))
    mel = _one(df, col("a").audio.mel_spectrogram())
    expected = _reference_log_mel(samples[:, 0], 16000)
    assert mel.shape == expected.shape == (80, len(samples) // 160)
    np.testing.assert_allclose(mel, expected, atol=2e-4)
    assert str(df.select(col("a").audio.mel_spectrogram().alias("m")).schema.field("m").type) == "Tensor[f32]"


@pytest.fixture(scope="module")
def lean_mp3(tmp_path_factory):
    """9.5 s of stereo noise and tones as MPEG-1 Layer III at 32 kbit/s, 48 kHz: the smallest
    frames, whose main data leans furthest on the bit reservoir of the frames before, most of
    all after the nearly silent first 4 s fill it."""
    path = tmp_path_factory.mktemp("mp3") / "lean.mp3"
    subprocess.run([shutil.which("ffmpeg"), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "anoisesrc=d=9.5:c=pink:r=48000:a=0.3", "-f", "lavfi", "-i", "sine=f=440:d=9.5:r=48000",
                    "-filter_complex", "[0][1]amerge=inputs=2,volume='if(lt(t,4),0.0005,1)':eval=frame", "-ac", "2", "-ar", "48000",
                    "-c:a", "libmp3lame", "-b:a", "32k", str(path)], check=True)
    return path


@pytest.mark.parametrize("name", ["speech0.wav", "speech0.flac", "speech0.mp3", "speech0.ogg", "speech0.m4a",
                                  "lean.mp3"])
def test_split_by_ranges_decodes_only_the_ranges_yet_matches_a_whole_decode(speech, lean_mp3, name):
    source = lean_mp3 if name == "lean.mp3" else speech[name]
    path = rl.from_pydict({"p": [str(source)]})
    whole = path.select(col("p").audio.decode().alias("a"))
    for ranges in ([(2000, 2500), (3000, 3100.5)], [(7.5, 20)], [(8900, 12000)], [(0, 40), (9200, 9300)],
                   [(4010, 4400)], [(6000, 6001)]):
        split = path.select(col("p").audio.split_by_ranges(ranges).alias("out"))
        pieces = split.to_pydict()["out"][0]
        decoded = sum(op["decoded_bytes"] for op in split.stats()["operators"])
        want = _one(whole, col("a").audio.split_by_ranges(ranges))
        assert [p[1] for p in pieces] == [w[1] for w in want]
        for (got, _), (ref, _) in zip(pieces, want):
            assert got.shape == ref.shape, (ranges, got.shape, ref.shape)
            np.testing.assert_array_equal(got, ref)
        # AAC's noise substitution draws from one random sequence from the file's start, and
        # Vorbis packets do not declare what they decode to alone: both are decoded whole.
        if ranges[0][0] == 2000 and name not in ("speech0.ogg", "speech0.m4a"):
            full = 4 * whole.to_pydict()["a"][0][0].size
            assert decoded < 0.45 * full, (decoded, full)
    past = _one(path, col("p").audio.split_by_ranges([(1000, 2000), (10_000, 11_000)], on_error="column"))
    assert past["value"] is None and "outside the clip (9" in past["error"], past
    if name == "lean.mp3":
        assert _one(path, col("p").audio.split_by_ranges([(8900, 12000)]))[0][0].shape[1] == 2


def _clips(rows: list) -> rl.DataFrame:
    """A DataFrame of one ``Clip`` column."""
    storage = pa.array(rows, type=rl.Clip().storage_type)
    return rl.from_arrow(pa.table({"c": pa.ExtensionArray.from_storage(rl.Clip(), storage)}))


@pytest.mark.parametrize("name", ["speech0.wav", "speech0.flac", "speech0.mp3", "speech0.ogg", "speech0.m4a",
                                  "lean.mp3"])
def test_clip_references_are_their_stretch_of_the_file_decoded_only_that_far(speech, lean_mp3, name):
    source = lean_mp3 if name == "lean.mp3" else speech[name]
    df = rl.from_pydict({"p": [str(source)]})
    clips = df.select(col("p").audio.split_by_duration(1500, output="ref").alias("c")).explode("c")
    got = clips.select("c", col("c").audio.decode().alias("a"), col("c").audio.duration().alias("d"),
                       col("c").audio.mel_spectrogram().alias("mel")).to_pydict()
    whole = df.select(col("p").audio.decode().alias("a"))
    windows = [(c["start_ms"], c["end_ms"]) for c in got["c"]]
    want = _one(whole, col("a").audio.split_by_ranges(windows))
    assert len(want) == len(got["a"]) >= 3
    for (samples, rate), (ref, ref_rate), seconds in zip(got["a"], want, got["d"]):
        assert rate == ref_rate and samples.shape == ref.shape
        np.testing.assert_array_equal(samples, ref)
    # Durations come from the header: exact inside the file, the last cut where it ends.
    assert got["d"][:-1] == [len(s) / r for s, r in got["a"][:-1]]
    assert abs(got["d"][-1] - len(got["a"][-1][0]) / got["a"][-1][1]) < 0.05
    # Operators that take audio take clips: the features of the stretch.
    mel = _one(rl.from_pydict({"a": [got["a"][1]]}), col("a").audio.mel_spectrogram())
    np.testing.assert_array_equal(got["mel"][1], mel)
    # Ranges and segments of a clip are within the clip, and segment references stay times
    # in the file.
    second = clips.limit(2).select(col("c").alias("c")).to_pydict()["c"][1]
    one = _clips([second])
    start = second["start_ms"]
    pieces = _one(one, col("c").audio.split_by_ranges([(100, 600), (1000, 5000)]))
    rate = pieces[0][1]
    reference = _one(whole, col("a").audio.split_by_ranges([(start + 100, start + 600), (start + 1000, start + 1500)]))
    for (piece, _), (ref, _) in zip(pieces, reference):
        np.testing.assert_array_equal(piece, ref)
    assert [(c["start_ms"], c["end_ms"]) for c in _one(one, col("c").audio.split_by_duration(1000, output="ref"))] \
        == [(start, start + 1000), (start + 1000, start + 1500)]
    # Decoding stops at the clip's end: the first clip of a file decodes a fraction of it.
    first = clips.limit(1).select(col("c").audio.decode().alias("a"))
    first.to_pydict()
    decoded = sum(op["decoded_bytes"] for op in first.stats()["operators"])
    full = 4 * whole.to_pydict()["a"][0][0].size
    if name not in ("speech0.ogg", "speech0.m4a"):  # decoded whole (see the split_by_ranges test)
        assert decoded < 0.45 * full, (decoded, full, rate)


def test_bad_clip_references_give_null_with_a_reason(speech, tmp_path):
    path = str(speech["speech0.wav"])
    rows = [{"uri": path, "start_ms": 500, "end_ms": 100}, {"uri": path, "start_ms": 600_000, "end_ms": 601_000},
            {"uri": str(tmp_path / "missing.wav"), "start_ms": 0, "end_ms": 1000}, None,
            {"uri": path, "start_ms": -5, "end_ms": 100}, {"uri": path, "start_ms": 0, "end_ms": 10_000_000}]
    df = _clips(rows)
    out = df.select(col("c").audio.decode(on_error="column").alias("a"),
                    col("c").audio.duration(on_error="column").alias("d")).to_pydict()
    reasons = [a["error"] for a in out["a"]]
    assert "empty or inverted" in reasons[0] and "past the end of the audio" in reasons[1]
    assert "missing.wav" in reasons[2] and out["a"][3] == {"value": None, "error": None}
    assert "empty or inverted" in reasons[4]
    assert "past the end" in out["d"][1]["error"]
    # A clip that runs past the end is cut where the audio ends, as ranges are.
    whole, _ = _one(rl.from_pydict({"p": [path]}), col("p").audio.decode())
    np.testing.assert_array_equal(out["a"][5]["value"][0], whole)
    rate = out["a"][5]["value"][1]
    assert out["d"][5]["value"] == len(whole) / rate
    # A plain struct with the clip's fields is a clip too.
    plain = rl.from_pydict({"c": [{"uri": path, "start_ms": 0, "end_ms": 250}]})
    np.testing.assert_array_equal(_one(plain, col("c").audio.decode())[0], whole[:int(0.25 * rate + 0.5)])


@pytest.mark.parametrize("name", ["speech0.wav", "speech0.flac", "speech0.mp3", "speech0.ogg", "speech0.m4a",
                                  "lean.mp3"])
def test_resampling_encoded_audio_as_it_decodes_gives_what_decoding_first_gives(speech, lean_mp3, name):
    """resample and standardize over encoded audio resample packet by packet as the decoder
    gives them (the stream is never held at its own rate): exactly the samples of decoding
    the whole stream and then resampling it."""
    source = lean_mp3 if name == "lean.mp3" else speech[name]
    df = rl.from_pydict({"p": [str(source)]})
    decoded = rl.from_arrow(df.select(col("p").audio.decode().alias("a")).collect())
    for op in (lambda e: e.audio.resample(16000), lambda e: e.audio.resample(8000),
               lambda e: e.audio.standardize(), lambda e: e.audio.standardize(44100, channels=2)):
        streamed, rate = _one(df, op(col("p")))
        whole, whole_rate = _one(decoded, op(col("a")))
        assert rate == whole_rate and streamed.shape == whole.shape, (name, streamed.shape, whole.shape)
        np.testing.assert_array_equal(streamed, whole)
    # A corrupt stream still nulls the row with its reason.
    corrupt = rl.from_pydict({"b": [source.read_bytes()[: source.stat().st_size // 3] + b"\0" * 64]})
    out = corrupt.select(col("b").audio.standardize(on_error="column").alias("s")).to_pydict()["s"][0]
    if name.endswith((".wav", ".flac", ".mp3")):
        assert out["value"] is None and out["error"], out


def test_split_by_ranges_on_corrupt_audio_gives_null_with_a_reason(speech):
    corpus = _corpus(speech)
    df = rl.from_pydict({"name": list(corpus), "b": list(corpus.values())})
    for ranges in ([(0, 100)], [(5000, 9000)]):
        out = df.select("name", col("b").audio.split_by_ranges(ranges, on_error="column").alias("s")).to_pydict()
        for name, result in zip(out["name"], out["s"]):
            # A range wholly within the sound start of a cut file may be read; anything else
            # is null with a reason.
            assert (result["value"] is None) == bool(result["error"]), name
            if ranges[0][0] == 5000 or name in ("zero-byte", "text", "random bytes", "wav header only"):
                assert result["value"] is None and result["error"], (name, result)


def _corpus(speech) -> dict[str, bytes]:
    wav = speech["speech0.wav"].read_bytes()
    mp3 = speech["speech0.mp3"].read_bytes()
    flac = speech["speech0.flac"].read_bytes()
    ogg = speech["speech0.ogg"].read_bytes()
    return {
        "zero-byte": b"",
        "wav header only": wav[:44],
        "truncated wav": wav[: len(wav) // 2],
        "wav with a broken format chunk": wav[:20] + b"\xff\xff" + wav[22:],
        "truncated mp3": mp3[: len(mp3) // 2],
        "mp3 with garbage inside": mp3[:5000] + bytes(range(256)) * 12 + mp3[8072:],
        "truncated flac": flac[: len(flac) // 3],
        "truncated ogg": ogg[: len(ogg) // 2],
        "text": b"this is not audio\n" * 100,
        "random bytes": np.random.default_rng(1).bytes(5000),
    }


def test_corrupt_audio_gives_null_with_a_reason_never_a_crash(speech, tmp_path):
    corpus = _corpus(speech)
    df = rl.from_pydict({"name": list(corpus), "b": list(corpus.values())})
    out = df.select("name", col("b").audio.decode(on_error="column").alias("a"),
                    col("b").audio.is_valid("decode").alias("ok")).to_pydict()
    for name, result, ok in zip(out["name"], out["a"], out["ok"]):
        assert result["value"] is None, name
        assert result["error"], name
        assert ok is False, name
    reasons = dict(zip(out["name"], (r["error"] for r in out["a"])))
    assert "empty input" in reasons["zero-byte"]
    assert "truncated" in reasons["truncated wav"] and "truncated" in reasons["truncated mp3"]
    assert "unknown audio format" in reasons["text"]
    # A file with the wrong extension is read by its content; a missing file is bad data.
    (tmp_path / "speech.mp3").write_bytes(speech["speech0.wav"].read_bytes())
    paths = rl.from_pydict({"p": [str(tmp_path / "speech.mp3"), str(tmp_path / "missing.wav")]})
    out = paths.select(col("p").audio.duration(on_error="column").alias("d")).to_pydict()["d"]
    assert out[0]["value"] == pytest.approx(9.278, abs=0.01)
    assert out[1]["value"] is None and "no such file" in out[1]["error"]
    with pytest.raises(rl.DataError, match="audio_decode"):
        df.select(col("b").audio.decode(on_error="raise")).collect()


def test_decoded_size_cap(speech):
    df = rl.from_pydict({"p": [str(speech["speech0.wav"])]})
    out = _one(df, col("p").audio.decode(max_decoded_bytes=100_000, on_error="column"))
    assert out["value"] is None and "max_decoded_bytes" in out["error"]
    assert _one(df, col("p").audio.is_valid("decode", max_decoded_bytes=100_000)) is False
    assert _one(df, col("p").audio.is_valid("decode")) is True


def test_sql_and_read_files(speech):
    files = rl.read_files(os.path.join(os.path.dirname(speech["speech0.wav"]), "speech*.wav"))
    out = rl.sql("SELECT path, audio_duration(file) AS seconds, audio_is_valid(file) AS ok FROM f ORDER BY path",
                 f=files).to_pydict()
    assert len(out["path"]) == 4 and all(out["ok"])
    for path, seconds in zip(out["path"], out["seconds"]):
        samples, rate = _read_wav(path)
        assert seconds == pytest.approx(len(samples) / rate)


def test_audio_round_trips_through_parquet(speech, tmp_path):
    reference, rate = _read_wav(speech["speech2.wav"])
    df = rl.from_pydict({"p": [str(speech["speech2.wav"])]}).with_column("a", col("p").audio.decode())
    df.write_parquet(tmp_path / "out")
    back = rl.read_parquet(str(tmp_path / "out"))
    assert str(back.schema.field("a").type) == "Audio"
    samples, r = back.to_pydict()["a"][0]
    assert r == rate
    np.testing.assert_array_equal(samples, reference)
    table = pq.read_table(tmp_path / "out")
    assert str(table.schema.field("a").type) == "Audio"
