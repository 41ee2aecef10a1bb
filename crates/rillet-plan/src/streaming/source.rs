//! A [`StreamSource`] as a table: planned like any scan, run as a source vertex by a
//! streaming job, or read to its end by a batch job (a bounded source).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use rillet_runtime::{StreamSource, assign_splits};

/// A streaming source registered as a table.
#[derive(Debug)]
pub struct StreamTable {
    source: Arc<dyn StreamSource>,
    bounded: bool,
}

impl StreamTable {
    /// The table over `source`; `bounded` says whether a batch job may read it to its end.
    pub fn new(source: Arc<dyn StreamSource>, bounded: bool) -> Self {
        Self { source, bounded }
    }

    /// Whether a batch job may read the source to its end.
    pub fn is_bounded(&self) -> bool {
        self.bounded
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let splits = self
            .source
            .splits()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let tasks = state.config().target_partitions().min(splits.len()).max(1);
        Ok(Arc::new(StreamSourceExec::new(
            self.source.clone(),
            projection.cloned(),
            tasks,
            self.bounded,
        )))
    }
}

/// The scan of a [`StreamTable`]: one partition per source task.
#[derive(Debug)]
pub struct StreamSourceExec {
    source: Arc<dyn StreamSource>,
    projection: Option<Vec<usize>>,
    tasks: usize,
    properties: Arc<PlanProperties>,
}

impl StreamSourceExec {
    fn new(
        source: Arc<dyn StreamSource>,
        projection: Option<Vec<usize>>,
        tasks: usize,
        bounded: bool,
    ) -> Self {
        let full = source.schema();
        let schema = match &projection {
            Some(columns) => Arc::new(full.project(columns).expect("projection within the schema")),
            None => full,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(tasks),
            EmissionType::Incremental,
            if bounded {
                Boundedness::Bounded
            } else {
                Boundedness::Unbounded {
                    requires_infinite_memory: false,
                }
            },
        );
        Self {
            source,
            projection,
            tasks,
            properties: Arc::new(properties),
        }
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn StreamSource> {
        &self.source
    }

    /// The columns the plan reads, if not all.
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// Source tasks.
    pub fn tasks(&self) -> usize {
        self.tasks
    }
}

impl DisplayAs for StreamSourceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamSourceExec: {}", self.source.describe())
    }
}

impl ExecutionPlan for StreamSourceExec {
    fn name(&self) -> &'static str {
        "StreamSourceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    /// A batch read: this partition's splits from their start to their end.
    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let external = |e: rillet_common::RilletError| DataFusionError::External(Box::new(e));
        let splits = self.source.splits().map_err(external)?;
        let mut assigned = assign_splits(&splits, self.tasks, &Default::default());
        let reader = self
            .source
            .open(std::mem::take(&mut assigned[partition]))
            .map_err(external)?;
        let projection = self.projection.clone();
        let stream = futures::stream::try_unfold(reader, move |mut reader| {
            let projection = projection.clone();
            async move {
                let next = reader.next_batch().await.map_err(external)?;
                Ok(match next {
                    Some(batch) => {
                        let batch = match &projection {
                            Some(columns) => batch.project(columns)?,
                            None => batch,
                        };
                        Some((batch, reader))
                    }
                    None => None,
                })
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}
