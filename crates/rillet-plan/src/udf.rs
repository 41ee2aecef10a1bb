//! Column functions implemented outside the relational engine (Python UDFs), and the
//! rewrite that moves their calls into stages of their own.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::col;
use rillet_common::{Result, RilletError};

use crate::stage::{BatchStageNode, StageKind};
pub use rillet_runtime::ArrayFunction;

/// An [`ArrayFunction`] as a DataFusion scalar function, so its calls are ordinary
/// expressions until [`extract_stages`] moves them out.
#[derive(Debug)]
struct ArrayFunctionUdf {
    function: Arc<dyn ArrayFunction>,
    /// Python UDFs get a name unique per function object (two UDFs with the same Python
    /// name stay distinct); registered native functions keep their SQL name.
    name: String,
    signature: Signature,
}

impl PartialEq for ArrayFunctionUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for ArrayFunctionUdf {}
impl Hash for ArrayFunctionUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for ArrayFunctionUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.function.return_type())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.function
            .return_field(args.arg_fields, args.scalar_arguments)
            .map(Arc::new)
            .map_err(RilletError::into_datafusion)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        // Only reached when a plan was executed without the stage rewrite (e.g. a
        // DataFusion-only path); still correct, just not on its own pool.
        let rows = args.number_rows;
        if rows == 0 {
            return Ok(ColumnarValue::Array(arrow::array::new_empty_array(
                args.return_field.data_type(),
            )));
        }
        let arrays = args
            .args
            .into_iter()
            .map(|a| a.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        self.function
            .call(&arrays, rows)
            .map(ColumnarValue::Array)
            .map_err(RilletError::into_datafusion)
    }
}

static NEXT_FUNCTION_ID: AtomicU64 = AtomicU64::new(1);

/// An expression calling `function` on `args`.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array};
/// use arrow::datatypes::DataType;
/// use rillet_plan::{ArrayFunction, Session, array_function_expr, col};
///
/// #[derive(Debug)]
/// struct PlusOne;
/// impl ArrayFunction for PlusOne {
///     fn name(&self) -> &str { "plus_one" }
///     fn return_type(&self) -> DataType { DataType::Int64 }
///     fn call(&self, args: &[ArrayRef], _rows: usize) -> rillet_common::Result<ArrayRef> {
///         let a = args[0].as_any().downcast_ref::<Int64Array>().unwrap();
///         Ok(Arc::new(a.iter().map(|v| v.map(|v| v + 1)).collect::<Int64Array>()))
///     }
/// }
/// let df = Session::default().range(3).unwrap()
///     .with_column("next", array_function_expr(Arc::new(PlusOne), vec![col("id")])).unwrap();
/// let batches = df.collect().unwrap();
/// assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
/// ```
pub fn array_function_expr(function: Arc<dyn ArrayFunction>, args: Vec<Expr>) -> Expr {
    let id = NEXT_FUNCTION_ID.fetch_add(1, Ordering::Relaxed);
    let udf = ArrayFunctionUdf {
        name: format!("{}#{id}", function.name()),
        function,
        signature: Signature::variadic_any(Volatility::Volatile),
    };
    ScalarUDF::new_from_impl(udf).call(args)
}

/// `function` as a named scalar function to register in a session, so SQL and
/// `call_function` find it by [`ArrayFunction::name`]. Its calls become stages like any
/// other [`ArrayFunction`] call.
pub fn registered_function(function: Arc<dyn ArrayFunction>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ArrayFunctionUdf {
        name: function.name().to_string(),
        function,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// True if `expr` calls an [`ArrayFunction`] anywhere.
pub(crate) fn contains_stage_call(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if as_array_function(e).is_some() {
            found = true;
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

fn as_array_function(expr: &Expr) -> Option<(&ArrayFunctionUdf, &Vec<Expr>)> {
    match expr {
        Expr::ScalarFunction(f) => {
            let any: &dyn std::any::Any = f.func.inner().as_ref();
            any.downcast_ref::<ArrayFunctionUdf>()
                .map(|udf| (udf, &f.args))
        }
        _ => None,
    }
}

/// Replace each call whose first argument is another call by one fused call where the
/// outer function offers it (see [`ArrayFunction::fuse_input`]): `image_resize(image_decode(x))`
/// becomes one stage that decodes, resizes and drops each photo in turn.
fn fuse_calls(expr: Expr) -> Result<Expr> {
    fn literals(args: &[Expr]) -> Vec<Option<&datafusion::common::ScalarValue>> {
        args.iter()
            .map(|a| match a {
                Expr::Literal(value, _) => Some(value),
                _ => None,
            })
            .collect()
    }
    let fused = expr
        .transform_up(|node| {
            let Some((outer, args)) = as_array_function(&node) else {
                return Ok(Transformed::no(node));
            };
            let Some((inner, inner_args)) = args.first().and_then(as_array_function) else {
                return Ok(Transformed::no(node));
            };
            let Some(function) = outer.function.fuse_input(
                inner.function.as_ref(),
                &literals(inner_args),
                &literals(args),
            ) else {
                return Ok(Transformed::no(node));
            };
            let fused_args = inner_args.iter().chain(&args[1..]).cloned().collect();
            Ok(Transformed::yes(array_function_expr(function, fused_args)))
        })
        .map_err(RilletError::from)?;
    Ok(fused.data)
}

static NEXT_COLUMN_ID: AtomicU64 = AtomicU64::new(1);

/// Name prefix of the columns that carry one call's result to the expression using it.
/// Each is read exactly once, by its parent call or the final projection.
const INTERMEDIATE_PREFIX: &str = "__rillet_udf_";

/// Move every [`ArrayFunction`] call in `exprs` into a stage stacked on `input`, innermost
/// calls first, and replace each call by a reference to the stage's output column. Each
/// top-level expression keeps its original output name.
pub(crate) fn extract_stages(
    input: LogicalPlan,
    exprs: Vec<Expr>,
) -> Result<(LogicalPlan, Vec<Expr>)> {
    let mut plan = input;
    let mut rewritten = Vec::with_capacity(exprs.len());
    for expr in exprs {
        if !contains_stage_call(&expr) {
            rewritten.push(expr);
            continue;
        }
        let original_name = expr.schema_name().to_string();
        let already_aliased = matches!(expr, Expr::Alias(_));
        let new_expr = fuse_calls(expr)?
            .transform_up(|node| {
                let Some((udf, args)) = as_array_function(&node) else {
                    return Ok(Transformed::no(node));
                };
                let output = format!(
                    "{INTERMEDIATE_PREFIX}{}",
                    NEXT_COLUMN_ID.fetch_add(1, Ordering::Relaxed)
                );
                // The calls below this one left their results in columns only this call
                // reads: the stage drops them from its output.
                let consumed = args
                    .iter()
                    .flat_map(|a| a.column_refs())
                    .map(|c| c.name.clone())
                    .filter(|name| name.starts_with(INTERMEDIATE_PREFIX))
                    .collect();
                let stage = BatchStageNode::try_new(
                    plan.clone(),
                    StageKind::Udf {
                        function: udf.function.clone(),
                        args: args.clone(),
                        output: output.clone(),
                        consumed,
                    },
                )
                .map_err(RilletError::into_datafusion)?;
                plan = stage.into_plan();
                Ok(Transformed::yes(col(output)))
            })
            .map_err(RilletError::from)?
            .data;
        rewritten.push(if already_aliased {
            new_expr
        } else {
            new_expr.alias(original_name)
        });
    }
    Ok((plan, rewritten))
}
