"""The exactly-once PostgreSQL upsert sink against a real server (initdb into a temporary
directory, on loopback): upserts at checkpoints, a crash and restart, and clear errors."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import rillet as rl

from servers import needs, postgres_bin_dir

PG_BIN = postgres_bin_dir()
pytestmark = needs(PG_BIN is not None and shutil.which("psql") is not None,
                   "PostgreSQL's server binaries (initdb, pg_ctl, postgres) and psql")


def as_postgres(args, **kwargs):
    """Run a PostgreSQL command as the postgres user when this is root (initdb refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def running_server(tls: bool = False):
    """A server in a temporary directory on loopback: ``(url, port, data directory)``.
    With ``tls``, it has a self-signed certificate for 127.0.0.1 (``<data>/server.crt``),
    logs each connection, and refuses connections that are not encrypted."""
    assert PG_BIN is not None, "no PostgreSQL server binaries: bash scripts/setup.sh installs them"
    data = tempfile.mkdtemp(prefix="rillet-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_postgres([f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres"])
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    if tls:
        self_signed_certificate(data)
        with open(os.path.join(data, "pg_hba.conf"), "w") as hba:
            hba.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\n"
                      "hostnossl all all 127.0.0.1/32 reject\n")
        options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c log_connections=on"
    as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(data, "log"), "-w",
                 "-o", options, "start"])
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", port, data


def stop_server(data):
    as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"])
    shutil.rmtree(data, ignore_errors=True)


def self_signed_certificate(directory):
    """``server.crt`` and ``server.key`` in ``directory``: a certificate for 127.0.0.1 and
    localhost, signed by itself (a client trusts it by naming it as sslrootcert), readable by
    the server only."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rillet test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    crt, pem_key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    with open(crt, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(pem_key, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(pem_key, 0o600)
    if os.geteuid() == 0:
        for path in (crt, pem_key):
            shutil.chown(path, "postgres")


@pytest.fixture(scope="module")
def server():
    url, port, data = running_server()
    try:
        yield url, port
    finally:
        stop_server(data)


def psql(port, sql):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-At", "-c", sql],
                         check=True, capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def totals(rows):
    """The pipeline's final per-partition count and sum, recomputed."""
    from kill_sweep import value_of
    import numpy as np
    seq = np.arange(rows, dtype=np.uint64)
    return {p: (rows, int(value_of(np.full(rows, p), seq).sum())) for p in range(3)}


def pipeline(rows, rate=None):
    df = rl.read_sequence(partitions=3, rows=rows, rows_per_second=rate, batch_rows=200)
    return df.group_by("partition").running_agg(
        rl.count().alias("n"), rl.col("value").sum().alias("total")).select("partition", "n", "total")


def table_totals(port, table):
    return {int(p): (int(n), int(t)) for p, n, t in psql(port, f"SELECT partition, n, total FROM {table}")}


def test_running_totals_are_upserted_at_checkpoints_and_survive_a_restart(server, tmp_path):
    url, port = server
    psql(port, "CREATE TABLE totals (partition bigint PRIMARY KEY, n bigint, total bigint)")
    sink = rl.postgres_upsert(url, "totals", key="partition")
    df = pipeline(3000, rate=6000)
    first = df.start(sink, checkpoint_dir=tmp_path / "chk", job_id="pg", checkpoint_interval=0.05)
    deadline = time.monotonic() + 20
    while not psql(port, "SELECT 1 FROM totals LIMIT 1"):
        assert time.monotonic() < deadline, "nothing upserted"
        time.sleep(0.05)
    first.cancel()
    with pytest.raises(rl.JobCancelled):
        first.wait()
    partial = table_totals(port, "totals")
    assert all(n < 3000 for n, _ in partial.values()), partial
    second = rl.resume(tmp_path / "chk" / "pg", df, sink, checkpoint_interval=0.05)
    second.wait()
    assert table_totals(port, "totals") == totals(3000)


def test_without_checkpoints_rows_land_when_the_input_ends(server):
    url, port = server
    psql(port, "CREATE TABLE once (partition bigint PRIMARY KEY, n bigint, total bigint)")
    job = pipeline(500).start(rl.postgres_upsert(url, "once", key=["partition"]), job_id="plain")
    job.wait()
    assert table_totals(port, "once") == totals(500)


def test_a_missing_table_or_server_is_named_at_start(server):
    url, _ = server
    with pytest.raises(OSError, match='postgres table nope: checking the table: relation "nope" does not exist'):
        pipeline(10).start(rl.postgres_upsert(url, "nope", key="partition"), job_id="x")
    with pytest.raises(OSError, match="postgres table t: connecting"):
        pipeline(10).start(rl.postgres_upsert("postgresql://postgres@127.0.0.1:1/x", "t", key="k"), job_id="y")


def test_tls_as_the_url_asks_and_one_connection_for_all_commits(tmp_path):
    url, port, data = running_server(tls=True)
    try:
        import shutil as sh
        ca = str(tmp_path / "ca.crt")
        sh.copy(os.path.join(data, "server.crt"), ca)
        # psql's own connections are encrypted too (the server refuses any other).
        os.environ["PGSSLMODE"] = "require"
        psql(port, "CREATE TABLE secure (partition bigint PRIMARY KEY, n bigint, total bigint)")
        for i, query in enumerate(["sslmode=require", f"sslmode=verify-full&sslrootcert={ca}",
                                   f"sslmode=verify-ca&sslrootcert={ca}"]):
            sink = rl.postgres_upsert(f"{url}?{query}&application_name=rillet-sink-{i}", "secure",
                                      key="partition")
            job = pipeline(600, rate=3000).start(sink, checkpoint_dir=tmp_path / f"chk{i}",
                                                 job_id=f"tls{i}", checkpoint_interval=0.05)
            job.wait()
            assert table_totals(port, "secure") == totals(600)
            assert job.metrics()["checkpoints"]["completed"] >= 3
            with open(os.path.join(data, "log")) as log:
                opened = [line for line in log if f"application_name=rillet-sink-{i}" in line
                          and "connection authorized" in line]
            # The check at start and every commit share one connection, encrypted.
            assert len(opened) == 1, opened
            assert "SSL enabled" in opened[0], opened
            psql(port, "TRUNCATE secure")

        # Over the server's Unix socket (trusted locally, never encrypted) the same sink works.
        socket_url = f"postgresql://postgres@/postgres?host={data}&port={port}"
        pipeline(300).start(rl.postgres_upsert(socket_url, "secure", key="partition"),
                            job_id="socket").wait()
        assert table_totals(port, "secure") == totals(300)
        with pytest.raises(rl.PlanError, match="verify-ca needs sslrootcert"):
            pipeline(10).start(rl.postgres_upsert(f"{url}?sslmode=verify-ca", "secure", key="partition"),
                               job_id="no-ca")

        with pytest.raises(OSError, match="postgres table secure: connecting.*no encryption"):
            pipeline(10).start(rl.postgres_upsert(f"{url}?sslmode=disable", "secure", key="partition"),
                               job_id="plain")
        # Its own CA is not among the system's: verify-full without sslrootcert refuses it.
        with pytest.raises(OSError, match="postgres table secure: connecting.*(UnknownIssuer|certificate)"):
            pipeline(10).start(rl.postgres_upsert(f"{url}?sslmode=verify-full", "secure", key="partition"),
                               job_id="unverified")
        with pytest.raises(rl.PlanError, match="sslmode=\"verify-everything\""):
            pipeline(10).start(rl.postgres_upsert(f"{url}?sslmode=verify-everything", "secure",
                                                  key="partition"), job_id="bad")
    finally:
        os.environ.pop("PGSSLMODE", None)
        stop_server(data)
