//! One logical node and one physical operator for every stateful streaming step (running
//! aggregates, event-time windows, watermark assignment), so that each step is only its
//! [`StreamOperator`]: planning, batch execution and the streaming builder are shared.
//!
//! In a batch job a [`StreamStepExec`] runs its operator's task over each partition of its
//! input (hash-partitioned by the step's keys) and finishes it at the end of the input, so
//! a windowed aggregate fires every window then. A streaming job runs the same operator as
//! a vertex, keyed behind a hash exchange (see [`super::build_streaming_dataflow`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Distribution, EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use rillet_common::{Result, RilletError};
use rillet_runtime::StreamOperator;
use rillet_runtime::keygroups::TaskPlacement;

use rillet_runtime::operators::{
    RunningAggregate, RunningSpec, WatermarkAssigner, WindowAggregate, WindowSpec,
};

/// A stateful streaming step, as the logical plan holds it (column indices of its input).
#[derive(Debug, Clone, PartialEq, Hash, PartialOrd)]
pub enum StreamStep {
    /// Keyed running aggregates (see [`RunningAggregate`]).
    Running {
        /// Key columns.
        keys: Vec<usize>,
        /// The aggregates.
        specs: Vec<RunningSpec>,
    },
    /// Keyed event-time window aggregates (see [`WindowAggregate`]).
    Window {
        /// Key columns.
        keys: Vec<usize>,
        /// The windows.
        window: WindowSpec,
        /// The aggregates.
        specs: Vec<RunningSpec>,
    },
    /// Event time from a column, and watermarks `delay` behind the latest event time seen
    /// (see [`WatermarkAssigner`]).
    Watermark {
        /// The event-time column.
        column: usize,
        /// How far the watermark trails the latest event time, in the column's units.
        delay: i64,
        /// After this long without a row, a task stops holding event time back downstream
        /// (see [`EventClock::with_idle_timeout`](rillet_runtime::operators::EventClock)).
        idle_timeout: Option<std::time::Duration>,
    },
}

impl StreamStep {
    /// The operator that runs this step over `input`.
    pub fn operator(&self, input: SchemaRef) -> Result<Arc<dyn StreamOperator>> {
        Ok(match self {
            StreamStep::Running { keys, specs } => Arc::new(RunningAggregate::try_new(
                input,
                keys.clone(),
                specs.clone(),
            )?),
            StreamStep::Window {
                keys,
                window,
                specs,
            } => Arc::new(WindowAggregate::try_new(
                input,
                keys.clone(),
                window.clone(),
                specs.clone(),
            )?),
            StreamStep::Watermark {
                column,
                delay,
                idle_timeout,
            } => Arc::new(
                WatermarkAssigner::try_new(input, *column, *delay)?
                    .with_idle_timeout(*idle_timeout),
            ),
        })
    }

    /// Input columns that lead the output unchanged (they keep their qualifiers).
    fn kept_inputs(&self, inputs: usize) -> Vec<usize> {
        match self {
            StreamStep::Window { keys, .. } => keys.clone(),
            StreamStep::Running { .. } | StreamStep::Watermark { .. } => (0..inputs).collect(),
        }
    }
}

/// The logical node of a [`StreamStep`].
#[derive(Debug, Clone)]
pub struct StreamStepNode {
    input: LogicalPlan,
    step: StreamStep,
    schema: DFSchemaRef,
    id: u64,
}

static NEXT_NODE_ID: AtomicU64 = AtomicU64::new(1);

impl StreamStepNode {
    /// `step` over `input`; fails as the step's operator would (a bad column, a clash).
    pub fn try_new(input: LogicalPlan, step: StreamStep) -> Result<Self> {
        let arrow_schema: SchemaRef = Arc::new(input.schema().as_arrow().clone());
        let output = step.operator(arrow_schema.clone())?.output_schema();
        let kept = step.kept_inputs(arrow_schema.fields().len());
        let mut qualified: Vec<_> = kept
            .iter()
            .map(|&i| {
                let (q, f) = input.schema().qualified_field(i);
                (q.cloned(), f.clone())
            })
            .collect();
        for field in output.fields().iter().skip(kept.len()) {
            qualified.push((None, field.clone()));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(
            qualified,
            input.schema().metadata().clone(),
        )?);
        Ok(Self {
            input,
            step,
            schema,
            id: NEXT_NODE_ID.fetch_add(1, AtomicOrdering::Relaxed),
        })
    }

    /// Wrap into a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }
}

impl PartialEq for StreamStepNode {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.input == other.input
    }
}
impl Eq for StreamStepNode {}
impl Hash for StreamStepNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}
impl PartialOrd for StreamStepNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.id.cmp(&other.id))
    }
}

impl UserDefinedLogicalNodeCore for StreamStepNode {
    fn name(&self) -> &str {
        match self.step {
            StreamStep::Running { .. } => "RunningAggregate",
            StreamStep::Window { .. } => "WindowAggregate",
            StreamStep::Watermark { .. } => "Watermark",
        }
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?}", self.step)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("a streaming step needs one input".to_string())
        })?;
        let mut node = Self::try_new(input, self.step.clone())
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        node.id = self.id;
        Ok(node)
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // The step addresses its input by column index: none may be pruned below.
        None
    }
}

/// The physical form of a [`StreamStep`]: its operator, run per partition in a batch job
/// and as a vertex in a streaming job.
#[derive(Debug)]
pub struct StreamStepExec {
    input: Arc<dyn ExecutionPlan>,
    step: StreamStep,
    operator: Arc<dyn StreamOperator>,
    properties: Arc<PlanProperties>,
}

impl StreamStepExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        step: StreamStep,
        operator: Arc<dyn StreamOperator>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(operator.output_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            step,
            operator,
            properties: Arc::new(properties),
        }
    }

    /// The step.
    pub fn step(&self) -> &StreamStep {
        &self.step
    }

    /// The operator it runs.
    pub fn operator(&self) -> Arc<dyn StreamOperator> {
        self.operator.clone()
    }

    /// Its input.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for StreamStepExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamStepExec: {}", self.operator.name())
    }
}

impl ExecutionPlan for StreamStepExec {
    fn name(&self) -> &'static str {
        "StreamStepExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let schema = self.input.schema();
        match self.operator.key_columns() {
            Some(keys) if !keys.is_empty() => vec![Distribution::KeyPartitioned(
                keys.iter()
                    .map(|&k| {
                        Arc::new(Column::new(schema.field(k).name(), k)) as Arc<dyn PhysicalExpr>
                    })
                    .collect(),
            )],
            Some(_) => vec![Distribution::SinglePartition],
            None => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![matches!(
            self.step,
            StreamStep::Running { .. } | StreamStep::Watermark { .. }
        )]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("a streaming step needs one input".to_string())
        })?;
        Ok(Arc::new(Self::new(
            input,
            self.step.clone(),
            self.operator.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let external = |e: RilletError| DataFusionError::External(Box::new(e));
        let input = self.input.execute(partition, context)?;
        let placement =
            TaskPlacement::new(partition, self.properties().partitioning.partition_count());
        let task = self.operator.open(placement, &[]).map_err(external)?;
        // Each input batch through the task, then whatever it holds at the end.
        let stream = futures::stream::unfold(
            (input, Some(task)),
            move |(mut input, mut task)| async move {
                let open = task.as_mut()?;
                let produced = match input.next().await {
                    Some(Ok(batch)) => open.process(batch),
                    Some(Err(e)) => return Some((vec![Err(e)], (input, None))),
                    None => {
                        let finished = open.finish();
                        task = None;
                        finished
                    }
                };
                let produced = match produced {
                    Ok(batches) => batches.into_iter().map(Ok).collect(),
                    Err(e) => {
                        task = None;
                        vec![Err(external(e))]
                    }
                };
                Some((produced, (input, task)))
            },
        )
        .flat_map(futures::stream::iter);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.operator.output_schema(),
            stream,
        )))
    }
}

/// Plans [`StreamStepNode`]s.
#[derive(Debug)]
pub(crate) struct StreamStepPlanner;

#[async_trait]
impl ExtensionPlanner for StreamStepPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<StreamStepNode>() else {
            return Ok(None);
        };
        let input = physical_inputs[0].clone();
        let operator = node
            .step
            .operator(input.schema())
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Some(Arc::new(StreamStepExec::new(
            input,
            node.step.clone(),
            operator,
        ))))
    }
}

/// The index of column `name` of `schema`, or an error naming `what` and the columns.
pub(crate) fn column_index(schema: &Schema, what: &str, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        RilletError::invalid_argument(format!(
            "{what}: no column {name:?}; columns are {:?}",
            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ))
    })
}
