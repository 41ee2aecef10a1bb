"""Readers and writers a Ray Data or Daft user reaches for first, built on the engine's file
listing and native operators: images decoded on read, text by line, whole files as bytes,
WebDataset tar shards, and Lance datasets.

>>> import rillet as rl
>>> rl.read_text  # doctest: +ELLIPSIS
<function read_text at ...>
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from rillet.dataframe import DataFrame
from rillet.expr import _call, col, lit

PathLike = str | os.PathLike


def _files(path: PathLike, allow_empty: bool) -> DataFrame:
    from rillet import read_files

    return read_files(path, allow_empty=allow_empty)


def read_images(path: PathLike, *, mode: str | None = None, size: tuple[int, int] | None = None,
                on_error: str = "null", allow_empty: bool = False) -> DataFrame:
    """One row per image file under ``path`` (a glob, a directory or an ``s3://`` prefix),
    decoded on read: columns ``path`` and ``image`` (PIL images in Python).

    ``mode`` converts every image (``"RGB"``, ``"L"``, ...); ``size=(height, width)``
    resizes them (Ray Data's order) so they stack into one ``(n, h, w, c)`` array in numpy
    batches. Files that are not images follow ``on_error`` (null by default, counted and
    reported at the end of the run).

    >>> import rillet as rl
    >>> from rillet.dev.datasets import sample_photos
    >>> folder = str(sample_photos()[0].parent)
    >>> df = rl.read_images(folder, mode="RGB", size=(24, 32))
    >>> df.limit(1).to_pylist()[0]["image"].size
    (32, 24)
    """
    image = col("file").image.decode(mode, on_error=on_error)
    if size is not None:
        height, width = _size(size)
        image = image.image.resize(width, height, on_error=on_error)
    return _files(path, allow_empty).select(col("path"), image.alias("image"))


def _size(size: Any) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"size must be (height, width) in pixels, got {size!r}")
    return size[0], size[1]


def read_binary_files(path: PathLike, *, allow_empty: bool = False) -> DataFrame:
    """One row per file under ``path``: ``path`` and its whole content as ``bytes``.

    >>> import rillet as rl
    >>> from rillet.dev.datasets import sample_texts
    >>> row = rl.read_binary_files(str(sample_texts()[0])).to_pylist()[0]
    >>> isinstance(row["bytes"], bytes) and len(row["bytes"]) > 0
    True
    """
    return _files(path, allow_empty).select(col("path"), col("file").file.read(on_error="raise").alias("bytes"))


def read_text(path: PathLike, *, by: str = "line", drop_empty: bool = False,
              allow_empty: bool = False) -> DataFrame:
    """Text files under ``path`` as rows of ``path`` and ``text``: one row per line
    (``by="line"``, the default; line ends ``\\n`` or ``\\r\\n`` removed), or one per file
    (``by="file"``). Files must be UTF-8.

    >>> import rillet as rl
    >>> from rillet.dev.datasets import sample_texts
    >>> lines = rl.read_text(str(sample_texts()[0]))
    >>> lines.count() > 1
    True
    """
    if by not in ("line", "file"):
        raise ValueError(f"by must be 'line' or 'file', not {by!r}")
    content = col("file").file.read(on_error="raise").cast(pa.string())
    files = _files(path, allow_empty).select(col("path"), content.alias("text"))
    if by == "file":
        return files
    # One final line end does not start another line (as str.splitlines).
    body = _call("regexp_replace", col("text"), "\r?\n$", "")
    lines = files.with_column("text", _call("string_to_array", body, "\n")).explode("text")
    lines = lines.with_column("text", _call("rtrim", col("text"), "\r"))
    return lines.filter(col("text") != lit("")) if drop_empty else lines


# WebDataset -----------------------------------------------------------------------------

# Members decoded to values rather than kept as bytes (the webdataset package's defaults).
_TEXT_MEMBERS = {"txt", "text", "json", "jsn"}
_INT_MEMBERS = {"cls", "cls2", "index", "inx", "id"}


def _split_member(name: str) -> tuple[str, str] | None:
    """``"dir/000001.seg.png"`` → ``("dir/000001", "seg.png")``: the key runs to the first
    dot of the file name, the rest names the member."""
    folder, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _member_value(ext: str, data: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1]
    if last in _TEXT_MEMBERS:
        return data.decode("utf-8")
    if last in _INT_MEMBERS:
        try:
            return int(data.decode("utf-8").strip())
        except ValueError:
            return None
    return data


def _samples(url: str, data: bytes) -> Iterator[dict]:
    """The samples of one tar shard, in order: members with one key make one sample."""
    sample: dict | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            split = _split_member(member.name)
            if split is None:
                continue
            key, ext = split
            if ext.startswith("__"):
                continue  # the reader's own columns, not members
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            sample[ext] = _member_value(ext, tar.extractfile(member).read())
    if sample is not None:
        yield sample


def read_webdataset(path: PathLike, *, allow_empty: bool = False) -> DataFrame:
    """WebDataset tar shards under ``path`` (local or ``s3://``) as one row per sample:
    ``__key__``, ``__url__`` (the shard) and a column per member extension (``jpg``,
    ``cls``, ``json``, ...). Media stay bytes — decode them with the native operators
    (``col("jpg").image.decode()``); ``txt``/``json`` members are strings and ``cls`` members
    integers. Shards are read in parallel, one call each; the columns are those of the
    first shard (a later shard with other members is an error naming them).

    >>> import rillet as rl
    >>> rl.read_webdataset  # doctest: +ELLIPSIS
    <function read_webdataset at ...>
    """
    shards = _files(path, allow_empty).select(
        col("path"), col("file").file.read(on_error="raise").alias("data"))
    columns: list[str] = []

    def expand(batch: pa.Table) -> pa.Table:
        rows = [s for url, data in zip(batch["path"].to_pylist(), batch["data"].to_pylist())
                for s in _samples(url, data)]
        if not columns:  # the first shard, read while planning, names the columns
            seen = dict.fromkeys(k for r in rows for k in r)
            columns.extend(["__key__", "__url__", *sorted(k for k in seen if not k.startswith("__"))])
        extra = sorted({k for r in rows for k in r} - set(columns))
        if extra:
            raise ValueError(f"read_webdataset: shard {rows[0]['__url__']} has members {extra} that "
                             f"the first shard has not ({columns[2:]}); give shards one layout")
        return pa.table({name: _member_column(name, [r.get(name) for r in rows]) for name in columns})

    expand.__name__ = "read_webdataset"
    return shards.map_batches(expand, batch_size=1)


def _member_column(name: str, values: list) -> pa.Array:
    last = name.rsplit(".", 1)[-1]
    if name.startswith("__") or last in _TEXT_MEMBERS:
        return pa.array(values, pa.string())
    if last in _INT_MEMBERS:
        return pa.array(values, pa.int64())
    return pa.array(values, pa.binary())


_IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP",
                  "tif": "TIFF", "tiff": "TIFF", "ppm": "PPM"}


def _encode_member(ext: str, value: Any) -> bytes:
    """A value as the bytes of member ``ext``: images in the format the extension names,
    numpy arrays as ``.npy``, dicts and lists as JSON, other values as text."""
    from rillet.types import _is_audio, _is_pil

    last = ext.rsplit(".", 1)[-1]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if _is_pil(value):
        out = io.BytesIO()
        image = value.convert("RGB") if _IMAGE_FORMATS.get(last, "PNG") == "JPEG" and value.mode != "RGB" else value
        image.save(out, _IMAGE_FORMATS.get(last, "PNG"))
        return out.getvalue()
    if isinstance(value, np.ndarray):
        out = io.BytesIO()
        np.save(out, value, allow_pickle=False)
        return out.getvalue()
    if _is_audio(value):
        raise TypeError(f"member {ext!r}: encode audio to bytes first (col(...).audio.encode())")
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


def write_webdataset(df: DataFrame, path: PathLike, *, key: str | None = None,
                     samples_per_shard: int = 10_000, prefix: str = "shard") -> list[str]:
    """Write ``df`` as WebDataset tar shards ``<path>/<prefix>-000000.tar``, … of at most
    ``samples_per_shard`` samples: one sample per row, one member per column (the column
    name is the member's extension; images are encoded in the format it names, numpy
    arrays as ``.npy``). ``key`` names the column holding sample keys (default: the row's
    number). Each shard appears whole (written aside, then renamed). Returns the shards.

    >>> import rillet as rl, tempfile
    >>> df = rl.from_pydict({"txt": ["a", "b"], "cls": [0, 1]})
    >>> shards = rl.write_webdataset(df, tempfile.mkdtemp())
    >>> rl.read_webdataset(shards[0]).select("txt", "cls").to_pydict()
    {'txt': ['a', 'b'], 'cls': [0, 1]}
    """
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be at least 1")
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    shards: list[str] = []
    writer: _ShardWriter | None = None
    number = 0
    for batch in df.iter_batches():
        for row in batch.to_pylist():
            if writer is None or writer.count >= samples_per_shard:
                if writer is not None:
                    shards.append(writer.close())
                writer = _ShardWriter(os.path.join(folder, f"{prefix}-{len(shards):06d}.tar"))
            name = _sample_key(row.pop(key)) if key is not None else f"{number:09d}"
            writer.add(name, {ext: v for ext, v in row.items() if v is not None and not ext.startswith("__")})
            number += 1
    if writer is not None:
        shards.append(writer.close())
    return shards


def _sample_key(value: Any) -> str:
    """A sample key as WebDataset readers split it back: a relative path whose last part
    has no dot (the first dot of a member's name starts its extension)."""
    key = str(value)
    if value is None or not key or key.startswith("/") or "." in key.rpartition("/")[2]:
        raise ValueError(f"write_webdataset: the key {value!r} would not read back as one sample; keys "
                         "are relative names without a dot in their last part (e.g. a file's stem)")
    return key


class _ShardWriter:
    def __init__(self, target: str):
        self.target = target
        self.partial = f"{target}.partial"
        self.tar = tarfile.open(self.partial, "w")
        self.count = 0

    def add(self, key: str, members: dict[str, Any]) -> None:
        for ext, value in members.items():
            data = _encode_member(ext, value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mode = 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> str:
        self.tar.close()
        with open(self.partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.target)
        return self.target


# Lance ----------------------------------------------------------------------------------

def _lance() -> Any:
    try:
        import lance
    except ImportError as exc:
        raise ImportError("Lance datasets need the pylance package: pip install pylance (the "
                          "PyPI package named 'lance' is another project)") from exc
    return lance


def read_lance(uri: PathLike, *, columns: Sequence[str] | None = None, filter: str | None = None,  # noqa: A002
               version: int | str | None = None) -> DataFrame:
    """A Lance dataset (through pylance's Arrow stream): ``columns`` and ``filter`` (a SQL
    predicate, e.g. ``"label > 3"``) are pushed into Lance's scan; ``version`` reads an
    older version. Rillet's types written by :func:`write_lance` come back as themselves.

    >>> import rillet as rl
    >>> rl.read_lance  # doctest: +ELLIPSIS
    <function read_lance at ...>
    """
    from rillet import from_arrow
    from rillet.types import with_extension_types

    dataset = _lance().dataset(os.fspath(uri), version=version)
    table = dataset.to_table(columns=list(columns) if columns is not None else None, filter=filter)
    return from_arrow(with_extension_types(table))


def write_lance(df: DataFrame, uri: PathLike, *, mode: str = "create") -> dict:
    """Write ``df`` as a Lance dataset at ``uri`` (``mode``: ``"create"``, ``"append"`` or
    ``"overwrite"``), streaming batches as the job produces them. Returns the dataset's
    ``version`` and ``rows``."""
    lance = _lance()
    schema = _storage_schema(df.schema)
    batches = (pa.RecordBatch.from_arrays([_storage(c) for c in b.columns], schema=schema)
               for b in df.iter_batches())
    reader = pa.RecordBatchReader.from_batches(schema, batches)
    dataset = lance.write_dataset(reader, os.fspath(uri), mode=mode)
    return {"version": dataset.version, "rows": dataset.count_rows()}


def _storage(array: Any) -> Any:
    return array.storage if isinstance(array, pa.ExtensionArray) else array


def _storage_schema(schema: pa.Schema) -> pa.Schema:
    """Rillet's types as their storage, the type kept in the field's metadata (as Arrow
    IPC does), so datasets stay readable by any Lance reader and come back typed."""
    fields = []
    for field in schema:
        t = field.type
        if isinstance(t, pa.ExtensionType):
            meta = {**(field.metadata or {}), b"ARROW:extension:name": t.extension_name.encode(),
                    b"ARROW:extension:metadata": t.__arrow_ext_serialize__()}
            field = pa.field(field.name, t.storage_type, field.nullable, meta)
        fields.append(field)
    return pa.schema(fields, metadata=schema.metadata)


__all__ = ["read_images", "read_binary_files", "read_text", "read_webdataset", "write_webdataset",
           "read_lance", "write_lance"]
