//! Redis Streams: stream keys as a streaming source ([`RedisStreamSource`]) and a stream
//! as an exactly-once sink ([`RedisStreamSink`]).

mod sink;
mod source;

pub use sink::*;
pub use source::*;

use std::sync::Arc;

use rillet_common::Result;

use crate::registry::{BuiltSource, Options};

/// The Redis Streams source from its options (`url`, `streams`, `fields`, `bounded`,
/// `batch_rows`).
pub(crate) fn source_options(options: &mut Options) -> Result<BuiltSource> {
    let url = options.string("url")?;
    let streams = options.strings("streams")?;
    let fields = options.strings("fields")?;
    let bounded = options.flag("bounded", false)?;
    let mut source = RedisStreamSource::new(url, streams, fields).bounded(bounded);
    if let Some(rows) = options.opt_usize("batch_rows")? {
        source = source.with_batch_rows(rows);
    }
    Ok(BuiltSource {
        source: Arc::new(source),
        bounded,
    })
}

/// The Redis stream sink from its options (`url`, `stream`).
pub(crate) fn sink_options(
    options: &mut Options,
    job: &str,
) -> Result<Arc<dyn rillet_operator::Sink>> {
    let url = options.string("url")?;
    let stream = options.string("stream")?;
    Ok(Arc::new(RedisStreamSink::new(url, stream, job)))
}
