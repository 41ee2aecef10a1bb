"""Helpers for testing pipelines: the exactly-once oracle of the sequence source, and
fault injection at the windows of the checkpoint protocol."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from rillet import _rillet


def check_sequence(table: pa.Table, expected: Mapping[tuple[str, int], int]) -> int:
    """Check rows from :func:`rillet.read_sequence` against the source: each split
    ``(source, partition)`` of ``expected`` must hold every ``seq`` below its count exactly
    once, with the right ``value``, and nothing else. Returns the row count; raises
    AssertionError naming the first gaps (lost rows), repeats (duplicates), wrong values
    and unexpected splits.

    >>> import rillet as rl
    >>> table = rl.read_sequence(partitions=2, rows=5).sort(["partition", "seq"]).collect()
    >>> check_sequence(table, {("seq", 0): 5, ("seq", 1): 5})
    10
    >>> check_sequence(pa.concat_tables([table, table.slice(0, 1)]), {("seq", 0): 5, ("seq", 1): 5})
    Traceback (most recent call last):
    ...
    AssertionError: seq/0: 1 seq repeated (first: [0])
    """
    return _rillet.check_sequence(table, dict(expected))


def read_committed(directory: str | os.PathLike) -> pa.Table:
    """Every row a job has committed to ``directory``: its Parquet files, not those still
    staged in ``_pending`` (what any reader of the directory sees)."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".parquet") and not n.startswith(("_", ".")))
    tables = [pq.read_table(os.path.join(directory, n)) for n in names]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)


#: The environment variable a job's process reads its failpoints from at import
#: (``name=actions`` pairs separated by ``;``): how a test hands them to a child process.
FAILPOINTS_ENV = "RILLET_FAILPOINTS"


@contextlib.contextmanager
def failpoint(name: str, actions: str) -> Iterator[None]:
    """Inject faults at failpoint ``name`` while the block runs, with ``actions`` in the
    syntax of Rust's ``fail`` crate: ``"return"`` (fail there every time), ``"10%return"``
    (one time in ten), ``"3*off->1*return->off"`` (the fourth time only), ``"sleep(100)"``.
    The failpoints sit at the windows of the checkpoint protocol, e.g.
    ``checkpoint-artifact-upload`` (a checkpoint's state fails to write, so the checkpoint
    is aborted and the job goes on), ``checkpoint-before-manifest``, ``sink-pre-commit``.

    >>> from rillet import _rillet
    >>> with failpoint("doc-window", "1*return->off"):
    ...     _rillet.failpoints()["doc-window"]
    '1*return->off'
    >>> "doc-window" in _rillet.failpoints()
    False
    >>> with failpoint("doc-window", "now and then"):  # doctest: +IGNORE_EXCEPTION_DETAIL
    ...     pass
    Traceback (most recent call last):
    ...
    PlanError: failpoint "doc-window": actions "now and then": (the fail crate's reason)
    """
    _rillet.set_failpoint(name, actions)
    try:
        yield
    finally:
        _rillet.set_failpoint(name, None)
