"""Service operators: a model served by its own pool of replica processes.

``rl.service(Model, ...)`` starts an independent pool of replicas, each a process that
builds ``Model`` once (loads the model) and then serves batches over Arrow Flight
``DoExchange`` on a loopback port. Jobs call it like a UDF, ``svc(rl.col("x"))``; many
jobs may use one service at once, and it outlives them until :meth:`Service.shutdown`.

- A replica registers only after its constructor finished: nothing is routed to one still
  loading, and a call made before any replica is ready waits (shown as "model loading").
- The client merges calls that arrive together (up to ``max_batch_size`` rows, waiting at
  most ``max_wait_ms``), admits at most ``max_in_flight`` calls (further callers wait), and
  routes each request to the least busy ready replica.
- A replica that dies (even ``kill -9``) or stops answering is a routing event: its
  requests are re-sent to another replica (``max_retries``, with backoff) and it is
  replaced. The job's output stays exact.
- ``replicas=(min, max)`` grows the pool while requests wait and drains replicas idle for
  ``idle_timeout`` seconds above the minimum; :meth:`Service.scale` changes the bounds
  while jobs run. A replica scaled in finishes the requests it holds before it stops.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from rillet import _rillet
from rillet._session import current_session
from rillet.expr import Expr, _to_expr, to_arrow_type
from rillet.udf import UDF, _ON_ERROR, _concurrency, pickle_for_workers, pool_settings


class Service:
    """A running service; call it in expressions like a UDF. See :func:`service`."""

    def __init__(self, fn: Callable[..., Any], *, return_dtype: pa.DataType, batch: bool,
                 replicas: int | tuple[int, int], num_cpus: float | None,
                 num_gpus: float | None, memory: int | str | None, max_batch_size: int,
                 max_wait_ms: float, max_in_flight: int, per_replica: int, max_retries: int,
                 timeout_s: float, idle_timeout: float, health_interval_s: float,
                 on_error: str, name: str | None, batch_size: int | None = None):
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.return_dtype = return_dtype
        self.batch_size = batch_size
        self._wire_type = (pa.struct([("value", return_dtype), ("error", pa.string())])
                           if on_error == "column" else return_dtype)
        low, high = _concurrency(replicas, True)
        if low < 1:
            raise ValueError(f"service {self.name!r}: replicas needs a minimum of at least 1, "
                             f"got {replicas!r}")
        kind = "class" if isinstance(fn, type) else "function"
        setup = pickle_for_workers(
            {"fn": fn, "is_class": isinstance(fn, type), "batch": batch,
             "return_type": self._wire_type, "on_error": on_error, "serve": True},
            f"service {self.name!r}", kind)
        pool = pool_settings(setup, (low, high), num_cpus, num_gpus, memory, max_retries,
                             idle_timeout)
        self._native = _rillet.Service(
            self.name, pool, max_batch_size=int(max_batch_size), max_wait_ms=float(max_wait_ms),
            max_in_flight=int(max_in_flight), per_replica=int(per_replica),
            timeout_s=float(timeout_s), health_interval_s=float(health_interval_s))

    def __call__(self, *args: Any) -> Expr:
        exprs = [_to_expr(a)._expr for a in args]
        return Expr(current_session()._native.service_call(
            self._native, pa.field("result", self._wire_type), exprs, batch_size=self.batch_size))

    def scale(self, replicas: int | tuple[int, int]) -> None:
        """Keep ``replicas`` replicas from now on (or ``(min, max)``: autoscale between
        them). New replicas start in the background; surplus ones drain first. Jobs using
        the service keep running."""
        low, high = _concurrency(replicas, True)
        self._native.scale(low, high)

    def wait_ready(self, replicas: int | None = None, timeout: float = 60.0) -> bool:
        """Wait until ``replicas`` (default: the minimum) replicas are ready and none is
        loading or draining; False if that did not happen within ``timeout`` seconds."""
        if replicas is None:
            replicas = self.status()["min_replicas"]
        return self._native.wait_ready(int(replicas), float(timeout))

    def status(self) -> dict[str, Any]:
        """The replicas (``id``, ``pid``, ``port``, ``state``: loading, ready, unhealthy or
        draining, ``in_flight``, ``served``) and counters: ``calls``, ``requests`` (calls
        merged by dynamic batching, retries included), ``retries``, ``replicas_lost``
        (died or killed unhealthy, then replaced), ``replicas_started``."""
        return self._native.status()

    def shutdown(self) -> None:
        """Stop every replica. Calls still running fail as cancelled."""
        self._native.shutdown()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        status = self.status()
        states = [r["state"] for r in status["replicas"]]
        return (f"Service({self.name}, replicas={states}, "
                f"bounds=({status['min_replicas']}, {status['max_replicas']}))")


def service(fn: Callable[..., Any] | UDF | None = None, *, return_dtype: Any = None,
            batch: bool = True, replicas: int | tuple[int, int] = 1,
            num_cpus: float | None = None, num_gpus: float | None = None,
            memory: int | str | None = None, max_batch_size: int = 256,
            max_wait_ms: float = 5.0, max_in_flight: int = 16, per_replica: int = 2,
            max_retries: int = 3, timeout_s: float = 300.0, idle_timeout: float = 30.0,
            health_interval_s: float = 1.0, on_error: str = "raise",
            name: str | None = None, batch_size: int | None = None) -> Service:
    """Start a service: ``fn`` (a class, built once per replica, or a function; or a
    :func:`rillet.udf` UDF, whose function, type and error policy it takes) served by
    ``replicas`` replica processes.

    Args:
        return_dtype: the result type (not needed for a UDF).
        batch: called with pyarrow arrays per batch (default) or with values row by row.
        replicas: ``n``, or ``(min, max)`` to grow while requests wait and shrink when idle.
        num_cpus, num_gpus, memory: what each replica reserves (``num_gpus=0.5`` puts two
            replicas on one GPU, each seeing it in ``CUDA_VISIBLE_DEVICES``).
        batch_size: rows per call from a job (default ``max_batch_size``).
        max_batch_size, max_wait_ms: dynamic batching: calls arriving together (from the
            concurrent calls of a job, or from several jobs) are merged into requests of up
            to ``max_batch_size`` rows, waiting at most ``max_wait_ms`` for company.
        max_in_flight: calls admitted at once; further callers wait (backpressure).
        per_replica: requests one replica holds at once.
        max_retries: times a request is re-sent after its replica failed.
        timeout_s: a request not answered in this time counts as a replica failure.
        idle_timeout: seconds a replica above the minimum may stay idle before it drains.

    >>> import rillet as rl, pyarrow.compute as pc
    >>> class Doubler:
    ...     def __call__(self, x):
    ...         return pc.multiply(x, 2)
    >>> with rl.service(Doubler, return_dtype="int64") as svc:
    ...     rl.from_pydict({"x": [1, 2]}).with_column("y", svc(rl.col("x"))).to_pydict()["y"]
    [2, 4]
    """
    def build(f: Callable[..., Any] | UDF) -> Service:
        dtype, is_batch, policy = return_dtype, batch, on_error
        if isinstance(f, UDF):
            dtype = dtype if dtype is not None else f.return_dtype
            is_batch, policy, f = f.batch, f.on_error, f._fn
        if dtype is None:
            raise TypeError("rl.service needs return_dtype= (the type of the result column)")
        return Service(f, return_dtype=to_arrow_type(dtype), batch=is_batch,
                       replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus, memory=memory,
                       max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                       max_in_flight=max_in_flight, per_replica=per_replica,
                       max_retries=max_retries, timeout_s=timeout_s, idle_timeout=idle_timeout,
                       health_interval_s=health_interval_s, on_error=policy, name=name,
                       batch_size=batch_size)

    return build(fn) if fn is not None else build  # type: ignore[return-value]
