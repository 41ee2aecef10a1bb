//! Exchanges: where one vertex's output enters another vertex's DataFusion fragment.
//!
//! The planner cuts a physical plan at the points where work leaves the relational engine
//! (a Python stage, say) and puts an [`ExchangeSourceExec`] leaf where the cut input was.
//! At deployment the worker registers the receiving end of each input channel in the job's
//! [`ExchangeRegistry`]; the leaf takes its receiver from there when DataFusion executes
//! it. Local channels today; an Arrow Flight stream later, behind the same leaf.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use parking_lot::Mutex;

use crate::channel::ChannelReceiver;
use crate::graph::VertexId;
use crate::message::StreamMessage;
use crate::metrics::OperatorMetrics;

/// An exchange's receiving end and the metrics of the operator reading it, by (upstream
/// vertex, partition).
type Receivers = HashMap<(VertexId, usize), (ChannelReceiver, Arc<OperatorMetrics>)>;

/// The receivers of one job's exchanges, keyed by (upstream vertex, partition). Travels to
/// [`ExchangeSourceExec`] as an extension of the task's session config.
#[derive(Default)]
pub struct ExchangeRegistry {
    receivers: Mutex<Receivers>,
}

impl fmt::Debug for ExchangeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeRegistry")
            .field("pending", &self.receivers.lock().len())
            .finish()
    }
}

impl ExchangeRegistry {
    /// Register the receiver of `upstream`'s output for `partition`, counting rows on the
    /// consuming vertex's `metrics`.
    pub fn register(
        &self,
        upstream: VertexId,
        partition: usize,
        receiver: ChannelReceiver,
        metrics: Arc<OperatorMetrics>,
    ) {
        self.receivers
            .lock()
            .insert((upstream, partition), (receiver, metrics));
    }

    fn take(
        &self,
        upstream: VertexId,
        partition: usize,
    ) -> Option<(ChannelReceiver, Arc<OperatorMetrics>)> {
        self.receivers.lock().remove(&(upstream, partition))
    }
}

/// A leaf of a DataFusion fragment that reads the output of another vertex.
#[derive(Debug)]
pub struct ExchangeSourceExec {
    upstream: VertexId,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ExchangeSourceExec {
    /// A leaf reading `partitions` streams of `schema` from vertex `upstream`.
    pub fn new(upstream: VertexId, schema: SchemaRef, partitions: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            upstream,
            schema,
            properties: Arc::new(properties),
        }
    }

    /// The vertex this leaf reads from.
    pub fn upstream(&self) -> VertexId {
        self.upstream
    }
}

impl DisplayAs for ExchangeSourceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ExchangeSourceExec: from vertex [{}]", self.upstream.0)
    }
}

impl ExecutionPlan for ExchangeSourceExec {
    fn name(&self) -> &str {
        "ExchangeSourceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let registry = context
            .session_config()
            .get_extension::<ExchangeRegistry>()
            .ok_or_else(|| {
                DataFusionError::Internal(
                    "ExchangeSourceExec run outside a Rillet job (no exchange registry)".into(),
                )
            })?;
        let (receiver, metrics) = registry.take(self.upstream, partition).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "no input channel for vertex {} partition {partition}",
                self.upstream.0
            ))
        })?;
        let stream =
            futures::stream::unfold((receiver, metrics), |(mut receiver, metrics)| async move {
                loop {
                    match receiver.recv().await {
                        Some(StreamMessage::Batch(batch)) => {
                            metrics.add_input(batch.num_rows());
                            return Some((Ok(batch), (receiver, metrics)));
                        }
                        // Relational fragments run only in batch jobs: they snapshot no
                        // state and keep no event-time windows.
                        Some(
                            StreamMessage::Barrier(_)
                            | StreamMessage::Watermark(_)
                            | StreamMessage::Idle,
                        ) => continue,
                        Some(StreamMessage::End) => return None,
                        None => {
                            return Some((
                                Err(DataFusionError::External(Box::new(
                                    rillet_common::RilletError::Cancelled,
                                ))),
                                (receiver, metrics),
                            ));
                        }
                    }
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
