"""The lazy DataFrame."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from rillet import _rillet
from rillet._worker import _convert_in, _empty_batch, _single_batch, _to_table, apply_batches
from rillet.expr import Expr, col, lit
from rillet.types import _is_audio, _is_pil

_FORMATS = ("pyarrow", "pandas", "numpy")
# Rows map_batches runs its function on, in the driver, to find the output schema.
_SAMPLE_ROWS = 16
# Calls whose rows are compared with the sampled ones before their result is let go.
_SAMPLE_LOOKS = 8


def _as_expr(value: str | Expr) -> Expr:
    return col(value) if isinstance(value, str) else value


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class GroupBy:
    """The result of :meth:`DataFrame.group_by`; call :meth:`agg`."""

    def __init__(self, df: DataFrame, keys: list[Expr]):
        self._df = df
        self._keys = keys

    def agg(self, *aggs: Expr) -> DataFrame:
        """Aggregate each group, e.g. ``.agg(col("x").sum().alias("total"), rl.count())``."""
        return DataFrame(self._df._df.aggregate([k._expr for k in self._keys], [a._expr for a in aggs]))

    def running_agg(self, *aggs: Expr) -> DataFrame:
        """Keyed running aggregates: every row is kept and gets, per aggregate, its key's
        value over every row of that key so far (Flink's ``keyBy(...).sum(...)``). Each
        aggregate is ``count``, ``sum``, ``min`` or ``max`` of a column, or ``rl.count()``,
        named by its alias. The keys must be column names. In a streaming job
        (:meth:`DataFrame.start`) the per-key state is checkpointed and restored exactly.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"k": ["x", "y", "x"], "v": [1, 2, 3]})
        >>> df.group_by("k").running_agg(rl.col("v").sum().alias("total")).sort("v").to_pydict()
        {'k': ['x', 'y', 'x'], 'v': [1, 2, 3], 'total': [1, 2, 4]}
        """
        names = [k.name() for k in self._keys]
        return DataFrame(self._df._df.running_aggregate(names, [a._expr for a in aggs]))

    def window_agg(self, window: Window, *aggs: Expr) -> DataFrame:
        """Aggregates per key and event-time window (:func:`rillet.tumbling`,
        :func:`rillet.sliding`): one row per key and window, with the keys,
        ``window_start``, ``window_end`` and each aggregate (``count``, ``sum``, ``min`` or
        ``max`` of a column, or ``rl.count()``, named by its alias).

        In a streaming job (:meth:`DataFrame.start`) a window is emitted once, when the
        watermark (:meth:`DataFrame.with_watermark`) passes its end plus its allowed
        lateness; rows that come after their window was emitted are dropped and counted
        in the job's ``dropped_late`` metric. Open windows are checkpointed and restored
        exactly. In a batch job every window is emitted at the end of the input.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"k": ["x", "y", "x", "x"], "t": [1, 4, 7, 12], "v": [1, 2, 3, 4]})
        >>> out = df.group_by("k").window_agg(rl.tumbling("t", 10), rl.col("v").sum().alias("total"))
        >>> out.sort(["window_start", "k"]).to_pydict()
        {'k': ['x', 'y', 'x'], 'window_start': [0, 0, 10], 'window_end': [10, 10, 20], 'total': [4, 2, 4]}
        """
        if not isinstance(window, Window):
            raise TypeError(f"window_agg takes a window from rl.tumbling or rl.sliding, not {window!r}")
        names = [k.name() for k in self._keys]
        return DataFrame(
            self._df._df.window_aggregate(
                names,
                window.column,
                _span(window.size),
                None if window.slide is None else _span(window.slide),
                _span(window.allowed_lateness),
                [a._expr for a in aggs],
            )
        )


def _span(value: int | timedelta) -> tuple[int, bool]:
    """An event-time span for the native layer: ``(n, False)`` in the column's units,
    ``(microseconds, True)`` for a timedelta."""
    if isinstance(value, timedelta):
        return (value // timedelta(microseconds=1), True)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"an event-time span is an int (in the column's units) or a timedelta, not {value!r}")
    return (value, False)


@dataclass(frozen=True)
class PostgresUpsert:
    """An exactly-once PostgreSQL sink for :meth:`DataFrame.start`; see
    :func:`rillet.postgres_upsert`."""

    url: str
    table: str
    key: tuple[str, ...]

    def _connector(self) -> tuple[str, dict]:
        return "postgres", {"url": self.url, "table": self.table, "key": list(self.key)}


def postgres_upsert(url: str, table: str, key: str | Sequence[str]) -> PostgresUpsert:
    """A sink upserting a streaming job's rows into PostgreSQL table ``table`` (it must
    exist, with a primary key or unique index on ``key``) at ``url``
    (``postgresql://user:password@host:port/db``). Rows wait in the job's checkpoints and
    are upserted in one transaction when their checkpoint completes (``INSERT ... ON
    CONFLICT (key) DO UPDATE``, the last row of a key winning); recovery repeats the
    restored checkpoint's upserts, which is harmless, so the table ends as if the job had
    never failed. Columns are matched by name; PostgreSQL converts the values. The sink
    keeps one connection for all its commits. TLS follows the URL's ``sslmode`` as libpq
    does: ``prefer`` (default) and ``require`` encrypt without checking the server's
    certificate (``require`` always); ``verify-ca`` and ``verify-full`` check it against
    ``sslrootcert`` (a PEM file of CAs, else the system's), ``verify-full`` its host name too.

    >>> import rillet as rl
    >>> rl.postgres_upsert("postgresql://app@localhost/shop?sslmode=verify-full", "totals",
    ...                    key="customer").key
    ('customer',)
    >>> rl.postgres_upsert("postgresql://app@localhost/shop", "totals", key="customer").key
    ('customer',)
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    return PostgresUpsert(url, table, keys)


@dataclass(frozen=True)
class RedisStreamSink:
    """An exactly-once Redis Streams sink for :meth:`DataFrame.start`; see
    :func:`rillet.redis_stream_sink`."""

    url: str
    stream: str

    def _connector(self) -> tuple[str, dict]:
        return "redis", {"url": self.url, "stream": self.stream}


def redis_stream_sink(url: str, stream: str) -> RedisStreamSink:
    """A sink appending a streaming job's rows to Redis stream ``stream`` at ``url``
    (``redis://host:port``): one entry per row, a field per non-null column, values as
    text. The rows of a checkpoint are appended by one atomic script when it completes,
    which also records the checkpoint in a marker key (``<stream>:rillet:<job_id>:<lineage>``,
    the lineage naming the job's checkpoint directory), so a repeated commit after a crash
    appends nothing: each row lands exactly once.

    >>> import rillet as rl
    >>> rl.redis_stream_sink("redis://localhost:6379", "alerts").stream
    'alerts'
    """
    return RedisStreamSink(url, stream)


@dataclass(frozen=True)
class KafkaSink:
    """An exactly-once Kafka sink for :meth:`DataFrame.start`; see
    :func:`rillet.kafka_sink`."""

    brokers: tuple[str, ...]
    topic: str
    key: str | None = None
    records_per_request: int = 0

    def _connector(self) -> tuple[str, dict]:
        return "kafka", {"brokers": list(self.brokers), "topic": self.topic, "key": self.key,
                         "records_per_request": self.records_per_request}


def kafka_sink(brokers: str | Sequence[str], topic: str, *, key: str | None = None,
               records_per_request: int | None = None) -> KafkaSink:
    """A sink producing a streaming job's rows to Kafka topic ``topic`` (it must exist) on
    ``brokers`` (``host:port``), exactly once. A record's value is the row's ``value``
    column when it has one (binary or string), else the row as a JSON object; ``key`` names
    the column that is the record's key and picks its partition as Kafka's Java client does
    by default (murmur2; librdkafka-based clients with ``partitioner=murmur2_random``), so
    those producers of the same keys are co-partitioned with the job; without a key, rows
    go round robin.

    Rows wait in the job's checkpoints and are produced when their checkpoint completes.
    Each record carries a header
    ``rillet-commit: <job>:<lineage>:<checkpoint>:<partitions>:<index>:murmur2``;
    a commit cut short by a crash is finished on recovery by reading the partitions' tails
    back and producing only what is missing. No broker transactions are needed, so any
    broker speaking the Kafka protocol works, and consumers see each row once whatever
    their isolation level (a broker with produce quotas is the exception: the client sends
    a throttled request again). ``records_per_request`` (default 500) caps a produce
    request.

    >>> import rillet as rl
    >>> rl.kafka_sink("localhost:9092", "alerts", key="user").key
    'user'
    """
    addresses = (brokers,) if isinstance(brokers, str) else tuple(brokers)
    if records_per_request is not None and records_per_request < 1:
        raise ValueError("records_per_request must be at least 1")
    return KafkaSink(addresses, topic, key, records_per_request or 0)


@dataclass(frozen=True)
class Window:
    """Event-time windows over ``column``: ``size`` long, one starting every ``slide``
    (``None``: tumbling, back to back), each emitted once the watermark is
    ``allowed_lateness`` past its end. Spans are ints in the column's units (its time
    unit for timestamps) or ``timedelta`` values (for timestamp and date columns). Made by
    :func:`rillet.tumbling` and :func:`rillet.sliding`."""

    column: str
    size: int | timedelta
    slide: int | timedelta | None = None
    allowed_lateness: int | timedelta = 0


def tumbling(column: str, size: int | timedelta, *, allowed_lateness: int | timedelta = 0) -> Window:
    """Back-to-back windows of ``size`` over event-time ``column`` (see :class:`Window`).

    >>> import rillet as rl
    >>> rl.tumbling("t", 10)
    Window(column='t', size=10, slide=None, allowed_lateness=0)
    """
    return Window(column, size, None, allowed_lateness)


def sliding(
    column: str, size: int | timedelta, slide: int | timedelta, *, allowed_lateness: int | timedelta = 0
) -> Window:
    """Windows of ``size`` starting every ``slide`` over event-time ``column``: each row
    is in ``size / slide`` of them (see :class:`Window`).

    >>> import rillet as rl
    >>> from datetime import timedelta
    >>> rl.sliding("at", timedelta(minutes=1), timedelta(seconds=10)).slide
    datetime.timedelta(seconds=10)
    """
    return Window(column, size, slide, allowed_lateness)


class DataFrame:
    """A lazy, immutable table. Transformations return new DataFrames; nothing runs until
    a result is asked for (``collect``, ``to_pandas``, ``count``, ``write_*``, ``show``,
    ``iter_batches``)."""

    def __init__(self, native: _rillet.DataFrame):
        self._df = native

    # schema ------------------------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        """The output schema, as a pyarrow Schema."""
        return self._df.schema()

    @property
    def columns(self) -> list[str]:
        """Column names."""
        return self._df.column_names()

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}: {f.type}" for f in self.schema)
        return f"DataFrame[{fields}]"

    # transformations -----------------------------------------------------------------------
    def select(self, *columns: str | Expr) -> DataFrame:
        """Keep (or compute) only these columns.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2], "b": [3, 4]}).select("b", (rl.col("a") + 1).alias("a1")).to_pydict()
        {'b': [3, 4], 'a1': [2, 3]}
        """
        return DataFrame(self._df.select([_as_expr(c)._expr for c in columns]))

    def with_column(self, name: str, expr: Expr) -> DataFrame:
        """Add a column, or replace one of the same name.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2]}).with_column("b", rl.col("a") * 10).to_pydict()
        {'a': [1, 2], 'b': [10, 20]}
        """
        return self.with_columns({name: expr})

    def with_columns(self, columns: dict[str, Expr] | None = None, **kwargs: Expr) -> DataFrame:
        """Add or replace several columns at once."""
        items = dict(columns or {}, **kwargs)
        return DataFrame(self._df.with_columns([(n, _as_expr(e)._expr) for n, e in items.items()]))

    def filter(self, predicate: Expr) -> DataFrame:
        """Keep the rows where ``predicate`` is true.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2, 3]}).filter(rl.col("a") >= 2).to_pydict()
        {'a': [2, 3]}
        """
        if not isinstance(predicate, Expr):
            raise TypeError("filter takes an Expr, e.g. col('x') > 1")
        return DataFrame(self._df.filter(predicate._expr))

    where = filter

    def drop(self, *names: str) -> DataFrame:
        """Remove columns."""
        return DataFrame(self._df.drop(list(names)))

    def rename(self, mapping: dict[str, str] | str, new: str | None = None) -> DataFrame:
        """Rename columns: ``rename({"old": "new"})`` or ``rename("old", "new")``.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1]}).rename("a", "b").columns
        ['b']
        """
        pairs = list(mapping.items()) if isinstance(mapping, dict) else [(mapping, new)]
        return DataFrame(self._df.rename(pairs))

    def limit(self, n: int, offset: int = 0) -> DataFrame:
        """At most ``n`` rows (after skipping ``offset``). Upstream work stops early.

        >>> import rillet as rl
        >>> rl.range(1_000_000).limit(3, offset=10).to_pydict()
        {'id': [10, 11, 12]}
        """
        for name, value in (("n", n), ("offset", offset)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"limit: {name} must be a whole number >= 0, not {value!r}")
        return DataFrame(self._df.limit(int(n), int(offset)))

    def explode(self, column: str) -> DataFrame:
        """One row per element of a list column.

        >>> import rillet as rl
        >>> rl.from_pydict({"k": [1, 2], "v": [[10, 11], [12]]}).explode("v").to_pydict()
        {'k': [1, 1, 2], 'v': [10, 11, 12]}
        """
        return DataFrame(self._df.explode(column))

    def union(self, other: DataFrame) -> DataFrame:
        """Rows of both DataFrames (same columns, in order); duplicates kept."""
        return DataFrame(self._df.union(other._df))

    def sort(self, by: str | Expr | Sequence[str | Expr], descending: bool | Sequence[bool] = False,
             nulls_first: bool | Sequence[bool] | None = None) -> DataFrame:
        """Sort by one or more columns or expressions. Nulls go last unless asked.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [2, None, 1]}).sort("a", descending=True).to_pydict()
        {'a': [2, 1, None]}
        """
        keys = [_as_expr(b) for b in _as_list(by)]
        desc = list(descending) if isinstance(descending, (list, tuple)) else [descending] * len(keys)
        if nulls_first is None:
            nulls = [False] * len(keys)
        else:
            nulls = list(nulls_first) if isinstance(nulls_first, (list, tuple)) else [nulls_first] * len(keys)
        if len(desc) != len(keys) or len(nulls) != len(keys):
            raise ValueError("descending and nulls_first need one value per sort key")
        return DataFrame(self._df.sort([k._expr for k in keys], desc, nulls))

    def distinct(self) -> DataFrame:
        """Distinct rows."""
        return DataFrame(self._df.distinct())

    def drop_duplicates(self, subset: str | Iterable[str] | None = None) -> DataFrame:
        """One row per distinct value of ``subset`` (a column or columns; all when ``None``).
        Which duplicate survives is unspecified. For exact text duplicates, pass a
        ``text.content_hash()`` column.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"k": ["a", "b", "a"], "v": [1, 2, 1]})
        >>> df.drop_duplicates("k").sort("k").to_pydict()
        {'k': ['a', 'b'], 'v': [1, 2]}
        """
        names = [subset] if isinstance(subset, str) else list(subset or [])
        return DataFrame(self._df.drop_duplicates(names))

    def unique(self, subset: str | Iterable[str] | None = None) -> DataFrame:
        """Polars' name for :meth:`drop_duplicates`.

        >>> import rillet as rl
        >>> rl.from_pydict({"k": [1, 1, 2]}).unique().sort("k").to_pydict()
        {'k': [1, 2]}
        """
        return self.drop_duplicates(subset)

    def fill_null(self, value: Any, *, subset: str | Iterable[str] | None = None) -> DataFrame:
        """Nulls replaced by ``value`` in the columns ``subset`` names (default: every column
        whose type ``value`` fits).

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, None], "s": ["x", None]}).fill_null(0).to_pydict()
        {'a': [1, 0], 's': ['x', None]}
        """
        names = ([subset] if isinstance(subset, str) else list(subset)) if subset is not None else [
            f.name for f in self.schema if _fits(value, f.type)]
        filled = {}
        for name in names:
            dtype = self.schema.field(name).type
            try:  # the column keeps its type; a value it cannot hold is an error
                scalar = pa.scalar(value, type=dtype)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
                raise ValueError(f"fill_null: {value!r} does not fit column {name!r} of type {dtype}") from exc
            filled[name] = col(name).fill_null(lit(scalar.as_py()).cast(dtype))
        return self.with_columns(filled)

    def with_row_index(self, name: str = "index", offset: int = 0) -> DataFrame:
        """A first column numbering the rows from ``offset`` in the order they come (one
        stream: keep it for data of moderate size, or number before fanning out).

        >>> import rillet as rl
        >>> rl.from_pydict({"x": ["a", "b"]}).with_row_index().to_pydict()
        {'index': [0, 1], 'x': ['a', 'b']}
        """
        from rillet import sql

        quoted = ", ".join(f'"{c}"' for c in self.columns)
        return sql(f'SELECT CAST(row_number() OVER () - 1 + {int(offset)} AS BIGINT) AS "{name}", {quoted} FROM t',
                   t=self)

    def head(self, n: int = 5) -> DataFrame:
        """The first ``n`` rows, lazily (Polars' ``head``; see :meth:`take` for the rows).

        >>> import rillet as rl
        >>> rl.range(100).head(3).to_pydict()
        {'id': [0, 1, 2]}
        """
        return self.limit(n)

    def take(self, n: int = 20) -> list[dict]:
        """Run and return the first ``n`` rows as dicts (Ray Data's ``take``).

        >>> import rillet as rl
        >>> rl.range(100).take(2)
        [{'id': 0}, {'id': 1}]
        """
        return self.limit(n).to_pylist()

    def __getitem__(self, key: str | Sequence[str]) -> Expr | DataFrame:
        """``df["col"]`` is the column's expression; ``df[["a", "b"]]`` selects columns.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"a": [1, 2], "b": [3, 4]})
        >>> df.filter(df["a"] > 1)[["b"]].to_pydict()
        {'b': [4]}
        """
        if isinstance(key, str):
            if key not in self.columns:
                raise KeyError(f"no column {key!r}; columns: {self.columns}")
            return col(key)
        if isinstance(key, (list, tuple)):
            return self.select(*key)
        raise TypeError(f"index a DataFrame by a column name or a list of names, not {type(key).__name__}")

    def __len__(self) -> int:
        """The number of rows (runs the query: :meth:`count`)."""
        return self.count()

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a DataFrame is ambiguous (it would run the query); "
                        "use len(df) or df.count()")

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``; counting the rows runs the query.

        >>> import rillet as rl
        >>> rl.range(7).shape
        (7, 1)
        """
        return self.count(), len(self.columns)

    def describe(self) -> pa.Table:
        """Summary statistics of every numeric column, as rows ``count``, ``null_count``,
        ``mean``, ``std``, ``min``, ``max`` (one run).

        >>> import rillet as rl
        >>> rl.from_pydict({"x": [1.0, 2.0, None]}).describe().to_pydict()["x"]
        [2.0, 1.0, 1.5, 0.7071067811865476, 1.0, 2.0]
        """
        numeric = [f.name for f in self.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        aggs = []
        for name in numeric:
            c = col(name)
            aggs += [c.count().alias(f"{name}:count"), c.is_null().cast(pa.int64()).sum().alias(f"{name}:null_count"),
                     c.cast(pa.float64()).mean().alias(f"{name}:mean"), c.cast(pa.float64()).stddev().alias(f"{name}:std"),
                     c.cast(pa.float64()).min().alias(f"{name}:min"), c.cast(pa.float64()).max().alias(f"{name}:max")]
        stats = ["count", "null_count", "mean", "std", "min", "max"]
        if not aggs:
            return pa.table({"statistic": stats})
        row = DataFrame(self._df.aggregate([], [a._expr for a in aggs])).to_pylist()[0]
        columns = {"statistic": stats}
        for name in numeric:
            columns[name] = [None if row[f"{name}:{s}"] is None else float(row[f"{name}:{s}"]) for s in stats]
        return pa.table(columns)

    def repartition(self, n: int) -> DataFrame:
        """The rows spread round-robin over ``n`` parallel streams, batch by batch (to widen
        the stages after a source of few files).

        >>> import rillet as rl
        >>> rl.range(10).repartition(4).count()
        10
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"repartition needs a whole number >= 1, not {n!r}")
        return DataFrame(self._df.repartition(n))

    def sample(self, fraction: float, seed: int | None = None) -> DataFrame:
        """About ``fraction`` of the rows, drawn from their values and ``seed`` (the same rows
        for the same data and seed, at any parallelism); see :mod:`rillet.training`."""
        from rillet.training import sample

        return sample(self, fraction, seed)

    def random_shuffle(self, seed: int | None = None) -> DataFrame:
        """The rows in a random order, the same for the same data and seed."""
        from rillet.training import random_shuffle

        return random_shuffle(self, seed)

    def train_test_split(self, test_size: float = 0.25, seed: int | None = None) -> tuple[DataFrame, DataFrame]:
        """``(train, test)``: each row in exactly one, about ``test_size`` in ``test``."""
        from rillet.training import train_test_split

        return train_test_split(self, test_size, seed)

    def iter_numpy_batches(self, batch_size: int = 256, *, drop_last: bool = False,
                           columns: Sequence[str] | None = None) -> Iterator[dict]:
        """Batches of exactly ``batch_size`` rows as dicts of numpy arrays (images of one
        size stacked ``(n, h, w, c)``); see :func:`rillet.training.iter_numpy_batches`."""
        from rillet.training import iter_numpy_batches

        return iter_numpy_batches(self, batch_size, drop_last=drop_last, columns=columns)

    def iter_torch_batches(self, batch_size: int = 256, *, dtypes: Any = None, device: str = "cpu",
                           drop_last: bool = False, columns: Sequence[str] | None = None) -> Iterator[dict]:
        """Batches as dicts of torch tensors through DLPack; see
        :func:`rillet.training.iter_torch_batches`."""
        from rillet.training import iter_torch_batches

        return iter_torch_batches(self, batch_size, dtypes=dtypes, device=device, drop_last=drop_last,
                                  columns=columns)

    def to_torch(self, batch_size: int = 256, **options: Any) -> Any:
        """A torch ``IterableDataset`` of batches; see :func:`rillet.training.to_torch`."""
        from rillet.training import to_torch

        return to_torch(self, batch_size, **options)

    def write_webdataset(self, path: str | os.PathLike, **options: Any) -> list[str]:
        """Write WebDataset tar shards; see :func:`rillet.write_webdataset`."""
        from rillet.readers import write_webdataset

        return write_webdataset(self, path, **options)

    def write_lance(self, uri: str | os.PathLike, *, mode: str = "create") -> dict:
        """Write a Lance dataset; see :func:`rillet.write_lance`."""
        from rillet.readers import write_lance

        return write_lance(self, uri, mode=mode)

    def drop_near_duplicates(self, column: str, threshold: float = 0.8, num_perm: int = 64, ngram: int = 5,
                             bands: int | None = None) -> DataFrame:
        """Drop rows whose text in ``column`` is a near duplicate of an earlier kept row:
        estimated Jaccard similarity of word ``ngram`` shingles at least ``threshold``.

        MinHash signatures (``num_perm`` values) are banded for locality-sensitive hashing
        (``bands`` bands; by default chosen so pairs at ``threshold`` collide with high
        probability); candidate pairs are confirmed by their signature agreement, and each
        cluster keeps its first row. The DataFrame is materialised to do this (a global
        operation, like a sort).

        >>> import rillet as rl
        >>> a = "the quick brown fox jumps over the lazy dog near the river bank today"
        >>> df = rl.from_pydict({"t": [a, a.replace("today", "again"), "something else entirely different here"]})
        >>> df.drop_near_duplicates("t", threshold=0.7, ngram=2).to_pydict()["t"] == [a, "something else entirely different here"]
        True
        """
        from .expr import col

        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {threshold}")
        signature = "__rillet_minhash"
        table = self.with_column(signature, col(column).text.minhash(num_perm, ngram)).collect()
        sigs = table.column(signature).combine_chunks()
        valid = ~np.asarray(sigs.is_null().to_numpy(zero_copy_only=False))
        # A fixed-size list keeps a slot for every row, null or not.
        values = sigs.values[sigs.offset * num_perm:(sigs.offset + len(sigs)) * num_perm]
        matrix = values.to_numpy(zero_copy_only=False).reshape(-1, num_perm)
        if bands is None:
            # The largest band count whose rows-per-band r gives collision probability
            # 1 - (1 - t^r)^b >= 0.95 at the threshold t.
            bands = next(b for b in range(num_perm, 0, -1)
                         if num_perm % b == 0 and 1 - (1 - threshold ** (num_perm // b)) ** b >= 0.95)
        rows = num_perm // bands
        keep = np.ones(len(table), dtype=bool)
        buckets: dict = {}
        for i in range(len(table)):
            if not valid[i]:
                continue
            candidates = set()
            keys = [(b, matrix[i, b * rows:(b + 1) * rows].tobytes()) for b in range(bands)]
            for key in keys:
                candidates.update(buckets.get(key, ()))
            if any(np.mean(matrix[i] == matrix[j]) >= threshold for j in candidates):
                keep[i] = False
                continue
            for key in keys:
                buckets.setdefault(key, []).append(i)
        from . import from_arrow
        return from_arrow(table.filter(pa.array(keep)).drop_columns([signature]))

    def group_by(self, *keys: str | Expr) -> GroupBy:
        """Group rows by keys; follow with ``.agg(...)``.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"k": ["x", "y", "x"], "v": [1, 2, 3]})
        >>> df.group_by("k").agg(rl.col("v").sum().alias("s")).sort("k").to_pydict()
        {'k': ['x', 'y'], 's': [4, 2]}
        """
        return GroupBy(self, [_as_expr(k) for k in keys])

    def agg(self, *aggs: Expr) -> DataFrame:
        """Aggregate the whole DataFrame into one row."""
        return GroupBy(self, []).agg(*aggs)

    def window_agg(self, window: Window, *aggs: Expr) -> DataFrame:
        """Aggregates per event-time window over all rows (no keys): see
        :meth:`GroupBy.window_agg`. A streaming job runs it as one task."""
        return GroupBy(self, []).window_agg(window, *aggs)

    def with_watermark(self, column: str, delay: int | timedelta = 0, *,
                       idle_timeout: float | timedelta | None = None) -> DataFrame:
        """Take event time from ``column`` (a timestamp, date or integer column) and
        declare watermarks ``delay`` behind the latest event time seen: rows may arrive
        that much out of order before they count as late for the windows after this
        (:meth:`GroupBy.window_agg`). ``delay`` is an int in the column's units or a
        ``timedelta``. With ``idle_timeout`` (seconds or a ``timedelta``), a task of the
        job that has seen no row for that long (a quiet Kafka partition, an empty stream)
        stops holding the windows of the others back, until rows come again (they may
        then be late). Rows pass unchanged; in a batch job it changes nothing.

        >>> import rillet as rl
        >>> from datetime import timedelta
        >>> df = rl.from_pydict({"t": [1, 2]}).with_watermark("t", delay=5)
        >>> df.to_pydict()
        {'t': [1, 2]}
        """
        if isinstance(idle_timeout, timedelta):
            idle_timeout = idle_timeout.total_seconds()
        return DataFrame(self._df.with_watermark(column, _span(delay), idle_timeout))

    def join(self, other: DataFrame, on: str | Sequence[str] | None = None, *,
             left_on: str | Sequence[str] | None = None, right_on: str | Sequence[str] | None = None,
             how: str = "inner") -> DataFrame:
        """Join on equal keys. ``how``: inner, left, right, full, semi, anti. With ``on``, the
        key appears once; other clashing right columns are renamed ``right.<name>``.

        >>> import rillet as rl
        >>> left = rl.from_pydict({"id": [1, 2, 3], "x": ["a", "b", "c"]})
        >>> right = rl.from_pydict({"id": [2, 3, 4], "y": [20, 30, 40]})
        >>> left.join(right, on="id", how="left").sort("id").to_pydict()
        {'id': [1, 2, 3], 'x': ['a', 'b', 'c'], 'y': [None, 20, 30]}
        """
        left = _as_list(on if on is not None else left_on)
        right = _as_list(on if on is not None else right_on)
        if not left or len(left) != len(right):
            raise ValueError("join needs on=..., or left_on=... and right_on=... of equal length")
        return DataFrame(self._df.join(other._df, how, left, right))

    def map_batches(self, fn: Callable[[Any], Any] | type, *, batch_size: int | None = None,
                    batch_format: str = "pyarrow", schema: pa.Schema | None = None,
                    concurrency: int | tuple[int, int] | None = None,
                    num_cpus: float | None = None, num_gpus: float | None = None,
                    memory: int | str | None = None, max_retries: int = 3,
                    isolate: bool | None = None, idle_timeout: float = 10.0) -> DataFrame:
        """Apply ``fn`` to whole batches, in a stage of its own.

        ``batch_format`` is what ``fn`` receives: ``"pyarrow"`` (a Table), ``"pandas"`` (a
        DataFrame) or ``"numpy"`` (a dict of arrays; images of one size as one ``(n, h, w,
        c)`` array, embeddings as ``(n, d)``). It may return any of those (or a RecordBatch).
        ``schema`` declares the output; without it the schema is found by calling ``fn`` in
        this process on the first rows of the input (at most 16, or ``batch_size``). The plan
        stays lazy: an in-process function whose first call in the job gets those same rows
        reuses their result instead of computing it again; otherwise they run again. After
        a sort, an aggregate, a join or a drop_duplicates the whole input runs to find them
        — pass ``schema`` there. A stream without end needs ``schema``: reading its first
        rows would consume them.

        ``fn`` may be a class: each worker process builds it once (load a model in
        ``__init__``) and calls the instance per batch (without ``schema`` it is also built
        once in this process, for the first rows). Classes, and functions given ``num_cpus``,
        ``num_gpus``, ``memory`` or ``isolate=True``, run in worker processes fed Arrow
        batches, with the pool settings of :func:`rillet.udf` (``concurrency=(min, max)``,
        fractional GPUs, ``max_retries`` re-sending a batch whose worker died). Other
        functions run in this process on the engine's threads.

        >>> import rillet as rl, pyarrow.compute as pc
        >>> df = rl.from_pydict({"a": [1, 2]})
        >>> df.map_batches(lambda t: t.append_column("b", pc.multiply(t["a"], 2))).to_pydict()
        {'a': [1, 2], 'b': [2, 4]}
        """
        from rillet.udf import _concurrency, pickle_for_workers, pool_settings

        if batch_format not in _FORMATS:
            raise ValueError(f"batch_format must be one of {_FORMATS}, not {batch_format!r}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError("batch_size must be positive")
        name = getattr(fn, "__name__", type(fn).__name__)
        is_class = isinstance(fn, type)
        resourced = num_cpus is not None or num_gpus is not None or memory is not None
        if isolate is None:
            isolate = is_class or resourced
        if not isolate and (is_class or resourced):
            raise ValueError(f"map_batches({name}): a class, num_cpus, num_gpus and memory need "
                             "worker processes; drop isolate=False")
        kept: list[tuple[pa.RecordBatch, pa.Table]] = []
        looked: list[None] = []
        if schema is None:
            schema, sample = self._sample_schema(fn, name, batch_format, batch_size, is_class)
            kept.append(sample)
        out_schema = schema
        if not isolate:
            if isinstance(concurrency, tuple):
                raise ValueError(f"map_batches({name}): concurrency=(min, max) sizes a worker pool; "
                                 "in-process functions take a number")

            def call(batch: pa.RecordBatch) -> pa.RecordBatch:
                # The rows the schema was found from, when they come as one of the first
                # calls: their result is kept rather than computed again.
                if kept and batch.num_rows == kept[0][0].num_rows:
                    try:
                        seen, out = kept[0]
                    except IndexError:
                        seen = None
                    if seen is not None and batch.num_columns == seen.num_columns and all(
                            a.equals(b) for a, b in zip(batch.columns, seen.columns)):
                        kept.clear()
                        return _single_batch(out, out_schema)
                    looked.append(None)
                    if len(looked) >= _SAMPLE_LOOKS:
                        kept.clear()
                return apply_batches(fn, batch, batch_format, out_schema)

            return DataFrame(self._df.map_batches(call, name, out_schema, batch_size=batch_size,
                                                  concurrency=concurrency))
        spec = {"mode": "batches", "fn": fn, "is_class": is_class, "batch_format": batch_format,
                "schema": out_schema}
        setup = pickle_for_workers(spec, f"map_batches({name})", "class" if is_class else "function")
        pool = pool_settings(setup, _concurrency(concurrency, True), num_cpus, num_gpus, memory,
                             max_retries, idle_timeout)
        return DataFrame(self._df.map_batches_workers(name, out_schema, batch_size=batch_size, pool=pool))

    def _sample_schema(self, fn: Any, name: str, batch_format: str, batch_size: int | None,
                       is_class: bool) -> tuple[pa.Schema, tuple[pa.RecordBatch, pa.Table]]:
        """The schema of ``fn``'s output, found by running it on the input's first rows
        (Ray Data's way), and those rows with their output."""
        if self._df.reads_unbounded():
            raise _rillet.PlanError(
                f"map_batches({name}): the input is a stream without end, and reading its first "
                "rows to find the output's schema would consume them; pass schema=... (the "
                "output's pyarrow schema)")
        rows = min(batch_size or _SAMPLE_ROWS, _SAMPLE_ROWS)
        head = self.limit(rows).collect()
        batches = head.combine_chunks().to_batches()
        batch = batches[0] if batches else _empty_batch(head.schema)
        try:
            target = fn() if is_class else fn
            out = _to_table(target(_convert_in(batch, batch_format)))
        except Exception as error:  # noqa: BLE001 - we re-raise with advice
            raise _rillet.PlanError(
                f"map_batches({name}): could not find the output schema by calling the function "
                f"on the first {batch.num_rows} rows ({type(error).__name__}: {error}); pass "
                "schema=...") from error
        untyped = [f.name for f in out.schema if pa.types.is_null(f.type)]
        if untyped:
            raise _rillet.PlanError(
                f"map_batches({name}): the output column(s) {untyped} are all null in the first "
                f"{batch.num_rows} rows, so their type is unknown; pass schema=...")
        return out.schema, (batch, out)

    # results -----------------------------------------------------------------------------
    def collect(self) -> pa.Table:
        """Run and return the result as a pyarrow Table (zero copy from the engine).

        Rows that operators turned into nulls by their ``on_error="null"`` policy are
        counted: each is reported as a warning of the ``rillet`` logger, and in
        :meth:`stats` (``"nulls"``), e.g. ``"image_resize: 1 of 1 rows null — a: no such
        file"``. The engine's events during the run (retries, workers replaced) are in
        the ``rillet`` logger's records by the time it returns."""
        try:
            table = self._df.collect()
        finally:
            _rillet.flush_logs()
        _warn_nulls(self._df.stats())
        return table

    to_arrow = collect

    def to_pandas(self):
        """Run and return a pandas DataFrame; Rillet's types hold the values ``to_pylist()``
        gives (PIL images, numpy arrays, ``(samples, rate)``).

        >>> import rillet as rl
        >>> rl.from_pydict({"x": [1, 2]}).to_pandas()["x"].tolist()
        [1, 2]
        """
        from rillet.types import table_to_pandas

        return table_to_pandas(self.collect())

    def to_pylist(self) -> list[dict]:
        """Run and return a list of row dicts."""
        return self.collect().to_pylist()

    def to_pydict(self) -> dict[str, list]:
        """Run and return a dict of column lists."""
        return self.collect().to_pydict()

    def iter_batches(self, batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the result batch by batch while the job runs. Closing the iterator (or
        leaving a ``for`` loop early) cancels the job.

        >>> import rillet as rl
        >>> for batch in rl.range(10_000_000).iter_batches(batch_size=1000):
        ...     break  # the job is cancelled here; it does not produce the other rows
        >>> batch.num_rows <= 1000
        True
        """
        stream = self._df.stream(batch_size)
        try:
            yield from stream
            _warn_nulls(self._df.stats())
        finally:
            stream.close()

    def iter_rows(self) -> Iterator[dict]:
        """Stream the result row by row (as dicts)."""
        for batch in self.iter_batches():
            yield from batch.to_pylist()

    def count(self) -> int:
        """Run and count the rows.

        >>> import rillet as rl
        >>> rl.range(100).filter(rl.col("id") % 3 == 0).count()
        34
        """
        rows = self._df.count()
        _warn_nulls(self._df.stats())
        return rows

    def show(self, n: int = 10) -> None:
        """Print the first ``n`` rows as a table.

        >>> import rillet as rl
        >>> rl.from_pydict({"a": [1, 2], "b": ["x", None]}).show()
        +-------+--------+
        | a     | b      |
        | int64 | string |
        +-------+--------+
        | 1     | x      |
        | 2     | null   |
        +-------+--------+
        (2 rows shown)
        """
        print(_format_table(self.limit(n).collect()))

    def _repr_html_(self, n: int = 10) -> str:
        """Notebook display: the first ``n`` rows as an HTML table, with image thumbnails
        and audio players in place of media values."""
        return _html_table(self.limit(n).collect())

    def explain(self) -> str:
        """The optimized logical plan and the physical dataflow (vertices with their operator
        chains and parallelism, and the edges between them)."""
        return self._df.explain()

    def stats(self) -> dict | None:
        """Per-operator figures of this DataFrame's last run (rows, bytes, rows/s, bytes of
        pixels and samples its media decoders produced as ``decoded_bytes``, time spent
        waiting on input, on output backpressure and on a free worker), or None. Under
        ``"nulls"``, one line per operator that turned rows into nulls by its ``on_error``
        policy, with the first reasons.

        >>> import rillet as rl
        >>> df = rl.from_pydict({"path": ["a"]}).with_column("img", rl.col("path").image.decode())
        >>> df.collect().num_rows
        1
        >>> df.stats()["nulls"]
        ['image_decode: 1 of 1 rows null — a: no such file']
        """
        return self._df.stats()

    def start(self, path: str | os.PathLike | PostgresUpsert | RedisStreamSink | KafkaSink, *, format: str = "parquet", job_id: str | None = None,  # noqa: A002
              checkpoint_dir: str | os.PathLike | None = None, checkpoint_interval: float = 1.0,
              resume_from: str | os.PathLike | None = None, compression: str = "zstd") -> StreamingJob:
        """Start this DataFrame as a streaming job writing ``format`` files (``"parquet"``,
        ``"json"`` or ``"csv"``) into directory ``path`` exactly once, and return its
        :class:`StreamingJob` at once.

        With ``checkpoint_dir`` (a local directory or ``s3://bucket/prefix``) the job takes
        a checkpoint every ``checkpoint_interval`` seconds: source positions, operator state
        and the files written since the last one. A file becomes visible in ``path`` when
        the checkpoint covering its rows completes; until then it waits in ``path/_pending``,
        which readers skip. A job started again with the same ``job_id`` and
        ``checkpoint_dir`` resumes from its newest valid checkpoint or savepoint, so a crash
        costs neither a row nor a duplicate. ``resume_from`` names a snapshot directory
        (what :meth:`StreamingJob.stop` returns) to resume from instead. Without a
        ``checkpoint_dir``, files become visible when the input ends.

        ``path`` may instead be a :func:`rillet.postgres_upsert`,
        :func:`rillet.redis_stream_sink` or :func:`rillet.kafka_sink` sink: rows are
        upserted into a PostgreSQL table (or appended to a Redis stream, or produced to a
        Kafka topic) when the checkpoint covering them completes.

        The pipeline may use projections, filters, UDFs, ``map_batches``,
        :meth:`with_watermark`, :meth:`GroupBy.running_agg` and :meth:`GroupBy.window_agg`.

        >>> import rillet as rl, tempfile, os
        >>> tmp = tempfile.mkdtemp()
        >>> df = rl.read_sequence(partitions=2, rows=1000)
        >>> job = df.start(os.path.join(tmp, "out"), checkpoint_dir=os.path.join(tmp, "chk"),
        ...                job_id="doc", checkpoint_interval=0.05)
        >>> job.wait()["rows_written"]
        2000
        >>> job.status()
        'finished'
        """
        if isinstance(path, (PostgresUpsert, RedisStreamSink, KafkaSink)):
            kind, options = path._connector()
            native = self._df.start_external(
                kind, json.dumps(options), job_id or "job",
                os.fspath(checkpoint_dir) if checkpoint_dir is not None else None,
                float(checkpoint_interval),
                os.fspath(resume_from) if resume_from is not None else None)
            return StreamingJob(native)
        native = self._df.start(
            os.fspath(path), format, job_id or "job",
            os.fspath(checkpoint_dir) if checkpoint_dir is not None else None,
            float(checkpoint_interval),
            os.fspath(resume_from) if resume_from is not None else None,
            compression)
        return StreamingJob(native)

    def write_parquet(self, path: str | os.PathLike, mode: str = "append", compression: str = "zstd", *,
                      partition_by: str | Sequence[str] | None = None) -> dict:
        """Run and write Parquet files into directory ``path``; returns the run's figures.
        The files are staged out of readers' sight and published together once the whole
        job has succeeded: a failed job leaves none. ``mode="overwrite"`` then deletes the
        directory's other Parquet files (only once the new ones are in place).
        ``compression`` is ``"zstd"`` (default), ``"snappy"``, ``"lz4"``, ``"gzip"`` or
        ``"none"``. Rows turned into nulls are counted in the figures' ``"nulls"`` (see
        :meth:`collect`).

        ``partition_by`` writes Hive partitions: each row into ``<column>=<value>/``
        folders (nested in the order given; the columns are left out of the files, and
        :func:`rillet.read_parquet` of the directory gives them back, as strings).

        >>> import rillet as rl, tempfile, os
        >>> out = tempfile.mkdtemp()
        >>> _ = rl.from_pydict({"year": [2023, 2024, 2024], "x": [1, 2, 3]}).write_parquet(out, partition_by="year")
        >>> sorted(os.listdir(out))
        ['year=2023', 'year=2024']
        >>> rl.read_parquet(out).sort("x").to_pydict()
        {'x': [1, 2, 3], 'year': ['2023', '2024', '2024']}
        """
        return _warn_nulls(self._df.write(os.fspath(path), "parquet", mode, compression,
                                          self._partition_columns(partition_by)))

    def _partition_columns(self, partition_by: str | Sequence[str] | None) -> list[str]:
        names = [partition_by] if isinstance(partition_by, str) else list(partition_by or [])
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise _rillet.PlanError(f"partition_by: no column {missing[0]!r}; columns: {self.columns}")
        return names

    def write_csv(self, path: str | os.PathLike, mode: str = "append", *,
                  partition_by: str | Sequence[str] | None = None) -> dict:
        """Run and write CSV files (with a header) into directory ``path``, published
        together once the job has succeeded (see :meth:`write_parquet`)."""
        return _warn_nulls(self._df.write(os.fspath(path), "csv", mode, None,
                                          self._partition_columns(partition_by)))

    def write_json(self, path: str | os.PathLike, mode: str = "append", *,
                   partition_by: str | Sequence[str] | None = None) -> dict:
        """Run and write JSON-lines files into directory ``path``, published together once
        the job has succeeded (see :meth:`write_parquet`)."""
        return _warn_nulls(self._df.write(os.fspath(path), "json", mode, None,
                                          self._partition_columns(partition_by)))


_log = logging.getLogger("rillet")


def _fits(value: Any, dtype: pa.DataType) -> bool:
    """Whether ``value`` can fill nulls of a column of ``dtype``."""
    if isinstance(value, bool):
        return pa.types.is_boolean(dtype)
    if isinstance(value, (int, np.integer)):
        return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
    if isinstance(value, float):
        return pa.types.is_floating(dtype)
    if isinstance(value, str):
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)
    return False


def _warn_nulls(stats: dict | None) -> dict | None:
    """Warn, on the ``rillet`` logger, of every operator that turned rows into nulls (a
    column null by mistake must be noticed); returns ``stats``."""
    for line in (stats or {}).get("nulls", []):
        _log.warning("%s", line)
    return stats


class StreamingJob:
    """A running streaming job (see :meth:`DataFrame.start`)."""

    def __init__(self, native: _rillet.StreamingJob):
        self._job = native

    @property
    def job_id(self) -> str:
        """The job's id: its checkpoints live in ``<checkpoint_dir>/<job_id>``."""
        return self._job.job_id

    def status(self) -> str:
        """``"running"``, ``"finished"``, ``"stopped"``, ``"cancelled"`` or ``"failed"``
        (as of the last :meth:`wait`)."""
        return self._job.status()

    def metrics(self) -> dict:
        """Live figures: per-operator rows, throughput and waits, and under
        ``"checkpoints"`` the checkpoints completed, aborted, restored from, and the
        duration of each (``durations_ms``)."""
        return self._job.metrics()

    def wait(self, timeout: float | None = None) -> dict:
        """Wait until the job ends (a bounded source ran out, or :meth:`stop`); returns its
        figures or raises its error. With ``timeout`` (seconds) raises TimeoutError if the
        job is still running then. The job's events (checkpoints aborted, restores) are
        in the ``rillet`` logger's records by the time it returns."""
        try:
            return _warn_nulls(self._job.wait(timeout))
        finally:
            _rillet.flush_logs()

    def cancel(self) -> None:
        """Stop at once. Nothing after the last completed checkpoint is committed; a
        restart with the same job id continues from that checkpoint."""
        self._job.cancel()

    def stop(self, savepoint: bool = True) -> str | None:
        """Stop the job. With ``savepoint=True`` the sources stop reading, a savepoint is
        taken and its files committed, and the savepoint's directory is returned: pass it
        as ``resume_from`` to continue exactly where the job stopped. With
        ``savepoint=False``, the same as :meth:`cancel`."""
        return self._job.stop(savepoint)

    def __repr__(self) -> str:
        return f"StreamingJob({self.job_id!r}, {self.status()})"


def _format_table(table: pa.Table, max_width: int = 40) -> str:
    names = table.column_names
    rows = table.to_pylist()

    def cell(value: Any) -> str:
        text = "null" if value is None else _describe_value(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r[n]) for n in names] for r in rows]
    types = [_type_name(t) for t in table.schema.types]
    widths = [max([len(n), len(t)] + [len(r[i]) for r in cells]) for i, (n, t) in enumerate(zip(names, types))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line,
           "| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |",
           "| " + " | ".join(t.ljust(w) for t, w in zip(types, widths)) + " |",
           line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    out.append(line)
    out.append(f"({len(rows)} rows shown)")
    return "\n".join(out)


def _html_table(table: pa.Table, thumb: int = 128) -> str:
    import html

    def cell(value: Any) -> str:
        if value is None:
            return "<i>null</i>"
        if _is_pil(value):
            return _html_image(value, thumb)
        if _is_audio(value):
            return _html_audio(*value)
        if isinstance(value, list) and value and all(_is_pil(v) or _is_audio(v) for v in value):
            return " ".join(cell(v) for v in value[:4]) + (f" … ({len(value)})" if len(value) > 4 else "")
        return html.escape(_describe_value(value))

    names = table.column_names
    head = "".join(f"<th>{html.escape(n)}<br><small>{html.escape(_type_name(t))}</small></th>"
                   for n, t in zip(names, table.schema.types))
    rows = "".join("<tr>" + "".join(f"<td>{cell(r[n])}</td>" for n in names) + "</tr>" for r in table.to_pylist())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table><p>({table.num_rows} rows shown)</p>"


def _html_image(image: Any, size: int) -> str:
    import base64
    import io

    copy = image.copy()
    copy.thumbnail((size, size))
    if copy.mode not in ("RGB", "RGBA", "L", "LA"):
        copy = copy.convert("RGB")
    buf = io.BytesIO()
    copy.save(buf, "PNG")
    title = f"{image.size[0]}×{image.size[1]} {image.mode}"
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" title="{title}"/>'


def _html_audio(samples: np.ndarray, rate: int, max_seconds: float = 30.0) -> str:
    import base64
    import html
    import io
    import wave

    frames = samples if samples.ndim == 2 else samples[:, None]
    frames = frames[: int(rate * max_seconds)]
    pcm = (np.clip(frames, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())
    src = base64.b64encode(buf.getvalue()).decode()
    return f'<audio controls src="data:audio/wav;base64,{src}"></audio><br><small>{html.escape(_describe_value((samples, rate)))}</small>'


def _type_name(t: pa.DataType) -> str:
    """A column type as users read it: multimodal names inside lists and structs too."""
    if isinstance(t, pa.ExtensionType):
        return str(t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in t) + ">"
    return str(t)


def _describe_value(value: Any) -> str:
    """Short cell text; media values are summarised, not dumped."""
    if _is_pil(value):
        return f"<Image {value.size[0]}×{value.size[1]} {value.mode}>"
    if isinstance(value, np.ndarray):
        return f"<ndarray {'×'.join(str(d) for d in value.shape)} {value.dtype}>"
    if _is_audio(value):
        samples, rate = value
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        return f"<Audio {len(samples) / max(rate, 1):.2f}s {rate} Hz ×{channels}>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        shown = ", ".join("null" if v is None else _describe_value(v) for v in value[:3])
        return f"[{shown}{', …' if len(value) > 3 else ''}] ({len(value)})" if len(value) > 3 else f"[{shown}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {'null' if v is None else _describe_value(v)}" for k, v in value.items()) + "}"
    return str(value)
