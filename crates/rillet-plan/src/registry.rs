//! The functions sessions know by name beyond DataFusion's own.
//!
//! The planner knows no operator itself: the program that embeds it (the Python module,
//! the `rillet` CLI) registers the function crates' operators once at start, and every
//! session created after that plans them by name, in SQL and in the DataFrame alike. A
//! planner change does not rebuild the image, audio or model code, and a function crate
//! is added without touching the planner.

use std::sync::{Arc, RwLock};

use rillet_runtime::ArrayFunction;

static FUNCTIONS: RwLock<Vec<Arc<dyn ArrayFunction>>> = RwLock::new(Vec::new());

/// Make `functions` known by name to every [`Session`](crate::Session) created from now
/// on. A function with the name of one registered before replaces it.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array};
/// use arrow::datatypes::DataType;
/// use rillet_plan::{ArrayFunction, Session, register_functions};
///
/// #[derive(Debug)]
/// struct Triple;
///
/// impl ArrayFunction for Triple {
///     fn name(&self) -> &str { "triple" }
///     fn return_type(&self) -> DataType { DataType::Int64 }
///     fn call(&self, args: &[ArrayRef], _rows: usize) -> rillet_common::Result<ArrayRef> {
///         let x = args[0].as_any().downcast_ref::<Int64Array>().unwrap();
///         Ok(Arc::new(x.iter().map(|v| v.map(|v| v * 3)).collect::<Int64Array>()))
///     }
/// }
///
/// register_functions([Arc::new(Triple) as Arc<dyn ArrayFunction>]);
/// let session = Session::default();
/// assert!(session.context().state().scalar_functions().contains_key("triple"));
/// ```
pub fn register_functions(functions: impl IntoIterator<Item = Arc<dyn ArrayFunction>>) {
    let mut known = FUNCTIONS.write().unwrap_or_else(|e| e.into_inner());
    for function in functions {
        known.retain(|f| f.name() != function.name());
        known.push(function);
    }
}

/// The functions registered so far, in registration order.
pub(crate) fn registered_functions() -> Vec<Arc<dyn ArrayFunction>> {
    FUNCTIONS.read().unwrap_or_else(|e| e.into_inner()).clone()
}
