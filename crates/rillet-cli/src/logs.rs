//! Where the engine's `tracing` events go: which are kept (a `RUST_LOG`-style filter) and,
//! for the command line, how they are written to stderr (text or JSON lines).
//!
//! The filter comes from `RILLET_LOG`, else `RUST_LOG`, in their `target=level` syntax
//! (`warn,rillet_runtime=debug`); without either, Rillet's own events from `info` up and
//! every other crate's from `warn` up.

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

/// Rillet's crates: their events are kept from `info` up by default.
const OWN_CRATES: &[&str] = &[
    "rillet_ai",
    "rillet_checkpoint",
    "rillet_cli",
    "rillet_connectors",
    "rillet_functions",
    "rillet_io",
    "rillet_operator",
    "rillet_plan",
    "rillet_processes",
    "rillet_python",
    "rillet_runtime",
    "rillet_service",
];

/// How the command line writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The events kept: `RILLET_LOG`, else `RUST_LOG`, else the default (see the module
/// docs). A filter that does not parse is reported on stderr and the default used.
///
/// ```
/// use tracing::Level;
/// let targets = rillet_cli::logs::filter();
/// assert!(targets.would_enable("rillet_runtime::checkpointing", &Level::WARN));
/// ```
pub fn filter() -> Targets {
    let asked = ["RILLET_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| Some((var, std::env::var(var).ok().filter(|v| !v.is_empty())?)));
    if let Some((var, value)) = asked {
        match Targets::from_str(&value) {
            Ok(targets) => return targets,
            Err(e) => eprintln!("rillet: ignoring {var}={value:?} ({e}); logging the default"),
        }
    }
    default_filter()
}

/// Rillet's events from `info` up, others' from `warn` up.
fn default_filter() -> Targets {
    OWN_CRATES.iter().fold(
        Targets::new().with_default(tracing::Level::WARN),
        |targets, name| targets.with_target(*name, tracing::Level::INFO),
    )
}

/// Write the kept events to stderr in `format`, for the rest of the process. Does nothing
/// when events already have a subscriber (the Python module's bridge to `logging`).
pub fn install(format: LogFormat) {
    let _already = tracing::subscriber::set_global_default(subscriber(format, std::io::stderr));
}

/// A subscriber writing the kept events to what `writer` makes, in `format`.
fn subscriber<W>(format: LogFormat, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter());
    match format {
        LogFormat::Human => Box::new(registry.with(layer)),
        LogFormat::Json => Box::new(registry.with(layer.json().flatten_event(true))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    /// What the subscriber writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written(format: LogFormat) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = subscriber(format, move || sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rillet_runtime::checkpointing", checkpoint = 7_u64, "checkpoint 7 aborted: no space");
            tracing::debug!(target: "rillet_runtime::checkpointing", "not kept");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn events_are_written_as_text_or_json_lines() {
        let text = written(LogFormat::Human);
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("checkpoint 7 aborted: no space checkpoint=7"),
            "{text}"
        );
        assert!(!text.contains("not kept"), "{text}");
        let json = written(LogFormat::Json);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{json}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["checkpoint"], 7);
        assert_eq!(lines[0]["target"], "rillet_runtime::checkpointing");
        assert_eq!(lines[0]["message"], "checkpoint 7 aborted: no space");
    }

    #[test]
    fn the_default_keeps_our_info_and_others_warnings() {
        let targets = default_filter();
        assert!(targets.would_enable("rillet_runtime::checkpointing", &Level::INFO));
        assert!(!targets.would_enable("rillet_runtime::checkpointing", &Level::DEBUG));
        assert!(targets.would_enable("hyper::client", &Level::WARN));
        assert!(!targets.would_enable("hyper::client", &Level::INFO));
    }
}
