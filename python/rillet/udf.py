"""Python user-defined functions. Each call runs in a stage of its own, on a bounded pool
of worker threads off the engine's async executor, fed Arrow batches (zero copy)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pyarrow as pa

from rillet._session import current_session
from rillet.expr import Expr, _to_expr, to_arrow_type


class UDF:
    """A Python function usable in expressions: ``my_udf(col("x"))``.

    Row-wise (default): called once per row with Python values.
    Batch-wise (``batch=True``): called once per batch with ``pyarrow.Array`` arguments and
    returns an array-like of the same length (pyarrow, numpy, pandas, or a list).
    A class is instantiated once (per process) and its instance called: load models in
    ``__init__``.
    """

    def __init__(self, fn: Callable[..., Any], return_dtype: pa.DataType, batch: bool,
                 batch_size: int | None, concurrency: int | None):
        self._fn = fn
        self._instance: Any = None
        self.return_dtype = return_dtype
        self.batch = batch
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.name = getattr(fn, "__name__", type(fn).__name__)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _target(self) -> Callable[..., Any]:
        if isinstance(self._fn, type):
            if self._instance is None:
                self._instance = self._fn()
            return self._instance
        return self._fn

    def _call_arrays(self, arrays: list[pa.Array], num_rows: int) -> pa.Array:
        fn = self._target()
        if self.batch:
            out = fn(*arrays)
        else:
            columns = [a.to_pylist() for a in arrays]
            rows = zip(*columns) if columns else ([] for _ in range(num_rows))
            out = [fn(*row) for row in rows]
        if isinstance(out, pa.ChunkedArray):
            out = out.combine_chunks()
        if isinstance(out, pa.Array):
            return out if out.type == self.return_dtype else out.cast(self.return_dtype)
        return pa.array(out, type=self.return_dtype)

    def __call__(self, *args: Any) -> Expr:
        exprs = [_to_expr(a)._expr for a in args]
        native = current_session()._native.udf_call(
            self._call_arrays, self.name, self.return_dtype, exprs,
            batch_size=self.batch_size, concurrency=self.concurrency)
        return Expr(native)

    def __repr__(self) -> str:
        kind = "batch" if self.batch else "row"
        return f"UDF({self.name}, {kind}-wise, returns {self.return_dtype})"


def udf(fn: Callable[..., Any] | None = None, *, return_dtype: Any, batch: bool = False,
        batch_size: int | None = None, concurrency: int | None = None):
    """Turn a Python function (or class) into a UDF.

    >>> import rillet as rl
    >>> @rl.udf(return_dtype="int64")
    ... def double(x):
    ...     return None if x is None else 2 * x
    >>> rl.from_pydict({"x": [1, 2]}).with_column("y", double(rl.col("x"))).to_pydict()["y"]
    [2, 4]
    """
    dtype = to_arrow_type(return_dtype)

    def wrap(f: Callable[..., Any]) -> UDF:
        return UDF(f, dtype, batch, batch_size, concurrency)

    return wrap(fn) if fn is not None else wrap
