//! Shrink video frames where they are decoded when a resize is all that reads them.
//!
//! `video.frames()` gives each video a list of `{pts_ms, image}`; after `explode`, a model
//! pipeline resizes every `image` to its input size. Left apart, each frame crosses the
//! engine at full size (2.7 MB at 720p) to be shrunk by the next stage. When that resize is
//! the only reader of the frames' images, this rule has the frames stage apply it itself
//! ([`ArrayFunction::with_downscale`]), pixel for pixel: the resize stage then copies
//! images already its size, and full-size frames never leave the decoder's thread.

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use rillet_runtime::Downscale;

use crate::stage::{BatchStageNode, StageKind};

/// The optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct FuseFrameDownscale;

/// The field of an exploded frame a resize may take over.
const IMAGE_FIELD: &str = "image";

impl OptimizerRule for FuseFrameDownscale {
    fn name(&self) -> &str {
        "rillet_fuse_frame_downscale"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let fusions = find_fusions(&plan)?;
        if fusions.is_empty() {
            return Ok(Transformed::no(plan));
        }
        plan.transform_up(|node| {
            let Some((stage, function, args, output, consumed)) = udf_stage(&node) else {
                return Ok(Transformed::no(node));
            };
            let Some(downscale) = fusions.get(output) else {
                return Ok(Transformed::no(node));
            };
            let Some(fused) = function.with_downscale(downscale) else {
                return Ok(Transformed::no(node));
            };
            let kind = StageKind::Udf {
                function: fused,
                args: args.clone(),
                output: output.clone(),
                consumed: consumed.clone(),
            };
            let input = stage.input().clone();
            let stage = BatchStageNode::try_new(input, kind)
                .map_err(rillet_common::RilletError::into_datafusion)?;
            Ok(Transformed::yes(stage.into_plan()))
        })
    }
}

/// The parts of a column-function stage.
type UdfParts<'a> = (
    &'a BatchStageNode,
    &'a std::sync::Arc<dyn rillet_runtime::ArrayFunction>,
    &'a Vec<Expr>,
    &'a String,
    &'a Vec<String>,
);

fn udf_stage(plan: &LogicalPlan) -> Option<UdfParts<'_>> {
    let LogicalPlan::Extension(extension) = plan else {
        return None;
    };
    let stage = extension.node.as_any().downcast_ref::<BatchStageNode>()?;
    match stage.kind() {
        StageKind::Udf {
            function,
            args,
            output,
            consumed,
        } => Some((stage, function, args, output, consumed)),
        StageKind::MapBatches(_) => None,
    }
}

/// The frames stages to shrink, by their output column, and how.
fn find_fusions(plan: &LogicalPlan) -> DfResult<HashMap<String, Downscale>> {
    let mut fusions = HashMap::new();
    let mut candidates = Vec::new();
    plan.apply(|node| {
        if let Some((_, function, args, _, _)) = udf_stage(node)
            && let Some(column) = args.first().and_then(image_of)
            && let Some(downscale) = function.downscale(&literals(args))
        {
            candidates.push((node, column, downscale));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if has_opaque_node(plan)? {
        return Ok(fusions);
    }
    let mut refused = Vec::new();
    for (resize, column, downscale) in candidates {
        if image_reads(plan, &column)? != 1
            || plan.schema().field_with_unqualified_name(&column).is_ok()
        {
            continue;
        }
        let Some(frames) = frames_stage_below(resize, &column) else {
            continue;
        };
        // The frames list itself must have one reader, the projection naming it for the
        // explode: an alias or element of it merged into another projection reads it
        // under the stage's own column name.
        if column_reads(plan, &frames)? != 1 {
            continue;
        }
        if fusions.insert(frames.clone(), downscale).is_some() {
            refused.push(frames); // two resizes of the same frames
        }
    }
    for frames in refused {
        fusions.remove(&frames);
    }
    Ok(fusions)
}

/// Whether the plan holds a node whose reads of columns cannot be seen (a `map_batches`
/// stage, another extension): the rule then leaves the plan alone.
fn has_opaque_node(plan: &LogicalPlan) -> DfResult<bool> {
    let mut opaque = false;
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Extension(_)) && udf_stage(node).is_none() {
            opaque = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(opaque)
}

/// References to `column` by name in every expression of `plan`.
fn column_reads(plan: &LogicalPlan, column: &str) -> DfResult<usize> {
    let mut reads = 0;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if matches!(e, Expr::Column(c) if c.name == column) {
                    reads += 1;
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(reads)
}

fn literals(args: &[Expr]) -> Vec<Option<&ScalarValue>> {
    args.iter()
        .map(|a| match a {
            Expr::Literal(value, _) => Some(value),
            _ => None,
        })
        .collect()
}

/// `column` for `get_field(column, 'image')`.
fn image_of(expr: &Expr) -> Option<String> {
    match field_access(expr)? {
        (column, IMAGE_FIELD) => Some(column.to_string()),
        _ => None,
    }
}

/// `(column, field)` for `get_field(column, 'field')`.
fn field_access(expr: &Expr) -> Option<(&str, &str)> {
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    if call.func.name() != "get_field" {
        return None;
    }
    match call.args.as_slice() {
        [
            Expr::Column(column),
            Expr::Literal(
                ScalarValue::Utf8(Some(f))
                | ScalarValue::LargeUtf8(Some(f))
                | ScalarValue::Utf8View(Some(f)),
                _,
            ),
        ] => Some((column.name.as_str(), f.as_str())),
        _ => None,
    }
}

/// How many expressions in `plan` may read the images of column `column`: every reference
/// to it counts, except one reading another field (`get_field(column, 'pts_ms')`) and a
/// projection passing it through under its own name. Unnests are where it is made.
fn image_reads(plan: &LogicalPlan, column: &str) -> DfResult<usize> {
    let mut reads = 0;
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Unnest(_)) {
            return Ok(TreeNodeRecursion::Continue);
        }
        let passing = matches!(node, LogicalPlan::Projection(_));
        node.apply_expressions(|expr| {
            if passing && passes_through(expr, column) {
                return Ok(TreeNodeRecursion::Continue);
            }
            reads += reads_in(expr, column)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(reads)
}

/// `column` or `column AS column`.
fn passes_through(expr: &Expr, column: &str) -> bool {
    match expr {
        Expr::Column(c) => c.name == column,
        Expr::Alias(alias) => {
            alias.name == column
                && matches!(alias.expr.as_ref(), Expr::Column(c) if c.name == column)
        }
        _ => false,
    }
}

/// References in `expr` that may read the images of `column`.
fn reads_in(expr: &Expr, column: &str) -> DfResult<usize> {
    let mut reads = 0;
    expr.apply(|e| {
        if let Some((c, field)) = field_access(e)
            && c == column
        {
            reads += usize::from(field == IMAGE_FIELD);
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Expr::Column(c) = e
            && c.name == column
        {
            reads += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(reads)
}

/// The output column of the frames stage whose exploded rows reach `resize` as `column`:
/// down through nodes that carry `column` unchanged to the unnest that makes it, then
/// through projections that rename it to the stage's output.
fn frames_stage_below(resize: &LogicalPlan, column: &str) -> Option<String> {
    let mut node = resize.inputs().into_iter().next()?;
    loop {
        match node {
            LogicalPlan::Unnest(unnest) if unnest.exec_columns.iter().any(|c| c.name == column) => {
                return made_by_stage(unnest.input.as_ref(), column);
            }
            LogicalPlan::Projection(projection) => {
                if !projection.expr.iter().any(|e| passes_through(e, column)) {
                    return None;
                }
                node = projection.input.as_ref();
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Repartition(_) => node = node.inputs()[0],
            LogicalPlan::Extension(_) => {
                let (stage, _, _, output, _) = udf_stage(node)?;
                if output == column {
                    return None;
                }
                node = stage.input();
            }
            _ => return None,
        }
    }
}

/// The output of the stage that makes `column` of `plan`, through renaming projections.
fn made_by_stage(plan: &LogicalPlan, column: &str) -> Option<String> {
    let (mut node, mut column) = (plan, column.to_string());
    loop {
        match node {
            LogicalPlan::Projection(projection) => {
                let source = projection.expr.iter().find_map(|e| match e {
                    Expr::Alias(alias) if alias.name == column => match alias.expr.as_ref() {
                        Expr::Column(c) => Some(c.name.clone()),
                        _ => None,
                    },
                    Expr::Column(c) if c.name == column => Some(c.name.clone()),
                    _ => None,
                })?;
                (node, column) = (projection.input.as_ref(), source);
            }
            LogicalPlan::Filter(_) | LogicalPlan::Limit(_) | LogicalPlan::Repartition(_) => {
                node = node.inputs()[0];
            }
            LogicalPlan::Extension(_) => {
                let (stage, _, _, output, _) = udf_stage(node)?;
                if *output == column {
                    return Some(column);
                }
                node = stage.input();
            }
            _ => return None,
        }
    }
}
