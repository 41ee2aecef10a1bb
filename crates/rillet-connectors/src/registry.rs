//! Sources and sinks built by kind and options, in one place.
//!
//! The Python module, the CLI and (later) remote workers describe a connector as a kind
//! (`"kafka"`, `"redis"`, ...) and options; [`source`] and [`sink`] build it. Each kind's
//! options are read by its own folder (`kafka::source_options`, ...), and an option a kind
//! does not take is an error naming what it does take, never silently ignored, raised
//! before anything is opened or reached.
//!
//! ```
//! use rillet_connectors::registry;
//! use serde_json::json;
//!
//! let built = registry::source("sequence", json!({"name": "seq", "partitions": 2, "rows": 10})).unwrap();
//! assert!(built.bounded);
//! assert_eq!(built.source.describe(), "sequence 'seq': 2 partitions, 10 rows each");
//!
//! let error = registry::source("sequence", json!({"name": "seq", "partitions": 2, "rowz": 10}))
//!     .unwrap_err()
//!     .to_string();
//! assert!(error.contains("rowz") && error.contains("rows"), "{error}");
//! assert!(registry::sink("nowhere", json!({}), "job").is_err());
//! ```

use std::sync::Arc;

use rillet_common::{Result, RilletError};
use rillet_operator::{Sink, StreamSource};
use serde_json::{Map, Value};

/// A source built by [`source`], and whether it ends.
#[derive(Debug, Clone)]
pub struct BuiltSource {
    /// The source.
    pub source: Arc<dyn StreamSource>,
    /// Whether it ends (a batch job may read it then); a streaming job reads either.
    pub bounded: bool,
}

type SourceFactory = fn(&mut Options) -> Result<BuiltSource>;
type SinkFactory = fn(&mut Options, &str) -> Result<Arc<dyn Sink>>;

/// Every source kind, the options it takes, and what builds it.
const SOURCES: &[(&str, &[&str], SourceFactory)] = &[
    (
        "files",
        &["path", "format", "splits", "bounded"],
        crate::files::source_options,
    ),
    (
        "kafka",
        &["brokers", "topic", "bounded"],
        crate::kafka::source_options,
    ),
    (
        "redis",
        &["url", "streams", "fields", "bounded", "batch_rows"],
        crate::redis::source_options,
    ),
    (
        "sequence",
        &[
            "name",
            "partitions",
            "rows",
            "rows_per_second",
            "batch_rows",
        ],
        crate::sequence::source_options,
    ),
];

/// Every sink kind (beyond files, which a job writes through its own path), the options it
/// takes, and what builds it for a job.
const SINKS: &[(&str, &[&str], SinkFactory)] = &[
    (
        "kafka",
        &["brokers", "topic", "key", "records_per_request"],
        crate::kafka::sink_options,
    ),
    (
        "postgres",
        &["url", "table", "key"],
        crate::postgres::sink_options,
    ),
    ("redis", &["url", "stream"], crate::redis::sink_options),
];

/// The source kinds [`source`] builds.
pub fn source_kinds() -> Vec<&'static str> {
    SOURCES.iter().map(|(kind, ..)| *kind).collect()
}

/// The sink kinds [`sink`] builds.
pub fn sink_kinds() -> Vec<&'static str> {
    SINKS.iter().map(|(kind, ..)| *kind).collect()
}

/// The source of `kind` with `options` (a JSON object; null values count as absent). An
/// option the kind does not take is refused before anything is opened.
pub fn source(kind: &str, options: Value) -> Result<BuiltSource> {
    let Some((_, keys, build)) = SOURCES.iter().find(|(k, ..)| *k == kind) else {
        return Err(unknown("source", kind, &source_kinds()));
    };
    let mut options = Options::new(format!("the {kind} source"), options, keys)?;
    build(&mut options)
}

/// The sink of `kind` with `options` (a JSON object) for job `job_id` (sinks that mark
/// what they commit put the job in the mark).
pub fn sink(kind: &str, options: Value, job_id: &str) -> Result<Arc<dyn Sink>> {
    let Some((_, keys, build)) = SINKS.iter().find(|(k, ..)| *k == kind) else {
        return Err(unknown("sink", kind, &sink_kinds()));
    };
    let mut options = Options::new(format!("the {kind} sink"), options, keys)?;
    build(&mut options, job_id)
}

fn unknown(what: &str, kind: &str, kinds: &[&str]) -> RilletError {
    RilletError::invalid_argument(format!(
        "no {what} kind {kind:?}: the {what}s are {}",
        kinds.join(", ")
    ))
}

/// A connector's options, checked against the names its kind takes, then taken one by one
/// by the code that builds it.
#[derive(Debug)]
pub struct Options {
    /// `the kafka source`: for errors.
    what: String,
    values: Map<String, Value>,
    /// The names its kind declares in the registry's table.
    known: &'static [&'static str],
}

impl Options {
    fn new(what: String, values: Value, known: &'static [&'static str]) -> Result<Self> {
        let mut values = match values {
            Value::Object(values) => values,
            Value::Null => Map::new(),
            other => {
                return Err(RilletError::invalid_argument(format!(
                    "{what}: options must be an object of names and values, got {other}"
                )));
            }
        };
        values.retain(|_, value| !value.is_null());
        let unknown: Vec<&str> = values
            .keys()
            .map(String::as_str)
            .filter(|key| !known.contains(key))
            .collect();
        if !unknown.is_empty() {
            return Err(RilletError::invalid_argument(format!(
                "{what}: unknown option{} {} (it takes: {})",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
                known.join(", ")
            )));
        }
        Ok(Self {
            what,
            values,
            known,
        })
    }

    fn take(&mut self, key: &'static str) -> Option<Value> {
        // A name read here but missing from the kind's entry in the table would always be
        // refused as unknown: the tests catch the two drifting apart.
        debug_assert!(
            self.known.contains(&key),
            "{}: {key:?} is not declared",
            self.what
        );
        self.values.remove(key)
    }

    fn wrong(&self, key: &str, wanted: &str, got: &Value) -> RilletError {
        RilletError::invalid_argument(format!(
            "{}: option {key:?} must be {wanted}, got {got}",
            self.what
        ))
    }

    fn missing(&self, key: &str) -> RilletError {
        RilletError::invalid_argument(format!("{}: option {key:?} is required", self.what))
    }

    /// A required string.
    pub fn string(&mut self, key: &'static str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional string.
    pub fn opt_string(&mut self, key: &'static str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", &other)),
        }
    }

    /// A required list of strings (a single string is a list of one).
    pub fn strings(&mut self, key: &'static str) -> Result<Vec<String>> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    other => Err(self.wrong(key, "a list of strings", &other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of strings", &other)),
        }
    }

    /// A flag, `default` when absent.
    pub fn flag(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(key, "true or false", &other)),
        }
    }

    /// An optional whole number of at least 0.
    pub fn opt_u64(&mut self, key: &'static str) -> Result<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a whole number of at least 0", &value)),
        }
    }

    /// A required whole number of at least 0.
    pub fn u64(&mut self, key: &'static str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional whole number of at least 0 that fits a `usize`.
    pub fn opt_usize(&mut self, key: &'static str) -> Result<Option<usize>> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(n) => usize::try_from(n).map(Some).map_err(|_| {
                RilletError::invalid_argument(format!("{}: option {key:?} is too large", self.what))
            }),
        }
    }

    /// An optional number.
    pub fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", &value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_unknown_option_is_refused_before_anything_is_reached() {
        // Port 1 on loopback answers nothing: an error about the option, not the broker.
        let error = source(
            "kafka",
            json!({"brokers": "127.0.0.1:1", "topic": "t", "bounded": true, "bogus": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("unknown option bogus"), "{error}");
        assert!(error.contains("brokers, topic, bounded"), "{error}");
        let error = sink(
            "redis",
            json!({"url": "redis://x", "stream": "s", "a": 1, "b": 2}),
            "j",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("unknown options a, b"), "{error}");
    }

    #[test]
    fn null_values_are_absent_and_wrong_types_are_named() {
        let built = source(
            "sequence",
            json!({"name": "s", "partitions": 1, "rows": null, "whatever": null}),
        )
        .unwrap();
        assert!(!built.bounded);
        let error = source("sequence", json!({"name": "s", "partitions": "two"}))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"partitions\" must be a whole number"),
            "{error}"
        );
        let error = source("sequence", json!({"partitions": 2}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"name\" is required"), "{error}");
        let error = source("sequence", json!([1])).unwrap_err().to_string();
        assert!(error.contains("must be an object"), "{error}");
        let error = source("nowhere", Value::Null).unwrap_err().to_string();
        assert!(error.contains("files, kafka, redis, sequence"), "{error}");
    }
}
