//! Keyed running aggregates: each row gets its key's aggregates over every row of that key
//! so far (Flink's `keyBy(...).sum(...)`), with the per-key state snapshotted at
//! checkpoints and restored exactly.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use rillet_common::{Result, RilletError};
use rillet_runtime::{OperatorTask, StreamOperator};

/// What a running aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum RunningFunction {
    /// Rows so far (of the input column: its non-null values; without one: every row).
    Count,
    /// Sum of the values so far.
    Sum,
    /// Smallest value so far.
    Min,
    /// Largest value so far.
    Max,
}

/// One running aggregate: a function of an input column, written to column `output`.
#[derive(Debug, Clone, PartialEq, Hash, PartialOrd)]
pub struct RunningSpec {
    /// The function.
    pub function: RunningFunction,
    /// The input column's index (`None` for `count(*)`).
    pub input: Option<usize>,
    /// Name of the output column.
    pub output: String,
}

/// Whether a spec accumulates integers (exactly) or floats.
fn integer_input(schema: &Schema, spec: &RunningSpec) -> Result<bool> {
    let Some(input) = spec.input else {
        return Ok(true);
    };
    let field = schema.field(input);
    match field.data_type() {
        t if t.is_integer() => Ok(true),
        t if t.is_floating() => Ok(spec.function == RunningFunction::Count),
        _ if spec.function == RunningFunction::Count => Ok(true),
        other => Err(RilletError::invalid_argument(format!(
            "running {:?} of column {:?} needs numbers, not {other}",
            spec.function,
            field.name()
        ))),
    }
}

/// The output schema: the input's columns, then one per spec (Int64 for counts and integer
/// inputs, Float64 for float inputs).
pub fn running_schema(input: &Schema, specs: &[RunningSpec]) -> Result<SchemaRef> {
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    for spec in specs {
        if input.column_with_name(&spec.output).is_some() {
            return Err(RilletError::invalid_argument(format!(
                "running aggregate output {:?} clashes with an input column",
                spec.output
            )));
        }
        let data_type = if integer_input(input, spec)? {
            DataType::Int64
        } else {
            DataType::Float64
        };
        fields.push(Arc::new(Field::new(&spec.output, data_type, true)));
    }
    Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
}

/// The streaming operator (one task per key partition).
#[derive(Debug, Clone)]
pub struct RunningAggregate {
    input_schema: SchemaRef,
    keys: Vec<usize>,
    specs: Vec<RunningSpec>,
    schema: SchemaRef,
}

impl RunningAggregate {
    /// Aggregates `specs` per key `keys` (input column indices) of `input_schema`.
    pub fn try_new(input_schema: SchemaRef, keys: Vec<usize>, specs: Vec<RunningSpec>) -> Result<Self> {
        if keys.is_empty() {
            return Err(RilletError::invalid_argument(
                "a running aggregate needs at least one key column",
            ));
        }
        let schema = running_schema(&input_schema, &specs)?;
        Ok(Self {
            input_schema,
            keys,
            specs,
            schema,
        })
    }

    fn task(&self) -> Result<RunningTask> {
        let fields = self
            .keys
            .iter()
            .map(|&k| SortField::new(self.input_schema.field(k).data_type().clone()))
            .collect();
        let integer = self
            .specs
            .iter()
            .map(|s| integer_input(&self.input_schema, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(RunningTask {
            converter: RowConverter::new(fields)?,
            keys: self.keys.clone(),
            specs: self.specs.clone(),
            integer,
            schema: self.schema.clone(),
            state: HashMap::new(),
        })
    }
}

impl StreamOperator for RunningAggregate {
    /// Names the state layout too (key columns and types, each input's column and type),
    /// so that a restore into a changed aggregate is refused instead of misread.
    fn name(&self) -> String {
        let field = |i: usize| {
            let f = self.input_schema.field(i);
            format!("{}: {}", f.name(), f.data_type())
        };
        let keys: Vec<String> = self.keys.iter().map(|&k| field(k)).collect();
        let specs: Vec<String> = self
            .specs
            .iter()
            .map(|s| {
                let function = format!("{:?}", s.function).to_lowercase();
                let input = s.input.map_or("*".to_string(), field);
                format!("{function}({input}) as {}", s.output)
            })
            .collect();
        format!(
            "running aggregate by [{}]: {}",
            keys.join(", "),
            specs.join(", ")
        )
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn key_columns(&self) -> Option<Vec<usize>> {
        Some(self.keys.clone())
    }

    fn open(&self, _task: usize, restored: Option<&[u8]>) -> Result<Box<dyn OperatorTask>> {
        let mut task = self.task()?;
        if let Some(bytes) = restored {
            task.restore(bytes)?;
        }
        Ok(Box::new(task))
    }
}

/// One accumulator: an exact integer or a float (the same width either way, so a state
/// entry is fixed-size).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Empty,
    Int(i64),
    Float(f64),
}

struct RunningTask {
    converter: RowConverter,
    keys: Vec<usize>,
    specs: Vec<RunningSpec>,
    /// Per spec: accumulates integers.
    integer: Vec<bool>,
    schema: SchemaRef,
    /// Each key's accumulators, by the key's row encoding.
    state: HashMap<Box<[u8]>, Vec<Value>>,
}

impl RunningTask {
    fn process_batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let key_columns: Vec<ArrayRef> = self.keys.iter().map(|&k| batch.column(k).clone()).collect();
        let rows = self.converter.convert_columns(&key_columns)?;
        let n = batch.num_rows();
        // Inputs as i64 or f64 arrays (cast once per batch).
        let inputs: Vec<Option<ArrayRef>> = self
            .specs
            .iter()
            .zip(&self.integer)
            .map(|(spec, &integer)| {
                spec.input
                    .map(|i| {
                        let column = batch.column(i);
                        if spec.function == RunningFunction::Count {
                            return Ok(column.clone());
                        }
                        let to = if integer { DataType::Int64 } else { DataType::Float64 };
                        arrow::compute::cast(column, &to)
                    })
                    .transpose()
            })
            .collect::<std::result::Result<_, _>>()?;
        let mut outputs: Vec<Output> = self
            .integer
            .iter()
            .map(|&integer| {
                if integer {
                    Output::Int(Int64Builder::with_capacity(n))
                } else {
                    Output::Float(Float64Builder::with_capacity(n))
                }
            })
            .collect();
        let empty = vec![Value::Empty; self.specs.len()];
        for row in 0..n {
            let key = rows.row(row);
            let accumulators = match self.state.get_mut(key.as_ref()) {
                Some(accumulators) => accumulators,
                None => self
                    .state
                    .entry(key.as_ref().into())
                    .or_insert_with(|| empty.clone()),
            };
            for (s, spec) in self.specs.iter().enumerate() {
                let current = &mut accumulators[s];
                *current = update(spec.function, *current, inputs[s].as_deref(), row);
                outputs[s].push(*current);
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(outputs.into_iter().map(Output::finish));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The state as bytes: entry count, then per key its length, its bytes and one tagged
    /// 8-byte value per spec.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.state.len() * (16 + 9 * self.specs.len()));
        out.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        // Sorted, so that equal states encode equally.
        let mut entries: Vec<_> = self.state.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (key, values) in entries {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            for value in values {
                let (tag, bits) = match value {
                    Value::Empty => (0u8, 0u64),
                    Value::Int(v) => (1, *v as u64),
                    Value::Float(v) => (2, v.to_bits()),
                };
                out.push(tag);
                out.extend_from_slice(&bits.to_le_bytes());
            }
        }
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = || RilletError::Checkpoint("running aggregate state is cut short".into());
        let mut at = 0usize;
        let mut take = |len: usize| -> Result<&[u8]> {
            let slice = bytes.get(at..at + len).ok_or_else(bad)?;
            at += len;
            Ok(slice)
        };
        let entries = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let mut state = HashMap::with_capacity(entries as usize);
        for _ in 0..entries {
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            let key: Box<[u8]> = take(len)?.into();
            let mut values = Vec::with_capacity(self.specs.len());
            for _ in 0..self.specs.len() {
                let tag = take(1)?[0];
                let bits = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
                values.push(match tag {
                    0 => Value::Empty,
                    1 => Value::Int(bits as i64),
                    2 => Value::Float(f64::from_bits(bits)),
                    other => {
                        return Err(RilletError::Checkpoint(format!(
                            "running aggregate state has an unknown value tag {other}"
                        )));
                    }
                });
            }
            state.insert(key, values);
        }
        if at != bytes.len() {
            return Err(RilletError::Checkpoint(
                "running aggregate state has trailing bytes".into(),
            ));
        }
        self.state = state;
        Ok(())
    }
}

fn update(function: RunningFunction, current: Value, input: Option<&dyn Array>, row: usize) -> Value {
    let Some(input) = input else {
        // count(*)
        return match current {
            Value::Int(n) => Value::Int(n + 1),
            _ => Value::Int(1),
        };
    };
    if input.is_null(row) {
        return match (function, current) {
            (RunningFunction::Count, Value::Empty) => Value::Int(0),
            _ => current,
        };
    }
    if function == RunningFunction::Count {
        return match current {
            Value::Int(n) => Value::Int(n + 1),
            _ => Value::Int(1),
        };
    }
    let value = match input.data_type() {
        DataType::Int64 => Value::Int(input.as_primitive::<Int64Type>().value(row)),
        _ => Value::Float(input.as_primitive::<Float64Type>().value(row)),
    };
    match (function, current, value) {
        (_, Value::Empty, v) => v,
        (RunningFunction::Sum, Value::Int(a), Value::Int(b)) => Value::Int(a.wrapping_add(b)),
        (RunningFunction::Sum, Value::Float(a), Value::Float(b)) => Value::Float(a + b),
        (RunningFunction::Min, Value::Int(a), Value::Int(b)) => Value::Int(a.min(b)),
        (RunningFunction::Min, Value::Float(a), Value::Float(b)) => Value::Float(a.min(b)),
        (RunningFunction::Max, Value::Int(a), Value::Int(b)) => Value::Int(a.max(b)),
        (RunningFunction::Max, Value::Float(a), Value::Float(b)) => Value::Float(a.max(b)),
        (_, current, _) => current,
    }
}

enum Output {
    Int(Int64Builder),
    Float(Float64Builder),
}

impl Output {
    fn push(&mut self, value: Value) {
        match (self, value) {
            (Output::Int(b), Value::Int(v)) => b.append_value(v),
            (Output::Float(b), Value::Float(v)) => b.append_value(v),
            (Output::Int(b), _) => b.append_null(),
            (Output::Float(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Output::Int(mut b) => Arc::new(b.finish()),
            Output::Float(mut b) => Arc::new(b.finish()),
        }
    }
}

impl OperatorTask for RunningTask {
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(vec![self.process_batch(&batch)?])
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(Some(self.encode()))
    }
}

/// The logical node of a running aggregate.
#[derive(Debug, Clone)]
pub struct RunningAggregateNode {
    input: LogicalPlan,
    keys: Vec<usize>,
    specs: Vec<RunningSpec>,
    schema: DFSchemaRef,
    id: u64,
}

static NEXT_NODE_ID: AtomicU64 = AtomicU64::new(1);

impl RunningAggregateNode {
    /// A running aggregate of `specs` per `keys` (input column indices) over `input`.
    pub fn try_new(input: LogicalPlan, keys: Vec<usize>, specs: Vec<RunningSpec>) -> Result<Self> {
        let arrow_schema = Arc::new(input.schema().as_arrow().clone());
        let schema = running_schema(&arrow_schema, &specs)?;
        let mut qualified: Vec<_> = input
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        for field in schema.fields().iter().skip(arrow_schema.fields().len()) {
            qualified.push((None, field.clone()));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(
            qualified,
            input.schema().metadata().clone(),
        )?);
        Ok(Self {
            input,
            keys,
            specs,
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

impl PartialEq for RunningAggregateNode {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.input == other.input
    }
}
impl Eq for RunningAggregateNode {}
impl Hash for RunningAggregateNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}
impl PartialOrd for RunningAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.id.cmp(&other.id))
    }
}

impl UserDefinedLogicalNodeCore for RunningAggregateNode {
    fn name(&self) -> &str {
        "RunningAggregate"
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
        write!(f, "RunningAggregate: keys {:?}, {:?}", self.keys, self.specs)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("running aggregate needs one input".to_string())
        })?;
        let mut node = Self::try_new(input, self.keys.clone(), self.specs.clone())
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        node.id = self.id;
        Ok(node)
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Every input column passes through: none may be pruned below.
        None
    }
}

/// The physical running aggregate. In a batch job it runs per hash partition of its keys
/// (DataFusion repartitions its input); a streaming job runs it as a keyed vertex.
#[derive(Debug)]
pub struct RunningAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    operator: Arc<RunningAggregate>,
    properties: Arc<PlanProperties>,
}

impl RunningAggregateExec {
    fn new(input: Arc<dyn ExecutionPlan>, operator: Arc<RunningAggregate>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(operator.output_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            operator,
            properties: Arc::new(properties),
        }
    }

    /// The operator it runs.
    pub fn operator(&self) -> Arc<RunningAggregate> {
        self.operator.clone()
    }

    /// Its input.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for RunningAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RunningAggregateExec: {}", self.operator.name())
    }
}

impl ExecutionPlan for RunningAggregateExec {
    fn name(&self) -> &'static str {
        "RunningAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn datafusion::physical_expr::PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let schema = self.input.schema();
        let keys = self
            .operator
            .keys
            .iter()
            .map(|&k| {
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    schema.field(k).name(),
                    k,
                )) as Arc<dyn datafusion::physical_expr::PhysicalExpr>
            })
            .collect();
        vec![Distribution::KeyPartitioned(keys)]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("running aggregate needs one input".to_string())
        })?;
        Ok(Arc::new(Self::new(input, self.operator.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let mut task = self
            .operator
            .task()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let stream = input.map(move |batch| {
            let batch = batch?;
            task.process_batch(&batch)
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.operator.output_schema(),
            stream,
        )))
    }
}

/// Plans [`RunningAggregateNode`]s.
#[derive(Debug)]
pub(crate) struct RunningAggregatePlanner;

#[async_trait]
impl ExtensionPlanner for RunningAggregatePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<RunningAggregateNode>() else {
            return Ok(None);
        };
        let input = physical_inputs[0].clone();
        let operator = RunningAggregate::try_new(input.schema(), node.keys.clone(), node.specs.clone())
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Some(Arc::new(RunningAggregateExec::new(input, Arc::new(operator)))))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn batch(keys: &[&str], values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    fn operator() -> RunningAggregate {
        let specs = vec![
            RunningSpec { function: RunningFunction::Count, input: None, output: "n".into() },
            RunningSpec { function: RunningFunction::Sum, input: Some(1), output: "total".into() },
            RunningSpec { function: RunningFunction::Max, input: Some(1), output: "top".into() },
        ];
        RunningAggregate::try_new(batch(&[], &[]).schema(), vec![0], specs).unwrap()
    }

    fn column(batch: &RecordBatch, name: &str) -> Vec<i64> {
        batch.column_by_name(name).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn running_values_per_key_and_a_restore_continues_exactly() {
        let op = operator();
        let mut task = op.open(0, None).unwrap();
        let out = task.process(batch(&["a", "b", "a"], &[1, 10, 2])).unwrap().remove(0);
        assert_eq!(column(&out, "n"), vec![1, 1, 2]);
        assert_eq!(column(&out, "total"), vec![1, 10, 3]);
        let state = task.snapshot().unwrap().unwrap();
        // Rows after the snapshot, then a crash: the restored task continues from it.
        let _lost = task.process(batch(&["a"], &[100])).unwrap();
        let mut restored = op.open(0, Some(&state)).unwrap();
        let out = restored.process(batch(&["a", "b"], &[5, 1])).unwrap().remove(0);
        assert_eq!(column(&out, "n"), vec![3, 2]);
        assert_eq!(column(&out, "total"), vec![8, 11]);
        assert_eq!(column(&out, "top"), vec![5, 10]);
    }

    #[test]
    fn damaged_state_is_an_error() {
        let op = operator();
        let mut task = op.open(0, None).unwrap();
        task.process(batch(&["a"], &[1])).unwrap();
        let state = task.snapshot().unwrap().unwrap();
        let Err(err) = op.open(0, Some(&state[..state.len() - 3])) else {
            panic!("a cut-short state restored");
        };
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
