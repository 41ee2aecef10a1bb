//! The engine's side of a service call: a column function whose calls go to a [`Service`].

use std::sync::{Arc, Mutex};

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, FieldRef};
use rillet_common::{Result, RilletError};
use rillet_operator::OperatorMetrics;
use rillet_operator::{ArrayFunction, CallFields, FunctionContext, ScalarValue};

use crate::Service;

/// A column function computed by a [`Service`]: each call sends the argument arrays (as
/// columns `a0`, `a1`, … of a batch with the call's row count) and expects a batch whose
/// single column is the result. The service outlives jobs: opening and closing a job does
/// not start or stop replicas.
#[derive(Debug)]
pub struct ServiceFunction {
    name: String,
    fields: CallFields,
    service: Arc<Service>,
    batch_size: usize,
    /// The running job's counters for this operator, where waits are recorded.
    metrics: Mutex<Option<Arc<OperatorMetrics>>>,
}

impl ServiceFunction {
    /// Calls of `service` returning `result` (a field, so an extension type's metadata is
    /// kept), each of at most `batch_size` rows (default: the service's `max_batch_rows`;
    /// smaller calls arriving together are merged into one request).
    pub fn new(service: Arc<Service>, result: Field, batch_size: Option<usize>) -> Self {
        Self {
            batch_size: batch_size
                .unwrap_or(service.options().max_batch_rows)
                .max(1),
            name: service.name().to_string(),
            fields: CallFields::new(result),
            service,
            metrics: Mutex::new(None),
        }
    }
}

impl ArrayFunction for ServiceFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn return_type(&self) -> DataType {
        self.fields.return_type()
    }

    fn return_field(&self, args: &[FieldRef], _literals: &[Option<&ScalarValue>]) -> Result<Field> {
        Ok(self.fields.return_field(&self.name, args))
    }

    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        if rows == 0 {
            // Nothing to send: a request needs rows.
            return Ok(arrow::array::new_empty_array(&self.fields.return_type()));
        }
        let batch = self.fields.argument_batch(args, rows)?;
        let metrics = self
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reply = self.service.call(batch, metrics.as_deref())?;
        if reply.num_columns() != 1 {
            return Err(RilletError::UserFunction {
                operator: self.name.clone(),
                message: format!(
                    "its replica replied with {} columns instead of one",
                    reply.num_columns()
                ),
            });
        }
        rillet_processes::record_reply_nulls(&self.name, rows, &reply);
        Ok(reply.column(0).clone())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(self.batch_size)
    }

    fn concurrency(&self) -> Option<usize> {
        // As many calls at once as the service admits, so that dynamic batching has calls
        // to merge and every replica has work.
        Some(self.service.options().max_in_flight)
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(context.metrics.clone());
        Ok(())
    }
}
