//! The lazy, immutable DataFrame: every method returns a new plan; nothing runs until a
//! result is asked for (`collect`, `count`, `write`, streaming).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::common::{Column, JoinType};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, SortExpr};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use rillet_common::{Result, RilletError};
use rillet_connectors::files::{FileFormat, FileSink, WriteMode};
use rillet_runtime::{
    BatchFunction, Checkpointing, CollectSink, CollectedBatches, JobHandle, JobStats, LocalWorker,
    Sink,
};

use crate::graph_builder::build_dataflow;
use crate::session::Session;
use crate::stage::{BatchStageNode, StageKind};
use crate::streaming::{
    RunningFunction, RunningSpec, StreamStep, StreamStepNode, TimeSpan, WindowSpec,
    build_streaming_dataflow, column_index,
};
use crate::udf::{contains_stage_call, extract_stages};

/// File formats the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header line.
    Csv,
    /// JSON lines.
    Json,
}

impl ReadFormat {
    pub(crate) fn extension(self) -> &'static str {
        match self {
            ReadFormat::Parquet => ".parquet",
            ReadFormat::Csv => ".csv",
            ReadFormat::Json => ".json",
        }
    }
}

/// Join kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinHow {
    /// Rows with a match on both sides.
    Inner,
    /// Every left row, matched or not.
    Left,
    /// Every right row, matched or not.
    Right,
    /// Every row of both sides.
    Full,
    /// Left rows that have a match (left columns only).
    Semi,
    /// Left rows that have no match (left columns only).
    Anti,
}

impl std::str::FromStr for JoinHow {
    type Err = RilletError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "inner" => JoinHow::Inner,
            "left" => JoinHow::Left,
            "right" => JoinHow::Right,
            "full" | "outer" => JoinHow::Full,
            "semi" => JoinHow::Semi,
            "anti" => JoinHow::Anti,
            other => {
                return Err(RilletError::invalid_argument(format!(
                    "unknown join type '{other}'; use inner, left, right, full, semi or anti"
                )));
            }
        })
    }
}

/// A lazy DataFrame.
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    inner: datafusion::dataframe::DataFrame,
    last_stats: Arc<Mutex<Option<JobStats>>>,
}

impl std::fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFrame")
            .field("schema", &self.schema())
            .finish()
    }
}

const LEFT: &str = "__left";
const RIGHT: &str = "__right";

impl DataFrame {
    /// Wrap a DataFusion DataFrame, checking its plan (names and types) now rather than at
    /// execution.
    pub(crate) fn new(session: Session, inner: datafusion::dataframe::DataFrame) -> Result<Self> {
        let state = session.context().state();
        state
            .analyzer()
            .execute_and_check(
                inner.logical_plan().clone(),
                state.config_options(),
                |_, _| {},
            )
            .map_err(RilletError::from)?;
        Ok(Self {
            session,
            inner,
            last_stats: Arc::new(Mutex::new(None)),
        })
    }

    fn with_plan(&self, plan: LogicalPlan) -> Result<Self> {
        let df = datafusion::dataframe::DataFrame::new(self.session.context().state(), plan);
        Self::new(self.session.clone(), df)
    }

    fn derive(
        &self,
        df: datafusion::error::Result<datafusion::dataframe::DataFrame>,
    ) -> Result<Self> {
        Self::new(self.session.clone(), df?)
    }

    /// The DataFusion DataFrame underneath.
    pub fn inner(&self) -> &datafusion::dataframe::DataFrame {
        &self.inner
    }

    /// The session this DataFrame belongs to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.inner.schema().as_arrow().clone())
    }

    /// The logical plan.
    pub fn logical_plan(&self) -> &LogicalPlan {
        self.inner.logical_plan()
    }

    /// True if the plan reads a stream without end (Kafka, Redis, a watched directory):
    /// running it to look at its first rows would consume them.
    ///
    /// ```
    /// let session = rillet_plan::Session::default();
    /// assert!(!session.range(3).unwrap().reads_unbounded());
    /// assert!(session.read_sequence("s", 1, None, None, None).unwrap().reads_unbounded());
    /// ```
    pub fn reads_unbounded(&self) -> bool {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        let mut unbounded = false;
        let _ = self.logical_plan().apply(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source)
                && let Some(table) = (provider.as_ref() as &dyn std::any::Any)
                    .downcast_ref::<crate::streaming::StreamTable>()
                && !table.is_bounded()
            {
                unbounded = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        unbounded
    }

    fn columns(&self) -> Vec<Expr> {
        self.inner
            .schema()
            .iter()
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect()
    }

    /// Keep only `exprs` (columns or computed expressions).
    pub fn select(&self, exprs: Vec<Expr>) -> Result<Self> {
        let (plan, exprs) = extract_stages(self.logical_plan().clone(), exprs)?;
        self.with_plan(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
    }

    /// Add or replace one column.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<Self> {
        self.with_columns(vec![(name.to_string(), expr)])
    }

    /// Add or replace several columns; replaced columns keep their position.
    pub fn with_columns(&self, columns: Vec<(String, Expr)>) -> Result<Self> {
        let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
        let exprs = columns.into_iter().map(|(n, e)| e.alias(n)).collect();
        let (plan, mut new_exprs) = extract_stages(self.logical_plan().clone(), exprs)?;
        let mut projection = Vec::new();
        let mut placed = HashSet::new();
        for (qualifier, field) in self.inner.schema().iter() {
            match names.iter().position(|n| n == field.name()) {
                Some(i) => {
                    projection.push(new_exprs[i].clone());
                    placed.insert(i);
                }
                None => {
                    projection.push(Expr::Column(Column::new(qualifier.cloned(), field.name())))
                }
            }
        }
        for (i, expr) in new_exprs.drain(..).enumerate() {
            if !placed.contains(&i) {
                projection.push(expr);
            }
        }
        self.with_plan(
            LogicalPlanBuilder::from(plan)
                .project(projection)?
                .build()?,
        )
    }

    /// Keep rows where `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<Self> {
        if !contains_stage_call(&predicate) {
            return self.derive(self.inner.clone().filter(predicate));
        }
        let (plan, mut exprs) = extract_stages(self.logical_plan().clone(), vec![predicate])?;
        let predicate = exprs.remove(0).unalias();
        let plan = LogicalPlanBuilder::from(plan)
            .filter(predicate)?
            .project(self.columns())?
            .build()?;
        self.with_plan(plan)
    }

    /// Drop columns by name. Unknown names are an error.
    pub fn drop(&self, names: &[String]) -> Result<Self> {
        let schema = self.schema();
        for name in names {
            if schema.field_with_name(name).is_err() {
                return Err(unknown_column(name, &schema));
            }
        }
        self.derive(self.inner.clone().drop_columns(names))
    }

    /// Rename columns: `(old, new)` pairs.
    pub fn rename(&self, pairs: &[(String, String)]) -> Result<Self> {
        let schema = self.schema();
        let mut df = self.inner.clone();
        for (old, new) in pairs {
            if schema.field_with_name(old).is_err() {
                return Err(unknown_column(old, &schema));
            }
            df = df.with_column_renamed(old, new)?;
        }
        Self::new(self.session.clone(), df)
    }

    /// At most `n` rows, after skipping `offset`.
    pub fn limit(&self, n: usize, offset: usize) -> Result<Self> {
        self.derive(self.inner.clone().limit(offset, Some(n)))
    }

    /// The rows spread round-robin over `partitions` parallel streams, batch by batch (to
    /// widen the stages after a source of few files or splits).
    ///
    /// ```
    /// let df = rillet_plan::Session::default().range(10).unwrap().repartition(4).unwrap();
    /// assert_eq!(df.count().unwrap(), 10);
    /// ```
    pub fn repartition(&self, partitions: usize) -> Result<Self> {
        if partitions == 0 {
            return Err(RilletError::invalid_argument(
                "repartition needs at least one partition",
            ));
        }
        self.derive(self.inner.clone().repartition(
            datafusion::logical_expr::Partitioning::RoundRobinBatch(partitions),
        ))
    }

    /// One row per element of the list column `column` (other columns repeated).
    pub fn explode(&self, column: &str) -> Result<Self> {
        let schema = self.schema();
        let Ok(field) = schema.field_with_name(column) else {
            return Err(unknown_column(column, &schema));
        };
        if !matches!(
            field.data_type(),
            DataType::List(_)
                | DataType::LargeList(_)
                | DataType::FixedSizeList(..)
                | DataType::ListView(_)
                | DataType::LargeListView(_)
        ) {
            return Err(RilletError::Plan(format!(
                "explode: column {column:?} is {}, not a list; explode takes list columns \
                 (e.g. from str.split, text.chunk or video.frames)",
                field.data_type()
            )));
        }
        let item_metadata = match schema
            .field_with_name(column)
            .map(|f| f.data_type().clone())
        {
            Ok(
                DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _),
            ) if !item.metadata().is_empty() => Some(
                datafusion::common::metadata::FieldMetadata::from(item.as_ref()),
            ),
            _ => None,
        };
        let exploded = self.inner.clone().unnest_columns(&[column])?;
        let Some(metadata) = item_metadata else {
            return Self::new(self.session.clone(), exploded);
        };
        // DataFusion's unnest drops the item field's metadata, which is where extension
        // types (Image, Audio, Clip, ...) live: put it back.
        let columns: Vec<Expr> = exploded
            .schema()
            .iter()
            .map(|(qualifier, field)| {
                let expr = Expr::Column(Column::from((qualifier, field)));
                if field.name() == column {
                    expr.alias_with_metadata(column, Some(metadata.clone()))
                } else {
                    expr
                }
            })
            .collect();
        self.derive(exploded.select(columns))
    }

    /// Rows of `self` followed by rows of `other` (same columns, by position).
    pub fn union(&self, other: &DataFrame) -> Result<Self> {
        self.derive(self.inner.clone().union(other.inner.clone()))
    }

    /// Sort by expressions.
    pub fn sort(&self, by: Vec<SortExpr>) -> Result<Self> {
        self.derive(self.inner.clone().sort(by))
    }

    /// Distinct rows.
    pub fn distinct(&self) -> Result<Self> {
        self.derive(self.inner.clone().distinct())
    }

    /// One row per distinct value of the `subset` columns (all columns when empty); which
    /// of the duplicates is kept is unspecified.
    pub fn drop_duplicates(&self, subset: &[String]) -> Result<Self> {
        if subset.is_empty() {
            return self.distinct();
        }
        let schema = self.schema();
        for name in subset {
            if schema.field_with_name(name).is_err() {
                return Err(unknown_column(name, &schema));
            }
        }
        let on = subset
            .iter()
            .map(|name| Expr::Column(Column::from_name(name)))
            .collect();
        let all = schema
            .fields()
            .iter()
            .map(|f| Expr::Column(Column::from_name(f.name())))
            .collect();
        self.derive(self.inner.clone().distinct_on(on, all, None))
    }

    /// Group by `keys` and compute aggregate expressions `aggs`.
    pub fn aggregate(&self, keys: Vec<Expr>, aggs: Vec<Expr>) -> Result<Self> {
        let typed_lists = self.typed_list_items(&aggs);
        let aggregated = self.inner.clone().aggregate(keys, aggs)?;
        if typed_lists.is_empty() {
            return Self::new(self.session.clone(), aggregated);
        }
        // DataFusion's array_agg makes a list of the values' storage: give its item field
        // the values' extension metadata back (a list of Images stays one).
        let columns: Vec<Expr> = aggregated
            .schema()
            .iter()
            .map(|(qualifier, field)| {
                let column = Expr::Column(Column::from((qualifier, field)));
                match (typed_lists.get(field.name()), field.data_type()) {
                    (Some(item), DataType::List(_)) => {
                        datafusion::logical_expr::cast(column, DataType::List(item.clone()))
                            .alias(field.name())
                    }
                    _ => column,
                }
            })
            .collect();
        self.derive(aggregated.select(columns))
    }

    /// For each aggregate of `aggs` that gathers a column of an extension type into a list
    /// (`array_agg`), its output name and the list's item field with that type's metadata.
    fn typed_list_items(&self, aggs: &[Expr]) -> std::collections::HashMap<String, FieldRef> {
        let schema = self.schema();
        let mut items = std::collections::HashMap::new();
        for agg in aggs {
            let (name, inner) = match agg {
                Expr::Alias(alias) => (alias.name.clone(), alias.expr.as_ref()),
                other => (other.schema_name().to_string(), other),
            };
            let Expr::AggregateFunction(function) = inner else {
                continue;
            };
            if function.func.name() != "array_agg" {
                continue;
            }
            let Some(Expr::Column(column)) = function.params.args.first() else {
                continue;
            };
            let Ok(field) = schema.field_with_name(&column.name) else {
                continue;
            };

            if field.metadata().contains_key("ARROW:extension:name") {
                items.insert(
                    name,
                    Arc::new(
                        Field::new_list_field(field.data_type().clone(), true)
                            .with_metadata(field.metadata().clone()),
                    ),
                );
            }
        }
        items
    }

    /// Join with `other` on equal keys. When both sides use the same key names the result
    /// has each key once; other right columns whose names clash get a `right.` prefix.
    pub fn join(
        &self,
        other: &DataFrame,
        how: JoinHow,
        left_on: &[String],
        right_on: &[String],
    ) -> Result<Self> {
        if left_on.is_empty() || left_on.len() != right_on.len() {
            return Err(RilletError::invalid_argument(
                "join needs the same, non-zero number of left and right keys",
            ));
        }
        let (left_schema, right_schema) = (self.schema(), other.schema());
        for key in left_on {
            if left_schema.field_with_name(key).is_err() {
                return Err(unknown_column(key, &left_schema));
            }
        }
        for key in right_on {
            if right_schema.field_with_name(key).is_err() {
                return Err(unknown_column(key, &right_schema));
            }
        }
        let join_type = match how {
            JoinHow::Inner => JoinType::Inner,
            JoinHow::Left => JoinType::Left,
            JoinHow::Right => JoinType::Right,
            JoinHow::Full => JoinType::Full,
            JoinHow::Semi => JoinType::LeftSemi,
            JoinHow::Anti => JoinType::LeftAnti,
        };
        let left = self.inner.clone().alias(LEFT)?;
        let right = other.inner.clone().alias(RIGHT)?;
        let l: Vec<&str> = left_on.iter().map(String::as_str).collect();
        let r: Vec<&str> = right_on.iter().map(String::as_str).collect();
        let joined = left.join(right, join_type, &l, &r, None)?;
        let lcol = |name: &str| Expr::Column(Column::new(Some(LEFT), name));
        let rcol = |name: &str| Expr::Column(Column::new(Some(RIGHT), name));
        let mut projection = Vec::new();
        let same_keys = left_on == right_on;
        for field in left_schema.fields() {
            let name = field.name().as_str();
            let is_key = same_keys && left_on.iter().any(|k| k == name);
            let expr = match how {
                JoinHow::Full if is_key => {
                    datafusion::functions::core::expr_fn::coalesce(vec![lcol(name), rcol(name)])
                }
                JoinHow::Right if is_key => rcol(name),
                _ => lcol(name),
            };
            projection.push(expr.alias(name));
        }
        if !matches!(how, JoinHow::Semi | JoinHow::Anti) {
            for field in right_schema.fields() {
                let name = field.name().as_str();
                if same_keys && right_on.iter().any(|k| k == name) {
                    continue;
                }
                let alias = if left_schema.field_with_name(name).is_ok() {
                    format!("right.{name}")
                } else {
                    name.to_string()
                };
                projection.push(rcol(name).alias(alias));
            }
        }
        self.derive(joined.select(projection))
    }

    /// Apply a whole-batch function (runs as its own stage on a worker pool).
    pub fn map_batches(&self, function: Arc<dyn BatchFunction>) -> Result<Self> {
        let node =
            BatchStageNode::try_new(self.logical_plan().clone(), StageKind::MapBatches(function))?;
        self.with_plan(node.into_plan())
    }

    /// Keyed running aggregates: each row gets, per aggregate of `specs` (a function, its
    /// input column, its output column), the value over every row of its `keys` so far.
    /// In a streaming job the per-key state is checkpointed and restored exactly.
    pub fn running_aggregate(
        &self,
        keys: &[String],
        specs: Vec<(RunningFunction, Option<String>, String)>,
    ) -> Result<Self> {
        let schema = self.schema();
        let what = "running aggregate";
        let keys = keys
            .iter()
            .map(|k| column_index(&schema, what, k))
            .collect::<Result<Vec<_>>>()?;
        let specs = aggregate_specs(&schema, what, specs)?;
        self.stream_step(StreamStep::Running { keys, specs })
    }

    /// Event time from `column` (a timestamp, date or integer column), with watermarks
    /// `delay` behind the latest event time seen: how much disorder the job tolerates
    /// before rows count as late for the windows after it. With `idle_timeout`, a task
    /// that has seen no row for that long stops holding event time back downstream (a
    /// quiet Kafka partition, an empty stream) until rows come again.
    pub fn with_watermark(
        &self,
        column: &str,
        delay: TimeSpan,
        idle_timeout: Option<std::time::Duration>,
    ) -> Result<Self> {
        let schema = self.schema();
        let index = column_index(&schema, "watermark", column)?;
        let delay = delay.resolve(column, schema.field(index).data_type())?;
        self.stream_step(StreamStep::Watermark {
            column: index,
            delay,
            idle_timeout,
        })
    }

    /// Aggregates `specs` per key `keys` and event-time window of `window`: one row per
    /// key and window (the keys, `window_start`, `window_end`, the aggregates), emitted
    /// when the watermark passes the window's end plus its lateness. In a batch job every
    /// window is emitted at the end of the input.
    pub fn window_aggregate(
        &self,
        keys: &[String],
        window: &Windows,
        specs: Vec<(RunningFunction, Option<String>, String)>,
    ) -> Result<Self> {
        let schema = self.schema();
        let what = "window aggregate";
        let keys = keys
            .iter()
            .map(|k| column_index(&schema, what, k))
            .collect::<Result<Vec<_>>>()?;
        let time = column_index(&schema, what, &window.column)?;
        let time_type = schema.field(time).data_type();
        let units = |span: &TimeSpan| span.resolve(&window.column, time_type);
        let size = units(&window.size)?;
        let slide = window
            .slide
            .as_ref()
            .map(units)
            .transpose()?
            .unwrap_or(size);
        let window = WindowSpec::sliding(time, size, slide).with_lateness(units(&window.lateness)?);
        let specs = aggregate_specs(&schema, what, specs)?;
        self.stream_step(StreamStep::Window {
            keys,
            window,
            specs,
        })
    }

    fn stream_step(&self, step: StreamStep) -> Result<Self> {
        let node = StreamStepNode::try_new(self.logical_plan().clone(), step)?;
        self.with_plan(node.into_plan())
    }

    /// Start this DataFrame as a streaming job writing `format` files into `directory`
    /// exactly once, under job id `job`. With `checkpoints` (a location, local or `s3://`,
    /// and an interval) the job checkpoints there and, if the location already holds
    /// snapshots of `job`, resumes from the newest valid one; files become visible as the
    /// checkpoints covering them complete. Without, they become visible when the input
    /// ends. Without `resume`, a snapshot of this job named by
    /// [`RESUME_ENV`](rillet_checkpoint::RESUME_ENV) is resumed from.
    pub fn start_files(
        &self,
        directory: &str,
        format: FileFormat,
        job: &str,
        checkpoints: Option<(&str, std::time::Duration)>,
        resume: Option<(rillet_checkpoint::Kind, u64)>,
    ) -> Result<JobHandle> {
        let sink = Arc::new(FileSink::exactly_once(directory, format, job)?);
        let name = format!("write {}", format.extension());
        self.start_sink(sink, &name, job, checkpoints, resume)
    }

    /// Start this DataFrame as a streaming job into `sink` (an exactly-once sink commits
    /// at checkpoints), under job id `job`; checkpoints and resuming as for
    /// [`start_files`](Self::start_files).
    pub fn start_sink(
        &self,
        sink: Arc<dyn Sink>,
        sink_name: &str,
        job: &str,
        checkpoints: Option<(&str, std::time::Duration)>,
        resume: Option<(rillet_checkpoint::Kind, u64)>,
    ) -> Result<JobHandle> {
        let graph = build_streaming_dataflow(self.physical_plan()?, sink, sink_name)?;
        let task_ctx = self.inner.task_ctx();
        let worker = LocalWorker::new(self.session.config().clone());
        let Some((location, interval)) = checkpoints else {
            return worker.submit(graph, task_ctx);
        };
        let store = rillet_checkpoint::CheckpointStore::open(location, job)?;
        // `rillet resume --from <snapshot>` runs the job's program again with the snapshot
        // in the environment: it applies to the job it names, where no snapshot was given.
        let resume = match resume {
            Some(resume) => Some(resume),
            None => rillet_checkpoint::SnapshotPath::from_env(location, job)?
                .map(|path| (path.kind, path.id)),
        };
        let checkpointing = self.session.block_on(async {
            match resume {
                Some((kind, id)) => Checkpointing::resume_from(store, interval, kind, id).await,
                None => Checkpointing::resume_latest(store, interval).await,
            }
        })?;
        worker.submit_checkpointed(graph, task_ctx, checkpointing)
    }

    /// The DataFusion physical plan (before it is cut into a dataflow).
    pub fn physical_plan(&self) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self
            .session
            .block_on(self.inner.clone().create_physical_plan())?)
    }

    /// Start the job, sending its rows to `sink`.
    pub fn execute(&self, sink: Arc<dyn Sink>, sink_name: &str) -> Result<JobHandle> {
        let graph = build_dataflow(self.physical_plan()?, sink, sink_name)?;
        let task_ctx = self.inner.task_ctx();
        LocalWorker::new(self.session.config().clone()).submit(graph, task_ctx)
    }

    /// Start the job and stream its batches back through a bounded channel.
    pub fn execute_stream(&self) -> Result<(JobHandle, CollectedBatches)> {
        let plan = self.physical_plan()?;
        let capacity = (self.session.config().memory_budget_bytes / 4).max(1 << 20);
        let (sink, batches) = CollectSink::new(self.schema(), capacity);
        let graph = build_dataflow(plan, Arc::new(sink), "collect")?;
        let task_ctx = self.inner.task_ctx();
        let job = LocalWorker::new(self.session.config().clone()).submit(graph, task_ctx)?;
        Ok((job, batches))
    }

    /// Run and return every batch.
    pub fn collect(&self) -> Result<Vec<RecordBatch>> {
        let (mut job, mut batches) = self.execute_stream()?;
        let (result, stats) = self.session.block_on(async {
            let mut out = Vec::new();
            while let Some(batch) = batches.next_batch().await? {
                out.push(batch);
            }
            let stats = job.wait().await?;
            Ok::<_, RilletError>((out, stats))
        })?;
        self.record_stats(stats);
        Ok(result)
    }

    /// Run and count the rows.
    pub fn count(&self) -> Result<usize> {
        let counted = self.count_query()?;
        let batches = counted.collect()?;
        self.record_stats(counted.last_stats().unwrap_or_default());
        Self::count_from(&batches)
    }

    /// The one-row query `count` runs (for callers that run it their own way).
    pub fn count_query(&self) -> Result<Self> {
        self.aggregate(
            vec![],
            vec![
                datafusion::functions_aggregate::expr_fn::count(datafusion::prelude::lit(1))
                    .alias("count"),
            ],
        )
    }

    /// Read the result of [`count_query`](Self::count_query).
    pub fn count_from(batches: &[RecordBatch]) -> Result<usize> {
        let batch = batches
            .first()
            .ok_or_else(|| RilletError::internal("count returned no rows"))?;
        let counts = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| RilletError::internal("count is not an Int64 column"))?;
        Ok(counts.value(0) as usize)
    }

    /// Run and write the rows as files of `format` into `directory`.
    pub fn write(&self, directory: &str, format: FileFormat, mode: WriteMode) -> Result<JobStats> {
        let sink = Arc::new(FileSink::new(directory, format, mode));
        let name = format!("write {}", format.extension());
        let mut job = self.execute(sink, &name)?;
        let stats = self.session.block_on(job.wait())?;
        self.record_stats(stats.clone());
        Ok(stats)
    }

    /// The logical plan and the physical dataflow, as text.
    pub fn explain(&self) -> Result<String> {
        let optimized = self
            .session
            .context()
            .state()
            .optimize(self.logical_plan())?;
        let plan = self.physical_plan()?;
        let (sink, _batches) = CollectSink::new(plan.schema(), 1 << 20);
        let graph = build_dataflow(plan, Arc::new(sink), "collect")?;
        Ok(rillet_common::tidy_datafusion_message(&format!(
            "== Logical plan ==\n{}\n\n== Physical dataflow ==\n{graph}",
            optimized.display_indent()
        )))
    }

    /// Remember the figures of the last run of this DataFrame.
    pub fn record_stats(&self, stats: JobStats) {
        *self.last_stats.lock() = Some(stats);
    }

    /// Figures of the last run of this DataFrame, if it ran.
    pub fn last_stats(&self) -> Option<JobStats> {
        self.last_stats.lock().clone()
    }
}

fn unknown_column(name: &str, schema: &SchemaRef) -> RilletError {
    let available: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    RilletError::plan(format!(
        "no column named '{name}'; available columns: {}",
        available.join(", ")
    ))
}

/// Event-time windows for [`DataFrame::window_aggregate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// The event-time column.
    pub column: String,
    /// Window length.
    pub size: TimeSpan,
    /// Distance between window starts; `None` for tumbling windows.
    pub slide: Option<TimeSpan>,
    /// How long after its end a window waits for late rows.
    pub lateness: TimeSpan,
}

impl Windows {
    /// Tumbling windows of `size` over `column`.
    pub fn tumbling(column: impl Into<String>, size: TimeSpan) -> Self {
        Self {
            column: column.into(),
            size,
            slide: None,
            lateness: TimeSpan::Units(0),
        }
    }
}

/// Aggregate specs by column name to specs by column index.
fn aggregate_specs(
    schema: &arrow::datatypes::Schema,
    what: &str,
    specs: Vec<(RunningFunction, Option<String>, String)>,
) -> Result<Vec<RunningSpec>> {
    specs
        .into_iter()
        .map(|(function, input, output)| {
            Ok(RunningSpec {
                function,
                input: input
                    .map(|name| column_index(schema, what, &name))
                    .transpose()?,
                output,
            })
        })
        .collect()
}
