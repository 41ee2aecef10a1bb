"""Multimodal types as pyarrow extension types, registered on import, so columns that come
back from the engine (or from Parquet written by it) keep their meaning, and Python values
convert both ways:

- ``Image``: PIL images (numpy ``H×W×C`` arrays without Pillow)
- ``Tensor``: numpy arrays; ``Embedding``: 1-D numpy arrays
- ``Audio``: ``(numpy float32 samples, sample_rate)``; samples are ``frames×channels``
- ``File``: dicts ``{"uri", "offset", "length", "version", "media_type"}``
- ``Clip``: dicts ``{"uri", "start_ms", "end_ms"}``

>>> import rillet as rl
>>> str(rl.Image("RGB")), str(rl.Embedding(rl.float32, 384)), str(rl.Tensor("f32", (3, 224, 224)))
('Image[RGB, u8]', 'Embedding[f32; 384]', 'Tensor[f32; 3×224×224]')
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "Image", "Tensor", "Embedding", "Audio", "File", "Clip",
    "ImageType", "TensorType", "EmbeddingType", "AudioType", "FileType", "ClipType",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "to_arrow_column", "to_extension_array",
]

# Element types: one set for tensors, embeddings and pixels.
_ELEMENTS = {
    "u8": pa.uint8(), "u16": pa.uint16(), "u32": pa.uint32(), "u64": pa.uint64(),
    "i8": pa.int8(), "i16": pa.int16(), "i32": pa.int32(), "i64": pa.int64(),
    "f16": pa.float16(), "f32": pa.float32(), "f64": pa.float64(),
}
_ALIASES = {"uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64", "int8": "i8", "int16": "i16",
            "int32": "i32", "int64": "i64", "float16": "f16", "halffloat": "f16", "float32": "f32",
            "float": "f32", "float64": "f64", "double": "f64"}
uint8, uint16, uint32, uint64 = "u8", "u16", "u32", "u64"
int8, int16, int32, int64 = "i8", "i16", "i32", "i64"
float16, float32, float64 = "f16", "f32", "f64"

# Image modes: channels and element type, as in the engine.
_MODES = {
    "L": (1, "u8"), "LA": (2, "u8"), "RGB": (3, "u8"), "RGBA": (4, "u8"),
    "L16": (1, "u16"), "LA16": (2, "u16"), "RGB16": (3, "u16"), "RGBA16": (4, "u16"),
    "RGB32F": (3, "f32"), "RGBA32F": (4, "f32"),
}


def _element(dtype: Any) -> str:
    """The short element-type name of ``dtype`` (a name, numpy dtype or pyarrow type)."""
    if isinstance(dtype, pa.DataType):
        for name, t in _ELEMENTS.items():
            if t == dtype:
                return name
    name = str(np.dtype(dtype)) if not isinstance(dtype, (str, pa.DataType)) else str(dtype)
    name = _ALIASES.get(name.lower(), name.lower())
    if name not in _ELEMENTS:
        raise TypeError(f"unknown element type {dtype!r}; expected one of {', '.join(_ELEMENTS)}")
    return name


def _req(name: str, t: pa.DataType) -> pa.Field:
    return pa.field(name, t, nullable=False)


_IMAGE_STORAGE = pa.struct([_req("height", pa.uint32()), _req("width", pa.uint32()), _req("channels", pa.uint8()),
                            _req("mode", pa.string()), _req("data", pa.large_binary())])
_AUDIO_STORAGE = pa.struct([_req("sample_rate", pa.uint32()), _req("channels", pa.uint16()),
                            _req("data", pa.large_list(pa.float32()))])
_FILE_STORAGE = pa.struct([_req("uri", pa.string()), pa.field("offset", pa.uint64()), pa.field("length", pa.uint64()),
                           pa.field("version", pa.string()), pa.field("media_type", pa.string())])
_CLIP_STORAGE = pa.struct([_req("uri", pa.string()), _req("start_ms", pa.int64()), _req("end_ms", pa.int64())])


# The subclass of each Rillet type named as the type shows itself, per parameters.
_NAMED: dict[tuple[type, str], type] = {}


class _RilletType(pa.ExtensionType):
    """Common behaviour: JSON metadata, readable names (also where pyarrow prints a
    schema: ``extension<rillet.image<Image[RGB, u8]>>``)."""

    _params: dict

    def _named_as_shown(self) -> None:
        """Make this instance's class one named as the type displays itself: pyarrow prints
        an extension type in a schema by its Python class's name."""
        base = self._kind()
        display = self._display()
        named = _NAMED.get((base, display))
        if named is None:
            named = type(display, (base,), {"__module__": base.__module__,
                                            "__qualname__": base.__qualname__, "_is_named": True})
            _NAMED[(base, display)] = named
        self.__class__ = named

    def _kind(self) -> type:
        cls = type(self)
        return cls.__bases__[0] if cls.__dict__.get("_is_named") else cls

    def __eq__(self, other):
        # Parameters count: an Image("L") is not an Image("RGB"), a Tensor of u8 not one
        # of f32 (their bytes mean different things).
        if isinstance(other, _RilletType):
            return (self._kind() is other._kind() and self.extension_name == other.extension_name
                    and self.storage_type == other.storage_type
                    and self.__arrow_ext_serialize__() == other.__arrow_ext_serialize__())
        return NotImplemented

    def __hash__(self):
        return hash((self.extension_name, self.storage_type, self.__arrow_ext_serialize__()))

    def __reduce__(self):
        return self._kind().__arrow_ext_deserialize__, (self.storage_type, self.__arrow_ext_serialize__())

    def __arrow_ext_serialize__(self) -> bytes:
        return json.dumps(self._params).encode()

    def __str__(self) -> str:
        return self._display()

    def __repr__(self) -> str:
        return f"rillet.{self._display()}"

    def _display(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError



class _RilletArray(pa.ExtensionArray):
    """Arrays of a Rillet type: ``to_pylist()`` gives the Python values (PIL images, numpy
    arrays, ``(samples, rate)``), ``to_numpy()`` one numpy array where the rows' shapes
    agree (``(n, h, w, c)`` images, ``(n, d)`` embeddings, ``(n, *shape)`` tensors) and
    an object array of the rows' values otherwise."""

    def _row_values(self) -> list:
        """Each row as numpy sees it (``None`` for nulls)."""
        return [np.asarray(r) if _is_pil(r) else r for r in self.to_pylist()]

    def to_numpy(self, zero_copy_only: bool = False, writable: bool = False) -> np.ndarray:
        rows = self._row_values()
        shapes = {(a.shape, a.dtype) for a in rows if isinstance(a, np.ndarray)}
        if rows and len(shapes) == 1 and all(isinstance(a, np.ndarray) for a in rows):
            return np.stack(rows)
        out = np.empty(len(rows), dtype=object)
        for i, a in enumerate(rows):
            out[i] = a
        return out


class _ImageArray(_RilletArray):
    """Images stack as ``(n, h, w, c)`` when every row has one size and mode (``c`` is 1
    for ``L``), read straight from the storage's columns."""

    def _row_values(self) -> list:
        heights, widths, _, modes, data = (c.to_pylist() for c in self.storage.flatten())
        valid = self.storage.is_valid().to_pylist()
        return [_image_array(h, w, m, d) if ok else None
                for ok, h, w, m, d in zip(valid, heights, widths, modes, data)]


class _EmbeddingArray(_RilletArray):
    def to_numpy(self, zero_copy_only: bool = False, writable: bool = False) -> np.ndarray:
        if self.null_count:
            return super().to_numpy()
        t: EmbeddingType = self.type
        values = self.storage.flatten().to_numpy(zero_copy_only=False)
        return values.reshape((len(self), t.dim))


class _TensorArray(_RilletArray):
    def to_numpy(self, zero_copy_only: bool = False, writable: bool = False) -> np.ndarray:
        t: TensorType = self.type
        if self.null_count or t.shape is None:
            return super().to_numpy()
        storage = self.storage
        width = storage.type.byte_width
        data = storage.buffers()[1]
        flat = np.frombuffer(data, dtype=t.numpy_dtype, count=len(self) * width // t.numpy_dtype.itemsize,
                             offset=storage.offset * width)
        return flat.reshape((len(self),) + t.shape)


class ImageScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        value = self.value
        if value is None:
            return None
        return _image_to_py(value["height"].as_py(), value["width"].as_py(), value["mode"].as_py(),
                            value["data"].as_py())


def _image_array(height: int, width: int, mode: str, data: bytes) -> np.ndarray:
    channels, element = _MODES[mode]
    array = np.frombuffer(data, dtype=np.dtype(_ELEMENTS[element].to_pandas_dtype()))
    return array.reshape((height, width, channels))


def _image_to_py(height: int, width: int, mode: str, data: bytes):
    array = _image_array(height, width, mode, data)
    try:
        from PIL import Image as PILImage
    except ImportError:
        return array
    if mode in ("L", "LA", "RGB", "RGBA"):
        return PILImage.fromarray(np.ascontiguousarray(array[:, :, 0] if mode == "L" else array))
    if mode == "L16":
        return PILImage.fromarray(np.ascontiguousarray(array[:, :, 0]))  # mode I;16
    return array  # modes Pillow cannot hold (16-bit colour, float) stay numpy


class ImageType(_RilletType):
    """Decoded images: ``Image("RGB")`` when every row has that mode, ``Image()`` when mixed."""

    def __init__(self, mode: str | None = None):
        if mode is not None:
            mode = mode.upper()
            if mode not in _MODES:
                raise ValueError(f"unknown image mode {mode!r}; expected one of {', '.join(_MODES)}")
        self.mode = mode
        self._params = {"mode": mode} if mode else {}
        super().__init__(_IMAGE_STORAGE, "rillet.image")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        params = json.loads(serialized.decode() or "{}")
        return cls(params.get("mode"))

    def __arrow_ext_scalar_class__(self):
        return ImageScalar

    def __arrow_ext_class__(self):
        return _ImageArray

    def _display(self) -> str:
        return f"Image[{self.mode}, {_MODES[self.mode][1]}]" if self.mode else "Image[mixed]"


class TensorScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        value = self.value
        if value is None:
            return None
        t: TensorType = self.type
        if t.shape is not None:
            return np.frombuffer(value.as_buffer(), dtype=t.numpy_dtype).reshape(t.shape)
        data = np.frombuffer(value["data"].as_buffer(), dtype=t.numpy_dtype)
        return data.reshape(tuple(value["shape"].as_py()))


class TensorType(_RilletType):
    """n-dimensional arrays of one element type; ``shape`` fixed for every row, or ``None``.

    A row's elements are stored as one buffer of little-endian bytes in row-major order
    (``fixed_size_binary`` for a fixed shape, else ``struct{data: large_binary, shape:
    list<uint32>}``), so a tensor is read and written whole.
    """

    def __init__(self, dtype: Any = "f32", shape: Sequence[int] | None = None):
        self.dtype = _element(dtype)
        self.shape = tuple(int(d) for d in shape) if shape is not None else None
        self.numpy_dtype = np.dtype(_ELEMENTS[self.dtype].to_pandas_dtype()).newbyteorder("<")
        if self.shape is not None:
            storage = pa.binary(int(np.prod(self.shape)) * self.numpy_dtype.itemsize)
            self._params = {"dtype": self.dtype, "shape": list(self.shape)}
        else:
            storage = pa.struct([_req("data", pa.large_binary()), _req("shape", pa.list_(pa.uint32()))])
            self._params = {"dtype": self.dtype}
        super().__init__(storage, "rillet.tensor")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        params = json.loads(serialized.decode())
        return cls(params["dtype"], params.get("shape"))

    def __arrow_ext_scalar_class__(self):
        return TensorScalar

    def __arrow_ext_class__(self):
        return _TensorArray

    def _display(self) -> str:
        if self.shape is None:
            return f"Tensor[{self.dtype}]"
        return f"Tensor[{self.dtype}; {'×'.join(str(d) for d in self.shape)}]"


class EmbeddingScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        value = self.value
        return None if value is None else np.asarray(value.values.to_numpy(zero_copy_only=False))


class EmbeddingType(_RilletType):
    """Fixed-length vectors (model embeddings)."""

    def __init__(self, dtype: Any = "f32", dim: int = 0):
        self.dtype = _element(dtype)
        self.dim = int(dim)
        if self.dim <= 0:
            raise ValueError("an Embedding needs a positive dimension, e.g. Embedding(rl.float32, 384)")
        self._params = {"dtype": self.dtype, "dim": self.dim}
        super().__init__(pa.list_(_ELEMENTS[self.dtype], self.dim), "rillet.embedding")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        params = json.loads(serialized.decode())
        return cls(params["dtype"], params["dim"])

    def __arrow_ext_scalar_class__(self):
        return EmbeddingScalar

    def __arrow_ext_class__(self):
        return _EmbeddingArray

    def _display(self) -> str:
        return f"Embedding[{self.dtype}; {self.dim}]"


class AudioScalar(pa.ExtensionScalar):
    def as_py(self, *args, **kwargs):
        value = self.value
        if value is None:
            return None
        channels = value["channels"].as_py()
        samples = np.asarray(value["data"].values.to_numpy(zero_copy_only=False), dtype=np.float32)
        return samples.reshape((-1, channels)), value["sample_rate"].as_py()


class AudioType(_RilletType):
    """Decoded audio: interleaved f32 samples with sample rate and channel count."""

    def __init__(self):
        self._params = {}
        super().__init__(_AUDIO_STORAGE, "rillet.audio")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()

    def __arrow_ext_scalar_class__(self):
        return AudioScalar

    def __arrow_ext_class__(self):
        return _RilletArray

    def _display(self) -> str:
        return "Audio"


class FileType(_RilletType):
    """References to content fetched when needed: uri, optional byte range, version, media type."""

    def __init__(self):
        self._params = {}
        super().__init__(_FILE_STORAGE, "rillet.file")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()

    def _display(self) -> str:
        return "File"


class ClipType(_RilletType):
    """A time range of an audio or video object: uri, start_ms, end_ms."""

    def __init__(self):
        self._params = {}
        super().__init__(_CLIP_STORAGE, "rillet.clip")
        self._named_as_shown()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()

    def _display(self) -> str:
        return "Clip"


for _t in (ImageType(), TensorType(), EmbeddingType("f32", 1), AudioType(), FileType(), ClipType()):
    try:
        pa.register_extension_type(_t)
    except pa.ArrowKeyError:  # already registered (module reloaded)
        pass


def Image(mode: str | None = None) -> ImageType:  # noqa: N802 - reads like a type
    """The Image type, e.g. ``rl.Image("RGB")``."""
    return ImageType(mode)


def Tensor(dtype: Any = "f32", shape: Sequence[int] | None = None) -> TensorType:  # noqa: N802
    """The Tensor type, e.g. ``rl.Tensor(rl.float32, (3, 224, 224))``."""
    return TensorType(dtype, shape)


def Embedding(dtype: Any, dim: int) -> EmbeddingType:  # noqa: N802
    """The Embedding type, e.g. ``rl.Embedding(rl.float32, 384)``."""
    return EmbeddingType(dtype, dim)


def Audio() -> AudioType:  # noqa: N802
    """The Audio type."""
    return AudioType()


def File() -> FileType:  # noqa: N802
    """The File reference type."""
    return FileType()


def Clip() -> ClipType:  # noqa: N802
    """The clip reference type."""
    return ClipType()


# Python values -> Arrow ---------------------------------------------------------------

def _is_pil(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("PIL.") and hasattr(value, "mode") and hasattr(value, "size")


def _pil_to_row(image) -> dict:
    mode = image.mode
    if mode in ("I", "F", "I;16B", "I;16N", "I;32"):
        raise ValueError(f"PIL images of mode {mode} (32-bit or big-endian pixels) have no Rillet image mode; "
                         "convert them to a numpy array (a Tensor) or to mode I;16, L or RGB first")
    if mode not in ("L", "LA", "RGB", "RGBA"):
        if mode in ("I;16", "I;16L"):
            array = np.asarray(image, dtype=np.uint16)[:, :, None]
            return {"height": array.shape[0], "width": array.shape[1], "channels": 1, "mode": "L16",
                    "data": array.tobytes()}
        image = image.convert("RGBA" if "A" in mode or mode == "P" and "transparency" in image.info else "RGB")
        mode = image.mode
    array = np.asarray(image)
    channels = _MODES[mode][0]
    return {"height": image.height, "width": image.width, "channels": channels, "mode": mode,
            "data": np.ascontiguousarray(array).tobytes()}


def _image_column(values: list) -> pa.Array:
    rows = [None if v is None else _pil_to_row(v) for v in values]
    modes = {r["mode"] for r in rows if r is not None}
    storage = pa.array(rows, type=_IMAGE_STORAGE)
    return pa.ExtensionArray.from_storage(ImageType(modes.pop() if len(modes) == 1 else None), storage)


def _tensor_column(values: list) -> pa.Array:
    first = next(v for v in values if v is not None)
    dtype = _element(first.dtype)
    shapes = {tuple(v.shape) for v in values if v is not None}
    if len(shapes) == 1 and first.ndim == 1:
        t = EmbeddingType(dtype, first.shape[0])
        storage = pa.array([None if v is None else v.ravel() for v in values], type=t.storage_type)
        return pa.ExtensionArray.from_storage(t, storage)
    t = TensorType(dtype, None)
    rows = [None if v is None else {"data": np.ascontiguousarray(v, dtype=t.numpy_dtype).tobytes(),
                                    "shape": list(v.shape)} for v in values]
    return pa.ExtensionArray.from_storage(t, pa.array(rows, type=t.storage_type))


def _audio_column(values: list) -> pa.Array:
    rows = []
    for v in values:
        if v is None:
            rows.append(None)
            continue
        samples, rate = v
        samples = np.asarray(samples)
        if samples.dtype.kind in "iu":
            # PCM integers to [-1, 1), as audio libraries read them.
            info = np.iinfo(samples.dtype)
            middle = (int(info.max) + 1 + int(info.min)) / 2
            samples = (samples.astype(np.float64) - middle) / (int(info.max) + 1 - middle)
        samples = samples.astype(np.float32)
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        rows.append({"sample_rate": int(rate), "channels": channels, "data": samples.ravel()})
    return pa.ExtensionArray.from_storage(AudioType(), pa.array(rows, type=_AUDIO_STORAGE))


def _is_audio(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray)
            and isinstance(value[1], (int, np.integer)))


def to_arrow_column(values: list) -> pa.Array | None:
    """An Arrow array of a Rillet type for ``values`` when they are PIL images, numpy arrays
    (1-D arrays of one length become an Embedding, others a Tensor) or ``(samples, rate)``
    audio tuples; ``None`` for anything else (left to pyarrow)."""
    first = next((v for v in values if v is not None), None)
    if first is None:
        return None
    if _is_pil(first):
        return _image_column(values)
    if _is_audio(first):
        return _audio_column(values)
    if isinstance(first, np.ndarray):
        return _tensor_column(values)
    return None


# Python values -> a declared Rillet type ------------------------------------------------

def _numpy_element(name: str) -> np.dtype:
    return np.dtype(_ELEMENTS[name].to_pandas_dtype())


def _rows(values: Any) -> list:
    """The rows of ``values``: a list, a numpy array (split along its first axis), a
    pyarrow array (as Python values) or any iterable."""
    if isinstance(values, np.ndarray):
        return list(values) if values.dtype != object else values.tolist()
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return list(values)


def _image_row(value: Any, mode: str | None) -> dict:
    if _is_pil(value):
        if mode in ("L", "LA", "RGB", "RGBA") and value.mode != mode and value.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            value = value.convert(mode)
        row = _pil_to_row(value)
        if mode is not None and row["mode"] != mode:
            raise ValueError(f"a PIL image of mode {value.mode} is not an Image({mode!r}) without loss; "
                             f"convert it first (image.convert({mode!r})) or declare Image({row['mode']!r})")
        return row
    array = np.asarray(value)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"an image must be a PIL image or an (h, w) or (h, w, c) array; got an "
                         f"array of shape {array.shape}")
    channels = array.shape[2]
    element = _element(array.dtype)
    found = [m for m, layout in _MODES.items() if layout == (channels, element)]
    row_mode = mode if mode is not None else (found[0] if found else None)
    if row_mode is None or _MODES[row_mode] != (channels, element):
        raise ValueError(f"an image array of shape {array.shape} and dtype {array.dtype} is not an "
                         f"image of mode {row_mode or '?'}; modes: "
                         + ", ".join(f"{m}=({c} channels, {e})" for m, (c, e) in _MODES.items()))
    return {"height": array.shape[0], "width": array.shape[1], "channels": channels, "mode": row_mode,
            "data": np.ascontiguousarray(array).tobytes()}


def _exact(array: Any, dtype: np.dtype, what: str) -> np.ndarray:
    """``array`` as ``dtype``, refused where a value would change (1.5 as an integer,
    300 as u8, NaN as an integer)."""
    array = np.asarray(array)
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(f"{what} needs numbers, got an array of {array.dtype}")
    with np.errstate(invalid="ignore", over="ignore"):
        converted = array.astype(dtype)
        back = converted.astype(array.dtype) if array.dtype.kind != "b" else converted.astype(bool)
    same = np.array_equal(back, array, equal_nan=array.dtype.kind == "f" and dtype.kind == "f")
    if not same and not (dtype.kind == "f" and array.dtype.kind == "f"):
        raise ValueError(f"{what}: values of {array.dtype} are not {dtype} without loss")
    return np.ascontiguousarray(converted)


def _tensor_storage(rows: list, t: "TensorType") -> pa.Array:
    if t.shape is not None:
        out = []
        for v in rows:
            if v is None:
                out.append(None)
                continue
            array = np.asarray(v)
            if tuple(array.shape) != t.shape:
                raise ValueError(f"a {t} value must have shape {t.shape}, got {tuple(array.shape)}")
            out.append(_exact(array, t.numpy_dtype, str(t)).tobytes())
        return pa.array(out, type=t.storage_type)
    return pa.array([None if v is None else {
        "data": _exact(v, t.numpy_dtype, str(t)).tobytes(),
        "shape": list(np.shape(v))} for v in rows], type=t.storage_type)


def _embedding_storage(rows: list, t: "EmbeddingType") -> pa.Array:
    out = []
    for v in rows:
        if v is None:
            out.append(None)
            continue
        array = np.asarray(v).ravel() if np.ndim(v) > 1 and np.size(v) == t.dim else np.asarray(v)
        if array.shape != (t.dim,):
            raise ValueError(f"an {t} value must be a vector of {t.dim} values, got shape {array.shape}")
        out.append(_exact(array, _numpy_element(t.dtype), str(t)))
    return pa.array(out, type=t.storage_type)


def to_extension_array(values: Any, dtype: pa.ExtensionType) -> pa.Array:
    """``values`` as an array of the Rillet type ``dtype``: a list of Python values (PIL
    images, numpy arrays, ``(samples, rate)``, ``None``), a stacked numpy array (``(n, h,
    w, c)`` images, ``(n, d)`` embeddings, ``(n, *shape)`` tensors), or a pyarrow array of
    the type or of its storage.

    >>> import numpy as np, rillet as rl
    >>> to_extension_array(np.zeros((2, 3), np.float32), rl.Embedding("f32", 3)).to_numpy().shape
    (2, 3)
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.ExtensionArray) and values.type == dtype:
        return values
    if isinstance(values, pa.Array) and values.type == dtype.storage_type:
        return pa.ExtensionArray.from_storage(dtype, values)
    if isinstance(dtype, EmbeddingType) and isinstance(values, np.ndarray) and values.ndim == 2 \
            and values.dtype != object:
        if values.shape[1] != dtype.dim:
            raise ValueError(f"an {dtype} column needs arrays of shape (n, {dtype.dim}), got {values.shape}")
        flat = pa.array(_exact(values, _numpy_element(dtype.dtype), str(dtype)).ravel())
        return pa.ExtensionArray.from_storage(dtype, pa.FixedSizeListArray.from_arrays(flat, dtype.dim))
    rows = _rows(values)
    if isinstance(dtype, ImageType):
        storage = pa.array([None if v is None else _image_row(v, dtype.mode) for v in rows], type=_IMAGE_STORAGE)
    elif isinstance(dtype, TensorType):
        storage = _tensor_storage(rows, dtype)
    elif isinstance(dtype, EmbeddingType):
        storage = _embedding_storage(rows, dtype)
    elif isinstance(dtype, AudioType):
        return _audio_column(rows) if any(v is not None for v in rows) else \
            pa.ExtensionArray.from_storage(dtype, pa.nulls(len(rows), _AUDIO_STORAGE))
    else:
        storage = pa.array(rows, type=dtype.storage_type)
    return pa.ExtensionArray.from_storage(dtype, storage)


_TYPES_BY_NAME = {"rillet.image": ImageType, "rillet.tensor": TensorType, "rillet.embedding": EmbeddingType,
                  "rillet.audio": AudioType, "rillet.file": FileType, "rillet.clip": ClipType}


def with_extension_types(batch: Any) -> Any:
    """``batch`` (a RecordBatch or Table) with columns whose fields name a Rillet type in
    their metadata turned into arrays of that type (as pyarrow does itself once this
    module is imported; for batches read before that)."""
    fields, columns, changed = [], [], False
    for field, column in zip(batch.schema, batch.columns):
        meta = field.metadata or {}
        name = meta.get(b"ARROW:extension:name", b"").decode()
        if name in _TYPES_BY_NAME and not isinstance(field.type, pa.ExtensionType):
            t = _TYPES_BY_NAME[name].__arrow_ext_deserialize__(field.type, meta.get(b"ARROW:extension:metadata", b""))
            column = (pa.chunked_array([pa.ExtensionArray.from_storage(t, c) for c in column.chunks], t)
                      if isinstance(column, pa.ChunkedArray) else pa.ExtensionArray.from_storage(t, column))
            field, changed = pa.field(field.name, t, field.nullable), True
        fields.append(field)
        columns.append(column)
    if not changed:
        return batch
    return type(batch).from_arrays(columns, schema=pa.schema(fields))


def table_to_pandas(table: pa.Table):
    """``table`` as a pandas DataFrame whose Rillet-typed columns hold the values
    ``to_pylist()`` gives (PIL images, numpy arrays), not their storage."""
    typed = [i for i, f in enumerate(table.schema) if isinstance(f.type, _RilletType)]
    frame = table.drop_columns([table.schema.names[i] for i in typed]).to_pandas() if typed else table.to_pandas()
    if typed:
        import pandas as pd
        for i in typed:
            frame.insert(i, table.schema.names[i], pd.Series(table.column(i).to_pylist(), dtype=object))
    return frame
