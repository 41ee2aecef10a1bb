//! Kafka, over the Kafka protocol (any broker that speaks it: Apache Kafka, Redpanda,
//! tansu): topics as a streaming source ([`KafkaSource`]) and as an exactly-once sink
//! ([`KafkaSink`]).

mod sink;
mod source;

pub use sink::*;
pub use source::*;

use std::sync::Arc;

use rillet_common::Result;

use crate::registry::{BuiltSource, Options};

/// The Kafka source from its options (`brokers`, `topic`, `bounded`); its partitions are
/// looked up on the brokers.
pub(crate) fn source_options(options: &mut Options) -> Result<BuiltSource> {
    let brokers = broker_list(options.strings("brokers")?);
    let topic = options.string("topic")?;
    let bounded = options.flag("bounded", false)?;
    let source = rillet_operator::block_on(KafkaSource::connect(brokers, topic, bounded))?;
    Ok(BuiltSource {
        source: Arc::new(source),
        bounded,
    })
}

/// The Kafka sink from its options (`brokers`, `topic`, `key`, `records_per_request`, 0
/// or absent for the default).
pub(crate) fn sink_options(
    options: &mut Options,
    job: &str,
) -> Result<Arc<dyn rillet_operator::Sink>> {
    let brokers = broker_list(options.strings("brokers")?);
    let topic = options.string("topic")?;
    // An empty key column name means none: rows go round robin.
    let key = options.opt_string("key")?.filter(|key| !key.is_empty());
    let mut sink = KafkaSink::new(brokers, topic, job, key);
    if let Some(n) = options.opt_usize("records_per_request")?.filter(|&n| n > 0) {
        sink = sink.with_records_per_request(n);
    }
    Ok(Arc::new(sink))
}

/// `host:port` addresses, each entry possibly a comma-separated list of them (as Kafka
/// clients' `bootstrap.servers` is written).
fn broker_list(entries: Vec<String>) -> Vec<String> {
    entries
        .iter()
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn brokers_may_be_written_comma_separated() {
        let entries = vec![
            "a:9092, b:9092".to_string(),
            "c:9092".to_string(),
            ",".to_string(),
        ];
        assert_eq!(super::broker_list(entries), ["a:9092", "b:9092", "c:9092"]);
    }
}
