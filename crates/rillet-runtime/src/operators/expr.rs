//! The expression vertex of a streaming job.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::batch_filter;
use rillet_common::Result;
use rillet_operator::keygroups::TaskPlacement;
use rillet_operator::{OperatorTask, StreamOperator};

use super::watermark::EventClock;

/// One step of an [`ExprVertex`].
#[derive(Debug, Clone)]
pub enum ExprStep {
    /// Keep the rows where the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute these columns.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    /// Keep these columns.
    Select(Vec<usize>, SchemaRef),
    /// Note event time for the vertex's [`EventClock`].
    Watermark,
}

/// Stateless row-wise work (filters, projections) on each batch: DataFusion's physical
/// expressions evaluated outside its operators, so that barriers pass between batches.
#[derive(Debug, Clone)]
struct ExprOperator {
    steps: Vec<ExprStep>,
    /// The event time assigned here, if a watermark step is.
    clock: Option<EventClock>,
}

impl ExprOperator {
    fn apply(&mut self, mut batch: RecordBatch) -> Result<RecordBatch> {
        let Self { steps, clock } = self;
        for step in steps.iter() {
            batch = match step {
                ExprStep::Watermark => {
                    if let Some(clock) = clock.as_mut() {
                        clock.observe(&batch)?;
                    }
                    batch
                }
                ExprStep::Filter(predicate) => batch_filter(&batch, predicate)?,
                ExprStep::Project(exprs, schema) => {
                    let rows = batch.num_rows();
                    let columns = exprs
                        .iter()
                        .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(rows)))
                        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        columns,
                        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
                    )?
                }
                ExprStep::Select(columns, schema) => {
                    let projected = batch.project(columns)?;
                    RecordBatch::try_new(schema.clone(), projected.columns().to_vec())?
                }
            };
        }
        Ok(batch)
    }
}

/// A streaming job's stateless row-wise work (filters, projections, column selections and
/// the event time it assigns) fused into one vertex: DataFusion's physical expressions
/// evaluated outside its operators, batch by batch, so that barriers pass between batches.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use rillet_runtime::StreamOperator;
/// use rillet_runtime::operators::{EventClock, ExprStep, ExprVertex};
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("t", DataType::Int64, false),
///     Field::new("x", DataType::Int64, false),
/// ]));
/// let mut vertex = ExprVertex::new(schema.clone());
/// vertex.push(ExprStep::Select(vec![0], Arc::new(schema.project(&[0]).unwrap())));
/// vertex.assign_event_time(EventClock::new(0, 1_000));
/// vertex.push(ExprStep::Watermark);
/// assert_eq!(vertex.name(), "select → watermark");
/// assert_eq!(vertex.output_schema().fields().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct ExprVertex {
    operator: ExprOperator,
    schema: SchemaRef,
}

impl ExprVertex {
    /// A vertex with no steps yet over rows of `input`.
    pub fn new(input: SchemaRef) -> Self {
        Self {
            operator: ExprOperator {
                steps: Vec::new(),
                clock: None,
            },
            schema: input,
        }
    }

    /// Append `step`; a projection or selection sets the vertex's output schema.
    pub fn push(&mut self, step: ExprStep) {
        if let ExprStep::Project(_, schema) | ExprStep::Select(_, schema) = &step {
            self.schema = schema.clone();
        }
        self.operator.steps.push(step);
    }

    /// Make the vertex assign event time with `clock`, replacing an earlier watermark step
    /// of the vertex (push [`ExprStep::Watermark`] after this, where the time is read).
    pub fn assign_event_time(&mut self, clock: EventClock) {
        self.operator
            .steps
            .retain(|s| !matches!(s, ExprStep::Watermark));
        self.operator.clock = Some(clock);
    }
}

impl StreamOperator for ExprVertex {
    fn name(&self) -> String {
        let names: Vec<&str> = self
            .operator
            .steps
            .iter()
            .map(|s| match s {
                ExprStep::Filter(_) => "filter",
                ExprStep::Project(..) => "projection",
                ExprStep::Select(..) => "select",
                ExprStep::Watermark => "watermark",
            })
            .collect();
        names.join(" → ")
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn open(
        &self,
        _placement: TaskPlacement,
        _restored: &[Vec<u8>],
    ) -> Result<Box<dyn OperatorTask>> {
        Ok(Box::new(self.operator.clone()))
    }
}

impl OperatorTask for ExprOperator {
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(vec![self.apply(batch)?])
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<(Vec<RecordBatch>, Option<i64>)> {
        let forward = match self.clock.as_mut() {
            Some(clock) => clock.on_input(watermark),
            None => Some(watermark),
        };
        Ok((Vec::new(), forward))
    }

    fn take_watermark(&mut self) -> Option<i64> {
        self.clock.as_mut().and_then(EventClock::take)
    }

    fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.clock.as_ref().and_then(EventClock::idle_timeout)
    }

    fn flush_watermark(&mut self) -> Option<i64> {
        self.clock.as_mut().and_then(EventClock::flush)
    }
}
