"""Video operators (FFmpeg) on clips made by ffmpeg's test sources, checked against the
ffmpeg command line, plus bad input: no video stream, truncated, not a video."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_speech, sample_videos


@pytest.fixture(scope="module")
def clips():
    return [str(p) for p in sample_videos()]


def _ffmpeg_frame(path: str, seconds: float) -> np.ndarray:
    """The frame shown at ``seconds`` as RGB, decoded by the ffmpeg command line."""
    raw = subprocess.run(
        [shutil.which("ffmpeg"), "-loglevel", "error", "-i", path, "-vf", f"select=gte(t\\,{seconds})",
         "-frames:v", "1", "-sws_flags", "bilinear", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(240, 320, 3)


def test_metadata_from_headers(clips):
    out = rl.from_pydict({"p": clips}).select(col("p").video.metadata().alias("m")).to_pydict()["m"]
    for m in out:
        assert (m["width"], m["height"], m["fps"], m["frame_count"]) == (320, 240, 25.0, 100)
        assert m["duration_ms"] == pytest.approx(4000, abs=50)
        assert (m["codec"], m["audio_codec"], m["audio_sample_rate"], m["streams"]) == ("h264", "aac", 44100, 2)


def test_frames_match_the_ffmpeg_command_line_and_explode_with_their_parent(clips):
    df = rl.from_pydict({"id": [1, 2], "p": clips})
    frames = (df.select("id", "p", col("p").video.frames(interval_ms=1000).alias("f")).explode("f")
              .select("id", "p", col("f")["pts_ms"].alias("pts_ms"), col("f")["image"].alias("image")))
    assert str(frames.schema.field("image").type) == "Image[RGB, u8]"
    out = frames.to_pydict()
    assert out["id"] == [1] * 4 + [2] * 4
    assert out["pts_ms"] == [0, 1000, 2000, 3000] * 2
    for path, pts, image in zip(out["p"], out["pts_ms"], out["image"]):
        ours = np.asarray(image)
        reference = _ffmpeg_frame(path, pts / 1000)
        assert ours.shape == reference.shape
        assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 2.0, (path, pts)


def test_frame_selectors_and_limits(clips):
    df = rl.from_pydict({"p": clips[:1]})
    counts = df.select(
        col("p").video.extract_frames(selector="all").alias("all"),
        col("p").video.extract_frames(selector="keyframes").alias("key"),
        col("p").video.extract_frames(interval_ms=500, max_frames=3).alias("few"),
    ).to_pydict()
    assert len(counts["all"][0]) == 100
    assert len(counts["key"][0]) == 4  # made with a key frame every 25 frames
    assert len(counts["few"][0]) == 3
    # Key frames only: the decoder skips reconstructing the others (decoded-bytes metric).
    decoded = {}
    for selector in ("all", "keyframes"):
        frames = df.select(col("p").video.extract_frames(selector=selector).alias("f"))
        assert len(frames.to_pydict()["f"][0]) == (100 if selector == "all" else 4)
        decoded[selector] = sum(op["decoded_bytes"] for op in frames.stats()["operators"])
    assert 0 < decoded["keyframes"] * 10 < decoded["all"], decoded
    capped = df.select(col("p").video.extract_frames(selector="all", max_decoded_bytes=1_000_000, on_error="column")
                       .alias("x")).to_pydict()["x"][0]
    assert capped["value"] is None and "max_decoded_bytes" in capped["error"]


# Encodings for the seeking test: (file name, x264 options). Closed groups of pictures with
# B-frames that other frames refer to (pyramid) and that none do, in MP4 (a seek index up
# front), Matroska (cues) and MPEG-TS (no index); an open group of pictures (leading
# frames refer to the group before), intra refresh (no whole key frames after the first)
# and a raw H.264 stream (no timestamps, no container).
GOP_VARIANTS = {
    "mp4": ("gop.mp4", "b-pyramid=normal"),
    "mkv": ("gop.mkv", "b-pyramid=normal"),
    "ts": ("gop.ts", "b-pyramid=normal"),
    "open_gop_mp4": ("open.mp4", "b-pyramid=normal:open-gop=1"),
    "intra_refresh_mkv": ("refresh.mkv", "intra-refresh=1:bframes=0"),
    "raw_h264": ("raw.h264", "b-pyramid=normal"),
}


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory):
    """12 s clips, 160x120 at 30 fps, with a key frame every 2 s (see GOP_VARIANTS)."""
    folder = tmp_path_factory.mktemp("gop")
    paths = {}
    for name, (file_name, options) in GOP_VARIANTS.items():
        paths[name] = str(folder / file_name)
        subprocess.run([shutil.which("ffmpeg"), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=160x120:rate=30:duration=12", "-vf", "noise=alls=8:allf=t",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "60", "-keyint_min", "60",
                        "-sc_threshold", "0", "-bf", "3", "-x264-params", options, paths[name]],
                       check=True)
    return paths


def _interval_frames(pts_ms: list[int], interval: float) -> list[int]:
    """Indexes of the first frame at or after every multiple of ``interval`` ms."""
    chosen, next_ms = [], 0.0
    for i, pts in enumerate(pts_ms):
        if pts + 0.5 >= next_ms:
            chosen.append(i)
            next_ms = (pts // interval + 1) * interval
    return chosen


def _frames(path: str, **options) -> tuple[list[int], list[np.ndarray], int]:
    df = rl.from_pydict({"p": [path]}).select(col("p").video.frames(**options).alias("f"))
    frames = df.to_pydict()["f"][0]
    decoded = sum(op["decoded_bytes"] for op in df.stats()["operators"])
    return [f["pts_ms"] for f in frames], [np.asarray(f["image"]) for f in frames], decoded


@pytest.mark.parametrize("variant", list(GOP_VARIANTS))
def test_interval_frames_seek_and_skip_yet_match_decoding_every_frame(long_gop, variant):
    path = long_gop[variant]
    all_pts, all_images, all_decoded = _frames(path, selector="all")
    assert len(all_pts) == 360
    decoded = {}
    for interval in (1000, 1950, 333, 2000, 4100, 50):
        pts, images, decoded[interval] = _frames(path, interval_ms=interval)
        wanted = _interval_frames(all_pts, interval)
        assert pts == [all_pts[i] for i in wanted], (interval, pts)
        for i, image in zip(wanted, images):
            assert np.array_equal(image, all_images[i]), (interval, all_pts[i])
    # Frames before a wanted one that no frame refers to are never decoded; where the
    # container has a seek index, whole stretches between wanted frames are not read.
    if variant in ("mp4", "mkv", "ts"):
        assert decoded[1000] < 0.7 * all_decoded, decoded
    if variant in ("mp4", "mkv"):
        assert decoded[1000] < 0.4 * all_decoded, decoded
        assert decoded[4100] < 0.15 * all_decoded, decoded


def _clip_frames(path: str, windows: list[tuple[int, int]], **options) -> tuple[list, int]:
    """The frames of each clip of ``path`` (as (pts list, image list)) and the decoded bytes."""
    clips = pa.array([{"uri": path, "start_ms": s, "end_ms": e} for s, e in windows], type=rl.Clip().storage_type)
    df = rl.from_arrow(pa.table({"c": pa.ExtensionArray.from_storage(rl.Clip(), clips)}))
    out = df.select(col("c").video.frames(on_error="column", **options).alias("f"))
    rows = out.to_pydict()["f"]
    decoded = sum(op["decoded_bytes"] for op in out.stats()["operators"])
    return rows, decoded


@pytest.mark.parametrize("variant", list(GOP_VARIANTS))
def test_frames_of_a_clip_are_the_videos_frames_in_its_window_read_from_near_its_start(long_gop, variant):
    """video.frames of a clip reference {uri, start_ms, end_ms} keeps, of the frames shown
    from start_ms up to end_ms, those its selector picks (interval multiples counted from
    the clip's start): exactly the frames decoding the whole video gives, while reading
    from the key frame before the clip where the container has a seek index."""
    path = long_gop[variant]
    all_pts, all_images, all_decoded = _frames(path, selector="all")
    keys, _, _ = _frames(path, selector="keyframes")
    windows = [(0, 1500), (4100, 6000), (6000, 12000), (9990, 20000), (333, 334)]
    selectors = [{"selector": "all"}, {"selector": "keyframes"}, {"interval_ms": 1000}, {"interval_ms": 333}]
    # Every key frame, in showing order, with the pixels decoding every frame gives (open
    # GOPs included, whose key frames a decoder skipping the other frames held back).
    if variant != "intra_refresh_mkv":
        assert keys == [0, 2000, 4000, 6000, 8000, 10000] if variant != "ts" else len(keys) == 6, keys
    key_images = _frames(path, selector="keyframes")[1]
    for pts, image in zip(keys, key_images, strict=True):
        assert np.array_equal(image, all_images[all_pts.index(pts)]), pts
    for options in selectors:
        rows, _ = _clip_frames(path, windows, **options)
        for (start, end), row in zip(windows, rows):
            inside = [i for i, p in enumerate(all_pts) if start <= p < end]
            if options.get("selector") == "keyframes":
                inside = [i for i in inside if all_pts[i] in keys]
            elif "interval_ms" in options:
                relative = _interval_frames([all_pts[i] - start for i in inside], options["interval_ms"])
                inside = [inside[i] for i in relative]
            got = row["value"]
            assert [f["pts_ms"] for f in got] == [all_pts[i] for i in inside], (options, start, end)
            for frame, i in zip(got, inside):
                assert np.array_equal(np.asarray(frame["image"]), all_images[i]), (options, start, all_pts[i])
    # A late clip is read from the key frame before it, not from the start.
    _, decoded = _clip_frames(path, [(10_100, 10_500)], selector="all")
    if variant in ("mp4", "mkv"):
        assert decoded < 0.25 * all_decoded, (decoded, all_decoded)
    # Bad clips: inverted or empty, and past the end.
    rows, _ = _clip_frames(path, [(500, 100), (60_000, 61_000)], selector="all")
    assert "empty or inverted" in rows[0]["error"] and "past the end" in rows[1]["error"], rows


def test_a_resize_of_exploded_frames_shrinks_them_where_they_are_decoded(long_gop):
    """When a resize is all that reads the exploded frames' images, ``video_frames`` applies
    it itself: plans say so, the pixels are the resize's own, and a plan that also reads
    the full-size image keeps the two apart."""
    paths = [long_gop["mp4"], long_gop["ts"]]
    frames = rl.from_pydict({"p": paths}).select("p", col("p").video.frames(interval_ms=1000).alias("f")).explode("f")
    pts = col("f")["pts_ms"].alias("pts")
    for options, shape in (({"width": 64, "height": 48}, (48, 64, 3)),
                           ({"width": 100, "height": 100, "keep_aspect": True, "method": "lanczos3"}, (75, 100, 3))):
        small = col("f")["image"].image.resize(**options).alias("small")
        full = col("f")["image"].alias("full")
        fused = frames.select("p", pts, small)
        assert "video_frames+image_resize" in fused.explain()
        apart = frames.select("p", pts, small, full)
        assert "video_frames+image_resize" not in apart.explain()
        got, want = fused.to_pydict(), apart.to_pydict()
        assert got["pts"] == want["pts"] and len(got["pts"]) >= 24
        for a, b, whole in zip(got["small"], want["small"], want["full"]):
            assert np.asarray(a).shape == shape and np.asarray(whole).shape == (120, 160, 3)
            assert np.array_equal(np.asarray(a), np.asarray(b))
    # Through a filter on the time, too; never where the full image escapes or is resized twice.
    kept = frames.filter(col("f")["pts_ms"] >= 5000).select(pts, col("f")["image"].image.resize(32, 32).alias("s"))
    assert "video_frames+image_resize" in kept.explain()
    assert kept.to_pydict()["pts"] == [t for t in want["pts"] if t >= 5000]
    listed = rl.from_pydict({"p": paths}).select("p", col("p").video.frames(interval_ms=1000).alias("f"))
    first = listed.with_column("first", rl.expr._call("array_element", col("f"), 1)).explode("f")
    twice = listed.with_column("g", col("f")).explode("f").explode("g")
    for plan in (frames.with_column("s", col("f")["image"].image.resize(32, 32)),
                 frames.select(col("f")["image"].image.resize(32, 32).alias("a"),
                               col("f")["image"].image.resize(16, 16).alias("b")),
                 first.select(col("f")["image"].image.resize(32, 32).alias("s"), col("first")["image"].alias("full")),
                 twice.select(col("f")["image"].image.resize(32, 32).alias("a"),
                              col("g")["image"].image.resize(16, 16).alias("b"))):
        assert "video_frames+image_resize" not in plan.explain()
        assert plan.count() in (len(want["pts"]), 12 * 12 + 13 * 13)


def test_split_refers_without_copying(clips):
    clips_out = rl.from_pydict({"p": clips[:1]}).select(col("p").video.split(1500).alias("c")).to_pydict()["c"][0]
    assert [(c["start_ms"], c["end_ms"]) for c in clips_out] == [(0, 1500), (1500, 3000), (3000, 4000)]
    assert {c["uri"] for c in clips_out} == {clips[0]}
    # The audio operators decode a video's clips: the stretch of its audio track.
    df = rl.from_pydict({"p": clips[:1]})
    pieces = df.select(col("p").video.split(1500).alias("c")).explode("c").select(
        col("c").audio.decode().alias("a")).to_pydict()["a"]
    whole = df.select(col("p").audio.decode().alias("a"))
    want = whole.select(col("a").audio.split_by_ranges([(0, 1500), (1500, 3000), (3000, 4000)]).alias("s"))
    for (got, rate), (ref, ref_rate) in zip(pieces, want.to_pydict()["s"][0], strict=True):
        assert rate == ref_rate == 44100
        np.testing.assert_array_equal(got, ref)


def test_audio_track_is_the_tone(clips):
    samples, rate = rl.from_pydict({"p": clips[:1]}).select(col("p").video.audio().alias("a")).to_pydict()["a"][0]
    assert rate == 44100 and samples.shape[1] == 1
    assert abs(len(samples) - 4 * rate) < 2048
    x = samples[4410:-4410, 0].astype(np.float64)
    t = np.arange(4410, 4410 + len(x)) / rate
    a, b = 2 * np.mean(x * np.sin(2 * np.pi * 440 * t)), 2 * np.mean(x * np.cos(2 * np.pi * 440 * t))
    assert np.hypot(a, b) == pytest.approx(0.125, rel=0.05)  # ffmpeg's sine source is at 1/8 full scale
    # The same track decoded by the native audio operators agrees, once the 1024 priming
    # frames FFmpeg trims (the MP4 edit list) and symphonia keeps are skipped.
    native, native_rate = rl.from_pydict({"p": clips[:1]}).select(col("p").audio.decode().alias("a")).to_pydict()["a"][0]
    assert native_rate == rate and len(native) - len(samples) == 1024
    assert np.abs(native[1024:] - samples).max() < 1e-3


def test_bad_video_input(clips, tmp_path):
    data = open(clips[0], "rb").read()
    speech = sample_speech()
    rows = {
        "audio only (no video stream)": str([p for p in speech if p.suffix == ".m4a"][0]),
        "truncated": str(tmp_path / "truncated.mp4"),
        "not a video": str(tmp_path / "notes.mp4"),
        "zero bytes": str(tmp_path / "empty.mp4"),
        "missing": str(tmp_path / "missing.mp4"),
    }
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.mp4").write_bytes(b"just some text\n" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    df = rl.from_pydict({"name": list(rows), "p": list(rows.values())})
    out = df.select("name", col("p").video.frames(on_error="column").alias("f")).to_pydict()
    reasons = {n: f["error"] for n, f in zip(out["name"], out["f"])}
    assert all(f["value"] is None for f in out["f"]), reasons
    assert "no video stream" in reasons["audio only (no video stream)"]
    assert "no such file" in reasons["missing"]
    assert all(reasons.values())
    # Metadata of an audio-only file is still metadata.
    meta = df.select(col("p").video.metadata().alias("m")).to_pydict()["m"]
    assert meta[0]["codec"] is None and meta[0]["audio_codec"] == "aac"


def test_bytes_input_and_sql(clips):
    data = open(clips[1], "rb").read()
    frames = rl.from_pydict({"b": [data]}).select(col("b").video.extract_frames(max_frames=2).alias("f")).to_pydict()["f"][0]
    assert len(frames) == 2
    files = rl.from_pydict({"p": clips})
    out = rl.sql("SELECT video_metadata(p)['frame_count'] AS n FROM t", t=files).to_pydict()
    assert out["n"] == [100, 100]
