"""The worker process that runs a Python UDF for the engine.

Started by the engine as ``python -u _worker.py`` (by path: it does not import the
``rillet`` package unless the UDF needs it). It speaks the frame protocol of
``rillet_processes::protocol`` over its stdin and stdout: a setup frame with the
pickled UDF, then call frames holding Arrow IPC streams, each answered by a result stream or
an error text. The protocol moves to private file descriptors at start, and stdout then
points at stderr, so ``print`` in a UDF shows up in the terminal instead of corrupting
replies. Closing stdin ends the worker.

``apply_udf`` and ``apply_batches`` (``map_batches``) are also what the engine runs
in-process, so both paths compute the same thing.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import traceback
from typing import Any

SETUP, READY, CALL, RESULT, ERROR = b"S", b"R", b"C", b"O", b"E"


def apply_udf(fn: Any, arrays: list, num_rows: int, batch: bool, return_type: Any,
              on_error: str, is_async: bool = False, batch_format: str = "pyarrow",
              nulls: list | None = None, calls: AsyncCalls | None = None) -> Any:
    """Call ``fn`` on one batch of argument arrays and return a pyarrow array.

    Row-wise UDFs get Python values row by row (PIL images, numpy arrays and ``(samples,
    rate)`` for Rillet's types; an async one gets all rows of the batch concurrently); with
    ``on_error`` "null" or "column" a row whose call raises becomes null (and, for
    "column", the struct's ``error`` field says why). Batch UDFs get the pyarrow arrays, or
    numpy arrays for ``batch_format="numpy"``; with those policies a raising call nulls the
    whole batch. The result is converted to ``return_type`` only where no value is lost.
    With ``on_error="null"``, ``nulls`` (a list) receives ``(rows nulled, first reason)``
    so the engine can report them. An async function's calls run on ``calls`` (its bound
    on calls in flight), or on this thread's event loop without one.
    """
    import pyarrow as pa

    value_type = return_type.field("value").type if on_error == "column" else return_type
    errors: list[str | None] | None = None
    if batch:
        if batch_format == "numpy":
            arrays = [a.to_numpy(zero_copy_only=False) for a in arrays]
        try:
            if not is_async:
                out = fn(*arrays)
            elif calls is not None:
                out = calls.run(fn, [tuple(arrays)])[0]
                if isinstance(out, BaseException):
                    raise out
            else:
                out = _run(fn(*arrays))
        except Exception as exc:  # noqa: BLE001 - the policy decides
            if on_error == "raise":
                raise
            out = pa.nulls(num_rows, value_type)
            errors = [f"{type(exc).__name__}: {exc}"] * num_rows
    else:
        columns = [a.to_pylist() for a in arrays]
        rows = list(zip(*columns)) if columns else [()] * num_rows
        if is_async:
            outcomes = (calls or AsyncCalls(None)).run(fn, rows)
        elif on_error == "raise":
            outcomes = [fn(*row) for row in rows]
        else:
            outcomes = []
            for row in rows:
                try:
                    outcomes.append(fn(*row))
                except Exception as exc:  # noqa: BLE001 - the policy decides
                    outcomes.append(exc)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed and (on_error == "raise" or not all(isinstance(o, Exception) for o in failed)):
            raise failed[0]
        out = [None if isinstance(o, BaseException) else o for o in outcomes]
        if failed:
            errors = [f"{type(o).__name__}: {o}" if isinstance(o, BaseException) else None
                      for o in outcomes]
    values = _to_array(out, value_type)
    if on_error == "null" and nulls is not None and errors:
        nulled = [e for e in errors if e is not None]
        nulls.append((len(nulled), nulled[0] if nulled else None))
    if on_error != "column":
        return values
    reasons = pa.array(errors if errors is not None else [None] * len(values), pa.string())
    return pa.StructArray.from_arrays([values, reasons], names=["value", "error"])


def apply_batches(fn: Any, batch: Any, batch_format: str, schema: Any) -> Any:
    """``map_batches``: ``fn`` over one batch given as ``batch_format``, its result (a Table,
    RecordBatch, pandas DataFrame or dict of arrays) cast to ``schema`` as one RecordBatch."""
    return _single_batch(_to_table(fn(_convert_in(batch, batch_format)), schema), schema)


def _to_table(out: Any, schema: Any = None) -> Any:
    """``out`` as a Table; columns that ``schema`` declares are built as its types (so a
    stacked numpy array or a list of PIL images becomes an Image, Tensor or Embedding)."""
    import pyarrow as pa

    if isinstance(out, pa.Table):
        return out
    if isinstance(out, pa.RecordBatch):
        return pa.Table.from_batches([out])
    declared = {f.name: f.type for f in schema} if schema is not None else {}
    if type(out).__module__.startswith("pandas"):
        names = [str(name) for name in out.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"map_batches: the function returned a DataFrame with repeated column names {names}")
        out = {str(name): (series.tolist() if series.dtype == object else pa.Array.from_pandas(series))
               for name, series in out.items()}
    if isinstance(out, dict):
        return pa.table({name: _column(values, declared.get(name)) for name, values in out.items()})
    raise TypeError(
        f"map_batches function returned {type(out).__name__}; return a pyarrow Table or "
        "RecordBatch, a pandas DataFrame, or a dict of arrays")


def _column(values: Any, dtype: Any) -> Any:
    """One output column of ``map_batches``: as ``dtype`` when declared, else as pyarrow
    (or Rillet's types, for PIL images and numpy arrays) infers it."""
    import pyarrow as pa

    if dtype is not None:
        return _to_array(values, dtype)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    import numpy as np

    first = next((v for v in values if v is not None), None) if isinstance(values, list) else None
    # Undeclared, only what cannot be a plain list becomes a Rillet type: PIL images, and
    # arrays of two or more axes per row. Vectors stay lists (their length may vary from
    # one batch to the next; declare an Embedding in schema= for one).
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return pa.array(list(values))
    if (isinstance(values, np.ndarray) and values.ndim > 2
            or isinstance(first, np.ndarray) and first.ndim > 1
            or type(first).__module__.startswith("PIL.")):
        from rillet.types import to_arrow_column

        column = to_arrow_column(list(values))
        if column is not None:
            return column
    if isinstance(first, np.ndarray):
        return pa.array([None if v is None else v.tolist() for v in values])
    return values


def _convert_in(batch: Any, batch_format: str) -> Any:
    import pyarrow as pa

    if batch_format == "pyarrow":
        return pa.Table.from_batches([batch])
    if batch_format == "pandas":
        if any(isinstance(f.type, pa.ExtensionType) for f in batch.schema):
            from rillet.types import table_to_pandas

            return table_to_pandas(pa.Table.from_batches([batch]))
        return batch.to_pandas()
    return {name: column.to_numpy(zero_copy_only=False) for name, column in zip(batch.schema.names, batch.columns)}


def _empty_batch(schema: Any) -> Any:
    import pyarrow as pa

    # Not RecordBatch.from_pylist / Schema.empty_table: pyarrow imports pandas for those
    # (0.2 s on the first call).
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _single_batch(table: Any, schema: Any) -> Any:
    import pyarrow as pa

    extra = [n for n in table.column_names if n not in schema.names]
    missing = [n for n in schema.names if n not in table.column_names]
    if extra or missing:
        said = []
        if extra:
            said.append(f"returned columns the schema does not name: {extra}")
        if missing:
            said.append(f"did not return the schema's columns {missing}")
        raise ValueError(f"map_batches: the function {' and '.join(said)}; make the function "
                         "and schema= agree (drop columns in the function, or add them to the schema)")
    table = table.select(schema.names).cast(schema)
    batches = table.combine_chunks().to_batches()
    if not batches:
        return _empty_batch(schema)
    if len(batches) == 1:
        return batches[0]
    return pa.concat_batches(batches)


_loops = threading.local()


class AsyncCalls:
    """Where an async UDF's calls run: one event loop on a thread of its own, shared by
    every batch, with at most ``limit`` calls in flight at once (``None``: no bound, and the
    calling thread's own loop).

    >>> import asyncio
    >>> async def double(x):
    ...     await asyncio.sleep(0)
    ...     return 2 * x
    >>> AsyncCalls(2).run(double, [(1,), (2,), (3,)])
    [2, 4, 6]
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self._lock = threading.Lock()
        self._loop: Any = None
        self._thread: Any = None
        self._semaphore: Any = None

    def run(self, fn: Any, rows: list) -> list:
        """``fn(*row)`` for every row, concurrently within the bound; each outcome is the
        call's value or the exception it raised, in row order."""
        import asyncio

        if self.limit is None:
            async def unbounded():
                return await asyncio.gather(*(fn(*row) for row in rows), return_exceptions=True)

            return _run(unbounded())
        loop, semaphore = self._started()

        async def bounded(row: tuple) -> Any:
            # Every outcome comes back as a value, SystemExit and KeyboardInterrupt too:
            # raised out of the loop they would end its thread and leave callers waiting.
            try:
                async with semaphore:
                    return await fn(*row)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                return exc

        async def gather():
            return await asyncio.gather(*(bounded(row) for row in rows), return_exceptions=True)

        return asyncio.run_coroutine_threadsafe(gather(), loop).result()

    def _started(self) -> tuple[Any, Any]:
        import asyncio

        with self._lock:
            if self._loop is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="rillet-async-udf",
                                                daemon=True)
                self._thread.start()

                async def make_semaphore():
                    return asyncio.Semaphore(self.limit)

                self._semaphore = asyncio.run_coroutine_threadsafe(make_semaphore(), loop).result()
                self._loop = loop
            return self._loop, self._semaphore


def _run(coroutine: Any) -> Any:
    """Run ``coroutine`` to completion on this thread's event loop (kept between batches)."""
    import asyncio

    loop = getattr(_loops, "loop", None)
    if loop is None:
        loop = _loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coroutine)


def _names_rillet_types(schema: Any) -> bool:
    """Whether any field of ``schema``, nested ones included, holds a Rillet type not yet
    registered in this process."""
    return "rillet.types" not in sys.modules and b"rillet." in schema.serialize().to_pybytes()


def _to_array(out: Any, dtype: Any) -> Any:
    """``out`` (a pyarrow, numpy or pandas array, or a list) as an array of ``dtype``,
    converted only where no value is lost: ``1.7`` for an int64 result is an error, not 1."""
    import pyarrow as pa

    if isinstance(dtype, pa.ExtensionType) and dtype.extension_name.startswith("rillet."):
        from rillet.types import to_extension_array

        return to_extension_array(out, dtype)
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    original = out
    if not isinstance(out, pa.Array):
        if hasattr(out, "__arrow_c_array__") and not hasattr(out, "dtype"):
            out = pa.array(out)
        else:
            try:
                out = pa.array(out)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return pa.array(out, type=dtype)
    if out.type == dtype:
        return out
    if pa.types.is_null(out.type):
        return pa.nulls(len(out), dtype)
    try:
        return out.cast(dtype)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"the function returned {out.type} values that are not {dtype} without "
                         f"loss ({exc}); return {dtype} values or declare return_dtype="
                         f"{out.type}") from None
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # No cast between the guessed and the declared type (dicts for a map): build the
        # declared type from the values themselves.
        if isinstance(original, pa.Array):
            raise
        return pa.array(original, type=dtype)


def _read_exact(fd: int, n: int) -> bytearray | None:
    """Exactly ``n`` bytes from ``fd`` (read in place, not copied); ``None`` at end of
    input."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        chunk = os.readv(fd, [view[got:]])
        if chunk == 0:
            return None
        got += chunk
    return buf


def _read_frame(fd: int) -> tuple[bytes, bytearray] | None:
    header = _read_exact(fd, 9)
    if header is None:
        return None
    kind, length = bytes(header[:1]), struct.unpack("<Q", header[1:])[0]
    payload = _read_exact(fd, length) if length else bytearray()
    if payload is None:
        return None
    return kind, payload


def _write_frame(fd: int, kind: bytes, payload: Any) -> None:
    view = memoryview(payload).cast("B")
    header = kind + struct.pack("<Q", view.nbytes)
    os.write(fd, header)
    written = 0
    while written < view.nbytes:
        written += os.write(fd, view[written:])


# Must match rillet_processes::{NULLED_KEY, NULL_REASON_KEY}.
_NULLED_KEY, _NULL_REASON_KEY = "rillet.nulled", "rillet.null_reason"


def _with_nulls(batch: Any, nulls: list) -> Any:
    """``batch`` telling, in its schema's metadata, how many rows the policy nulled and
    why, so the engine counts them as it does for its own operators."""
    if not nulls:
        return batch
    nulled, reason = nulls[0]
    return batch.replace_schema_metadata({_NULLED_KEY: str(nulled), _NULL_REASON_KEY: reason or ""})


# The file name cloudpickle gives code it sends by value.
_DYNAMIC = "<dynamic-code>"


def _restore_source_file(fn: Any, source_file: str | None) -> None:
    """Point code that came by value back at the user's file, so tracebacks show its lines."""
    if not source_file:
        return

    def fixed(code: Any) -> Any:
        consts = tuple(fixed(c) if hasattr(c, "co_filename") else c for c in code.co_consts)
        name = source_file if code.co_filename == _DYNAMIC else code.co_filename
        return code.replace(co_filename=name, co_consts=consts)

    functions = [fn] if hasattr(fn, "__code__") else [
        v for v in vars(fn).values() if hasattr(v, "__code__")] if isinstance(fn, type) else []
    for function in functions:
        try:
            function.__code__ = fixed(function.__code__)
        except (AttributeError, TypeError, ValueError):  # builtins, odd callables: leave them
            pass


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def main() -> None:
    # The protocol gets private descriptors; fd 1 becomes stderr for the UDF's prints.
    requests = os.dup(0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    for entry in reversed(os.environ.get("RILLET_WORKER_SYS_PATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)

    frame = _read_frame(requests)
    if frame is None or frame[0] != SETUP:
        return
    try:
        import pyarrow as pa
        import cloudpickle

        spec = cloudpickle.loads(frame[1])
        _restore_source_file(spec["fn"], spec.get("source_file"))
        fn = spec["fn"]
        if spec["is_class"]:
            fn = fn(*spec.get("init_args", ()), **spec.get("init_kwargs", {}))
    except BaseException as exc:  # noqa: BLE001 - reported to the engine
        _write_frame(replies, ERROR, _describe(exc).encode())
        return
    if spec.get("serve"):
        _serve(fn, spec, requests, replies)
        return
    _write_frame(replies, READY, b"")

    while True:
        frame = _read_frame(requests)
        if frame is None:
            return
        try:
            payload = pa.py_buffer(frame[1])
            reader = pa.ipc.open_stream(payload)
            if _names_rillet_types(reader.schema):
                # Registered before decoding, so nested values (a list of Images) are typed too.
                import rillet.types  # noqa: F401

                reader = pa.ipc.open_stream(payload)
            request = reader.read_next_batch()
            if spec.get("mode") == "batches":
                table = apply_batches(fn, request, spec["batch_format"], spec["schema"])
            else:
                nulls: list = []
                result = apply_udf(fn, list(request.columns), request.num_rows, spec["batch"],
                                   spec["return_type"], spec["on_error"],
                                   batch_format=spec.get("batch_format", "pyarrow"), nulls=nulls)
                table = _with_nulls(pa.record_batch([result], names=["result"]), nulls)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_batch(table)
            _write_frame(replies, RESULT, sink.getvalue())
        except Exception as exc:  # noqa: BLE001 - reported to the engine
            _write_frame(replies, ERROR, _describe(exc).encode())


# Must match rillet_service::replica::FUNCTION_ERROR.
_FUNCTION_ERROR = "rillet-function-error:"
# Reply messages stay under this size, as the engine's requests do (large batches stream).
_MESSAGE_BYTES = 2 << 20


def _serve(fn: Any, spec: dict, requests: int, replies: int) -> None:
    """Serve ``fn`` as a service replica: an Arrow Flight server on a loopback port whose
    ``DoExchange`` takes one request (a batch streamed in slices) and streams back the
    result column. The setup is answered with the port only now, after the constructor ran,
    so the engine routes nothing to a replica still loading. Ends when the engine closes
    stdin (a drain, a shutdown, or the engine's death)."""
    import pyarrow as pa
    import pyarrow.flight as flight

    # One batch computes at a time; the next request's data arrives meanwhile.
    computing = threading.Lock()

    class Replica(flight.FlightServerBase):
        def do_exchange(self, context, descriptor, reader, writer):
            table = reader.read_all()
            arrays = [column.combine_chunks() for column in table.columns]
            nulls: list = []
            try:
                with computing:
                    result = apply_udf(fn, arrays, table.num_rows, spec["batch"],
                                       spec["return_type"], spec["on_error"],
                                       batch_format=spec.get("batch_format", "pyarrow"), nulls=nulls)
            except Exception as exc:  # noqa: BLE001 - reported to the engine
                raise flight.FlightServerError(_FUNCTION_ERROR + _describe(exc)) from None
            out = _with_nulls(pa.record_batch([result], names=["result"]), nulls)
            writer.begin(out.schema)
            per_row = max(1, out.nbytes // max(1, out.num_rows))
            step = max(1, _MESSAGE_BYTES // per_row)
            for offset in range(0, max(out.num_rows, 1), step):
                writer.write_batch(out.slice(offset, step))

        def do_action(self, context, action):
            if action.type == "health":
                return [b"ok"]
            raise flight.FlightServerError(f"unknown action {action.type!r}")

    try:  # Rillet's types registered before requests decode (nested values included).
        import rillet.types  # noqa: F401
    except ImportError:
        pass
    server = Replica("grpc://127.0.0.1:0")
    _write_frame(replies, READY, str(server.port).encode())
    # The engine's end of stdin is this replica's lifeline.
    while _read_frame(requests) is not None:
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
