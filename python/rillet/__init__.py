"""Rillet: an AI-native dataflow engine for multimodal data, with a lazy DataFrame API.

>>> import rillet as rl
>>> df = rl.from_pydict({"city": ["a", "b", "a"], "n": [1, 2, 3]})
>>> df.group_by("city").agg(rl.col("n").sum().alias("total")).sort("city").to_pydict()
{'city': ['a', 'b'], 'total': [4, 2]}
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Iterable, Sequence

import pyarrow as pa

from rillet import _rillet, ai, testing, training
from rillet._rillet import CheckpointError, DataError, ExecutionError, JobCancelled, PlanError, RilletError, UserFunctionError
from rillet._session import current_session, set_config
from rillet.dataframe import (DataFrame, GroupBy, KafkaSink, PostgresUpsert, RedisStreamSink, StreamingJob, Window,
                              kafka_sink, postgres_upsert, redis_stream_sink, sliding, tumbling)
from rillet.expr import Expr, coalesce, col, concat_str, count, lit, when
from rillet.types import (Audio, Clip, Embedding, File, Image, Tensor, float16, float32, float64, int8, int16,
                          int32, int64, to_arrow_column, uint8, uint16, uint32, uint64)
from rillet.readers import (read_binary_files, read_images, read_lance, read_text, read_webdataset, write_lance,
                            write_webdataset)
from rillet.service import Service, service
from rillet.udf import UDF, udf

__all__ = [
    "DataFrame", "GroupBy", "StreamingJob", "Window", "tumbling", "sliding", "PostgresUpsert", "postgres_upsert", "RedisStreamSink", "redis_stream_sink", "KafkaSink", "kafka_sink", "Expr", "UDF", "col", "lit", "count", "when", "udf", "service",
    "Service",
    "from_pydict", "from_pylist", "from_arrow", "from_pandas", "range", "read_sequence", "read_redis_streams", "read_kafka", "watch_directory", "resume", "jobs", "read_parquet",
    "read_csv", "read_json", "read_files", "read_images", "read_text", "read_binary_files", "read_webdataset",
    "write_webdataset", "read_lance", "write_lance", "coalesce", "concat_str", "training",
    "configure_storage", "sql", "set_config", "current_session",
    "init", "resources", "ai", "testing",
    "RilletError", "PlanError", "UserFunctionError", "ExecutionError", "DataError", "CheckpointError",
    "JobCancelled",
    "Image", "Tensor", "Embedding", "Audio", "File", "Clip", "uint8", "uint16", "uint32", "uint64",
    "int8", "int16", "int32", "int64", "float16", "float32", "float64",
]

PathLike = str | os.PathLike


def __dir__() -> list[str]:
    """The public names only: what ``dir(rl)`` and completion offer (not ``os``, ``pa``)."""
    return sorted(__all__)


def init(*, num_cpus: float | None = None, num_gpus: int | None = None,
         memory: int | str | None = None) -> None:
    """Declare what this machine offers to worker processes, instead of what was detected.

    ``num_gpus`` declares that many *virtual* GPUs, to test GPU scheduling (fractional
    packing, ``CUDA_VISIBLE_DEVICES``) on a machine without one. Call before running jobs
    that start workers; ``rl.init()`` with no arguments goes back to the detected machine.

    >>> import rillet as rl
    >>> rl.init(num_gpus=2)
    >>> rl.resources()["num_gpus"]
    2
    >>> rl.init()
    """
    from rillet.udf import _parse_bytes

    _rillet.init_resources(num_cpus, num_gpus, None if memory is None else _parse_bytes(memory))


def resources() -> dict[str, Any]:
    """The machine as the resource manager sees it: ``num_cpus``, ``memory`` (bytes),
    ``num_gpus`` and ``gpus`` (id, name, memory each; honouring ``CUDA_VISIBLE_DEVICES``)."""
    return _rillet.machine_resources()


def _paths(path: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def from_arrow(data: Any) -> DataFrame:
    """A DataFrame over Arrow data: a pyarrow Table or RecordBatch, or anything with the
    Arrow PyCapsule stream interface (``__arrow_c_stream__``: polars, DuckDB results, ...)."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not hasattr(data, "__arrow_c_stream__"):
        raise TypeError(f"from_arrow needs Arrow data, got {type(data).__name__}")
    return DataFrame(current_session()._native.from_arrow(data))


def _columns(data: dict[str, Iterable[Any]]) -> pa.Table:
    arrays = {}
    for name, values in data.items():
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arrays[name] = values
            continue
        values = list(values)
        arrays[name] = to_arrow_column(values)
        if arrays[name] is None:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def from_pydict(data: dict[str, Iterable[Any]]) -> DataFrame:
    """A DataFrame from a dict of columns. PIL images become an ``Image`` column, numpy
    arrays a ``Tensor`` (or ``Embedding`` when all are 1-D of one length), and
    ``(samples, sample_rate)`` tuples ``Audio``.

    >>> import numpy as np, rillet as rl
    >>> df = rl.from_pydict({"v": [np.ones(3, np.float32), np.zeros(3, np.float32)]})
    >>> str(df.schema.field("v").type)
    'Embedding[f32; 3]'
    """
    return from_arrow(_columns(data))


def from_pylist(rows: list[dict[str, Any]]) -> DataFrame:
    """A DataFrame from a list of row dicts (values convert as in :func:`from_pydict`)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    if not names:
        return from_arrow(pa.Table.from_pylist(rows))
    return from_arrow(_columns({n: [row.get(n) for row in rows] for n in names}))


def from_pandas(frame: Any) -> DataFrame:
    """A DataFrame from a pandas DataFrame (the index is dropped)."""
    return from_arrow(pa.Table.from_pandas(frame, preserve_index=False))


def range(n: int) -> DataFrame:  # noqa: A001 - mirrors Daft / Ray
    """The integers ``0 .. n-1`` in a column ``id``, generated lazily."""
    if n < 0:
        raise ValueError("range needs n >= 0")
    return DataFrame(current_session()._native.range(n))


def read_sequence(partitions: int = 4, rows: int | None = None, *, rows_per_second: float | None = None,
                  name: str = "seq", batch_rows: int | None = None) -> DataFrame:
    """The deterministic sequence source: ``partitions`` splits, each emitting rows
    ``(source, partition, seq, value)`` with ``seq`` counting from 0 and ``value`` a fixed
    function of ``(partition, seq)``; ``rows`` per split, or without end when None.
    ``rows_per_second`` throttles each split. A streaming job checkpoints each split's
    position; :func:`rillet.testing.check_sequence` checks a job's output against it.

    >>> import rillet as rl
    >>> rl.read_sequence(partitions=2, rows=3).sort(["partition", "seq"]).to_pydict()["seq"]
    [0, 1, 2, 0, 1, 2]
    """
    if partitions < 1:
        raise ValueError("read_sequence needs at least one partition")
    return DataFrame(current_session()._native.read_sequence(name, partitions, rows, rows_per_second, batch_rows))


def read_redis_streams(url: str, streams: str | Sequence[str], fields: Sequence[str], *, bounded: bool = False,
                       batch_rows: int | None = None) -> DataFrame:
    """Redis Streams as a streaming source: rows ``(stream, id, <fields>...)``, each field
    a nullable string (cast it in the pipeline). Each stream is a split whose position is
    the last entry id read, so a restored job continues with the next entry. Unbounded by
    default (new entries are polled); ``bounded=True`` ends each stream at its last entry
    (a stream written before the job starts)."""
    keys = [streams] if isinstance(streams, str) else list(streams)
    return DataFrame(current_session()._native.read_redis_streams(url, keys, list(fields), bounded, batch_rows))


def watch_directory(path: PathLike, *, format: str = "parquet", bounded: bool = False,  # noqa: A002
                    splits: int = 4) -> DataFrame:
    """A directory whose files keep arriving, as a streaming source: the files there now,
    then each new one as it appears (``bounded=True``: only the files there at the start).
    ``format`` is ``"parquet"``, ``"csv"`` (with a header) or ``"json"`` (lines); the
    schema is the first file's, so the directory needs one. Files are dealt into
    ``splits`` splits by a fixed hash of their names and read in name order within a
    split; a checkpoint records each split's finished files and the rows emitted from the
    file it is in, so a restored job goes on with the next row. Names starting with ``.``
    or ``_`` are skipped: write a file under such a name and rename it into place when
    done, so that no half-written file is read.

    >>> import os, tempfile, rillet as rl, pyarrow as pa, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"x": [1, 2]}), os.path.join(d, "a.parquet"))
    >>> rl.watch_directory(d, bounded=True).to_pydict()
    {'x': [1, 2]}
    """
    return DataFrame(current_session()._native.watch_directory(os.fspath(path), format, splits, bounded))


def read_kafka(brokers: str | Sequence[str], topic: str, *, bounded: bool = False) -> DataFrame:
    """A Kafka topic as a streaming source (any broker speaking the Kafka protocol):
    rows ``(topic, partition, offset, timestamp, key, value)``, key and value as binary
    (``rl.col("value").cast("string")`` for text). Each partition is a split whose position
    is its next offset, kept in the job's checkpoints (no consumer group), so a restored
    job continues with exactly the records after its checkpoint. Unbounded by default;
    ``bounded=True`` ends each partition at the offset that was its end when reading
    started. ``brokers`` are ``host:port`` addresses."""
    addresses = [brokers] if isinstance(brokers, str) else list(brokers)
    return DataFrame(current_session()._native.read_kafka(addresses, topic, bounded))


def jobs(checkpoint_dir: PathLike) -> list[dict[str, Any]]:
    """The streaming jobs that checkpoint into ``checkpoint_dir`` (a directory or
    ``s3://`` prefix), as ``rillet list --json`` shows them: ``job``, ``state``
    (``running``, ``finished``, ``stopped``, ``cancelled``, ``failed``, or ``lost`` for a
    run that says running but whose process is gone or silent), ``note``, ``pid``,
    ``host``, ``latest_snapshot`` and ``savepoint`` (paths to pass to ``resume_from``),
    ``command`` and more. Works from any process, not only the one running the jobs.

    >>> import rillet as rl, tempfile
    >>> chk = tempfile.mkdtemp()
    >>> job = rl.read_sequence(partitions=1, rows=10).start(chk + "/out", checkpoint_dir=chk + "/chk", job_id="doc")
    >>> _ = job.wait()
    >>> [(j["job"], j["state"]) for j in rl.jobs(chk + "/chk")]
    [('doc', 'finished')]
    """
    import json
    return json.loads(_rillet.list_jobs(os.fspath(checkpoint_dir)))


def resume(path: PathLike, df: DataFrame, output: PathLike, **options: Any) -> StreamingJob:
    """Continue the streaming job ``df`` (its pipeline, as it was started) writing into
    ``output`` from ``path``: a snapshot directory (what :meth:`StreamingJob.stop` returns,
    or a ``chk-<id>`` directory), or a job's directory ``<checkpoint_dir>/<job_id>``, which
    resumes from its newest valid checkpoint or savepoint. ``options`` go to
    :meth:`DataFrame.start` (``format``, ``checkpoint_interval``, ...)."""
    p = os.fspath(path).rstrip("/")
    name = os.path.basename(p)
    if name.startswith(("savepoint-", "chk-")):
        return df.start(output, resume_from=p, **options)
    if not os.path.isdir(p) and "://" not in p:
        raise FileNotFoundError(f"no job directory {p}")
    return df.start(output, checkpoint_dir=os.path.dirname(p), job_id=name, **options)


def read_parquet(path: PathLike | Sequence[PathLike], *, columns: Sequence[str] | None = None,
                 filter: Expr | None = None) -> DataFrame:  # noqa: A002 - the usual name
    """Read Parquet: a file, a directory, a glob (``data/*.parquet``) or a list of them.
    Large files are split into row-group ranges read in parallel; a damaged file is named.

    A directory laid out in Hive partitions (``year=2024/month=05/part-0.parquet``) gets
    the partition columns (as strings). ``columns`` and ``filter`` are pushed into the scan
    (only those columns are read; row groups and partitions the filter rules out are
    skipped).

    >>> import rillet as rl, pyarrow as pa, pyarrow.parquet as pq, tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(f"{root}/year=2024")
    >>> pq.write_table(pa.table({"x": [1, 2]}), f"{root}/year=2024/part-0.parquet")
    >>> rl.read_parquet(root, columns=["x", "year"], filter=rl.col("x") > 1).to_pydict()
    {'x': [2], 'year': ['2024']}
    """
    df = DataFrame(current_session()._native.read("parquet", _paths(path)))
    if filter is not None:
        df = df.filter(filter)
    return df.select(*columns) if columns is not None else df


def read_csv(path: PathLike | Sequence[PathLike]) -> DataFrame:
    """Read CSV files with a header line (types inferred)."""
    return DataFrame(current_session()._native.read("csv", _paths(path)))


def read_json(path: PathLike | Sequence[PathLike]) -> DataFrame:
    """Read JSON-lines files (one object per line; types inferred)."""
    return DataFrame(current_session()._native.read("json", _paths(path)))


def read_files(pattern: PathLike, *, allow_empty: bool = False) -> DataFrame:
    """One row per file matching a glob (or every file under a directory): ``path``,
    ``size``, ``modified`` and a ``file`` reference that operators read lazily. File
    contents are not read here.

    Local paths, ``s3://bucket/prefix/*.jpg`` globs, prefixes and keys, and single
    ``http(s)://`` URLs work; see :func:`configure_storage` for endpoints and credentials.
    A remote reference remembers the object's entity tag, so an object overwritten between
    listing and reading gives a null with a reason rather than other content.

    A pattern that matches nothing is an error (as in ``read_parquet``), so a typo does not
    look like an empty dataset; ``allow_empty=True`` gives an empty frame instead."""
    return DataFrame(current_session()._native.read_files(os.fspath(pattern), allow_empty=allow_empty))


def configure_storage(root: str, **options: Any) -> None:
    """Settings for the object store of ``root``, a bucket or an origin with no path
    (``"s3://bucket"``, ``"http://host:port"``), overriding the ``AWS_*`` environment
    variables.

    Keys are object_store's: ``endpoint``, ``access_key_id``, ``secret_access_key``,
    ``region``, ``allow_http``, ``skip_signature``, ``timeout``, … plus ``max_retries``
    (default 3) and ``retry_timeout`` in seconds (default 20). Requests in flight are bounded
    for the whole process (``RILLET_IO_CONCURRENCY``, default 32).

    >>> import rillet as rl
    >>> rl.configure_storage("s3://my-bucket", region="eu-west-1", max_retries=5)
    >>> try:
    ...     rl.configure_storage("s3://my-bucket", colour="blue")
    ... except rl.PlanError as e:
    ...     print(e)
    invalid argument: unknown option "colour" for s3://my-bucket
    """
    _rillet.configure_storage(root, [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()])


def sql(query: str, **tables: Any) -> DataFrame:
    """Run SQL over named DataFrames (or Arrow tables).

    >>> import rillet as rl
    >>> t = rl.from_pydict({"x": [1, 2, 3]})
    >>> rl.sql("SELECT sum(x) AS s FROM t", t=t).to_pydict()
    {'s': [6]}
    """
    named = []
    for name, value in tables.items():
        df = value if isinstance(value, DataFrame) else from_arrow(value)
        named.append((name, df._df))
    return DataFrame(current_session()._native.sql(query, named))

# The engine's events stop going to logging before the interpreter shuts down.
atexit.register(_rillet.stop_logs)
