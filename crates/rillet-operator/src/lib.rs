//! The interfaces Rillet's operators implement, apart from the engine that runs them.
//!
//! Function crates (image, audio, models), connectors and the service client depend on this
//! crate, not on the runtime: a change to how jobs are scheduled, checkpointed or placed
//! does not rebuild them, and what an operator may rely on is written down in one place.
//!
//! - Column functions: [`ArrayFunction`] (a column in, a column out) and [`BatchFunction`]
//!   (a batch in, batches out), with one lifecycle: `open` per job, calls, `close`.
//! - Streams: [`StreamSource`] (splits read by [`SourceReader`]s that checkpoint their
//!   position) and [`StreamOperator`] (keyed state, watermarks, timers), whose state travels
//!   as Arrow IPC ([`encode_batches`], [`decode_batches`]).
//! - Sinks: [`Sink`] opens a [`BatchWriter`] per task and commits what each checkpoint
//!   covers.
//! - What they use from the engine: [`OperatorMetrics`] and [`WaitReason`], memory
//!   charging ([`memory`]), the [`BlockingPool`] for blocking calls, the machine's
//!   [`ResourceManager`], key groups ([`keygroups`]) and the shared tokio runtime.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{ArrayRef, Int64Array};
//! use arrow::datatypes::DataType;
//! use rillet_operator::ArrayFunction;
//!
//! #[derive(Debug)]
//! struct Double;
//!
//! impl ArrayFunction for Double {
//!     fn name(&self) -> &str { "double" }
//!     fn return_type(&self) -> DataType { DataType::Int64 }
//!     fn call(&self, args: &[ArrayRef], _rows: usize) -> rillet_common::Result<ArrayRef> {
//!         let x = args[0].as_any().downcast_ref::<Int64Array>().unwrap();
//!         Ok(Arc::new(x.iter().map(|v| v.map(|v| v * 2)).collect::<Int64Array>()))
//!     }
//! }
//!
//! let out = Double.call(&[Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef], 2).unwrap();
//! assert_eq!(out.as_any().downcast_ref::<Int64Array>().unwrap().values(), &[2, 4]);
//! ```

pub mod blocking;
pub mod function;
pub mod keygroups;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod resources;
pub mod runtime;
pub mod sink;
pub mod stream;

pub use blocking::BlockingPool;
pub use datafusion_common::ScalarValue;
pub use function::{
    ArrayFunction, BatchFunction, CallFields, Downscale, FunctionChain, FunctionContext,
    RowBatcher, call_first_row, record_decoded, record_nulls, while_loading_model,
};
pub use message::{CheckpointBarrier, StreamMessage, WATERMARK_END};
pub use metrics::{JobStats, NullCount, OperatorMetrics, OperatorStats, WaitReason};
pub use resources::{MachineResources, ResourceManager, ResourceRequest};
pub use runtime::{block_on, global_runtime};
pub use sink::{BatchWriter, Sink, SinkContext};
pub use stream::{
    OperatorTask, SourceReader, SplitAssignment, StreamOperator, StreamSource, assign_splits,
    decode_batches, encode_batches,
};
