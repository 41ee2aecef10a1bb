//! DataFrame operations give the right rows, and bad plans give clear errors early.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;
use rillet_plan::{JoinHow, Session, col, lit};

fn people(session: &Session) -> rillet_plan::DataFrame {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("age", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![Some("ann"), Some("bob"), None])),
            Arc::new(Int64Array::from(vec![Some(30), None, Some(12)])),
        ],
    )
    .unwrap();
    session.from_batches(schema, vec![batch]).unwrap()
}

fn one_batch(df: &rillet_plan::DataFrame) -> RecordBatch {
    let batches = df.collect().unwrap();
    concat_batches(&df.schema(), &batches).unwrap()
}

#[test]
fn misspelled_column_is_named_with_the_alternatives() {
    let session = crate::default_session();
    let err = people(&session)
        .select(vec![col("naem")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("naem"), "{err}");
    assert!(err.contains("name"), "{err}");
    let err = people(&session)
        .drop(&["nope".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("available columns: name, age"), "{err}");
}

#[test]
fn type_errors_come_from_planning_not_execution() {
    let session = crate::default_session();
    let result = people(&session).with_column("bad", col("name") - col("age"));
    assert!(result.is_err());
}

#[test]
fn join_kinds_keep_keys_once() {
    let session = crate::default_session();
    let left = people(&session);
    let right = people(&session)
        .rename(&[("age".into(), "years".into())])
        .unwrap();
    let inner = left
        .join(&right, JoinHow::Inner, &["name".into()], &["name".into()])
        .unwrap();
    assert_eq!(
        inner
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["name", "age", "years"]
    );
    assert_eq!(inner.count().unwrap(), 2);
    let full = left
        .join(&right, JoinHow::Full, &["name".into()], &["name".into()])
        .unwrap();
    assert_eq!(full.count().unwrap(), 4);
    let anti = left
        .join(&right, JoinHow::Anti, &["name".into()], &["name".into()])
        .unwrap();
    assert_eq!(anti.count().unwrap(), 1);
}

#[test]
fn sql_and_dataframe_agree() {
    let session = crate::default_session();
    let numbers = session.range(100).unwrap();
    let by_sql = session
        .sql(
            "SELECT sum(id) AS s FROM n WHERE id % 2 = 0",
            &[("n", numbers.clone())],
        )
        .unwrap();
    let by_df = numbers
        .filter((col("id") % lit(2)).eq(lit(0)))
        .unwrap()
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::sum(col("id")).alias("s")],
        )
        .unwrap();
    assert_eq!(one_batch(&by_sql), one_batch(&by_df));
}

#[test]
fn explain_shows_vertices_and_edges() {
    let session = crate::default_session();
    let text = session
        .range(10)
        .unwrap()
        .filter(col("id").gt(lit(3)))
        .unwrap()
        .explain()
        .unwrap();
    assert!(text.contains("== Logical plan =="), "{text}");
    assert!(text.contains("(parallelism"), "{text}");
    assert!(text.contains("edge [0] -> [1] Forward"), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn filter_and_project_match_a_plain_loop(values in proptest::collection::vec(proptest::option::of(-1000i64..1000), 0..300), threshold in -1000i64..1000) {
        let session = crate::default_session();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values.clone()))]).unwrap();
        let df = session.from_batches(schema, vec![batch]).unwrap()
            .filter(col("v").gt(lit(threshold))).unwrap()
            .with_column("half", col("v") / lit(2.0)).unwrap();
        let out = one_batch(&df);
        let mut got: Vec<(i64, f64)> = (0..out.num_rows()).map(|i| {
            let v = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(i);
            let h = out.column(1).as_any().downcast_ref::<Float64Array>().unwrap().value(i);
            (v, h)
        }).collect();
        got.sort_by_key(|a| a.0);
        let mut expected: Vec<(i64, f64)> = values.iter().flatten().filter(|v| **v > threshold).map(|v| (*v, *v as f64 / 2.0)).collect();
        expected.sort_by_key(|a| a.0);
        prop_assert_eq!(got, expected);
        prop_assert!(out.column(0).null_count() == 0);
    }
}
