//! The shape every native operator shares: column inputs, literal options with defaults,
//! a result field decided at planning time, a kernel over Arrow arrays, and the bad-input
//! policy (`on_error`) applied the same way everywhere.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::ScalarValue;
use rillet_common::{Result, RilletError};
use rillet_operator::{ArrayFunction, Downscale};

use crate::image::Window;
use crate::input::RowFailure;

/// What an operator does with a row whose data it cannot process (corrupt, truncated,
/// unknown format, over a size cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The row's result is null (false for validity checks).
    Null,
    /// The job fails, naming the row.
    Raise,
    /// The result becomes a struct `{value, error}`: the value (or null) and the reason.
    Column,
}

impl OnError {
    fn parse(text: &str, operator: &str) -> Result<Self> {
        match text {
            "null" => Ok(Self::Null),
            "raise" => Ok(Self::Raise),
            "column" => Ok(Self::Column),
            other => Err(RilletError::invalid_argument(format!(
                "{operator}: on_error must be \"null\", \"raise\" or \"column\", not {other:?}"
            ))),
        }
    }
}

/// The kind of value an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// An integer.
    Int,
    /// A number.
    Float,
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// A list of numbers.
    FloatList,
}

/// One literal option of an operator, after its column inputs.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name, as the Python keyword argument.
    pub name: &'static str,
    /// Kind of value.
    pub kind: ParamKind,
    /// Default as text (parsed per `kind`); `None` makes the option required.
    pub default: Option<&'static str>,
}

impl Param {
    /// A required option.
    pub const fn required(name: &'static str, kind: ParamKind) -> Self {
        Self {
            name,
            kind,
            default: None,
        }
    }

    /// An option with a default.
    pub const fn optional(name: &'static str, kind: ParamKind, default: &'static str) -> Self {
        Self {
            name,
            kind,
            default: Some(default),
        }
    }

    /// The standard `on_error` option, `"null"` by default.
    pub const ON_ERROR: Param = Param::optional("on_error", ParamKind::Str, "null");
}

/// Option values of one call, checked against the operator's [`Param`]s.
#[derive(Debug, Clone, Default)]
pub struct Params {
    operator: &'static str,
    values: HashMap<&'static str, ScalarValue>,
}

impl Params {
    pub(crate) fn parse(
        operator: &'static str,
        params: &[Param],
        literals: &[Option<ScalarValue>],
    ) -> Result<Self> {
        if literals.len() > params.len() {
            return Err(RilletError::invalid_argument(format!(
                "{operator} takes at most {} option(s) ({}), got {}",
                params.len(),
                params.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                literals.len()
            )));
        }
        let mut values = HashMap::new();
        for (i, param) in params.iter().enumerate() {
            let value = match literals.get(i) {
                Some(Some(value)) if !value.is_null() => value.clone(),
                Some(None) => {
                    return Err(RilletError::invalid_argument(format!(
                        "{operator}: option {} must be a literal value, not a column",
                        param.name
                    )));
                }
                _ => match param.default {
                    Some(default) => default_value(param.kind, default),
                    None => {
                        return Err(RilletError::invalid_argument(format!(
                            "{operator}: option {} is required",
                            param.name
                        )));
                    }
                },
            };
            values.insert(param.name, value);
        }
        let parsed = Self { operator, values };
        // Check every option's kind once, at planning time.
        for param in params {
            match param.kind {
                ParamKind::Int => drop(parsed.int(param.name)?),
                ParamKind::Float => drop(parsed.float(param.name)?),
                ParamKind::Str => drop(parsed.str(param.name)?),
                ParamKind::Bool => drop(parsed.bool(param.name)?),
                ParamKind::FloatList => drop(parsed.float_list(param.name)?),
            }
        }
        Ok(parsed)
    }

    fn get(&self, name: &str) -> Result<&ScalarValue> {
        self.values
            .get(name)
            .ok_or_else(|| RilletError::Internal(format!("{}: no option {name}", self.operator)))
    }

    fn wrong(&self, name: &str, want: &str, value: &ScalarValue) -> RilletError {
        RilletError::invalid_argument(format!(
            "{}: option {name} must be {want}, not {value} ({})",
            self.operator,
            value.data_type()
        ))
    }

    /// An integer option.
    pub fn int(&self, name: &str) -> Result<i64> {
        let value = self.get(name)?;
        match value {
            ScalarValue::Int8(Some(v)) => Ok(*v as i64),
            ScalarValue::Int16(Some(v)) => Ok(*v as i64),
            ScalarValue::Int32(Some(v)) => Ok(*v as i64),
            ScalarValue::Int64(Some(v)) => Ok(*v),
            ScalarValue::UInt8(Some(v)) => Ok(*v as i64),
            ScalarValue::UInt16(Some(v)) => Ok(*v as i64),
            ScalarValue::UInt32(Some(v)) => Ok(*v as i64),
            ScalarValue::UInt64(Some(v)) => {
                i64::try_from(*v).map_err(|_| self.wrong(name, "an integer", value))
            }
            _ => Err(self.wrong(name, "an integer", value)),
        }
    }

    /// A non-negative integer option that fits `u32` (a size in pixels, a count).
    pub fn size(&self, name: &str) -> Result<u32> {
        let v = self.int(name)?;
        u32::try_from(v).map_err(|_| {
            RilletError::invalid_argument(format!(
                "{}: option {name} must be between 0 and {}, not {v}",
                self.operator,
                u32::MAX
            ))
        })
    }

    /// The operator these options belong to (for messages).
    pub fn operator(&self) -> &'static str {
        self.operator
    }

    /// A number option (integers accepted).
    pub fn float(&self, name: &str) -> Result<f64> {
        let value = self.get(name)?;
        match value {
            ScalarValue::Float32(Some(v)) => Ok(*v as f64),
            ScalarValue::Float64(Some(v)) => Ok(*v),
            _ => self
                .int(name)
                .map(|v| v as f64)
                .map_err(|_| self.wrong(name, "a number", value)),
        }
    }

    /// A string option.
    pub fn str(&self, name: &str) -> Result<&str> {
        let value = self.get(name)?;
        match value {
            ScalarValue::Utf8(Some(v))
            | ScalarValue::LargeUtf8(Some(v))
            | ScalarValue::Utf8View(Some(v)) => Ok(v),
            _ => Err(self.wrong(name, "a string", value)),
        }
    }

    /// A boolean option.
    pub fn bool(&self, name: &str) -> Result<bool> {
        let value = self.get(name)?;
        match value {
            ScalarValue::Boolean(Some(v)) => Ok(*v),
            _ => Err(self.wrong(name, "true or false", value)),
        }
    }

    /// A list-of-numbers option; an empty list where none was given.
    pub fn float_list(&self, name: &str) -> Result<Vec<f64>> {
        let value = self.get(name)?;
        let array = match value {
            ScalarValue::List(list) => list.value(0),
            ScalarValue::LargeList(list) => list.value(0),
            ScalarValue::FixedSizeList(list) => list.value(0),
            ScalarValue::Utf8(Some(text)) if text.is_empty() => return Ok(Vec::new()),
            _ => return Err(self.wrong(name, "a list of numbers", value)),
        };
        let floats = arrow::compute::cast(&array, &DataType::Float64)
            .map_err(|_| self.wrong(name, "a list of numbers", value))?;
        let floats = floats
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .ok_or_else(|| self.wrong(name, "a list of numbers", value))?;
        if floats.null_count() > 0 {
            return Err(self.wrong(name, "a list of numbers without nulls", value));
        }
        Ok(floats.values().to_vec())
    }

    /// The `on_error` policy.
    pub fn on_error(&self) -> Result<OnError> {
        OnError::parse(self.str("on_error")?, self.operator)
    }
}

fn default_value(kind: ParamKind, text: &str) -> ScalarValue {
    match kind {
        ParamKind::Int => ScalarValue::Int64(text.parse().ok()),
        ParamKind::Float => ScalarValue::Float64(text.parse().ok()),
        ParamKind::Str => ScalarValue::Utf8(Some(text.to_string())),
        ParamKind::Bool => ScalarValue::Boolean(Some(text == "true")),
        // Lists default to empty (spelled as an empty string to keep `Param` const).
        ParamKind::FloatList => ScalarValue::Utf8(Some(String::new())),
    }
}

/// The reason each failed row failed, filled in by a kernel.
#[derive(Debug)]
pub struct RowErrors {
    reasons: Vec<Option<String>>,
    failed: usize,
}

impl RowErrors {
    /// No failures yet, for `rows` rows.
    pub fn new(rows: usize) -> Self {
        Self {
            reasons: vec![None; rows],
            failed: 0,
        }
    }

    /// Record that `row` failed because of `reason` (its result must be null).
    pub fn fail(&mut self, row: usize, reason: impl Into<String>) {
        if self.reasons[row].is_none() {
            self.failed += 1;
        }
        self.reasons[row] = Some(reason.into());
    }

    /// Number of failed rows.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// The first failure, as (row, reason).
    pub fn first(&self) -> Option<(usize, &str)> {
        self.reasons
            .iter()
            .enumerate()
            .find_map(|(row, reason)| reason.as_deref().map(|r| (row, r)))
    }
}

/// One value per row, with the bad-input policy every operator shares: `fetch` reads row
/// `row` (`Ok(None)` for a null row) and `f` computes its value. A data problem from either
/// nulls the row and records the reason (`f`'s reasons prefixed with `identity(row)`); an
/// infrastructure problem fails the call.
pub(crate) fn row_values<T, R>(
    rows: usize,
    errors: &mut RowErrors,
    identity: impl Fn(usize) -> String,
    mut fetch: impl FnMut(usize) -> std::result::Result<Option<T>, RowFailure>,
    mut f: impl FnMut(T, usize) -> std::result::Result<R, String>,
) -> Result<Vec<Option<R>>> {
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let computed = fetch(row).map(|value| value.map(|value| f(value, row)));
        out.push(row_value(row, errors, computed, || identity(row))?);
    }
    Ok(out)
}

/// One row's value under the policy of [`row_values`], from what reading the row and
/// computing its value gave (`Ok(None)`: a null row). A reason from the computation is
/// prefixed with `identity()`.
pub(crate) fn row_value<R>(
    row: usize,
    errors: &mut RowErrors,
    computed: std::result::Result<Option<std::result::Result<R, String>>, RowFailure>,
    identity: impl FnOnce() -> String,
) -> Result<Option<R>> {
    let value = match computed {
        Ok(None) => Ok(None),
        Ok(Some(result)) => result
            .map(Some)
            .map_err(|reason| format!("{}: {reason}", identity())),
        Err(RowFailure::Data(reason)) => Err(reason),
        Err(RowFailure::Infrastructure(e)) => return Err(e),
    };
    Ok(value.unwrap_or_else(|reason| {
        errors.fail(row, reason);
        None
    }))
}

/// Inputs of one kernel call.
pub struct Call<'a> {
    /// The column inputs, one array each.
    pub inputs: &'a [ArrayRef],
    /// Their fields (with extension metadata), as planned.
    pub fields: &'a [FieldRef],
    /// The options.
    pub params: &'a Params,
    /// Rows in the batch.
    pub rows: usize,
    /// Options of an `image_decode` fused into this call (see
    /// [`Operator::fuses_image_decode`]): the first input is then encoded images, which the
    /// operator decodes row by row with these options.
    pub decode: Option<&'a Params>,
    /// The window of a crop fused into this call (see [`Operator::fuses_crop`]): the
    /// operator reads only that part of each input image.
    pub window: Option<Window>,
}

/// A native operator. Implement this; [`OperatorFunction`] turns it into an
/// [`ArrayFunction`] that the planner registers for SQL and the DataFrame.
pub trait Operator: Send + Sync + Debug + 'static {
    /// SQL name (`image_resize`); the Python method is the part after the namespace.
    fn name(&self) -> &'static str;
    /// Number of leading column inputs (the rest are options).
    fn inputs(&self) -> usize {
        1
    }
    /// Options, in positional order.
    fn params(&self) -> &'static [Param];
    /// The result field for these input fields and options. Check input types here: an
    /// error is reported when the plan is built.
    fn result_field(&self, inputs: &[FieldRef], params: &Params) -> Result<Field>;
    /// Compute the result. Data problems in a row: `errors.fail(row, reason)` and a null.
    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef>;
    /// Rows per call, for operators whose rows are large (decoded media).
    fn batch_size(&self) -> Option<usize> {
        None
    }
    /// Calls that may run at once; `None` uses the engine's default. Model operators whose
    /// runtime already spreads one call over every core ask for fewer.
    fn concurrency(&self) -> Option<usize> {
        None
    }
    /// True if the operator reads its one image input row by row and decodes encoded rows
    /// itself (through `ImageInput`, honouring [`Call::decode`]). Then an `image_decode`
    /// call feeding it is fused into its calls: each photo is decoded, used and dropped
    /// within its row instead of a batch of full-size photos living between two calls.
    fn fuses_image_decode(&self) -> bool {
        false
    }
    /// True if the operator (which fuses `image_decode`) shrinks every image to a size it
    /// knows before decoding (resize, letterbox, a model's input), so a large JPEG may be
    /// decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain. The scale is chosen per
    /// row; plans show the bound: `image_decode[dct≤1/8]+image_resize`.
    fn shrinks_images(&self) -> bool {
        false
    }
    /// True if the operator (which fuses `image_decode`) keeps one window of every image,
    /// so of a JPEG only that region may be decoded; plans show
    /// `image_decode[region]+image_crop`.
    fn decodes_regions(&self) -> bool {
        false
    }
    /// The window of each image this operator keeps, for an operator that only crops
    /// (`image_crop`, `image_center_crop`); `None` for every other.
    fn crop_window(&self, _params: &Params) -> Option<Result<Window>> {
        None
    }
    /// True if the operator reads [`Call::window`]: a crop feeding it (and the decode fused
    /// into that crop) is fused into its calls, so it reads the window of each image in
    /// place instead of a cropped copy and, when it also [`shrinks_images`](Self::shrinks_images),
    /// may decode a JPEG reduced by how much it shrinks the window.
    fn fuses_crop(&self) -> bool {
        false
    }
    /// For an operator that shrinks every image into a box its options fix (resize): that
    /// shrink, so the operator producing the images can make them that size itself (see
    /// [`ArrayFunction::downscale`]).
    fn downscale(&self, _params: &Params) -> Option<Downscale> {
        None
    }
    /// For an operator producing images that can shrink them itself (video frames): that
    /// operator making every image exactly what `downscale` would make of it (see
    /// [`ArrayFunction::with_downscale`]).
    fn downscaled(&self, _downscale: &Downscale) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// Adapts an [`Operator`] to the engine's [`ArrayFunction`]: splits inputs from options,
/// parses options, applies `on_error`.
#[derive(Debug)]
pub struct OperatorFunction<O: Operator> {
    operator: Arc<O>,
    /// Set when calls feeding the operator (an `image_decode`, a crop) are fused in.
    fused: Option<FusedInput>,
}

/// How plans name an `image_decode` fused into `operator`: in full, possibly reduced for an
/// operator that shrinks (the bound of the DCT scaling, see [`Operator::shrinks_images`]),
/// or possibly only a region for one that crops ([`Operator::decodes_regions`]).
fn decode_label(operator: &dyn Operator) -> &'static str {
    if operator.shrinks_images() {
        "image_decode[dct≤1/8]"
    } else if operator.decodes_regions() {
        "image_decode[region]"
    } else {
        "image_decode"
    }
}

/// Calls fused in front of an operator: an `image_decode`, a crop, or a decode and a crop.
#[derive(Debug)]
struct FusedInput {
    /// Arguments the fused calls took (their input and options); the operator's own
    /// options follow them.
    args: usize,
    /// `image_decode+<operator>`, `image_decode[dct≤1/8]+image_crop+image_resize`, …, for
    /// plans and progress.
    label: String,
    /// The options of a fused `image_decode` (literals, fixed when the calls are fused).
    decode: Option<Params>,
    /// The window of a fused crop.
    window: Option<Window>,
}

impl<O: Operator> OperatorFunction<O> {
    /// Wrap `operator`.
    pub fn new(operator: O) -> Self {
        Self {
            operator: Arc::new(operator),
            fused: None,
        }
    }

    /// The operator's own arguments (its input, then its options) out of a call's, which
    /// also carry the fused calls' options after the input.
    fn own_args<T: Clone>(&self, args: &[T]) -> Vec<T> {
        match &self.fused {
            Some(fused) if args.len() >= fused.args => args[..1]
                .iter()
                .chain(&args[fused.args..])
                .cloned()
                .collect(),
            _ => args.to_vec(),
        }
    }

    /// The options of the fused `image_decode`, if any.
    fn decode_params(&self) -> Option<&Params> {
        self.fused.as_ref().and_then(|fused| fused.decode.as_ref())
    }

    /// For a crop operator's function called with `literals`: its window, the decode
    /// fused into it and its row policy, for an operator that fuses the crop.
    pub(crate) fn fusable_window(
        &self,
        literals: &[Option<&ScalarValue>],
    ) -> Option<(Window, Option<Params>, OnError)> {
        let params = self.params_from_literals(&self.own_args(literals)).ok()?;
        let window = self.operator.crop_window(&params)?.ok()?;
        let policy = self.policy(&params).ok()?;
        Some((window, self.decode_params().cloned(), policy))
    }

    /// This function with `fused` in front of its operator.
    fn with_fused(&self, fused: FusedInput) -> Arc<dyn ArrayFunction> {
        Arc::new(OperatorFunction {
            operator: self.operator.clone(),
            fused: Some(fused),
        })
    }

    /// The row policy of this call's options, if they parse.
    fn policy_of(&self, literals: &[Option<&ScalarValue>]) -> Option<OnError> {
        self.policy(&self.params_from_literals(literals).ok()?).ok()
    }

    /// Fuse an `image_decode` feeding the operator (see [`Operator::fuses_image_decode`]).
    fn fuse_decode(
        &self,
        input_literals: &[Option<&ScalarValue>],
        literals: &[Option<&ScalarValue>],
    ) -> Option<Arc<dyn ArrayFunction>> {
        if !self.operator.fuses_image_decode() || input_literals.is_empty() {
            return None;
        }
        let decode_literals: Vec<Option<ScalarValue>> =
            input_literals[1..].iter().map(|l| l.cloned()).collect();
        let decode = crate::image::decode_params(&decode_literals).ok()?;
        let policy = self.policy_of(literals)?;
        // Fused, a row that fails to decode fails the operator's call: the same result only
        // when both calls treat bad rows alike. With "column" the decode call's error struct
        // would be the operator's input, which it rejects anyway.
        if policy == OnError::Column || decode.on_error().ok()? != policy {
            return None;
        }
        let decode_label = decode_label(self.operator.as_ref());
        Some(self.with_fused(FusedInput {
            args: input_literals.len(),
            label: format!("{decode_label}+{}", self.operator.name()),
            decode: Some(decode),
            window: None,
        }))
    }

    /// Fuse a crop feeding the operator, with the decode fused into that crop if any (see
    /// [`Operator::fuses_crop`]).
    fn fuse_crop(
        &self,
        input: &dyn ArrayFunction,
        input_literals: &[Option<&ScalarValue>],
        literals: &[Option<&ScalarValue>],
    ) -> Option<Arc<dyn ArrayFunction>> {
        if !self.operator.fuses_crop() {
            return None;
        }
        let (window, decode, crop_policy) =
            crate::image::crop_window_of(input.as_any()?, input_literals)?;
        let policy = self.policy_of(literals)?;
        if policy == OnError::Column || crop_policy != policy {
            return None;
        }
        let crop = input.name().rsplit('+').next().unwrap_or(input.name());
        let label = match decode {
            Some(_) => {
                let decode_label = decode_label(self.operator.as_ref());
                format!("{decode_label}+{crop}+{}", self.operator.name())
            }
            None => format!("{crop}+{}", self.operator.name()),
        };
        Some(self.with_fused(FusedInput {
            args: input_literals.len(),
            label,
            decode,
            window: Some(window),
        }))
    }

    fn params_from_literals(&self, literals: &[Option<&ScalarValue>]) -> Result<Params> {
        let options: Vec<Option<ScalarValue>> = literals
            .iter()
            .skip(self.operator.inputs())
            .map(|l| l.cloned())
            .collect();
        Params::parse(self.operator.name(), self.operator.params(), &options)
    }

    /// The row policy of a call: operators without an `on_error` option null bad rows.
    fn policy(&self, params: &Params) -> Result<OnError> {
        if self.operator.params().iter().any(|p| p.name == "on_error") {
            params.on_error()
        } else {
            Ok(OnError::Null)
        }
    }

    fn check_arity(&self, args: usize) -> Result<()> {
        if args < self.operator.inputs() {
            return Err(RilletError::invalid_argument(format!(
                "{} takes {} column input(s), got {args}",
                self.operator.name(),
                self.operator.inputs()
            )));
        }
        Ok(())
    }
}

fn error_column(value: Field) -> Field {
    let name = value.name().clone();
    Field::new(
        name,
        DataType::Struct(Fields::from(vec![
            value.with_name("value"),
            Field::new("error", DataType::Utf8, true),
        ])),
        true,
    )
}

impl<O: Operator> ArrayFunction for OperatorFunction<O> {
    fn name(&self) -> &str {
        match &self.fused {
            Some(fused) => &fused.label,
            None => self.operator.name(),
        }
    }

    fn return_type(&self) -> DataType {
        // Only used where no argument types are known; the planner calls `return_field`.
        DataType::Null
    }

    fn return_field(&self, args: &[FieldRef], literals: &[Option<&ScalarValue>]) -> Result<Field> {
        let (args, literals) = (self.own_args(args), self.own_args(literals));
        self.check_arity(args.len())?;
        let params = self.params_from_literals(&literals)?;
        let inputs = match self.decode_params() {
            // The operator sees what the decode call would have given it.
            Some(decode) => vec![crate::image::decoded_field(&args[0], decode)?],
            None => args[..self.operator.inputs()].to_vec(),
        };
        let field = self
            .operator
            .result_field(&inputs, &params)?
            .with_name(self.operator.name());
        Ok(if self.policy(&params)? == OnError::Column {
            error_column(field)
        } else {
            field
        })
    }

    fn call(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        let args = self.own_args(args);
        self.check_arity(args.len())?;
        let n = self.operator.inputs();
        let literals = args[n..]
            .iter()
            .map(|a| {
                if a.is_empty() {
                    Ok(None)
                } else {
                    ScalarValue::try_from_array(a, 0).map(Some)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let literal_refs: Vec<Option<&ScalarValue>> = std::iter::repeat_n(None, n)
            .chain(literals.iter().map(|l| l.as_ref()))
            .collect();
        let params = self.params_from_literals(&literal_refs)?;
        let fields: Vec<FieldRef> = args[..n]
            .iter()
            .enumerate()
            .map(|(i, a)| Arc::new(Field::new(format!("arg{i}"), a.data_type().clone(), true)))
            .collect();
        let mut errors = RowErrors::new(rows);
        let call = Call {
            inputs: &args[..n],
            fields: &fields,
            params: &params,
            rows,
            decode: self.decode_params(),
            window: self.fused.as_ref().and_then(|fused| fused.window),
        };
        let values = self.operator.evaluate(&call, &mut errors)?;
        let policy = self.policy(&params)?;
        if policy == OnError::Null {
            let reason = errors.first().map(|(_, reason)| reason);
            rillet_operator::record_nulls(
                self.operator.name(),
                rows as u64,
                errors.failed() as u64,
                reason,
            );
        }
        match policy {
            OnError::Raise if errors.failed() > 0 => {
                let (row, reason) = errors.first().expect("a failure was counted");
                let place = match rillet_operator::call_first_row() {
                    Some(first) => format!("row {}", first + row as u64),
                    None => format!("row {row} of its batch"),
                };
                Err(RilletError::invalid_data(format!(
                    "{} failed on {place} ({} failed rows in the call): {reason}",
                    self.operator.name(),
                    errors.failed()
                )))
            }
            OnError::Column => {
                let value_field = self
                    .operator
                    .result_field(&fields, &params)?
                    .with_name("value");
                let reasons: StringArray = errors.reasons.into_iter().collect();
                let struct_fields =
                    Fields::from(vec![value_field, Field::new("error", DataType::Utf8, true)]);
                let array = StructArray::try_new(
                    struct_fields,
                    vec![values, Arc::new(reasons)],
                    None::<NullBuffer>,
                )?;
                Ok(Arc::new(array))
            }
            _ => Ok(values),
        }
    }

    fn batch_size(&self) -> Option<usize> {
        self.operator.batch_size()
    }

    fn concurrency(&self) -> Option<usize> {
        self.operator.concurrency()
    }

    fn splittable_batches(&self) -> bool {
        // Every native operator computes each row on its own.
        true
    }

    fn fuse_input(
        &self,
        input: &dyn ArrayFunction,
        input_literals: &[Option<&ScalarValue>],
        literals: &[Option<&ScalarValue>],
    ) -> Option<Arc<dyn ArrayFunction>> {
        if self.fused.is_some() || self.operator.inputs() != 1 {
            return None;
        }
        if input.name() == "image_decode" {
            self.fuse_decode(input_literals, literals)
        } else {
            self.fuse_crop(input, input_literals, literals)
        }
    }

    fn downscale(&self, literals: &[Option<&ScalarValue>]) -> Option<Downscale> {
        if self.fused.is_some() || self.operator.inputs() != 1 {
            return None;
        }
        let params = self.params_from_literals(literals).ok()?;
        self.operator.downscale(&params)
    }

    fn with_downscale(&self, downscale: &Downscale) -> Option<Arc<dyn ArrayFunction>> {
        if self.fused.is_some() {
            return None;
        }
        let operator = self.operator.downscaled(downscale)?;
        Some(Arc::new(OperatorFunction::new(operator)))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
