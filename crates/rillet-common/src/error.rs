//! The one error type of the engine. Every variant says what went wrong in words a user can
//! act on; the planner's and executor's errors keep their original text.

use arrow::error::ArrowError;
use datafusion_common::DataFusionError;

/// Result alias used across Rillet crates.
pub type Result<T, E = RilletError> = std::result::Result<T, E>;

/// Everything that can go wrong while building or running a Rillet job.
#[derive(Debug, thiserror::Error)]
pub enum RilletError {
    /// The plan is invalid: unknown column, type mismatch, bad argument to an operator.
    #[error("plan error: {0}")]
    Plan(String),
    /// A caller passed an argument that can never work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A user function (Python UDF, `map_batches` function) raised or returned bad data.
    #[error("error in operator '{operator}': {message}")]
    UserFunction {
        /// The operator that ran the function, e.g. `map_batches(normalise)`.
        operator: String,
        /// The function's own message (for Python: the formatted traceback).
        message: String,
    },
    /// Input data could not be processed and the operator was asked to fail on it
    /// (`on_error="raise"`): a corrupt image, truncated audio, a value over a size cap.
    #[error("bad input data: {0}")]
    InvalidData(String),
    /// Reading or writing data failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Arrow rejected data.
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
    /// DataFusion (planner or physical operators) failed.
    #[error("{}", tidy_datafusion_message(&.0.to_string()))]
    DataFusion(Box<DataFusionError>),
    /// A model runtime (ONNX Runtime, candle) failed to load a model or to run it.
    #[error("model error: {0}")]
    Model(String),
    /// A checkpoint or savepoint could not be written, or a stored one is incomplete or
    /// corrupt (recovery then falls back to the one before it).
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// Stored state (a snapshot's manifest, an operator's or sink's state) in a format this
    /// build does not read: written by another Rillet version. Never skipped as damage: a
    /// restore refuses to start rather than fall back past it.
    #[error("state written by another Rillet version: {0}")]
    IncompatibleState(String),
    /// The job was cancelled (closed iterator, Ctrl-C, explicit cancel).
    #[error("job cancelled")]
    Cancelled,
    /// An internal invariant broke: a bug in Rillet.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl RilletError {
    /// Shorthand for [`RilletError::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Shorthand for [`RilletError::InvalidData`].
    pub fn invalid_data(message: impl Into<String>) -> Self {
        Self::InvalidData(message.into())
    }

    /// Shorthand for [`RilletError::Plan`].
    pub fn plan(message: impl Into<String>) -> Self {
        Self::Plan(message.into())
    }

    /// Shorthand for [`RilletError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// True when this error, or the DataFusion error it wraps, is a cancellation.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Self::Cancelled => true,
            Self::DataFusion(e) => matches!(
                find_external::<RilletError>(e),
                Some(RilletError::Cancelled)
            ),
            _ => false,
        }
    }

    /// Unwrap a `RilletError` that travelled through DataFusion as an external error, so a
    /// user-function failure keeps its operator name and traceback instead of being wrapped
    /// in "External error: ...".
    pub fn from_datafusion(error: DataFusionError) -> Self {
        if let Some(inner) = find_external::<RilletError>(&error) {
            return inner.clone_shallow();
        }
        Self::DataFusion(Box::new(error))
    }

    /// Convert into a DataFusion error that carries this error intact.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            Self::DataFusion(e) => *e,
            other => DataFusionError::External(Box::new(other)),
        }
    }

    fn clone_shallow(&self) -> Self {
        match self {
            Self::Plan(m) => Self::Plan(m.clone()),
            Self::InvalidArgument(m) => Self::InvalidArgument(m.clone()),
            Self::InvalidData(m) => Self::InvalidData(m.clone()),
            Self::Model(m) => Self::Model(m.clone()),
            Self::Checkpoint(m) => Self::Checkpoint(m.clone()),
            Self::IncompatibleState(m) => Self::IncompatibleState(m.clone()),
            Self::UserFunction { operator, message } => Self::UserFunction {
                operator: operator.clone(),
                message: message.clone(),
            },
            Self::Io(e) => Self::Io(std::io::Error::new(e.kind(), e.to_string())),
            Self::Arrow(e) => Self::Internal(e.to_string()),
            Self::DataFusion(e) => Self::Plan(tidy_datafusion_message(&e.to_string())),
            Self::Cancelled => Self::Cancelled,
            Self::Internal(m) => Self::Internal(m.clone()),
        }
    }
}

/// DataFusion's message in Rillet's terms: columns without the `?table?` qualifier of an
/// unnamed frame, and internal errors sent to Rillet's tracker rather than DataFusion's.
///
/// ```
/// use rillet_common::tidy_datafusion_message;
/// assert_eq!(
///     tidy_datafusion_message("No field named y. Valid fields are \"?table?\".x."),
///     "No field named y. Valid fields are x."
/// );
/// ```
pub fn tidy_datafusion_message(message: &str) -> String {
    const DATAFUSION_BUG: &str = "This issue was likely caused by a bug in DataFusion's code. \
        Please help us to resolve this by filing a bug report in our issue tracker: \
        https://github.com/apache/datafusion/issues";
    message
        .replace("\"?table?\".", "")
        .replace("?table?.", "")
        .replace(
            DATAFUSION_BUG,
            "This is a bug in Rillet or in DataFusion beneath it: please report it to Rillet.",
        )
}

/// Walk DataFusion's wrappers (`Context`, `Shared`, `External`, `ArrowError::External`) to
/// find an error of type `T` that was passed through them.
fn find_external<T: std::error::Error + 'static>(error: &DataFusionError) -> Option<&T> {
    match error {
        DataFusionError::External(inner) => inner.downcast_ref::<T>().or_else(|| {
            inner
                .downcast_ref::<DataFusionError>()
                .and_then(find_external::<T>)
        }),
        DataFusionError::Context(_, inner) => find_external(inner),
        DataFusionError::Shared(inner) => find_external(inner),
        DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
            ArrowError::ExternalError(inner) => inner.downcast_ref::<T>().or_else(|| {
                inner
                    .downcast_ref::<DataFusionError>()
                    .and_then(find_external::<T>)
            }),
            _ => None,
        },
        _ => None,
    }
}

impl From<DataFusionError> for RilletError {
    fn from(error: DataFusionError) -> Self {
        Self::from_datafusion(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_function_error_survives_a_trip_through_datafusion() {
        let original = RilletError::UserFunction {
            operator: "map_batches(f)".into(),
            message: "ZeroDivisionError".into(),
        };
        let wrapped =
            DataFusionError::Context("while running".into(), Box::new(original.into_datafusion()));
        let back = RilletError::from(wrapped);
        assert!(
            matches!(back, RilletError::UserFunction { ref operator, .. } if operator == "map_batches(f)")
        );
    }

    #[test]
    fn cancellation_is_recognised_when_wrapped() {
        let wrapped = DataFusionError::Shared(std::sync::Arc::new(
            RilletError::Cancelled.into_datafusion(),
        ));
        assert!(RilletError::DataFusion(Box::new(wrapped)).is_cancelled());
    }
}
