//! Stage nodes: the places where a plan leaves the relational engine for a blocking batch
//! function (a Python UDF or `map_batches`). They are ordinary DataFusion extension nodes
//! while planning; [`crate::build_dataflow`] cuts the physical plan at each
//! [`BatchStageExec`] so the function runs as its own vertex on a worker pool.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use rillet_common::{Result, RilletError};
use rillet_runtime::BatchFunction;

use crate::udf::ArrayFunction;

/// What a stage computes.
#[derive(Debug, Clone)]
pub enum StageKind {
    /// A whole-batch function whose output schema it declares (`map_batches`).
    MapBatches(Arc<dyn BatchFunction>),
    /// A column function: evaluates `args` on each batch, calls the function on the
    /// resulting arrays and appends its result as column `output`.
    Udf {
        /// The function.
        function: Arc<dyn ArrayFunction>,
        /// Argument expressions (relational, evaluated before the call).
        args: Vec<Expr>,
        /// Name of the appended column.
        output: String,
        /// Input columns this stage is the last reader of (intermediate results of the
        /// calls below it): left out of its output, so a column of decoded images is freed
        /// as soon as the operator that consumes it has run.
        consumed: Vec<String>,
    },
}

/// The logical stage node.
#[derive(Debug, Clone)]
pub struct BatchStageNode {
    input: LogicalPlan,
    kind: StageKind,
    schema: DFSchemaRef,
    /// Identity for the Eq/Hash DataFusion requires (functions are not comparable).
    id: u64,
}

static NEXT_STAGE_ID: AtomicU64 = AtomicU64::new(1);

impl BatchStageNode {
    /// A stage over `input`. Fails if a UDF's output name clashes with an input column.
    pub fn try_new(input: LogicalPlan, kind: StageKind) -> Result<Self> {
        let schema = stage_schema(&input, &kind)?;
        Ok(Self {
            input,
            kind,
            schema,
            id: NEXT_STAGE_ID.fetch_add(1, AtomicOrdering::Relaxed),
        })
    }

    /// Wrap into a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// What the stage computes.
    pub fn kind(&self) -> &StageKind {
        &self.kind
    }

    /// The plan the stage reads.
    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }
}

fn stage_schema(input: &LogicalPlan, kind: &StageKind) -> Result<DFSchemaRef> {
    match kind {
        StageKind::MapBatches(function) => Ok(Arc::new(
            DFSchema::try_from(function.output_schema().as_ref().clone())
                .map_err(RilletError::from)?,
        )),
        StageKind::Udf {
            function,
            args,
            output,
            consumed,
        } => {
            let arg_fields = args
                .iter()
                .map(|a| a.to_field(input.schema()).map(|(_, field)| field))
                .collect::<DfResult<Vec<_>>>()?;
            let literals: Vec<Option<&ScalarValue>> = args
                .iter()
                .map(|a| match a {
                    Expr::Literal(value, _) => Some(value),
                    _ => None,
                })
                .collect();
            let field = function
                .return_field(&arg_fields, &literals)?
                .with_name(output);
            let added = DFSchema::try_from(Schema::new(vec![field])).map_err(RilletError::from)?;
            let kept = input
                .schema()
                .iter()
                .filter(|(_, f)| !consumed.contains(f.name()))
                .map(|(q, f)| (q.cloned(), f.clone()))
                .collect();
            let mut joined = DFSchema::new_with_metadata(kept, input.schema().metadata().clone())
                .map_err(RilletError::from)?;
            joined.merge(&added);
            Ok(Arc::new(joined))
        }
    }
}

impl PartialEq for BatchStageNode {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.input == other.input
    }
}
impl Eq for BatchStageNode {}
impl Hash for BatchStageNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}
impl PartialOrd for BatchStageNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.id.cmp(&other.id))
    }
}

impl UserDefinedLogicalNodeCore for BatchStageNode {
    fn name(&self) -> &str {
        match self.kind {
            StageKind::MapBatches(_) => "MapBatches",
            StageKind::Udf { .. } => "FunctionCall",
        }
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        match &self.kind {
            StageKind::MapBatches(_) => vec![],
            StageKind::Udf { args, .. } => args.clone(),
        }
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.kind {
            StageKind::MapBatches(function) => write!(f, "MapBatches: {}", function.name()),
            StageKind::Udf {
                function,
                args,
                output,
                ..
            } => {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                write!(
                    f,
                    "FunctionCall: {}({}) AS {output}",
                    function.name(),
                    args.join(", ")
                )
            }
        }
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("stage node needs one input".to_string()))?;
        let kind = match &self.kind {
            StageKind::MapBatches(f) => StageKind::MapBatches(f.clone()),
            StageKind::Udf {
                function,
                output,
                consumed,
                ..
            } => StageKind::Udf {
                function: function.clone(),
                args: exprs,
                output: output.clone(),
                consumed: consumed.clone(),
            },
        };
        let schema = stage_schema(&input, &kind).map_err(RilletError::into_datafusion)?;
        Ok(Self {
            input,
            kind,
            schema,
            id: self.id,
        })
    }

    fn supports_limit_pushdown(&self) -> bool {
        // A UDF maps rows one to one, so a limit above it may run below it.
        matches!(self.kind, StageKind::Udf { .. })
    }
}

/// The physical stage node: a placeholder that [`crate::build_dataflow`] cuts out of the
/// plan and runs as a vertex of its own.
#[derive(Debug)]
pub struct BatchStageExec {
    input: Arc<dyn ExecutionPlan>,
    function: Arc<dyn BatchFunction>,
    properties: Arc<PlanProperties>,
}

impl BatchStageExec {
    fn new(input: Arc<dyn ExecutionPlan>, function: Arc<dyn BatchFunction>) -> Self {
        let schema = function.output_schema();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            function,
            properties: Arc::new(properties),
        }
    }

    /// The function the stage runs.
    pub fn function(&self) -> &Arc<dyn BatchFunction> {
        &self.function
    }

    /// The stage's input plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for BatchStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BatchStageExec: {}", self.function.name())
    }
}

impl ExecutionPlan for BatchStageExec {
    fn name(&self) -> &str {
        "BatchStageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // A stage keeps every worker busy from one input partition (several calls in
        // flight) and returns rows in order; spreading its input round-robin would only
        // shuffle them.
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("stage needs one input".to_string()))?;
        Ok(Arc::new(Self::new(input, self.function.clone())))
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "BatchStageExec runs as a vertex of Rillet's dataflow; execute the DataFrame \
             through Rillet, not DataFusion directly"
                .to_string(),
        ))
    }
}

/// Turns [`BatchStageNode`]s into [`BatchStageExec`]s.
#[derive(Debug)]
pub(crate) struct BatchStagePlanner;

#[async_trait]
impl ExtensionPlanner for BatchStagePlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(stage) = node.as_any().downcast_ref::<BatchStageNode>() else {
            return Ok(None);
        };
        let input = physical_inputs[0].clone();
        let function: Arc<dyn BatchFunction> = match &stage.kind {
            StageKind::MapBatches(function) => function.clone(),
            StageKind::Udf {
                function,
                args,
                consumed,
                ..
            } => {
                let input_schema = logical_inputs[0].schema();
                let keep = input_schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !consumed.contains(f.name()))
                    .map(|(i, _)| i)
                    .collect();
                let args = args
                    .iter()
                    .map(|a| planner.create_physical_expr(a, input_schema, session, planning_ctx))
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(UdfBatchFunction {
                    name: format!("udf({})", function.name()),
                    function: function.clone(),
                    args,
                    keep,
                    output_schema: Arc::new(stage.schema.as_arrow().clone()),
                })
            }
        };
        Ok(Some(Arc::new(BatchStageExec::new(input, function))))
    }
}

/// `result` with the declared type where the two differ only in the metadata of nested
/// fields (names, types and nullability all equal): a function computing a struct that
/// holds an extension value (an `Image` inside `on_error="column"`'s `{value, error}`)
/// cannot always know the metadata the planner saw (an image's declared mode). Any other
/// difference is left for the schema check to report.
fn relabel_nested_fields(result: ArrayRef, declared: &DataType) -> Result<ArrayRef> {
    if result.data_type() == declared
        || without_metadata(result.data_type()) != without_metadata(declared)
    {
        return Ok(result);
    }
    let data = result
        .to_data()
        .into_builder()
        .data_type(declared.clone())
        .build()?;
    Ok(arrow::array::make_array(data))
}

/// `data_type` with the metadata of every nested field removed.
fn without_metadata(data_type: &DataType) -> DataType {
    let field = |f: &arrow::datatypes::FieldRef| {
        Arc::new(arrow::datatypes::Field::new(
            f.name(),
            without_metadata(f.data_type()),
            f.is_nullable(),
        ))
    };
    match data_type {
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::List(item) => DataType::List(field(item)),
        DataType::LargeList(item) => DataType::LargeList(field(item)),
        DataType::FixedSizeList(item, n) => DataType::FixedSizeList(field(item), *n),
        other => other.clone(),
    }
}

/// Runs a column function over a batch: evaluate the arguments, call, append the result.
#[derive(Debug)]
struct UdfBatchFunction {
    name: String,
    function: Arc<dyn ArrayFunction>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    /// Input columns passed through (all but the consumed ones), by index.
    keep: Vec<usize>,
    output_schema: SchemaRef,
}

impl UdfBatchFunction {
    fn kept_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.keep.iter().map(|&i| batch.column(i).clone()).collect()
    }
}

impl BatchFunction for UdfBatchFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn call(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        if rows == 0 {
            // Nothing to compute (and option arguments have no value to read).
            let mut columns = self.kept_columns(&batch);
            let output = self.output_schema.field(columns.len());
            columns.push(arrow::array::new_empty_array(output.data_type()));
            return Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?);
        }
        let args: Vec<ArrayRef> = self
            .args
            .iter()
            .map(|a| a.evaluate(&batch).and_then(|v| v.into_array(rows)))
            .collect::<DfResult<_>>()?;
        let result = self.function.call(&args, rows)?;
        if result.len() != rows {
            return Err(RilletError::UserFunction {
                operator: self.name.clone(),
                message: format!("returned {} values for {rows} rows", result.len()),
            });
        }
        let declared = self.output_schema.field(self.keep.len()).data_type();
        let result =
            relabel_nested_fields(result, declared).map_err(|e| RilletError::UserFunction {
                operator: self.name.clone(),
                message: format!("result does not fit the declared return type: {e}"),
            })?;
        let mut columns = self.kept_columns(&batch);
        columns.push(result);
        RecordBatch::try_new(self.output_schema.clone(), columns).map_err(|e| {
            RilletError::UserFunction {
                operator: self.name.clone(),
                message: format!("result does not fit the declared return type: {e}"),
            }
        })
    }

    fn batch_size(&self) -> Option<usize> {
        self.function.batch_size()
    }

    fn splittable_batches(&self) -> bool {
        self.function.splittable_batches()
    }

    fn concurrency(&self) -> Option<usize> {
        self.function.concurrency()
    }

    fn open(&self, context: &rillet_runtime::FunctionContext) -> Result<()> {
        self.function.open(context)
    }

    fn close(&self) {
        self.function.close()
    }
}
