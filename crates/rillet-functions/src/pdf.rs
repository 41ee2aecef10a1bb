//! PDF documents: page counts, text per page (to explode into one row per page), and the
//! whole text. Text comes from the content streams (pdf-extract over lopdf); scanned
//! pages without a text layer give empty text (OCR is a model operator).
//!
//! A malformed PDF is bad data: null with a reason. The extractor is third-party code that
//! can panic on hostile input, so each document is extracted behind `catch_unwind`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int32Builder, ListBuilder, StringArray, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use rillet_common::Result;
use rillet_operator::ArrayFunction;

use crate::input::{EncodedColumn, is_encoded_input, not_encoded};
use crate::operator::{Call, Operator, OperatorFunction, Param, Params, RowErrors, row_values};

/// Documents per call: each is held whole while its text is extracted.
const PDF_BATCH_ROWS: usize = 8;

/// Every PDF operator.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(PageCount)),
        Arc::new(OperatorFunction::new(Pages)),
        Arc::new(OperatorFunction::new(Text)),
    ]
}

fn expect_pdf(operator: &str, field: &Field) -> Result<()> {
    if is_encoded_input(field) {
        Ok(())
    } else {
        Err(not_encoded(operator, field, "PDF"))
    }
}

/// Run `f` on one document's bytes, turning a panic inside the parser into a reason.
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        Err(format!("malformed PDF (the parser gave up: {detail})"))
    })
}

/// Refuse content that does not start like a PDF before handing it to a parser.
fn require_header(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.starts_with(b"%PDF") {
        Ok(())
    } else {
        Err("not a PDF (no %PDF header)".to_string())
    }
}

/// The text of each page, in page order.
///
/// ```
/// assert!(rillet_functions::pdf::page_texts(b"%PDF-1.4 not really").is_err());
/// ```
pub fn page_texts(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    require_header(bytes)?;
    guarded(|| {
        pdf_extract::extract_text_from_mem_by_pages(bytes)
            .map_err(|e| format!("malformed PDF: {e}"))
    })
}

fn page_count(bytes: &[u8]) -> std::result::Result<usize, String> {
    require_header(bytes)?;
    guarded(|| {
        lopdf::Document::load_mem(bytes)
            .map(|d| d.get_pages().len())
            .map_err(|e| format!("malformed PDF: {e}"))
    })
}

/// Each row's value from its document bytes.
fn per_document<T>(
    operator: &str,
    call: &Call<'_>,
    errors: &mut RowErrors,
    mut f: impl FnMut(&[u8]) -> std::result::Result<T, String>,
) -> Result<Vec<Option<T>>> {
    let column = EncodedColumn::try_new(operator, &call.inputs[0], "PDF")?;
    row_values(
        call.rows,
        errors,
        |row| column.identity(row),
        |row| column.get(row),
        |bytes, _| f(&bytes),
    )
}

/// `pdf_page_count(x, on_error)`: pages in the document (reads its page tree only).
#[derive(Debug)]
pub struct PageCount;

impl Operator for PageCount {
    fn name(&self) -> &'static str {
        "pdf_page_count"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_pdf(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Int32, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = per_document(self.name(), call, errors, |bytes| {
            page_count(bytes).map(|n| n as i32)
        })?;
        Ok(Arc::new(rows.into_iter().collect::<Int32Array>()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(PDF_BATCH_ROWS)
    }
}

fn page_fields() -> Fields {
    Fields::from(vec![
        Field::new("page", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
    ])
}

/// `pdf_pages(x, on_error)`: a `list<struct{page, text}>` (pages numbered from 1) to
/// explode into one row per page; the other columns of the row are kept on each page.
#[derive(Debug)]
pub struct Pages;

impl Operator for Pages {
    fn name(&self) -> &'static str {
        "pdf_pages"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_pdf(self.name(), &inputs[0])?;
        Ok(Field::new(
            self.name(),
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(page_fields()),
                false,
            ))),
            true,
        ))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = per_document(self.name(), call, errors, page_texts)?;
        let mut out = ListBuilder::new(StructBuilder::from_fields(page_fields(), 0)).with_field(
            Arc::new(Field::new("item", DataType::Struct(page_fields()), false)),
        );
        for pages in rows {
            let Some(pages) = pages else {
                out.append(false);
                continue;
            };
            let items = out.values();
            for (i, text) in pages.iter().enumerate() {
                items
                    .field_builder::<Int32Builder>(0)
                    .expect("int32")
                    .append_value(i as i32 + 1);
                items
                    .field_builder::<StringBuilder>(1)
                    .expect("utf8")
                    .append_value(text);
                items.append(true);
            }
            out.append(true);
        }
        Ok(Arc::new(out.finish()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(PDF_BATCH_ROWS)
    }
}

/// `pdf_text(x, on_error)`: the whole document's text, pages separated by form feeds.
#[derive(Debug)]
pub struct Text;

impl Operator for Text {
    fn name(&self) -> &'static str {
        "pdf_text"
    }

    fn params(&self) -> &'static [Param] {
        const P: &[Param] = &[Param::ON_ERROR];
        P
    }

    fn result_field(&self, inputs: &[FieldRef], _params: &Params) -> Result<Field> {
        expect_pdf(self.name(), &inputs[0])?;
        Ok(Field::new(self.name(), DataType::Utf8, true))
    }

    fn evaluate(&self, call: &Call<'_>, errors: &mut RowErrors) -> Result<ArrayRef> {
        let rows = per_document(self.name(), call, errors, |bytes| {
            page_texts(bytes).map(|pages| pages.join("\u{c}"))
        })?;
        Ok(Arc::new(rows.into_iter().collect::<StringArray>()))
    }

    fn batch_size(&self) -> Option<usize> {
        Some(PDF_BATCH_ROWS)
    }
}
