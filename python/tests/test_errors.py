"""Errors are clear, raised when the plan is built, and never a crash."""

import pyarrow as pa
import pytest

import rillet as rl
from rillet import col


@pytest.fixture
def df():
    return rl.from_pydict({"name": ["a", "b"], "age": [1, 2]})


def test_misspelled_column_names_it_and_lists_the_others(df):
    with pytest.raises(rl.PlanError) as info:
        df.select("naem")
    message = str(info.value)
    assert "naem" in message and "name" in message and "age" in message
    with pytest.raises(rl.PlanError, match="naem"):
        df.filter(col("naem") > 1)
    with pytest.raises(rl.PlanError, match="available columns: name, age"):
        df.drop("nope")
    with pytest.raises(rl.PlanError, match="nope"):
        df.join(df, on="nope")


def test_type_errors_are_reported_when_the_plan_is_built(df):
    # No collect(): the error comes from building the DataFrame.
    with pytest.raises(rl.PlanError):
        df.with_column("bad", col("name") - col("age"))
    with pytest.raises(rl.PlanError):
        df.filter(col("age") + 1)


def test_bad_arguments(df):
    with pytest.raises(ValueError):
        df.join(df, left_on="age")
    with pytest.raises(rl.PlanError, match="unknown join type"):
        df.join(df, on="age", how="sideways")
    with pytest.raises(ValueError, match="batch_format"):
        df.map_batches(lambda t: t, batch_format="xml")
    with pytest.raises(TypeError):
        df.filter("age > 1")
    with pytest.raises(TypeError, match="truth value"):
        bool(col("a") > 1)
    with pytest.raises(OSError, match="no such file"):
        rl.read_parquet("/definitely/not/here.parquet")


def test_udf_exception_surfaces_with_traceback_and_operator(df):
    @rl.udf(return_dtype="int64")
    def explode_on_b(name):
        if name == "b":
            raise ZeroDivisionError("boom on b")
        return 1

    with pytest.raises(rl.UserFunctionError) as info:
        df.with_column("x", explode_on_b(col("name"))).collect()
    message = str(info.value)
    assert "udf(explode_on_b)" in message
    assert "Traceback" in message and "ZeroDivisionError: boom on b" in message
    assert "raise ZeroDivisionError" in message


def test_map_batches_exception_names_the_operator(df):
    def broken(table):
        if table.num_rows:
            return {"oops": [1] * (table.num_rows + 1), "x": [1]}
        return table

    with pytest.raises(rl.UserFunctionError, match="map_batches\\(broken\\)"):
        df.map_batches(broken, schema=pa.schema([("name", pa.string()), ("age", pa.int64())])).collect()


def test_map_batches_schema_inference_failure_asks_for_schema(df):
    with pytest.raises(rl.PlanError, match="pass schema="):
        df.map_batches(lambda t: t.column(0)[0])


def test_udf_returning_wrong_length_is_an_error(df):
    @rl.udf(return_dtype="int64", batch=True)
    def short(a):
        return [1]

    with pytest.raises(rl.UserFunctionError, match="returned 1 values for 2 rows"):
        df.with_column("s", short(col("age"))).collect()
