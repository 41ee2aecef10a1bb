//! Building `Tensor` columns (see [`rillet_common::types::TensorType`] for the storage).

use std::sync::Arc;

use arrow::array::{ArrayRef, LargeBinaryArray, ListBuilder, StructArray, UInt32Builder};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowNativeType, DataType, ToByteSlice};
use rillet_common::types::{ElementType, TensorType};

/// Builds a variable-shape `Tensor` column: each row's elements are appended as bytes to one
/// buffer, so a row costs one copy however many elements it has.
///
/// ```
/// use arrow::array::Array;
/// use rillet_common::types::ElementType;
/// use rillet_functions::tensor::TensorBuilder;
/// let mut tensors = TensorBuilder::new(ElementType::F32, 2);
/// tensors.append_values(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0]);
/// tensors.append_null();
/// let column = tensors.finish();
/// assert_eq!((column.len(), column.null_count()), (2, 1));
/// ```
pub struct TensorBuilder {
    dtype: ElementType,
    data: Vec<u8>,
    offsets: Vec<i64>,
    shapes: ListBuilder<UInt32Builder>,
    valid: Vec<bool>,
}

impl TensorBuilder {
    /// An empty builder of `dtype` elements for about `rows` rows.
    pub fn new(dtype: ElementType, rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            dtype,
            data: Vec::new(),
            offsets,
            shapes: ListBuilder::new(UInt32Builder::new()),
            valid: Vec::with_capacity(rows),
        }
    }

    /// Element type of the column.
    pub fn dtype(&self) -> ElementType {
        self.dtype
    }

    /// Append a row of `shape` whose elements `fill` appends to the byte buffer it is given,
    /// as little-endian values of the builder's element type.
    pub fn append_with(&mut self, shape: &[usize], fill: impl FnOnce(&mut Vec<u8>)) {
        let bytes = shape.iter().product::<usize>() * self.dtype.size();
        let rows_left = self.valid.capacity().saturating_sub(self.valid.len());
        crate::reserve_rows(&mut self.data, bytes, rows_left);
        let start = self.data.len();
        fill(&mut self.data);
        debug_assert_eq!(self.data.len() - start, bytes, "tensor row of {shape:?}");
        self.shapes
            .values()
            .extend(shape.iter().map(|&d| Some(d as u32)));
        self.end_row(true);
    }

    /// Append a row of `shape` holding `values` (of the builder's element type).
    pub fn append_values<T: ArrowNativeType>(&mut self, shape: &[usize], values: &[T]) {
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        // Arrow's native types are stored in the machine's byte order, which Arrow (and
        // this storage) assume to be little-endian.
        self.append_with(shape, |data| data.extend_from_slice(values.to_byte_slice()));
    }

    /// Append a null row.
    pub fn append_null(&mut self) {
        self.end_row(false);
    }

    fn end_row(&mut self, valid: bool) {
        self.offsets.push(self.data.len() as i64);
        self.shapes.append(true);
        self.valid.push(valid);
    }

    /// The finished column (storage of `TensorType::new(dtype, None)`).
    pub fn finish(mut self) -> ArrayRef {
        let DataType::Struct(fields) = TensorType::storage_type_of(self.dtype, None) else {
            unreachable!("variable-shape tensors are structs")
        };
        let nulls = if self.valid.iter().all(|v| *v) {
            None
        } else {
            Some(NullBuffer::from(self.valid))
        };
        let data = LargeBinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            self.data.into(),
            None,
        );
        Arc::new(StructArray::new(
            fields,
            vec![Arc::new(data), Arc::new(self.shapes.finish())],
            nulls,
        ))
    }
}
