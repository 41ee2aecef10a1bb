//! Streaming jobs: from a DataFrame over a streaming source to a dataflow whose every
//! vertex passes checkpoint barriers.
//!
//! A batch job runs its relational work as DataFusion fragments, which know nothing of
//! barriers. A streaming job instead maps each operator of the physical plan to a vertex
//! of its own kind:
//!
//! - the scan of a [`StreamTable`] becomes a source vertex (split positions checkpointed);
//! - projections and filters become an [`ExprVertex`] (stateless, fused into one vertex),
//!   evaluating DataFusion's own physical expressions batch by batch;
//! - UDF and `map_batches` stages become function vertices, as in a batch job;
//! - a watermark assigner joins the expression vertex (it generates event time there);
//! - running and window aggregates become keyed vertices behind a hash exchange (a window
//!   aggregate without keys runs as one task);
//! - repartitions and coalesces are dropped: the dataflow routes rows itself.
//!
//! Anything else (joins, sorts, global aggregates, limits) is refused with its name until
//! it has a streaming form.

mod node;
mod source;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use rillet_common::{Result, RilletError};
use rillet_runtime::{DataflowGraph, EdgeKind, Sink, StreamOperator, VertexId, VertexOperator};

pub use node::{StreamStep, StreamStepExec, StreamStepNode};
pub(crate) use node::{StreamStepPlanner, column_index};
// The operators live beside the worker; these keep their paths here.
#[doc(hidden)]
pub use rillet_runtime::operators::fuzz_restore;
pub use rillet_runtime::operators::{
    EventClock, RunningAggregate, RunningFunction, RunningSpec, TimeSpan, WATERMARK_INTERVAL,
    WatermarkAssigner, WindowAggregate, WindowSpec, check_event_time_type,
};
use rillet_runtime::operators::{ExprStep, ExprVertex};
pub use source::{StreamSourceExec, StreamTable};

use crate::graph_builder::add_stage;
use crate::stage::BatchStageExec;

/// Build the dataflow of a streaming job for `plan`, ending in `sink`.
pub fn build_streaming_dataflow(
    plan: Arc<dyn ExecutionPlan>,
    sink: Arc<dyn Sink>,
    sink_name: &str,
) -> Result<DataflowGraph> {
    let mut builder = Builder::default();
    let last = builder.add(plan)?;
    let mut graph = builder.graph;
    let parallelism = graph.vertices[last.0].parallelism;
    let sink_vertex = graph.add_vertex(sink_name, VertexOperator::Sink(sink), parallelism);
    graph.connect(last, sink_vertex, EdgeKind::Forward);
    Ok(graph)
}

#[derive(Default)]
struct Builder {
    graph: DataflowGraph,
    /// The expression vertices so far, by vertex index, to fuse the next step into.
    exprs: HashMap<usize, ExprVertex>,
}

impl Builder {
    fn add(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<VertexId> {
        if let Some(scan) = plan.downcast_ref::<StreamSourceExec>() {
            let vertex = self.graph.add_vertex(
                scan.source().describe(),
                VertexOperator::Source(scan.source().clone()),
                scan.tasks(),
            );
            return Ok(match scan.projection() {
                Some(columns) => {
                    self.add_step(vertex, ExprStep::Select(columns.to_vec(), scan.schema()))
                }
                None => vertex,
            });
        }
        // The dataflow routes rows itself: DataFusion's exchanges have no part in it.
        let passthrough = plan.downcast_ref::<RepartitionExec>().is_some()
            || plan.name() == "CoalesceBatchesExec"
            || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
            || plan.name() == "CooperativeExec";
        if passthrough && let [child] = plan.children().as_slice() {
            return self.add((*child).clone());
        }
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            let upstream = self.add(filter.input().clone())?;
            let mut vertex = self.add_step(upstream, ExprStep::Filter(filter.predicate().clone()));
            if let Some(columns) = filter.projection() {
                vertex = self.add_step(vertex, ExprStep::Select(columns.to_vec(), filter.schema()));
            }
            return Ok(vertex);
        }
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            let upstream = self.add(projection.input().clone())?;
            let exprs = projection.expr().iter().map(|p| p.expr.clone()).collect();
            return Ok(self.add_step(upstream, ExprStep::Project(exprs, projection.schema())));
        }
        if let Some(stage) = plan.downcast_ref::<BatchStageExec>() {
            let upstream = self.add(stage.input().clone())?;
            return Ok(add_stage(
                &mut self.graph,
                upstream,
                stage.function().clone(),
            ));
        }
        if let Some(exec) = plan.downcast_ref::<StreamStepExec>() {
            let upstream = self.add(exec.input().clone())?;
            if let StreamStep::Watermark {
                column,
                delay,
                idle_timeout,
            } = exec.step()
            {
                let clock = EventClock::new(*column, *delay).with_idle_timeout(*idle_timeout);
                return Ok(self.add_step_with_clock(upstream, ExprStep::Watermark, Some(clock)));
            }
            let operator = exec.operator();
            let keys = operator.key_columns().unwrap_or_default();
            // Without keys, every row meets in one task.
            let (parallelism, edge) = if keys.is_empty() {
                (1, EdgeKind::Rebalance)
            } else {
                (
                    self.graph.vertices[upstream.0].parallelism,
                    EdgeKind::Hash(keys),
                )
            };
            let vertex = self.graph.add_vertex(
                operator.name(),
                VertexOperator::Stream(operator),
                parallelism,
            );
            self.graph.connect(upstream, vertex, edge);
            return Ok(vertex);
        }
        if plan.name() == "DataSourceExec" {
            // A file scan reads through DataFusion, which keeps no position to checkpoint.
            return Err(RilletError::invalid_argument(
                "a streaming job cannot read files through read_parquet, read_csv or \
                 read_json: read them with rl.watch_directory(path, format=..., bounded=True), \
                 which checkpoints the files done and the row reached in the current one",
            ));
        }
        Err(RilletError::invalid_argument(format!(
            "{} cannot run in a streaming job yet (streaming jobs take projections, filters, \
             UDFs, map_batches, watermarks, and running and window aggregates)",
            plan.name()
        )))
    }

    /// Append `step` to the expression vertex `upstream`, or start one after it.
    fn add_step(&mut self, upstream: VertexId, step: ExprStep) -> VertexId {
        self.add_step_with_clock(upstream, step, None)
    }

    /// [`add_step`](Self::add_step), and with `clock` make the vertex assign event time
    /// (a later watermark step replaces an earlier one of the same vertex).
    fn add_step_with_clock(
        &mut self,
        upstream: VertexId,
        step: ExprStep,
        clock: Option<EventClock>,
    ) -> VertexId {
        let input_schema = self.graph.output_schema(upstream);
        let (vertex, mut expr) = match self.exprs.remove(&upstream.0) {
            Some(expr) => (upstream, expr),
            None => {
                let parallelism = self.graph.vertices[upstream.0].parallelism;
                let expr = ExprVertex::new(input_schema.clone());
                let vertex = self.graph.add_vertex(
                    "expressions",
                    VertexOperator::Stream(Arc::new(expr.clone())),
                    parallelism,
                );
                self.graph.connect(upstream, vertex, EdgeKind::Forward);
                (vertex, expr)
            }
        };
        if let Some(clock) = clock {
            expr.assign_event_time(clock);
        }
        expr.push(step);
        let node = &mut self.graph.vertices[vertex.0];
        node.name = expr.name();
        node.operator = VertexOperator::Stream(Arc::new(expr.clone()));
        self.exprs.insert(vertex.0, expr);
        vertex
    }
}
