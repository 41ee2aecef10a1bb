//! Exactly-once sinks to external systems, against a real Redis server on loopback:
//! checkpoints that fail to write and are aborted lose no row and repeat none.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rillet_connectors::redis::RedisStreamSink;
use rillet_connectors::sequence::value_of;
use rillet_runtime::{Sink, SinkContext, global_runtime};

use crate::streaming::{PARTITIONS, SERIAL, job};

/// A redis-server on a free loopback port, without persistence; killed with the guard.
struct RedisServer {
    process: Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A fresh Redis server, or `None` (the test is skipped) when `redis-server` cannot start,
/// unless `RILLET_REQUIRE_SERVERS` is set (scripts/test.sh sets it): then that fails.
fn redis_server() -> Option<RedisServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let process = match spawned {
        Ok(process) => process,
        Err(e) => {
            assert!(
                std::env::var_os("RILLET_REQUIRE_SERVERS").is_none(),
                "redis-server cannot start ({e}) and RILLET_REQUIRE_SERVERS is set: \
                 bash scripts/setup.sh installs it"
            );
            eprintln!("skipped: redis-server cannot start ({e})");
            return None;
        }
    };
    let server = RedisServer {
        process,
        url: format!("redis://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = redis::Client::open(server.url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The oracle over a stream the sequence job wrote: each split's `rows` rows exactly once,
/// each with the running count and sum of its split up to and including it.
fn assert_stream_exact(url: &str, stream: &str, rows: u64) {
    let mut connection = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    let mut seen: BTreeMap<(u32, u64), u32> = BTreeMap::new();
    for (id, fields) in &entries {
        let row: BTreeMap<&str, &str> = fields
            .chunks(2)
            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
            .collect();
        let number = |name: &str| -> i64 {
            row.get(name)
                .unwrap_or_else(|| panic!("entry {id} has no {name}: {row:?}"))
                .parse()
                .unwrap_or_else(|e| panic!("entry {id}: {name}: {e}"))
        };
        let (p, s) = (number("partition") as u32, number("seq") as u64);
        *seen.entry((p, s)).or_default() += 1;
        assert_eq!(
            number("running_count"),
            s as i64 + 1,
            "running count of {p}/{s}"
        );
        let want: i64 = (0..=s).map(|i| value_of(p, i)).sum();
        assert_eq!(number("running_sum"), want, "running sum of {p}/{s}");
    }
    let lost: Vec<_> = (0..PARTITIONS)
        .flat_map(|p| (0..rows).map(move |s| (p, s)))
        .filter(|k| !seen.contains_key(k))
        .collect();
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty() && repeated.is_empty(),
        "{} rows lost (first {:?}), {} repeated (first {:?}) of {}",
        lost.len(),
        lost.first(),
        repeated.len(),
        repeated.first(),
        rows * u64::from(PARTITIONS)
    );
    assert_eq!(entries.len() as u64, rows * u64::from(PARTITIONS));
}

/// Three checkpoints fail to write their artifacts and are aborted while the job runs on:
/// the rows the sink tasks sealed at those barriers are committed by the next checkpoint
/// that completes.
#[test]
fn aborted_checkpoints_lose_no_row_in_the_redis_sink() {
    let _serial = SERIAL.lock();
    let Some(redis) = redis_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let session = crate::default_session();
    let rows = 3_000;
    // A second of input: the three aborts fall well before the final checkpoint, whose
    // abort would fail the bounded job (it cannot be taken again), on a busy machine too.
    let df = job(&session, rows, Some(3_000.0));
    let sink = RedisStreamSink::new(redis.url.as_str(), "out", "aborts");
    let name = sink.describe();
    let abort_three = "3*off->1*return->3*off->1*return->3*off->1*return->off";
    fail::cfg("checkpoint-artifact-upload", abort_three).unwrap();
    let mut running = df
        .start_sink(
            Arc::new(sink),
            &name,
            "aborts",
            Some((chk.to_str().unwrap(), Duration::from_millis(50))),
            None,
        )
        .unwrap();
    let result = global_runtime().block_on(running.wait());
    fail::remove("checkpoint-artifact-upload");
    result.unwrap();
    let stats = running.checkpoint_stats().unwrap();
    assert!(stats.aborted >= 3, "{stats:?}");
    assert_stream_exact(&redis.url, "out", rows);

    // Recovering an older checkpoint that holds no rows leaves the commit marker where
    // it is: moved back, it would let later checkpoints' rows be appended again.
    let lineage = std::fs::read_to_string(chk.join("aborts").join("_lineage")).unwrap();
    let context = SinkContext {
        lineage: lineage.clone(),
        ..SinkContext::default()
    };
    let marker = || -> u64 {
        let mut connection = redis::Client::open(redis.url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap();
        redis::cmd("GET")
            .arg(format!("out:rillet:aborts:{lineage}"))
            .query(&mut connection)
            .unwrap()
    };
    let newest = marker();
    assert!(newest > 1, "{newest}");
    RedisStreamSink::new(redis.url.as_str(), "out", "aborts")
        .recover(&context, Some(1), &[])
        .unwrap();
    assert_eq!(marker(), newest);
    assert_stream_exact(&redis.url, "out", rows);
}
