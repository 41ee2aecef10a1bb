// Shared by the fuzz targets: run built-in operators on one row of arbitrary bytes. Any
// outcome but a panic (or a crash, hang or runaway allocation, which libFuzzer reports)
// is fine: bad input must become a null with a reason or an error.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BinaryArray};
use rillet_functions::ArrayFunction;

static FUNCTIONS: LazyLock<Vec<Arc<dyn ArrayFunction>>> = LazyLock::new(rillet_functions::functions);

pub fn run(operators: &[&str], data: &[u8]) {
    let input: ArrayRef = Arc::new(BinaryArray::from(vec![data]));
    for name in operators {
        let function = FUNCTIONS.iter().find(|f| f.name() == *name).unwrap_or_else(|| panic!("no operator {name}"));
        let _ = function.call(&[input.clone()], 1);
    }
}
