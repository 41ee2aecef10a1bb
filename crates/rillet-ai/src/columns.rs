//! The result column shared by operators that find things in images (`detect_objects`,
//! `ocr`): per row, a list of `{<name>, score, box: [x1, y1, x2, y2]}`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, ListArray, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use rillet_common::Result;

/// Builds a list<struct{`name`: utf8, score: f32, box: fixed_size_list<f32, 4>}> column,
/// row by row.
pub(crate) struct ScoredBoxes {
    name: &'static str,
    texts: Vec<String>,
    scores: Vec<f32>,
    boxes: Vec<f32>,
    offsets: Vec<i32>,
    valid: Vec<bool>,
}

impl ScoredBoxes {
    /// An empty column whose text field is called `name`.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            texts: Vec::new(),
            scores: Vec::new(),
            boxes: Vec::new(),
            offsets: vec![0],
            valid: Vec::new(),
        }
    }

    /// The column's type, for `result_field`.
    pub(crate) fn data_type(name: &str) -> DataType {
        DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(fields(name)),
            false,
        )))
    }

    /// Add one item to the current row.
    pub(crate) fn push(&mut self, text: String, score: f32, bbox: [f32; 4]) {
        self.texts.push(text);
        self.scores.push(score);
        self.boxes.extend(bbox);
    }

    /// End the current row: its items so far, or null when not `valid`.
    pub(crate) fn end_row(&mut self, valid: bool) {
        self.offsets.push(self.texts.len() as i32);
        self.valid.push(valid);
    }

    /// The column.
    pub(crate) fn finish(self) -> Result<ArrayRef> {
        let fields = fields(self.name);
        let structs = StructArray::try_new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(self.texts)),
                Arc::new(Float32Array::from(self.scores)),
                Arc::new(FixedSizeListArray::try_new(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    4,
                    Arc::new(Float32Array::from(self.boxes)),
                    None,
                )?),
            ],
            None,
        )?;
        Ok(Arc::new(ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(fields), false)),
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(structs),
            Some(NullBuffer::from(self.valid)),
        )?))
    }
}

fn fields(name: &str) -> Fields {
    Fields::from(vec![
        Field::new(name, DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new(
            "box",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 4),
            false,
        ),
    ])
}
