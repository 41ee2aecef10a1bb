//! Rillet's planning layer: the [`DataFrame`] builder (the Rust API the Python package
//! wraps), SQL, and the translation of a logical plan into the runtime's physical dataflow
//! graph.
//!
//! Relational work is planned by DataFusion (expressions are DataFusion expressions).
//! Work that must leave the relational engine — Python UDFs and `map_batches` functions —
//! becomes a [`BatchStageNode`] in the logical plan; after physical planning the plan is
//! cut at those nodes, each becoming its own vertex on a blocking worker pool, joined to
//! the relational fragments around it by bounded exchanges.
//!
//! ```
//! use rillet_plan::{Session, col, lit};
//! let session = Session::default();
//! let df = session.range(10).unwrap()
//!     .filter(col("id").gt_eq(lit(5))).unwrap()
//!     .with_column("double", col("id") * lit(2)).unwrap();
//! let table = df.collect().unwrap();
//! assert_eq!(table.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
//! ```

mod dataframe;
mod frame_downscale;
mod graph_builder;
mod registry;
mod session;
mod sources;
mod stage;
pub mod streaming;
mod udf;

pub use dataframe::{DataFrame, JoinHow, ReadFormat, Windows};
pub use datafusion::prelude::{Expr, col, lit};
pub use graph_builder::build_dataflow;
pub use registry::register_functions;
pub use session::Session;
pub use stage::{BatchStageExec, BatchStageNode, StageKind};
pub use udf::{ArrayFunction, array_function_expr, registered_function};
