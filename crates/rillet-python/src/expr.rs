//! `Expr`: a DataFusion expression held for Python.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, Operator, binary_expr};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
use pyo3_arrow::PyDataType;

use crate::dataframe::PySession;
use crate::errors::{IntoPy, PlanError};

/// An expression over the columns of a DataFrame.
#[pyclass(name = "Expr", module = "rillet._rillet", frozen, from_py_object)]
#[derive(Clone)]
pub struct PyExpr {
    pub(crate) expr: Expr,
}

impl From<Expr> for PyExpr {
    fn from(expr: Expr) -> Self {
        Self { expr }
    }
}

fn operator(name: &str) -> PyResult<Operator> {
    Ok(match name {
        "+" => Operator::Plus,
        "-" => Operator::Minus,
        "*" => Operator::Multiply,
        "/" => Operator::Divide,
        "%" => Operator::Modulo,
        "==" => Operator::Eq,
        "!=" => Operator::NotEq,
        "<" => Operator::Lt,
        "<=" => Operator::LtEq,
        ">" => Operator::Gt,
        ">=" => Operator::GtEq,
        "and" => Operator::And,
        "or" => Operator::Or,
        other => return Err(PyValueError::new_err(format!("unknown operator '{other}'"))),
    })
}

#[pymethods]
impl PyExpr {
    /// Apply a binary operator (`+`, `==`, `and`, ...) with `other` on the right.
    fn binary(&self, op: &str, other: &PyExpr) -> PyResult<PyExpr> {
        Ok(binary_expr(self.expr.clone(), operator(op)?, other.expr.clone()).into())
    }

    fn negate(&self) -> PyExpr {
        Expr::Negative(Box::new(self.expr.clone())).into()
    }

    fn not_(&self) -> PyExpr {
        Expr::Not(Box::new(self.expr.clone())).into()
    }

    fn alias(&self, name: &str) -> PyExpr {
        self.expr.clone().alias(name).into()
    }

    fn cast(&self, dtype: PyDataType) -> PyExpr {
        Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(self.expr.clone()),
            dtype.into_inner(),
        ))
        .into()
    }

    fn is_null(&self) -> PyExpr {
        self.expr.clone().is_null().into()
    }

    fn is_not_null(&self) -> PyExpr {
        self.expr.clone().is_not_null().into()
    }

    fn is_in(&self, values: Vec<PyExpr>) -> PyExpr {
        self.expr
            .clone()
            .in_list(values.into_iter().map(|v| v.expr).collect(), false)
            .into()
    }

    /// Name of the column this expression produces.
    fn name(&self) -> String {
        self.expr.schema_name().to_string()
    }

    fn __repr__(&self) -> String {
        format!("Expr({})", self.expr)
    }
}

/// A column by name.
#[pyfunction]
fn col(name: &str) -> PyExpr {
    // `Column::from_name` keeps dots in names ("right.x") instead of reading a qualifier.
    Expr::Column(datafusion::common::Column::from_name(name)).into()
}

/// A literal from a Python value (None, bool, int, float, str, bytes).
#[pyfunction]
fn lit(value: &Bound<'_, PyAny>) -> PyResult<PyExpr> {
    let scalar = if value.is_none() {
        ScalarValue::Null
    } else if value.is_instance_of::<PyBool>() {
        ScalarValue::Boolean(Some(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        ScalarValue::Int64(Some(value.extract()?))
    } else if value.is_instance_of::<PyFloat>() {
        ScalarValue::Float64(Some(value.extract()?))
    } else if value.is_instance_of::<PyString>() {
        ScalarValue::Utf8(Some(value.extract()?))
    } else if value.is_instance_of::<pyo3::types::PyBytes>() {
        ScalarValue::Binary(Some(value.extract()?))
    } else if let Ok(numbers) = value.extract::<Vec<f64>>() {
        // A list of numbers (operator options such as normalisation means).
        let values: Vec<ScalarValue> = numbers
            .into_iter()
            .map(|v| ScalarValue::Float64(Some(v)))
            .collect();
        ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &arrow::datatypes::DataType::Float64,
        ))
    } else if let Ok(bytes) = value.extract::<Vec<u8>>() {
        ScalarValue::Binary(Some(bytes))
    } else {
        return Err(PyTypeError::new_err(format!(
            "cannot make a literal from {}",
            value.get_type().name()?
        )));
    };
    Ok(Expr::Literal(scalar, None).into())
}

/// Call a built-in scalar or aggregate function by its SQL name.
#[pyfunction]
fn call_function(session: &PySession, name: &str, args: Vec<PyExpr>) -> PyResult<PyExpr> {
    let args: Vec<Expr> = args.into_iter().map(|a| a.expr).collect();
    let state = session.session.context().state();
    if let Some(udf) = state.scalar_functions().get(name) {
        return Ok(udf.call(args).into());
    }
    if let Some(udaf) = state.aggregate_functions().get(name) {
        return Ok(udaf.call(args).into());
    }
    Err(PlanError::new_err(format!("unknown function '{name}'")))
}

/// `count(*)`.
#[pyfunction]
fn count_all() -> PyExpr {
    datafusion::functions_aggregate::expr_fn::count(Expr::Literal(
        ScalarValue::Int64(Some(1)),
        None,
    ))
    .into()
}

/// CASE WHEN c1 THEN v1 ... ELSE otherwise END.
#[pyfunction]
#[pyo3(signature = (branches, otherwise=None))]
fn case_when(branches: Vec<(PyExpr, PyExpr)>, otherwise: Option<PyExpr>) -> PyResult<PyExpr> {
    let mut iter = branches.into_iter();
    let (c, v) = iter
        .next()
        .ok_or_else(|| PyValueError::new_err("when() needs at least one branch"))?;
    let mut builder = datafusion::logical_expr::when(c.expr, v.expr);
    for (c, v) in iter {
        builder = builder.when(c.expr, v.expr);
    }
    let expr = match otherwise {
        Some(o) => builder.otherwise(o.expr),
        None => builder.end(),
    };
    expr.py_err().map(Into::into)
}

/// Sort key used by `sort`.
pub(crate) fn sort_expr(
    expr: &PyExpr,
    descending: bool,
    nulls_first: bool,
) -> datafusion::logical_expr::SortExpr {
    expr.expr.clone().sort(!descending, nulls_first)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyExpr>()?;
    m.add_function(wrap_pyfunction!(col, m)?)?;
    m.add_function(wrap_pyfunction!(lit, m)?)?;
    m.add_function(wrap_pyfunction!(call_function, m)?)?;
    m.add_function(wrap_pyfunction!(count_all, m)?)?;
    m.add_function(wrap_pyfunction!(case_when, m)?)?;
    Ok(())
}
