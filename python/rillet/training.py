"""Handing data to a training loop: batches of a fixed size as numpy arrays or torch
tensors (through DLPack, without a copy where the layout allows), and the seeded shuffles,
samples and splits that make a run repeatable.

Seeded draws hash each row's values (XXH3, as key groups do) with the seed, so they depend
on the rows, not on the order a parallel job delivers them in: the same data and seed give
the same sample, split and order on any machine.

>>> import rillet as rl
>>> train, test = rl.range(1000).train_test_split(test_size=0.2, seed=7)
>>> train.count() + test.count()
1000
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from rillet.dataframe import DataFrame
from rillet.expr import Expr, _call, col

_TWO_64 = float(2**64)


def row_draw(df: DataFrame, seed: int) -> Expr:
    """A number in ``[0, 1)`` per row, from its values and ``seed``."""
    values = _call("struct", *[col(name) for name in df.columns])
    return _call("row_hash", values, int(seed)).cast(pa.float64()) / _TWO_64


def _seed(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, not {seed!r}")
    return int(seed)


def sample(df: DataFrame, fraction: float, seed: int | None = None) -> DataFrame:
    """About ``fraction`` of the rows, each kept with that chance (the same rows for the
    same seed and data).

    >>> import rillet as rl
    >>> a = rl.range(10_000).sample(0.1, seed=1).to_pydict()["id"]
    >>> a == rl.range(10_000).sample(0.1, seed=1).to_pydict()["id"] and 800 < len(a) < 1200
    True
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
    return df.filter(row_draw(df, _seed(seed)) < fraction)


def random_shuffle(df: DataFrame, seed: int | None = None) -> DataFrame:
    """The rows in a random order (the same order for the same seed and data).

    >>> import rillet as rl
    >>> ids = rl.range(100).random_shuffle(seed=3).to_pydict()["id"]
    >>> sorted(ids) == list(range(100)) and ids != list(range(100))
    True
    """
    draw = "__rillet_draw"
    return df.with_column(draw, row_draw(df, _seed(seed))).sort(draw).drop(draw)


def train_test_split(df: DataFrame, test_size: float = 0.25, seed: int | None = None
                     ) -> tuple[DataFrame, DataFrame]:
    """``(train, test)``: every row in exactly one of them, about ``test_size`` of them in
    ``test`` (the same split for the same seed and data; equal rows land together).

    >>> import rillet as rl
    >>> train, test = rl.range(100).train_test_split(test_size=0.3, seed=5)
    >>> sorted(train.to_pydict()["id"] + test.to_pydict()["id"]) == list(range(100))
    True
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), not {test_size!r}")
    draw = row_draw(df, _seed(seed))
    return df.filter(draw >= test_size), df.filter(draw < test_size)


def _exact_batches(df: DataFrame, batch_size: int, drop_last: bool,
                   columns: Sequence[str] | None) -> Iterator[pa.Table]:
    """The job's rows re-cut into tables of exactly ``batch_size`` rows (the last one
    shorter, or dropped with ``drop_last``)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
    source = df.select(*columns) if columns is not None else df
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in source.iter_batches():
        pending.append(batch)
        held += batch.num_rows
        while held >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size)
            rest = table.slice(batch_size)
            pending, held = rest.to_batches(), rest.num_rows
    if held and not drop_last:
        yield pa.Table.from_batches(pending)


def iter_numpy_batches(df: DataFrame, batch_size: int = 256, *, drop_last: bool = False,
                       columns: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly ``batch_size`` rows as dicts of numpy arrays (the last batch
    shorter unless ``drop_last``): images of one size as ``(n, h, w, c)``, embeddings as
    ``(n, d)``, numbers without copying where Arrow's layout allows.

    >>> import rillet as rl
    >>> [len(b["id"]) for b in rl.range(10).iter_numpy_batches(4)]
    [4, 4, 2]
    """
    for table in _exact_batches(df, batch_size, drop_last, columns):
        yield {name: _numpy(table.column(name)) for name in table.column_names}


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return array.to_numpy(zero_copy_only=False)


def iter_torch_batches(df: DataFrame, batch_size: int = 256, *, dtypes: Any = None,
                       device: str = "cpu", drop_last: bool = False,
                       columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Batches as dicts of torch tensors, taken from the numpy batches of
    :func:`iter_numpy_batches` through DLPack (no copy where the layout allows), then
    moved to ``device``; ``dtypes`` is one torch dtype or a dict of them per column.
    Columns that are not numeric (strings) stay numpy arrays."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("iter_torch_batches needs torch: pip install torch") from exc
    for batch in iter_numpy_batches(df, batch_size, drop_last=drop_last, columns=columns):
        out = {}
        for name, array in batch.items():
            if array.dtype == object and any(isinstance(v, np.ndarray) or v is None for v in array):
                raise ValueError(
                    f"iter_torch_batches: column {name!r} does not stack into one tensor (a null "
                    "row, or rows of different shapes); filter nulls and resize first")
            if array.dtype.kind not in "biuf":
                out[name] = array
                continue
            tensor = torch.from_dlpack(dlpack_ready(array))
            dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
            out[name] = tensor.to(device=device, dtype=dtype) if dtype or device != "cpu" else tensor
        yield out


def dlpack_ready(array: np.ndarray) -> np.ndarray:
    """``array`` as DLPack can hand it on: itself when C-contiguous and writable (no copy),
    else a contiguous writable copy (Arrow's buffers are read-only, and DLPack consumers
    such as torch cannot take read-only memory).

    >>> import numpy as np
    >>> a = np.arange(6).reshape(2, 3)
    >>> dlpack_ready(a) is a and np.from_dlpack(dlpack_ready(a)).shape == (2, 3)
    True
    """
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, order="C", copy=True)


def to_torch(df: DataFrame, batch_size: int = 256, **options: Any) -> Any:
    """A ``torch.utils.data.IterableDataset`` over :func:`iter_torch_batches`, for a
    ``DataLoader(dataset, batch_size=None)``; each pass runs the pipeline again."""
    try:
        from torch.utils.data import IterableDataset
    except ImportError as exc:
        raise ImportError("to_torch needs torch: pip install torch") from exc

    class _Batches(IterableDataset):
        def __iter__(self):
            return iter_torch_batches(df, batch_size, **options)

    return _Batches()
