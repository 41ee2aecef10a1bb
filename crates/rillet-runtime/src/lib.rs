//! Rillet's dataflow runtime.
//!
//! A job is a [`DataflowGraph`]: vertices (operator chains with a parallelism) joined by
//! edges. The [`LocalWorker`] deploys a graph as tokio tasks, one per vertex partition,
//! connected by byte-budgeted [`channel`]s that carry [`StreamMessage`]s: record batches and,
//! in band with them, control messages such as checkpoint barriers. Blocking work (Python
//! functions, file writes) runs on a bounded [`BlockingPool`] off the async executor.
//!
//! "Worker" means one thing here: what runs a job's tasks ([`LocalWorker`], the `worker`
//! module; the tasks' bodies are in `task`). Functions computed outside the engine run in
//! function processes (the `rillet-processes` crate), and blocking calls on the threads
//! of a [`BlockingPool`]. The interfaces operators implement are in `rillet-operator`,
//! re-exported here.
//!
//! The worker is written as "one worker among many": everything it knows about its
//! neighbours goes through the graph's edges, so an edge can later become a remote Arrow
//! Flight exchange without touching the operators.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use datafusion::prelude::SessionContext;
//! use rillet_runtime::{DataflowGraph, LocalWorker, EdgeKind, VertexOperator, CollectSink};
//!
//! let rt = rillet_runtime::global_runtime();
//! let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
//! let ctx = SessionContext::new();
//! let plan = rt.block_on(async {
//!     ctx.read_batch(batch).unwrap().create_physical_plan().await.unwrap()
//! });
//! let mut graph = DataflowGraph::default();
//! let source = graph.add_vertex("source", VertexOperator::Fragment(plan), 1);
//! let (sink, mut results) = CollectSink::new(schema, 1 << 20);
//! let sink = graph.add_vertex("collect", VertexOperator::Sink(Arc::new(sink)), 1);
//! graph.connect(source, sink, EdgeKind::Forward);
//! let task_ctx = datafusion::execution::TaskContext::from(&ctx.state());
//! let mut job = LocalWorker::new(Default::default()).submit(graph, task_ctx).unwrap();
//! let rows: usize = rt.block_on(async {
//!     let mut rows = 0;
//!     while let Some(batch) = results.next_batch().await.unwrap() { rows += batch.num_rows(); }
//!     rows
//! });
//! assert_eq!(rows, 3);
//! rt.block_on(job.wait()).unwrap();
//! ```

pub mod allocator;
pub mod channel;
mod checkpointing;
mod exchange;
mod graph;
pub mod operators;
mod progress;
mod sink;
pub mod spill;
mod task;
mod worker;

pub use blocking::BlockingPool;
// The operator interfaces and what operators use from the engine live in rillet-operator;
// these keep their paths here.
use rillet_operator::{blocking, function, message, metrics, runtime, stream};
pub use rillet_operator::{keygroups, memory, resources};

pub use checkpointing::{CheckpointStats, Checkpointing};
pub use datafusion::common::ScalarValue;
pub use exchange::{ExchangeRegistry, ExchangeSourceExec};
pub use function::{
    ArrayFunction, BatchFunction, CallFields, Downscale, FunctionChain, FunctionContext,
    RowBatcher, call_first_row, record_decoded, record_nulls, while_loading_model,
};
pub use graph::{DataflowGraph, Edge, EdgeId, EdgeKind, Vertex, VertexId, VertexOperator};
pub use message::{CheckpointBarrier, StreamMessage, WATERMARK_END};
pub use metrics::{JobStats, NullCount, OperatorMetrics, OperatorStats, WaitReason};
pub use resources::{MachineResources, ResourceManager, ResourceRequest};
pub use runtime::{block_on, global_runtime};
pub use sink::{BatchWriter, CollectSink, CollectedBatches, Sink, SinkContext, conform_batch};
pub use stream::{
    OperatorTask, SourceReader, SplitAssignment, StreamOperator, StreamSource, assign_splits,
    decode_batches, encode_batches,
};
pub use worker::{JobCanceller, JobHandle, LocalWorker};
