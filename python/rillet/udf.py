"""Python user-defined functions.

Each UDF call runs in a stage of its own, fed Arrow batches. Where it runs depends on the
kind of function:

- **Class UDFs and batch UDFs run in worker processes** (``isolate=True``, the default for
  them): each worker builds the class once (load the model in ``__init__``) and then serves
  batches sent as Arrow IPC, never pickled row by row. A worker reserves ``num_cpus``,
  ``num_gpus`` (a fraction shares a GPU; the worker's ``CUDA_VISIBLE_DEVICES`` names its GPU)
  and ``memory`` from the machine. The pool holds between ``concurrency=(min, max)`` workers,
  growing while calls wait and shrinking after ``idle_timeout`` seconds idle. A worker that
  dies mid-batch is replaced and the batch re-sent (``max_retries``); the job's output stays
  exact.
- **Row functions and async functions run in the engine's process** (``isolate=False``), on
  threads of their own. An async function's calls run concurrently on an event loop of
  its own, at most ``max_concurrency`` in flight at once across all batches.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import threading
from typing import Any, Callable

import pyarrow as pa

from rillet._session import current_session
from rillet._worker import AsyncCalls, apply_udf
from rillet.expr import Expr, _to_expr, to_arrow_type

_ON_ERROR = ("raise", "null", "column")
# Calls of one async UDF in flight at once unless it says otherwise.
_DEFAULT_ASYNC_CONCURRENCY = 32
_BATCH_FORMATS = ("pyarrow", "numpy")

# Started as a file (not ``-m``) so a worker needs neither the engine nor the package's
# import; loaded through importlib so the package directory does not shadow the standard
# library on ``sys.path``.
_WORKER_BOOT = ("import importlib.util as u, sys; "
                "s = u.spec_from_file_location('rillet_udf_worker', sys.argv[1]); "
                "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()")


class UDF:
    """A Python function usable in expressions: ``my_udf(col("x"))``. See :func:`udf`."""

    def __init__(self, fn: Callable[..., Any], return_dtype: pa.DataType, batch: bool,
                 batch_size: int | None, concurrency: int | tuple[int, int] | None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 memory: int | str | None = None, max_retries: int = 3,
                 on_error: str = "raise", isolate: bool | None = None,
                 idle_timeout: float = 10.0, batch_format: str = "pyarrow",
                 max_concurrency: int | None = None):
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        if batch_format not in _BATCH_FORMATS:
            raise ValueError(f"batch_format must be one of {_BATCH_FORMATS}, got {batch_format!r}")
        if batch_format != "pyarrow" and not batch:
            raise ValueError("batch_format= is for batch UDFs (batch=True); a row UDF gets "
                             "Python values (PIL images, numpy arrays) already")
        self.batch_format = batch_format
        self._fn = fn
        self._instance: Any = None
        self._lock = threading.Lock()
        self.return_dtype = return_dtype
        self.batch = batch
        self.batch_size = batch_size
        self.on_error = on_error
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self.is_async = _is_async(fn)
        resourced = num_cpus is not None or num_gpus is not None or memory is not None
        if isolate is None:
            isolate = (isinstance(fn, type) or batch or resourced) and not self.is_async
        if not isolate and resourced:
            raise ValueError(f"UDF {self.name!r}: num_cpus, num_gpus and memory reserve "
                             "resources for worker processes; they need isolate=True")
        if isolate and self.is_async:
            raise ValueError(f"UDF {self.name!r}: async UDFs run in the engine's process "
                             "(their calls wait on I/O concurrently); drop isolate=True")
        self.isolate = isolate
        if max_concurrency is not None and not self.is_async:
            raise ValueError(f"UDF {self.name!r}: max_concurrency bounds an async function's "
                             "calls in flight; for other UDFs use concurrency=")
        if max_concurrency is not None and int(max_concurrency) < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        self.max_concurrency = (int(max_concurrency) if max_concurrency is not None
                                else _DEFAULT_ASYNC_CONCURRENCY)
        self._calls = AsyncCalls(self.max_concurrency) if self.is_async else None
        self.num_cpus = 1.0 if num_cpus is None else float(num_cpus)
        self.num_gpus = 0.0 if num_gpus is None else float(num_gpus)
        self.memory = _parse_bytes(memory)
        self.max_retries = int(max_retries)
        self.idle_timeout = float(idle_timeout)
        self.concurrency = _concurrency(concurrency, isolate)
        # With on_error="column" each value comes with the reason its row failed.
        self._wire_type = (pa.struct([("value", return_dtype), ("error", pa.string())])
                           if on_error == "column" else return_dtype)
        self._setup: bytes | None = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _target(self) -> Callable[..., Any]:
        if isinstance(self._fn, type):
            with self._lock:
                if self._instance is None:
                    self._instance = self._fn()
            return self._instance
        return self._fn

    def _call_arrays(self, arrays: list[pa.Array], num_rows: int) -> Any:
        """The result array, or ``(array, rows nulled, first reason)`` when the
        ``on_error="null"`` policy nulled rows (the engine counts them)."""
        nulls: list = []
        result = apply_udf(self._target(), arrays, num_rows, self.batch, self._wire_type,
                           self.on_error, is_async=self.is_async, batch_format=self.batch_format,
                           nulls=nulls, calls=self._calls)
        return (result, *nulls[0]) if nulls else result

    def _pickled(self) -> bytes:
        """The function as its workers receive it, with a message saying what to change
        when it cannot be pickled."""
        if self._setup is None:
            spec = {"fn": self._fn, "is_class": isinstance(self._fn, type), "batch": self.batch,
                    "return_type": self._wire_type, "on_error": self.on_error,
                    "batch_format": self.batch_format}
            kind = "class" if isinstance(self._fn, type) else "function"
            self._setup = pickle_for_workers(spec, f"UDF {self.name!r}", kind)
        return self._setup

    def __call__(self, *args: Any) -> Expr:
        exprs = [_to_expr(a)._expr for a in args]
        native = current_session()._native
        if not self.isolate:
            fixed = self.concurrency[1] if self.concurrency else None
            return Expr(native.udf_call(
                self._call_arrays, self.name, pa.field("result", self._wire_type), exprs,
                batch_size=self.batch_size, concurrency=fixed))
        pool = pool_settings(self._pickled(), self.concurrency, self.num_cpus, self.num_gpus,
                             self.memory, self.max_retries, self.idle_timeout)
        return Expr(native.worker_udf_call(self.name, pa.field("result", self._wire_type), exprs,
                                           batch_size=self.batch_size, pool=pool))

    def __repr__(self) -> str:
        kind = "batch" if self.batch else "row"
        where = (f"in worker processes, concurrency={self.concurrency}" if self.isolate
                 else "in-process")
        return f"UDF({self.name}, {kind}-wise, returns {self.return_dtype}, {where})"


def udf(fn: Callable[..., Any] | None = None, *, return_dtype: Any, batch: bool = False,
        batch_size: int | None = None, concurrency: int | tuple[int, int] | None = None,
        num_cpus: float | None = None, num_gpus: float | None = None,
        memory: int | str | None = None, max_retries: int = 3, on_error: str = "raise",
        isolate: bool | None = None, idle_timeout: float = 10.0, batch_format: str = "pyarrow",
        max_concurrency: int | None = None):
    """Turn a Python function, async function or class into a UDF.

    Row-wise (default): called once per row with Python values; Rillet's types arrive as
    users know them (an Image as a PIL image, a Tensor or Embedding as a numpy array, Audio
    as ``(samples, rate)``) and may be returned so. Batch-wise (``batch=True``): called
    once per batch with ``pyarrow.Array`` arguments (``to_pylist()`` gives the values
    above, ``to_numpy()`` stacks them, e.g. ``(n, h, w, c)`` for images of one size), or
    with numpy arrays for ``batch_format="numpy"``; returns an array-like of the same
    length (pyarrow, numpy — an ``(n, d)`` array for an Embedding —, pandas, or a list). A
    result is converted to ``return_dtype`` only where no value is lost. A class is built
    once per worker (load models in ``__init__``) and its instance called.

    Args:
        return_dtype: the result type (a pyarrow type or a name such as ``"int64"``).
        batch_size: rows per call (the last call may get fewer).
        concurrency: workers (or in-process calls) at once: ``n``, or ``(min, max)`` for a
            pool that grows while calls wait and shrinks when idle. Default ``(1, n)`` with
            ``n`` as many workers as the machine's CPUs (and GPUs, memory) fit.
        num_cpus, num_gpus, memory: what each worker process reserves (``num_gpus=0.5`` puts
            two workers on one GPU; memory in bytes or as ``"2GiB"``). A request this machine
            can never satisfy fails when the job starts, saying what exists.
        max_retries: times a batch is re-sent after its worker process died.
        on_error: ``"raise"`` fails the job with the function's traceback; ``"null"`` gives
            null for a row whose call raised (the whole batch for batch UDFs); ``"column"``
            returns a struct of ``value`` and ``error`` (the reason).
        isolate: run in worker processes (default for classes and batch UDFs) or in this
            process (default for row functions and async functions).
        idle_timeout: seconds a worker above the pool's minimum may stay idle.
        batch_format: what a batch UDF receives: ``"pyarrow"`` arrays or ``"numpy"``.
        max_concurrency: for an async function, its calls in flight at once across all
            batches (default 32), so a lookup service sees a bounded number of requests.

    >>> import rillet as rl
    >>> @rl.udf(return_dtype="int64")
    ... def double(x):
    ...     return None if x is None else 2 * x
    >>> rl.from_pydict({"x": [1, 2]}).with_column("y", double(rl.col("x"))).to_pydict()["y"]
    [2, 4]
    """
    dtype = to_arrow_type(return_dtype)

    def wrap(f: Callable[..., Any]) -> UDF:
        return UDF(f, dtype, batch, batch_size, concurrency, num_cpus=num_cpus,
                   num_gpus=num_gpus, memory=memory, max_retries=max_retries,
                   on_error=on_error, isolate=isolate, idle_timeout=idle_timeout,
                   batch_format=batch_format, max_concurrency=max_concurrency)

    return wrap(fn) if fn is not None else wrap


def _is_async(fn: Any) -> bool:
    target = fn.__call__ if isinstance(fn, type) else fn
    return inspect.iscoroutinefunction(target)


def _concurrency(value: Any, isolate: bool) -> tuple[int, int | None] | None:
    """``(min, max)`` workers; for worker processes without a value ``(1, None)``: the
    engine sizes the pool to what the machine fits."""
    if value is None:
        return (1, None) if isolate else None
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        low, high = value
    else:
        raise ValueError(f"concurrency must be an int or a (min, max) tuple, got {value!r}")
    if not 1 <= high or not 0 <= low <= high:
        raise ValueError(f"concurrency needs 0 <= min <= max and max >= 1, got {value!r}")
    return (low, high)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def pool_settings(setup: bytes, concurrency: tuple[int, int | None], num_cpus: float | None,
                  num_gpus: float | None, memory: int | str | None, max_retries: int,
                  idle_timeout: float) -> dict[str, Any]:
    """What the engine needs to start and size a pool of worker processes: the command
    (this interpreter running ``_worker.py``, with this process's ``sys.path`` so a function
    defined in a user's module unpickles there), the ``setup`` frame, and the pool's size
    and per-worker resources (defaults: one CPU, no GPU, no memory reserved)."""
    low, high = concurrency
    return {
        "argv": [sys.executable, "-u", "-c", _WORKER_BOOT,
                 os.path.join(os.path.dirname(__file__), "_worker.py")],
        "env": [("RILLET_WORKER_SYS_PATH", os.pathsep.join(p for p in sys.path if p))],
        "setup": setup,
        "min_workers": low,
        "max_workers": high,
        "num_cpus": 1.0 if num_cpus is None else float(num_cpus),
        "num_gpus": 0.0 if num_gpus is None else float(num_gpus),
        "memory": _parse_bytes(memory),
        "max_retries": int(max_retries),
        "idle_timeout_s": float(idle_timeout),
    }


def pickle_for_workers(spec: dict, what: str, kind: str) -> bytes:
    """``spec`` (the function and how to call it) as a worker's setup frame; a function
    that cannot be pickled gets a message saying what to change."""
    try:
        import cloudpickle
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError("worker processes need cloudpickle: pip install cloudpickle") from exc
    spec = {**spec, "source_file": _source_file(spec["fn"])}
    try:
        return cloudpickle.dumps(spec)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be sent to its worker processes: the {kind} or something it refers "
            f"to cannot be pickled ({type(exc).__name__}: {exc}). Create such objects (models, "
            "clients, locks, open files) inside it: in the __init__ of a class, which runs once "
            "in each worker. Or run it in this process with isolate=False.") from exc


def _source_file(fn: Any) -> str | None:
    """The file ``fn`` (a function or class) was written in, so a worker's tracebacks show
    its lines (cloudpickle sends functions of a script by value, under a made-up name)."""
    try:
        return inspect.getsourcefile(fn)
    except TypeError:
        return None


def _parse_bytes(value: int | str | None) -> int:
    """``"2GiB"`` → 2147483648; ints pass through; ``None`` is 0."""
    if value is None:
        return 0
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must be >= 0 bytes, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"memory must be bytes or a size such as '2GiB', got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
