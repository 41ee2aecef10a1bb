//! The physical dataflow graph: vertices (operator chains with a parallelism) and the edges
//! that join them.

use std::fmt;
use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};
use rillet_common::{Result, RilletError};

use crate::function::BatchFunction;
use crate::sink::Sink;
use crate::stream::{StreamOperator, StreamSource};

/// Index of a vertex in its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VertexId(pub usize);

/// Index of an edge in its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeId(pub usize);

/// How records move from the tasks of one vertex to the tasks of the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeKind {
    /// Task `i` feeds task `i` (both sides have the same parallelism); no reshuffle.
    Forward,
    /// Every upstream task spreads its batches round-robin over all downstream tasks.
    Rebalance,
    /// Every row goes to the downstream task chosen by a hash of these columns, so all
    /// rows of one key meet in one task (what keyed state needs). The hash is fixed
    /// across runs, so a restored task gets the keys whose state it restored.
    Hash(Vec<usize>),
}

/// What a vertex runs.
#[derive(Debug, Clone)]
pub enum VertexOperator {
    /// A chain of relational operators (scan, filter, project, join, aggregate, sort, limit)
    /// as a DataFusion physical plan; one task per output partition. Its inputs from other
    /// vertices appear in the plan as [`crate::ExchangeSourceExec`] leaves.
    Fragment(Arc<dyn ExecutionPlan>),
    /// A blocking batch function (a Python UDF or `map_batches`) run on a worker pool.
    Function(Arc<dyn BatchFunction>),
    /// The end of the job: files, or batches handed back to the caller.
    Sink(Arc<dyn Sink>),
    /// A split-based source with checkpointable positions (a streaming job's start).
    Source(Arc<dyn StreamSource>),
    /// A streaming operator with state snapshotted at checkpoints.
    Stream(Arc<dyn StreamOperator>),
}

impl VertexOperator {
    /// Whether its tasks take part in checkpoints (pass barriers and snapshot state). A
    /// relational fragment runs inside DataFusion, which has no barriers.
    pub fn checkpoints(&self) -> bool {
        !matches!(self, VertexOperator::Fragment(_))
    }
}

/// One vertex of the graph.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// Its index.
    pub id: VertexId,
    /// Display name (shown in progress and `explain`).
    pub name: String,
    /// What it runs.
    pub operator: VertexOperator,
    /// Number of parallel tasks.
    pub parallelism: usize,
}

/// One edge of the graph.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Its index.
    pub id: EdgeId,
    /// Upstream vertex.
    pub source: VertexId,
    /// Downstream vertex.
    pub target: VertexId,
    /// Routing between their tasks.
    pub kind: EdgeKind,
}

/// A job's physical dataflow.
#[derive(Debug, Clone, Default)]
pub struct DataflowGraph {
    /// Vertices, upstream before downstream.
    pub vertices: Vec<Vertex>,
    /// Edges.
    pub edges: Vec<Edge>,
}

impl DataflowGraph {
    /// Add a vertex; for a fragment, `parallelism` should equal its output partition count.
    pub fn add_vertex(
        &mut self,
        name: impl Into<String>,
        operator: VertexOperator,
        parallelism: usize,
    ) -> VertexId {
        let id = VertexId(self.vertices.len());
        self.vertices.push(Vertex {
            id,
            name: name.into(),
            operator,
            parallelism: parallelism.max(1),
        });
        id
    }

    /// Join `source` to `target`.
    pub fn connect(&mut self, source: VertexId, target: VertexId, kind: EdgeKind) -> EdgeId {
        let id = EdgeId(self.edges.len());
        self.edges.push(Edge {
            id,
            source,
            target,
            kind,
        });
        id
    }

    /// The schema of what `vertex` sends downstream (empty for a sink).
    pub fn output_schema(&self, vertex: VertexId) -> arrow::datatypes::SchemaRef {
        match &self.vertices[vertex.0].operator {
            VertexOperator::Fragment(plan) => plan.schema(),
            VertexOperator::Function(f) => f.output_schema(),
            VertexOperator::Sink(_) => Arc::new(arrow::datatypes::Schema::empty()),
            VertexOperator::Source(source) => source.schema(),
            VertexOperator::Stream(operator) => operator.output_schema(),
        }
    }

    /// The edges that feed `vertex`.
    pub fn inputs_of(&self, vertex: VertexId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.target == vertex)
    }

    /// The edges that leave `vertex`.
    pub fn outputs_of(&self, vertex: VertexId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.source == vertex)
    }

    /// Check the shape: every non-sink has exactly one output, forward edges join equal
    /// parallelisms, fragments run as many tasks as they have partitions.
    pub fn validate(&self) -> Result<()> {
        for vertex in &self.vertices {
            let outputs = self.outputs_of(vertex.id).count();
            let inputs = self.inputs_of(vertex.id).count();
            match &vertex.operator {
                VertexOperator::Sink(_) if outputs != 0 => {
                    return Err(RilletError::internal(format!(
                        "sink '{}' has outputs",
                        vertex.name
                    )));
                }
                VertexOperator::Source(_) if inputs != 0 => {
                    return Err(RilletError::internal(format!(
                        "source '{}' has inputs",
                        vertex.name
                    )));
                }
                VertexOperator::Sink(_)
                | VertexOperator::Function(_)
                | VertexOperator::Stream(_)
                    if inputs != 1 =>
                {
                    return Err(RilletError::internal(format!(
                        "'{}' needs exactly one input, has {inputs}",
                        vertex.name
                    )));
                }
                VertexOperator::Fragment(plan) => {
                    let partitions = plan.output_partitioning().partition_count();
                    if partitions != vertex.parallelism {
                        return Err(RilletError::internal(format!(
                            "fragment '{}' has {partitions} partitions but parallelism {}",
                            vertex.name, vertex.parallelism
                        )));
                    }
                }
                _ => {}
            }
            if !matches!(vertex.operator, VertexOperator::Sink(_)) && outputs != 1 {
                return Err(RilletError::internal(format!(
                    "'{}' needs exactly one output, has {outputs}",
                    vertex.name
                )));
            }
        }
        for edge in &self.edges {
            let (s, t) = (&self.vertices[edge.source.0], &self.vertices[edge.target.0]);
            // Into a fragment, a forward edge feeds the exchange leaf's partitions (one per
            // upstream task), whatever the fragment's own output parallelism.
            let into_fragment = matches!(t.operator, VertexOperator::Fragment(_));
            if into_fragment && edge.kind != EdgeKind::Forward {
                return Err(RilletError::internal(format!(
                    "edge '{}' -> '{}' into a fragment must be forward",
                    s.name, t.name
                )));
            }
            if edge.kind == EdgeKind::Forward && !into_fragment && s.parallelism != t.parallelism {
                return Err(RilletError::internal(format!(
                    "forward edge '{}' -> '{}' joins parallelism {} to {}",
                    s.name, t.name, s.parallelism, t.parallelism
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for DataflowGraph {
    /// The physical dataflow as `explain()` prints it: each vertex with its parallelism and
    /// operator chain, then the edges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for vertex in &self.vertices {
            writeln!(
                f,
                "[{}] {} (parallelism {})",
                vertex.id.0, vertex.name, vertex.parallelism
            )?;
            match &vertex.operator {
                VertexOperator::Fragment(plan) => {
                    for line in displayable(plan.as_ref()).indent(false).to_string().lines() {
                        writeln!(f, "      {line}")?;
                    }
                }
                VertexOperator::Function(function) => {
                    let batch = function
                        .batch_size()
                        .map_or("as they come".to_string(), |n| format!("{n} rows"));
                    let workers = function
                        .concurrency()
                        .map_or("default pool".to_string(), |n| format!("{n} workers"));
                    writeln!(f, "      blocking pool: {workers}, batches of {batch}")?;
                }
                VertexOperator::Sink(sink) => writeln!(f, "      {}", sink.describe())?,
                VertexOperator::Source(source) => writeln!(f, "      {}", source.describe())?,
                VertexOperator::Stream(operator) => writeln!(f, "      {}", operator.name())?,
            }
        }
        for edge in &self.edges {
            writeln!(
                f,
                "edge [{}] -> [{}] {:?}",
                edge.source.0, edge.target.0, edge.kind
            )?;
        }
        Ok(())
    }
}
