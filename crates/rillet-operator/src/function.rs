//! Blocking functions — column functions (Python UDFs, native media operators), batch
//! functions (`map_batches`) — and the re-batching in front of them.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion_common::ScalarValue;
use rillet_common::Result;

thread_local! {
    static CALL_FIRST_ROW: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    static CALL_METRICS: std::cell::RefCell<Option<std::sync::Arc<crate::metrics::OperatorMetrics>>> =
        const { std::cell::RefCell::new(None) };
}

/// Index, in its task's input, of the first row of the call running on this thread, so a
/// function can name a failing row by its place in the input rather than in the call.
/// `None` outside the engine's function tasks.
///
/// ```
/// assert_eq!(rillet_operator::call_first_row(), None);
/// ```
pub fn call_first_row() -> Option<u64> {
    CALL_FIRST_ROW.with(|c| c.get())
}

/// Run `work` as a call whose first row is input row `first_row`, for the operator whose
/// counters are `metrics`.
pub fn with_call<T>(
    first_row: u64,
    metrics: &std::sync::Arc<crate::metrics::OperatorMetrics>,
    work: impl FnOnce() -> T,
) -> T {
    let before = CALL_FIRST_ROW.with(|c| c.replace(Some(first_row)));
    let metrics_before = CALL_METRICS.with(|m| m.replace(Some(metrics.clone())));
    let result = work();
    CALL_FIRST_ROW.with(|c| c.set(before));
    CALL_METRICS.with(|m| *m.borrow_mut() = metrics_before);
    result
}

/// Count, for the operator whose call runs on this thread, that function `operator`
/// computed `rows` rows and turned `nulled` of them into nulls, the first for `reason`
/// (see [`NullCount`](crate::NullCount)). Outside a call it does nothing.
///
/// ```
/// rillet_operator::record_nulls("image_resize", 2, 1, Some("a: no such file"));
/// ```
pub fn record_nulls(operator: &str, rows: u64, nulled: u64, reason: Option<&str>) {
    CALL_METRICS.with(|m| {
        if let Some(metrics) = m.borrow().as_ref() {
            metrics.add_nulls(operator, rows, nulled, reason);
        }
    });
}

/// Count, for the operator whose call runs on this thread, `bytes` of pixels or samples a
/// media decoder produced (see `OperatorStats::decoded_bytes`). Outside a call it does
/// nothing.
///
/// ```
/// rillet_operator::record_decoded(640 * 480 * 3);
/// ```
pub fn record_decoded(bytes: usize) {
    CALL_METRICS.with(|m| {
        if let Some(metrics) = m.borrow().as_ref() {
            metrics.add_decoded(bytes as u64);
        }
    });
}

/// Run `load` (a model load inside a call) as a wait for
/// [`WaitReason::ModelLoading`](crate::WaitReason::ModelLoading) of the operator whose call
/// runs on this thread: progress shows "model loading" meanwhile and the time is added to
/// its loading wait, not to its work. Outside a call it just runs `load`.
///
/// ```
/// let weights = rillet_operator::while_loading_model(|| vec![0.5f32; 4]);
/// assert_eq!(weights.len(), 4);
/// ```
pub fn while_loading_model<T>(load: impl FnOnce() -> T) -> T {
    let metrics = CALL_METRICS.with(|m| m.borrow().clone());
    let Some(metrics) = metrics else {
        return load();
    };
    let reason = crate::metrics::WaitReason::ModelLoading;
    let started = std::time::Instant::now();
    let result = {
        let _shows = metrics.begin_wait(reason);
        load()
    };
    metrics.record_wait(reason, started.elapsed());
    result
}

/// What a function gets when a job that uses it starts.
#[derive(Debug, Clone)]
pub struct FunctionContext {
    /// The counters of the operator running the function (retries, workers started and
    /// waits are recorded here).
    pub metrics: std::sync::Arc<crate::metrics::OperatorMetrics>,
}

/// A function from argument arrays to one result array of the same length.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array};
/// use arrow::datatypes::DataType;
/// use rillet_operator::ArrayFunction;
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
/// let out = PlusOne.call(&[Arc::new(Int64Array::from(vec![1, 2]))], 2).unwrap();
/// assert_eq!(out.len(), 2);
/// ```
pub trait ArrayFunction: Send + Sync + Debug {
    /// Name shown in plans, progress and errors.
    fn name(&self) -> &str;
    /// Type of the result array.
    fn return_type(&self) -> DataType;
    /// The result field for arguments of these fields (with their extension metadata)
    /// and these literal values (`None` where an argument is not a literal). An error here
    /// is a planning error: check argument types and options in it.
    fn return_field(
        &self,
        _args: &[FieldRef],
        _literals: &[Option<&ScalarValue>],
    ) -> Result<Field> {
        Ok(Field::new(self.name(), self.return_type(), true))
    }
    /// Compute the result for `rows` rows. May block (runs on a worker pool). Literal
    /// arguments arrive as arrays repeating the value.
    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef>;
    /// Rows per call; `None` takes batches as they come.
    fn batch_size(&self) -> Option<usize> {
        None
    }
    /// True if each row is computed on its own, so the engine may pass fewer rows than
    /// [`batch_size`](Self::batch_size) to keep a call's memory in budget (native media
    /// operators). A Python UDF that asked for a batch size gets exactly that.
    fn splittable_batches(&self) -> bool {
        false
    }
    /// Calls that may run at once; `None` uses the engine's default.
    fn concurrency(&self) -> Option<usize> {
        None
    }
    /// Called once when a job using this function starts, before any call: start worker
    /// processes, check that their resources exist (an error here fails the job at once).
    fn open(&self, _context: &FunctionContext) -> Result<()> {
        Ok(())
    }
    /// Called once when that job ended, however it ended.
    fn close(&self) {}
    /// One function computing this function over the result of `input`, for a call whose
    /// first argument is a call of `input`; `None` (the default) keeps the two calls apart.
    /// `input_literals` are the literal values of `input`'s arguments and `literals` those
    /// of this call's (`None` where an argument is not a literal). The fused function takes
    /// `input`'s arguments followed by this call's others, and must return what the two
    /// calls would, row for row.
    ///
    /// The planner asks when it moves calls into stages. Fusing a decode into the operator
    /// that consumes it means a decoded photo lives for one row instead of a whole batch.
    fn fuse_input(
        &self,
        _input: &dyn ArrayFunction,
        _input_literals: &[Option<&ScalarValue>],
        _literals: &[Option<&ScalarValue>],
    ) -> Option<std::sync::Arc<dyn ArrayFunction>> {
        None
    }
    /// For a function that shrinks each image it reads to a size its options fix (a resize),
    /// called with the literal values of its arguments (`None` where one is not a literal):
    /// that shrink, so the function producing its images can make them that size in the
    /// first place (see [`with_downscale`](Self::with_downscale)). `None` by default.
    fn downscale(&self, _literals: &[Option<&ScalarValue>]) -> Option<Downscale> {
        None
    }
    /// For a function producing images inside its result (video frames, one list of
    /// structs a row whose `image` field a downscale reads after an explode): the same
    /// function with every image already shrunk as `downscale` would shrink it, pixel for
    /// pixel, so full-size images never leave it. `None` (the default) where it cannot.
    fn with_downscale(&self, _downscale: &Downscale) -> Option<std::sync::Arc<dyn ArrayFunction>> {
        None
    }
    /// This function as [`Any`](std::any::Any), for a [`fuse_input`](Self::fuse_input)
    /// that looks into the function it fuses (a resize reading a crop's window); `None`
    /// (the default) for a function no other one fuses by its kind.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// How a resize shrinks every image it reads: into `width × height` with the filter
/// `method`, exactly that size or, with `keep_aspect`, the largest size of the image's
/// shape that fits (see [`ArrayFunction::downscale`]).
///
/// ```
/// let to_model = rillet_operator::Downscale {
///     width: 224,
///     height: 224,
///     method: "bilinear".into(),
///     keep_aspect: false,
/// };
/// assert_eq!(to_model.width * to_model.height, 50_176);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downscale {
    /// Width of the box, in pixels.
    pub width: u32,
    /// Height of the box, in pixels.
    pub height: u32,
    /// The resize filter (`bilinear`, `lanczos3`, ...).
    pub method: String,
    /// Whether the image keeps its shape and fits inside the box.
    pub keep_aspect: bool,
}

/// A function from one batch to another, run off the async executor on a bounded pool.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::RecordBatch;
/// use arrow::datatypes::SchemaRef;
/// use rillet_operator::BatchFunction;
///
/// #[derive(Debug)]
/// struct Identity(SchemaRef);
/// impl BatchFunction for Identity {
///     fn name(&self) -> &str { "identity" }
///     fn output_schema(&self) -> SchemaRef { self.0.clone() }
///     fn call(&self, batch: RecordBatch) -> rillet_common::Result<RecordBatch> { Ok(batch) }
/// }
/// ```
pub trait BatchFunction: Send + Sync + Debug {
    /// Name shown in progress, errors and `explain`.
    fn name(&self) -> &str;
    /// Schema of every batch `call` returns.
    fn output_schema(&self) -> SchemaRef;
    /// Transform one batch. May block (it runs on a pool thread).
    fn call(&self, batch: RecordBatch) -> Result<RecordBatch>;
    /// Rows per call; `None` passes batches through as they arrive.
    fn batch_size(&self) -> Option<usize> {
        None
    }
    /// True if rows are computed independently, so a call may get fewer rows than
    /// [`batch_size`](Self::batch_size) (see [`crate::memory::CallSizer`]).
    fn splittable_batches(&self) -> bool {
        false
    }
    /// Calls that may run at once; `None` uses the engine's blocking pool size.
    fn concurrency(&self) -> Option<usize> {
        None
    }
    /// Called once when a job using this function starts, before any call: start worker
    /// processes, check that their resources exist (an error here fails the job at once).
    fn open(&self, _context: &FunctionContext) -> Result<()> {
        Ok(())
    }
    /// Called once when that job ended, however it ended.
    fn close(&self) {}
    /// This function as a [`FunctionChain`], if it is one (so chains flatten).
    fn as_chain(&self) -> Option<&FunctionChain> {
        None
    }
}

/// Cuts a stream of batches into batches of exactly `batch_size` rows (the last may be
/// shorter), so a model or UDF sees the batch size it asked for.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int32Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use rillet_operator::RowBatcher;
/// let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
/// let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1, 2, 3]))]).unwrap();
/// let mut batcher = RowBatcher::new(schema, 2);
/// let full: Vec<_> = batcher.push(batch).unwrap();
/// assert_eq!(full.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![2]);
/// assert_eq!(batcher.flush().unwrap().unwrap().num_rows(), 1);
/// ```
pub struct RowBatcher {
    schema: SchemaRef,
    batch_size: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl RowBatcher {
    /// A batcher emitting `batch_size`-row batches of `schema`.
    pub fn new(schema: SchemaRef, batch_size: usize) -> Self {
        Self {
            schema,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
            pending_rows: 0,
        }
    }

    /// Add a batch; returns every full batch now available.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        let mut full = Vec::new();
        if self.pending_rows < self.batch_size {
            return Ok(full);
        }
        let all = concat_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        let mut offset = 0;
        while all.num_rows() - offset >= self.batch_size {
            full.push(all.slice(offset, self.batch_size));
            offset += self.batch_size;
        }
        self.pending_rows = all.num_rows() - offset;
        if self.pending_rows > 0 {
            self.pending.push(all.slice(offset, self.pending_rows));
        }
        Ok(full)
    }

    /// The rows left over at end of input, if any.
    pub fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.pending_rows == 0 {
            return Ok(None);
        }
        let rest = concat_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        self.pending_rows = 0;
        Ok(Some(rest))
    }
}

/// Fail clearly when `function` returned a batch whose schema is not the one the plan
/// expects (a Python function can return anything).
pub fn check_output_schema(
    function: &dyn BatchFunction,
    result: &RecordBatch,
    expected: &SchemaRef,
) -> Result<()> {
    if result.schema().fields() != expected.fields() {
        return Err(rillet_common::RilletError::UserFunction {
            operator: function.name().to_string(),
            message: format!(
                "returned a batch with schema {:?}, but the plan expects {:?}",
                result.schema(),
                expected
            ),
        });
    }
    Ok(())
}

/// Consecutive batch functions run as one: each call passes the batch through every
/// function in turn on the same worker thread. Chaining saves a channel hop per function
/// and, more importantly, frees each intermediate result (a column of decoded images, say)
/// as soon as the next function has consumed it, instead of queueing it between tasks.
///
/// Only functions that take batches of the same size (or any size) and the same
/// concurrency chain; see [`FunctionChain::accepts`].
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int32Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
/// use rillet_operator::{BatchFunction, FunctionChain};
///
/// #[derive(Debug)]
/// struct Identity(SchemaRef);
/// impl BatchFunction for Identity {
///     fn name(&self) -> &str { "identity" }
///     fn output_schema(&self) -> SchemaRef { self.0.clone() }
///     fn call(&self, batch: RecordBatch) -> rillet_common::Result<RecordBatch> { Ok(batch) }
/// }
/// let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
/// let first: Arc<dyn BatchFunction> = Arc::new(Identity(schema.clone()));
/// let chain = FunctionChain::new(first).then(Arc::new(Identity(schema.clone())));
/// assert_eq!(chain.name(), "identity → identity");
/// let batch = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap();
/// assert_eq!(chain.call(batch).unwrap().num_rows(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct FunctionChain {
    functions: Vec<std::sync::Arc<dyn BatchFunction>>,
    name: String,
}

impl FunctionChain {
    /// A chain starting with `first` (a chain itself is flattened).
    pub fn new(first: std::sync::Arc<dyn BatchFunction>) -> Self {
        let functions = match first.as_chain() {
            Some(chain) => chain.functions.clone(),
            None => vec![first],
        };
        let name = Self::name_of(&functions);
        Self { functions, name }
    }

    /// True if `next` may run in the same call as this chain: it takes batches as they
    /// come or of the chain's size, and asks for the same concurrency.
    pub fn accepts(&self, next: &dyn BatchFunction) -> bool {
        let first = &self.functions[0];
        (next.batch_size().is_none() || next.batch_size() == first.batch_size())
            && next.concurrency() == first.concurrency()
    }

    /// The chain followed by `next`.
    pub fn then(mut self, next: std::sync::Arc<dyn BatchFunction>) -> Self {
        match next.as_chain() {
            Some(chain) => self.functions.extend(chain.functions.iter().cloned()),
            None => self.functions.push(next),
        }
        self.name = Self::name_of(&self.functions);
        self
    }

    /// The functions, in call order.
    pub fn functions(&self) -> &[std::sync::Arc<dyn BatchFunction>] {
        &self.functions
    }

    fn name_of(functions: &[std::sync::Arc<dyn BatchFunction>]) -> String {
        functions
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

impl BatchFunction for FunctionChain {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.functions[self.functions.len() - 1].output_schema()
    }

    fn call(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut batch = batch;
        for function in &self.functions {
            batch = function.call(batch)?;
            check_output_schema(function.as_ref(), &batch, &function.output_schema())?;
        }
        Ok(batch)
    }

    fn batch_size(&self) -> Option<usize> {
        self.functions[0].batch_size()
    }

    fn splittable_batches(&self) -> bool {
        self.functions.iter().all(|f| f.splittable_batches())
    }

    fn concurrency(&self) -> Option<usize> {
        self.functions[0].concurrency()
    }

    fn as_chain(&self) -> Option<&FunctionChain> {
        Some(self)
    }

    fn open(&self, context: &FunctionContext) -> Result<()> {
        for (i, function) in self.functions.iter().enumerate() {
            if let Err(e) = function.open(context) {
                self.functions[..i].iter().for_each(|f| f.close());
                return Err(e);
            }
        }
        Ok(())
    }

    fn close(&self) {
        self.functions.iter().for_each(|f| f.close());
    }
}

/// The fields of a function that hands its arguments on — to Python, to worker processes,
/// to a service — so their meaning travels with them: an Image column reaches Python as an
/// Image (not its storage struct), and a result declared as a Tensor comes back as one.
///
/// The argument fields are those the call site was last planned with; an argument whose
/// array no longer has that field's type is sent with a plain field.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array};
/// use arrow::datatypes::{DataType, Field};
/// use rillet_operator::CallFields;
///
/// let fields = CallFields::new(Field::new("result", DataType::Utf8, true));
/// let planned = Field::new("x", DataType::Int64, true)
///     .with_metadata([("ARROW:extension:name".to_string(), "demo".to_string())].into());
/// let result = fields.return_field("f", &[Arc::new(planned)]);
/// assert_eq!(result.name(), "f");
/// let x: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
/// let batch = fields.argument_batch(&[x], 2).unwrap();
/// assert_eq!(batch.schema().field(0).metadata()["ARROW:extension:name"], "demo");
/// ```
#[derive(Debug)]
pub struct CallFields {
    result: Field,
    arguments: std::sync::Mutex<Vec<FieldRef>>,
}

impl CallFields {
    /// Fields for a function returning `result` (its name is replaced by the function's).
    pub fn new(result: Field) -> Self {
        Self {
            result,
            arguments: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The result's type (the storage type for an extension type).
    pub fn return_type(&self) -> DataType {
        self.result.data_type().clone()
    }

    /// The result field named `name`, with its metadata; remembers `arguments` for the
    /// calls to come.
    pub fn return_field(&self, name: &str, arguments: &[FieldRef]) -> Field {
        *self.arguments.lock().unwrap_or_else(|e| e.into_inner()) = arguments.to_vec();
        self.result.clone().with_name(name)
    }

    /// The field to send argument `index` with: the planned one when `array` still has its
    /// type, else a plain nullable field.
    pub fn argument_field(&self, index: usize, array: &ArrayRef) -> FieldRef {
        let planned = self.arguments.lock().unwrap_or_else(|e| e.into_inner());
        match planned.get(index) {
            Some(field) if field.data_type() == array.data_type() => Arc::new(
                Field::new(format!("a{index}"), array.data_type().clone(), true)
                    .with_metadata(field.metadata().clone()),
            ),
            _ => Arc::new(Field::new(
                format!("a{index}"),
                array.data_type().clone(),
                true,
            )),
        }
    }

    /// A call's arguments as one batch for another process: columns `a0`, `a1`, … with
    /// their planned metadata and the call's row count (kept even with no arguments).
    pub fn argument_batch(&self, args: &[ArrayRef], rows: usize) -> Result<RecordBatch> {
        let fields: Vec<FieldRef> = args
            .iter()
            .enumerate()
            .map(|(i, a)| self.argument_field(i, a))
            .collect();
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            args.to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}
