"""Object references on real servers: a real S3-speaking server (moto) and an HTTP server,
both on loopback. Listing, lazy reads by operators, byte ranges, Parquet over S3, missing
and changed objects, an unreachable endpoint, bounded concurrency and connection reuse."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_photos, sample_speech
from rillet.types import FileType

BUCKET = "media"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with photos, speech, a Parquet table and text under one bucket."""
    boto3 = pytest.importorskip("boto3")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    assert server, "moto_server is missing: pip install 'moto[server]' (requirements-dev.txt)"
    port = _free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        local = {}
        for path in sample_photos()[:6]:
            local[f"images/{path.name}"] = path
        for path in sample_speech()[:2]:
            local[f"audio/{path.name}"] = path
        for key, path in local.items():
            client.upload_file(str(path), BUCKET, key)
        client.put_object(Bucket=BUCKET, Key="notes/a.txt", Body=b"hello object store\n")
        table = pa.table({"id": list(range(1000)), "x": [i * 0.5 for i in range(1000)]})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=100)
        client.put_object(Bucket=BUCKET, Key="tables/part-0.parquet", Body=sink.getvalue().to_pybytes())
        rl.configure_storage(f"s3://{BUCKET}", endpoint=endpoint, access_key_id="test",
                             secret_access_key="test", region="us-east-1")
        yield {"client": client, "local": local, "table": table, "endpoint": endpoint}
    finally:
        process.terminate()
        process.wait(timeout=10)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP/1.1 keep-alive and single byte ranges; records connections
    and the most requests it served at once."""

    protocol_version = "HTTP/1.1"
    stats = {"connections": set(), "active": 0, "max_active": 0, "lock": threading.Lock(), "delay": 0.0}

    def log_message(self, *args):
        pass

    def do_GET(self):
        stats = self.stats
        with stats["lock"]:
            stats["connections"].add(self.client_address)
            stats["active"] += 1
            stats["max_active"] = max(stats["max_active"], stats["active"])
        try:
            time.sleep(stats["delay"])
            self._serve(head=False)
        finally:
            with stats["lock"]:
                stats["active"] -= 1

    def do_HEAD(self):
        self._serve(head=True)

    def _serve(self, head: bool):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        status, body = 200, data
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            start_text, _, end_text = spec[6:].partition("-")
            start = int(start_text)
            end = min(int(end_text), len(data) - 1) if end_text else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = 206, data[start:end + 1]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.date_time_string(path.stat().st_mtime))
        self.send_header("ETag", f'"{path.stat().st_mtime_ns:x}-{len(data):x}"')
        self.end_headers()
        if not head:
            self.wfile.write(body)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    for path in sample_photos()[:4]:
        shutil.copy(path, root / path.name)
    for i in range(60):
        (root / f"blob-{i:02d}.bin").write_bytes(bytes([i]) * (1000 + i))
    handler = lambda *args, **kw: _RangeHandler(*args, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _decoded(df, column):
    return [np.asarray(img) for img in df.select(col(column).image.decode().alias("i")).to_pydict()["i"]]


def test_list_s3_glob_prefix_and_key(s3):
    files = rl.read_files(f"s3://{BUCKET}/images/*").sort("path").to_pydict()
    expected = sorted(k for k in s3["local"] if k.startswith("images/"))
    assert files["path"] == [f"s3://{BUCKET}/{k}" for k in expected]
    assert files["size"] == [s3["local"][k].stat().st_size for k in expected]
    assert all(f["uri"] == p and f["version"] for f, p in zip(files["file"], files["path"]))
    # A prefix lists everything under it; a key lists one object; a glob that matches
    # nothing is an error unless allow_empty.
    assert rl.read_files(f"s3://{BUCKET}/audio/").count() == 2
    assert rl.read_files(f"s3://{BUCKET}").count() == len(s3["local"]) + 2
    assert rl.read_files(f"s3://{BUCKET}/notes/a.txt").to_pydict()["size"] == [19]
    with pytest.raises(rl.PlanError, match="no files match"):
        rl.read_files(f"s3://{BUCKET}/images/*.nothing")
    assert rl.read_files(f"s3://{BUCKET}/images/*.nothing", allow_empty=True).count() == 0


def test_operators_read_s3_references_lazily(s3):
    remote = rl.read_files(f"s3://{BUCKET}/images/*").sort("path")
    keys = sorted(k for k in s3["local"] if k.startswith("images/"))
    local = rl.from_pydict({"p": [str(s3["local"][k]) for k in keys]})
    for ours, theirs in zip(_decoded(remote, "file"), _decoded(local, "p")):
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    # A string column of s3:// URIs works the same way, and so does SQL.
    uris = rl.from_pydict({"u": [f"s3://{BUCKET}/{k}" for k in keys]})
    sizes = rl.sql("SELECT image_width(u) AS w FROM t", t=uris).to_pydict()["w"]
    assert sizes == [a.shape[1] for a in _decoded(local, "p")]
    speech = rl.read_files(f"s3://{BUCKET}/audio/*.wav").select(col("file").audio.duration().alias("d")).to_pydict()["d"]
    assert all(d is not None and d > 0.2 for d in speech)


def test_s3_byte_ranges_mime_types_and_missing_objects(s3):
    key = sorted(k for k in s3["local"] if k.startswith("images/"))[0]
    content = s3["local"][key].read_bytes()
    storage = pa.array([
        {"uri": f"s3://{BUCKET}/{key}", "offset": 100, "length": 50, "version": None, "media_type": None},
        {"uri": f"s3://{BUCKET}/{key}", "offset": len(content) - 10, "length": 50, "version": None, "media_type": None},
        {"uri": f"s3://{BUCKET}/no/such/key.jpg", "offset": None, "length": None, "version": None, "media_type": None},
    ], type=FileType().storage_type)
    refs = rl.from_arrow(pa.table({"f": pa.ExtensionArray.from_storage(FileType(), storage)}))
    out = refs.select(col("f").file.read(on_error="column").alias("b")).to_pydict()["b"]
    assert out[0] == {"value": content[100:150], "error": None}
    assert out[1]["value"] is None and "past the end" in out[1]["error"]
    assert out[2]["value"] is None and "no such object" in out[2]["error"] and "no/such/key.jpg" in out[2]["error"]
    mime = rl.read_files(f"s3://{BUCKET}/*/*").sort("path").select("path", col("file").file.mime_type().alias("m")).to_pydict()
    by_path = dict(zip(mime["path"], mime["m"]))
    assert by_path[f"s3://{BUCKET}/notes/a.txt"] == "text/plain"
    assert by_path[f"s3://{BUCKET}/tables/part-0.parquet"] == "application/vnd.apache.parquet"
    assert all(by_path[f"s3://{BUCKET}/{k}"] in ("image/png", "image/jpeg") for k in s3["local"] if k.startswith("images/"))


def test_object_changed_since_listing_gives_a_reason_not_other_content(s3):
    s3["client"].put_object(Bucket=BUCKET, Key="notes/changing.txt", Body=b"first version")
    listed = rl.read_files(f"s3://{BUCKET}/notes/changing.txt").collect()
    s3["client"].put_object(Bucket=BUCKET, Key="notes/changing.txt", Body=b"second version, longer")
    out = rl.from_arrow(listed).select(col("file").file.read(on_error="column").alias("b")).to_pydict()["b"][0]
    assert out["value"] is None and "changed since it was listed" in out["error"]
    fresh = rl.read_files(f"s3://{BUCKET}/notes/changing.txt").select(col("file").file.read().alias("b"))
    assert fresh.to_pydict()["b"] == [b"second version, longer"]


def test_read_parquet_from_s3(s3):
    df = rl.read_parquet(f"s3://{BUCKET}/tables/*.parquet")
    out = df.filter(col("id") % 10 == 0).sort("id").collect()
    expected = [row for row in s3["table"].to_pylist() if row["id"] % 10 == 0]
    assert out.to_pylist() == expected
    assert rl.read_parquet(f"s3://{BUCKET}/tables/").count() == 1000


def test_http_download_ranges_and_404(http_root):
    root, base = http_root
    names = sorted(p.name for p in root.glob("*.png"))[:3] + ["missing.png"]
    urls = rl.from_pydict({"u": [f"{base}/{n}" for n in names]})
    out = urls.select(col("u").url.download(on_error="column").alias("b")).to_pydict()["b"]
    for name, got in zip(names[:3], out[:3]):
        assert got == {"value": (root / name).read_bytes(), "error": None}
    assert out[3]["value"] is None and "missing.png" in out[3]["error"]
    # read_files on one URL gives a reference whose size comes from the server.
    one = rl.read_files(f"{base}/{names[0]}").to_pydict()
    assert one["size"] == [(root / names[0]).stat().st_size]
    assert _decoded(rl.read_files(f"{base}/{names[0]}"), "file")[0].shape == np.asarray(
        _decoded(rl.from_pydict({"p": [str(root / names[0])]}), "p")[0]).shape
    # Sniffing reads only the first bytes, through a range request.
    assert urls.limit(3).select(col("u").file.mime_type().alias("m")).to_pydict()["m"] == ["image/png"] * 3
    with pytest.raises(rl.RilletError, match="no listing"):
        rl.read_files(f"{base}/*.png")


def test_downloads_are_concurrent_bounded_and_reuse_connections(http_root):
    root, base = http_root
    stats = _RangeHandler.stats
    with stats["lock"]:
        stats["connections"].clear()
        stats["max_active"] = 0
        stats["delay"] = 0.05
    try:
        names = [f"blob-{i:02d}.bin" for i in range(60)]
        urls = rl.from_pydict({"u": [f"{base}/{n}" for n in names]})
        got = urls.select(col("u").url.download().alias("b")).to_pydict()["b"]
    finally:
        stats["delay"] = 0.0
    assert got == [(root / n).read_bytes() for n in names]
    # Requests overlapped, never more than the process-wide bound, over fewer
    # connections than requests (keep-alive connections were reused).
    assert 1 < stats["max_active"] <= 32
    assert len(stats["connections"]) < len(names)


def test_unreachable_endpoint_fails_with_the_url_after_bounded_retries():
    port = _free_port()  # nothing listens here
    rl.configure_storage(f"http://127.0.0.1:{port}", max_retries=1)
    started = time.monotonic()
    # An infrastructure failure is an OSError (as Python's own I/O errors are).
    with pytest.raises(OSError, match=f"http://127.0.0.1:{port}/photo.jpg"):
        rl.from_pydict({"u": [f"http://127.0.0.1:{port}/photo.jpg"]}).select(col("u").url.download()).collect()
    assert time.monotonic() - started < 15


def test_webdataset_shards_on_s3(s3, tmp_path):
    import webdataset as wds

    photos = sorted(p for k, p in s3["local"].items() if k.startswith("images/"))[:4]
    with wds.ShardWriter(str(tmp_path / "shard-%06d.tar"), maxcount=2, verbose=0) as sink:
        for i, path in enumerate(photos):
            sink.write({"__key__": f"s{i}", "img": path.read_bytes(), "cls": i})
    for shard in sorted(tmp_path.glob("*.tar")):
        s3["client"].upload_file(str(shard), BUCKET, f"wds/{shard.name}")
    rows = sorted(rl.read_webdataset(f"s3://{BUCKET}/wds/*.tar").to_pylist(), key=lambda r: r["__key__"])
    assert [r["__key__"] for r in rows] == ["s0", "s1", "s2", "s3"]
    assert [r["img"] for r in rows] == [p.read_bytes() for p in photos]
    assert [r["cls"] for r in rows] == [0, 1, 2, 3]
    assert {r["__url__"] for r in rows} == {f"s3://{BUCKET}/wds/shard-00000{i}.tar" for i in (0, 1)}
