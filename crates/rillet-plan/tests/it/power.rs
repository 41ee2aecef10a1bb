//! Power cuts: a job dies at a point of its commit protocol, then the machine loses
//! everything that was not synced to disk (`rillet_common::durable::PowerCut` puts the
//! tree back to its synced state). A reader watching the output directory must never see a
//! file it read disappear or change afterwards (the checkpoint that committed it must
//! survive the cut), and the output in the end holds each row exactly once.

use std::collections::BTreeMap;
use std::path::Path;

use rillet_common::durable::PowerCut;
use rillet_runtime::global_runtime;

use crate::streaming::{SERIAL, assert_exact, job, start};

/// The committed files in `out` and their bytes: what a reader of the directory sees.
fn visible(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn a_power_cut_never_takes_back_output_a_reader_saw() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (out, chk) = (root.join("out"), root.join("chk"));
    let power = PowerCut::record(&root).unwrap();
    let rows = 4_000;
    let session = crate::default_session();
    let df = job(&session, rows, Some(2_000.0));
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Each run dies at one of the protocol's windows, then the power goes.
    let deaths = [
        ("sink-after-commit", "3*off->return"),
        ("checkpoint-after-manifest", "2*off->return"),
        ("file-sink-between-renames", "4*off->return"),
        ("sink-after-commit", "1*off->return"),
        ("sink-pre-commit", "6*off->return"),
    ];
    for (point, actions) in deaths {
        fail::cfg(point, actions).unwrap();
        let mut run = start(&df, &out, &chk, "power");
        let result = global_runtime().block_on(run.wait());
        fail::remove(point);
        assert!(result.is_err(), "the run did not die at {point}");
        seen.extend(visible(&out));
        power.cut().unwrap();
    }
    let mut last = start(&df, &out, &chk, "power");
    global_runtime().block_on(last.wait()).unwrap();
    let now = visible(&out);
    for (name, bytes) in &seen {
        assert!(
            now.get(name) == Some(bytes),
            "{name}, read before a power cut, was withdrawn or changed after it"
        );
    }
    assert_exact(&out, rows);
}
