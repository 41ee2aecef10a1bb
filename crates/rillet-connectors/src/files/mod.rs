//! Files: a directory as a streaming source ([`DirectorySource`], the files there now and,
//! unless bounded, every file that arrives later) and as a sink ([`FileSink`], one file per
//! task, exactly-once under checkpoints through the two-phase [`commit`]).

pub mod commit;
pub mod partitioned;
mod sink;
mod source;

pub use sink::{FileFormat, FileSink, ParquetCompression, WriteMode};
pub use source::*;

/// The directory source from its options (`path`, `format`: default parquet, `splits`:
/// default 4, `bounded`), with `rl.watch_directory`'s defaults.
pub(crate) fn source_options(
    options: &mut crate::registry::Options,
) -> rillet_common::Result<crate::registry::BuiltSource> {
    let path = options.string("path")?;
    let format = options.opt_string("format")?;
    let format = DirectoryFormat::parse(format.as_deref().unwrap_or("parquet"))?;
    let splits = options.opt_usize("splits")?.unwrap_or(4);
    let bounded = options.flag("bounded", false)?;
    let source = DirectorySource::new(path, format, splits, bounded)?;
    Ok(crate::registry::BuiltSource {
        source: std::sync::Arc::new(source),
        bounded,
    })
}
