"""Export a Hugging Face BERT encoder (``config.json`` + ``model.safetensors``) to an ONNX
model for ONNX Runtime, with nothing beyond the standard library and numpy: the safetensors
file is read and the ONNX protobuf written here.

The graph takes ``input_ids`` and ``attention_mask`` (int64, batch × sequence; every token is
of type 0, one text a row, as the engine feeds them) and returns ``last_hidden_state`` (float32, batch × sequence × hidden_size), computed
as the candle encoder (``crates/rillet-ai/src/bert/encoder.rs``, a build feature) computes it: padding gets -10,000
before the softmax, GELU is the erf form. It is laid out as the classic Hugging Face BERT
export, which ONNX Runtime's optimiser fuses on its own into LayerNormalization, Attention and
BiasGelu: opset 12, LayerNorm spelt out in ReduceMean/Sub/Pow/Sqrt/Div, weights as float32
initializers feeding MatMul + Add. (ONNX Runtime's BERT attention fusion matches only opset-12
versions of MatMul, Unsqueeze and Cast and the LayerNormalization it fuses itself, so an
opset-17 graph with the LayerNormalization op keeps its attention unfused.)

``rillet.models.fetch`` writes it beside the checkpoints it fetches, and
``rillet.models.export_checkpoint`` into the cache for a checkpoint directory of the user's;
Rillet's encoder runs it in preference to the checkpoint (which needs candle).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rillet._cache import write_atomically

#: Bumped whenever the graph this module writes changes, so that cached exports are redone.
EXPORT_VERSION = 1
OPSET = 12
IR_VERSION = 7  # the IR of opset 12 (ONNX 1.7)
MASKED_SCORE = -10_000.0  # added to the attention scores of padding, as the candle encoder does

# ONNX enum values (onnx.proto): TensorProto.DataType and AttributeProto.AttributeType.
_FLOAT, _INT64 = 1, 7
_ATTRIBUTE_FLOAT, _ATTRIBUTE_INT, _ATTRIBUTE_INTS = 1, 2, 7

# Safetensors dtype -> how its bytes are read; all become float32.
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


# Protobuf wire format: each field is a key (field number, wire type) and its value.


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int64 goes as its two's complement (ten bytes)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _float_field(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _text_field(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode())


# ONNX messages (field numbers from onnx.proto), each returned as its encoded bytes.


def _tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims, data_type, name, raw_data (little-endian)."""
    data_type = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[array.dtype]
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    dims = b"".join(_int_field(1, size) for size in array.shape)
    return dims + _int_field(2, data_type) + _text_field(8, name) + _bytes_field(9, raw)


def _attribute(name: str, value: int | float | list[int]) -> bytes:
    """AttributeProto: name, one of f / i / ints, and the type saying which."""
    if isinstance(value, float):
        body, kind = _float_field(2, value), _ATTRIBUTE_FLOAT
    elif isinstance(value, int):
        body, kind = _int_field(3, value), _ATTRIBUTE_INT
    else:
        body, kind = b"".join(_int_field(8, v) for v in value), _ATTRIBUTE_INTS
    return _text_field(1, name) + body + _int_field(20, kind)


def _node(op_type: str, inputs: tuple[str, ...], output: str, attributes: dict) -> bytes:
    """NodeProto: inputs, output, name (the output's), op_type and attributes."""
    return (b"".join(_text_field(1, name) for name in inputs) + _text_field(2, output)
            + _text_field(3, output) + _text_field(4, op_type)
            + b"".join(_bytes_field(5, _attribute(k, v)) for k, v in attributes.items()))


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto of a tensor; a str dim is symbolic (dim_param), an int fixed."""
    shape = b"".join(_bytes_field(1, _text_field(2, d) if isinstance(d, str) else _int_field(1, d))
                     for d in dims)
    tensor_type = _int_field(1, elem_type) + _bytes_field(2, shape)
    return _text_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


# The model's weights and configuration.


@dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT ``config.json`` the graph needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        """Read ``config.json``, refusing what the graph would compute wrongly."""
        config = json.loads(path.read_text())
        for key, supported in [("model_type", "bert"), ("hidden_act", "gelu"),
                               ("position_embedding_type", "absolute")]:
            value = config.get(key, supported)
            if value != supported:
                raise ValueError(f"{path}: {key} {value!r} is not supported ({supported} only)")
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            layers = int(config["num_hidden_layers"])
        except KeyError as e:
            raise ValueError(f"{path}: no {e.args[0]!r}") from None
        if layers < 1 or heads < 1 or hidden % heads:
            raise ValueError(f"{path}: num_hidden_layers {layers} must be at least 1 and "
                             f"hidden_size {hidden} a multiple of num_attention_heads {heads}")
        return cls(hidden, layers, heads, float(config.get("layer_norm_eps", 1e-12)))


class Safetensors:
    """The tensors of a ``.safetensors`` file as float32, by name (without the ``bert.``
    prefix some checkpoints have). Format: a little-endian u64 header length, a JSON header
    (name -> dtype, shape, data_offsets into what follows), then the raw data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = path.read_bytes()
        (length,) = struct.unpack_from("<Q", self._data)
        self._header = json.loads(self._data[8:8 + length])
        self._start = 8 + length
        bert_prefixed = "bert.embeddings.word_embeddings.weight" in self._header
        self._prefix = "bert." if bert_prefixed else ""

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._header.get(self._prefix + name)
        if entry is None:
            raise ValueError(f"{self.path}: no tensor {self._prefix + name!r}")
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: {name} is {entry['dtype']} (F32, F16 or BF16 only)")
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{self.path}: {name} holds {end - begin} bytes, not {shape}")
        raw = np.frombuffer(self._data, dtype, math.prod(shape), self._start + begin)
        if entry["dtype"] == "BF16":  # the top half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.astype(np.float32).reshape(shape)


# The graph: nodes in the order they run, and the initializers they read.


class _Graph:
    def __init__(self, weights: Safetensors) -> None:
        self.weights = weights
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self._constants: dict[tuple, str] = {}

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        """Add a node; its output's name (``output``, or a fresh one)."""
        output = output or f"{op_type}_{len(self.nodes)}"
        self.nodes.append(_node(op_type, inputs, output, attributes))
        return output

    def weight(self, name: str, transpose: bool = False) -> str:
        """An initializer holding checkpoint tensor ``name``, transposed if asked."""
        tensor = self.weights[name]
        self.initializers.append(_tensor(name, tensor.T if transpose else tensor))
        return name

    def array(self, name: str, array: np.ndarray) -> str:
        """An initializer holding ``array``."""
        self.initializers.append(_tensor(name, array))
        return name

    def constant(self, value: float | list[int]) -> str:
        """A float32 scalar or an int64 vector initializer, one per distinct value."""
        key = (type(value).__name__, str(value))
        if key not in self._constants:
            name = self._constants[key] = f"const_{len(self._constants)}"
            array = np.array(value, np.float32 if isinstance(value, float) else np.int64)
            self.initializers.append(_tensor(name, array))
        return self._constants[key]


def _linear(g: _Graph, x: str, prefix: str) -> str:
    """x @ weightᵀ + bias, with the weight stored transposed (in × out) for MatMul."""
    product = g.op("MatMul", x, g.weight(f"{prefix}.weight", transpose=True))
    return g.op("Add", product, g.weight(f"{prefix}.bias"))


def _layer_norm(g: _Graph, x: str, prefix: str, eps: float, output: str | None = None) -> str:
    """LayerNorm over the last axis, in the ops ONNX Runtime fuses into LayerNormalization."""
    centred = g.op("Sub", x, g.op("ReduceMean", x, axes=[-1]))
    variance = g.op("ReduceMean", g.op("Pow", centred, g.constant(2.0)), axes=[-1])
    normalised = g.op("Div", centred, g.op("Sqrt", g.op("Add", variance, g.constant(eps))))
    scaled = g.op("Mul", normalised, g.weight(f"{prefix}.weight"))
    return g.op("Add", scaled, g.weight(f"{prefix}.bias"), output=output)


def _gelu(g: _Graph, x: str) -> str:
    """x · 0.5 · (1 + erf(x / √2)), the pattern ONNX Runtime fuses into Gelu."""
    erf = g.op("Erf", g.op("Div", x, g.constant(math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.constant(1.0))), g.constant(0.5))


def _embeddings(g: _Graph, config: BertConfig) -> str:
    """Word + position + token type 0 embeddings, layer-normed; positions count from 0."""
    words = g.op("Gather", g.weight("embeddings.word_embeddings.weight"), "input_ids")
    length = g.op("Slice", g.op("Shape", "input_ids"), g.constant([1]), g.constant([2]))
    positions = g.op("Slice", g.weight("embeddings.position_embeddings.weight"),
                     g.constant([0]), length, g.constant([0]))
    type_0 = g.weights["embeddings.token_type_embeddings.weight"][0]
    summed = g.op("Add", g.op("Add", words, positions), g.array("embeddings.token_type_0", type_0))
    return _layer_norm(g, summed, "embeddings.LayerNorm", config.layer_norm_eps)


def _mask_bias(g: _Graph) -> str:
    """batch × 1 × 1 × sequence: 0 for tokens, -10,000 for padding, added to the scores."""
    mask = g.op("Unsqueeze", g.op("Unsqueeze", "attention_mask", axes=[1]), axes=[2])
    padding = g.op("Sub", g.constant(1.0), g.op("Cast", mask, to=_FLOAT))
    return g.op("Mul", padding, g.constant(MASKED_SCORE))


def _attention(g: _Graph, x: str, mask_bias: str, prefix: str, config: BertConfig) -> str:
    """Multi-head self-attention and its output projection (before the residual)."""
    heads = config.num_attention_heads
    head_size = config.hidden_size // heads

    def split_heads(name: str, perm: list[int]) -> str:
        projected = _linear(g, x, f"{prefix}.self.{name}")
        return g.op("Transpose", g.op("Reshape", projected, g.constant([0, 0, heads, head_size])),
                    perm=perm)

    query = split_heads("query", [0, 2, 1, 3])
    key_t = split_heads("key", [0, 2, 3, 1])  # transposed for query @ keyᵀ
    value = split_heads("value", [0, 2, 1, 3])
    scores = g.op("Div", g.op("MatMul", query, key_t), g.constant(math.sqrt(head_size)))
    probs = g.op("Softmax", g.op("Add", scores, mask_bias), axis=3)
    context = g.op("Transpose", g.op("MatMul", probs, value), perm=[0, 2, 1, 3])
    merged = g.op("Reshape", context, g.constant([0, 0, config.hidden_size]))
    return _linear(g, merged, f"{prefix}.output.dense")


def _encoder_layer(g: _Graph, x: str, mask_bias: str, index: int, config: BertConfig,
                   output: str | None) -> str:
    """Attention, then the feed-forward block, each with a residual and a LayerNorm."""
    prefix, eps = f"encoder.layer.{index}", config.layer_norm_eps
    attended = g.op("Add", _attention(g, x, mask_bias, f"{prefix}.attention", config), x)
    attended = _layer_norm(g, attended, f"{prefix}.attention.output.LayerNorm", eps)
    inner = _gelu(g, _linear(g, attended, f"{prefix}.intermediate.dense"))
    out = g.op("Add", _linear(g, inner, f"{prefix}.output.dense"), attended)
    return _layer_norm(g, out, f"{prefix}.output.LayerNorm", eps, output=output)


def _model_bytes(g: _Graph, config: BertConfig) -> bytes:
    """The ModelProto around the finished graph, with its inputs and output declared."""
    rows_tokens: list[int | str] = ["batch", "sequence"]
    inputs = [_value_info(name, _INT64, rows_tokens)
              for name in ("input_ids", "attention_mask")]
    output = _value_info("last_hidden_state", _FLOAT, [*rows_tokens, config.hidden_size])
    graph = (b"".join(_bytes_field(1, node) for node in g.nodes) + _text_field(2, "bert")
             + b"".join(_bytes_field(5, tensor) for tensor in g.initializers)
             + b"".join(_bytes_field(11, i) for i in inputs) + _bytes_field(12, output))
    return (_int_field(1, IR_VERSION) + _text_field(2, "rillet") + _bytes_field(7, graph)
            + _bytes_field(8, _int_field(2, OPSET)))


def export_bert(model_dir: Path, out_path: Path) -> None:
    """Write the ONNX model of the BERT encoder in ``model_dir`` (``config.json`` and
    ``model.safetensors``) to ``out_path``, atomically. Raises ValueError for a model it
    does not support (not BERT, not GELU, relative positions, missing tensors).

    >>> model = Path("~/.cache/rillet/models/all-minilm-l6-v2").expanduser()
    >>> export_bert(model, Path("/tmp/all-minilm-l6-v2.onnx"))  # doctest: +SKIP
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = BertConfig.read(model_dir / "config.json")
    g = _Graph(Safetensors(model_dir / "model.safetensors"))
    x = _embeddings(g, config)
    mask_bias = _mask_bias(g)
    for index in range(config.num_hidden_layers):
        last = index == config.num_hidden_layers - 1
        x = _encoder_layer(g, x, mask_bias, index, config, "last_hidden_state" if last else None)
    write_atomically(out_path, _model_bytes(g, config))
