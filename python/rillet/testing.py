"""Helpers for testing pipelines: the exactly-once oracle of the sequence source."""

from __future__ import annotations

import os
from typing import Mapping

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
