//! From a DataFusion physical plan to Rillet's physical dataflow graph.
//!
//! The plan is cut at every [`BatchStageExec`]: the stage becomes a function vertex on a
//! worker pool (consecutive stages share one vertex, as a [`FunctionChain`]), what is below
//! it becomes an upstream fragment (cut again recursively), and in the plan above an
//! [`ExchangeSourceExec`] takes its place.

use std::sync::Arc;

use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use rillet_common::{Result, RilletError};
use rillet_runtime::{
    BatchFunction, DataflowGraph, EdgeKind, ExchangeSourceExec, FunctionChain, Sink, VertexId,
    VertexOperator,
};

use crate::stage::BatchStageExec;

/// Build the dataflow for `plan`, ending in `sink`.
pub fn build_dataflow(
    plan: Arc<dyn ExecutionPlan>,
    sink: Arc<dyn Sink>,
    sink_name: &str,
) -> Result<DataflowGraph> {
    let mut graph = DataflowGraph::default();
    let root = add_plan(&mut graph, plan)?;
    let parallelism = graph.vertices[root.0].parallelism;
    let sink_vertex = graph.add_vertex(sink_name, VertexOperator::Sink(sink), parallelism);
    graph.connect(root, sink_vertex, EdgeKind::Forward);
    Ok(graph)
}

/// Add the vertices producing `plan`'s output; returns the last one.
fn add_plan(graph: &mut DataflowGraph, plan: Arc<dyn ExecutionPlan>) -> Result<VertexId> {
    if let Some(stage) = plan.downcast_ref::<BatchStageExec>() {
        let upstream = add_plan(graph, stage.input().clone())?;
        return Ok(add_stage(graph, upstream, stage.function().clone()));
    }
    let mut upstreams = Vec::new();
    let fragment = replace_stages(graph, plan, &mut upstreams)?;
    let parallelism = fragment.output_partitioning().partition_count();
    let vertex = graph.add_vertex(
        fragment_name(&fragment),
        VertexOperator::Fragment(fragment),
        parallelism,
    );
    for upstream in upstreams {
        graph.connect(upstream, vertex, EdgeKind::Forward);
    }
    Ok(vertex)
}

/// Add the vertex running `function` after `upstream`; returns it. A stage directly on
/// another stage joins its chain: one call runs both, and the first one's intermediate
/// columns never queue between tasks.
pub(crate) fn add_stage(
    graph: &mut DataflowGraph,
    upstream: VertexId,
    function: Arc<dyn BatchFunction>,
) -> VertexId {
    let parallelism = graph.vertices[upstream.0].parallelism;
    let upstream_vertex = &mut graph.vertices[upstream.0];
    if let VertexOperator::Function(previous) = &upstream_vertex.operator {
        let chain = FunctionChain::new(previous.clone());
        if chain.accepts(function.as_ref()) {
            let chain = chain.then(function);
            upstream_vertex.name = chain.name().to_string();
            upstream_vertex.operator = VertexOperator::Function(Arc::new(chain));
            return upstream;
        }
    }
    let vertex = graph.add_vertex(
        function.name().to_string(),
        VertexOperator::Function(function),
        parallelism,
    );
    graph.connect(upstream, vertex, EdgeKind::Forward);
    vertex
}

/// Replace each stage below `plan` by an exchange leaf fed by the stage's own vertices.
fn replace_stages(
    graph: &mut DataflowGraph,
    plan: Arc<dyn ExecutionPlan>,
    upstreams: &mut Vec<VertexId>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.downcast_ref::<BatchStageExec>().is_some() {
        let schema = plan.schema();
        let upstream = add_plan(graph, plan)?;
        // The stage's vertex may run fewer tasks than DataFusion planned for it (a
        // round-robin spread below it dropped, see `single_task_stage_under_round_robin`):
        // the exchange reads as many partitions as that vertex has tasks.
        let partitions = graph.vertices[upstream.0].parallelism;
        upstreams.push(upstream);
        return Ok(Arc::new(ExchangeSourceExec::new(
            upstream, schema, partitions,
        )));
    }
    if let Some(stage_output) = single_task_stage_under_round_robin(&plan) {
        // DataFusion spreads a one-partition input round-robin over the cores. A stage
        // already keeps every core busy on its own (several calls in flight) and sends its
        // results in order; dropping the spread keeps that order for what follows (an
        // explode, a projection, the sink).
        return replace_stages(graph, stage_output, upstreams);
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    let mut new_children = Vec::with_capacity(children.len());
    let mut changed = false;
    for child in children {
        let new_child = replace_stages(graph, child.clone(), upstreams)?;
        changed |= !Arc::ptr_eq(&new_child, &child);
        new_children.push(new_child);
    }
    if !changed {
        return Ok(plan);
    }
    #[expect(deprecated)]
    plan.with_new_children(new_children)
        .map_err(RilletError::from)
}

/// The input of `plan` if `plan` is a round-robin repartition of a stage's single
/// partition, directly or through row-wise operators (projections, filters).
fn single_task_stage_under_round_robin(
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let repartition = plan.downcast_ref::<RepartitionExec>()?;
    if !matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_)) {
        return None;
    }
    let mut below = repartition.input().clone();
    loop {
        if below.output_partitioning().partition_count() != 1 {
            return None;
        }
        if below.downcast_ref::<BatchStageExec>().is_some() {
            return Some(repartition.input().clone());
        }
        let row_wise = below.downcast_ref::<ProjectionExec>().is_some()
            || below.downcast_ref::<FilterExec>().is_some();
        let next = match below.children().as_slice() {
            [only] if row_wise => (*only).clone(),
            _ => return None,
        };
        below = next;
    }
}

/// A short name for a fragment: its operators from the leaves up, e.g.
/// `scan parquet → filter → projection`.
fn fragment_name(plan: &Arc<dyn ExecutionPlan>) -> String {
    let mut names = Vec::new();
    collect_names(plan, &mut names);
    names.dedup();
    names.join(" → ")
}

fn collect_names(plan: &Arc<dyn ExecutionPlan>, names: &mut Vec<String>) {
    if let Some(first) = plan.children().first() {
        collect_names(first, names);
    }
    let name = plan.name();
    let short = match name {
        "DataSourceExec" => {
            let text = datafusion::physical_plan::displayable(plan.as_ref())
                .one_line()
                .to_string();
            let format = ["parquet", "csv", "json", "memory", "arrow"]
                .into_iter()
                .find(|f| text.contains(f))
                .unwrap_or("source");
            format!("scan {format}")
        }
        "ExchangeSourceExec" => "exchange".to_string(),
        "RepartitionExec"
        | "CoalesceBatchesExec"
        | "CoalescePartitionsExec"
        | "CooperativeExec" => {
            return;
        }
        other => other.trim_end_matches("Exec").to_lowercase(),
    };
    names.push(short);
}
