//! syn-based checks of generated Rust code (`evalrs`), for `nanochat_ternary.eval`.
use evalrs::{AstMetrics, CheckError};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rust_parse_error, m)?)?;
    m.add_function(wrap_pyfunction!(rust_ast_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(rust_completion_escape, m)?)?;
    m.add_function(wrap_pyfunction!(rust_extract_functions, m)?)?;
    m.add("RUST_MAX_SOURCE_BYTES", evalrs::MAX_SOURCE_BYTES)?;
    Ok(())
}

/// None when `source` parses as a Rust file, else `(line, column, message)`
/// (line 1-based, column 0-based). Oversized or too deeply nested sources
/// raise ValueError: they were not checked, so they are not syntax errors.
#[pyfunction]
fn rust_parse_error(py: Python<'_>, source: &str) -> PyResult<Option<(usize, usize, String)>> {
    match py.detach(|| evalrs::parse_check(source)) {
        Ok(()) => Ok(None),
        Err(CheckError::Syntax {
            line,
            column,
            message,
        }) => Ok(Some((line, column, message))),
        Err(other) => Err(to_py_err(other)),
    }
}

/// None when a generated `body` stays inside its function and uses nothing the harness
/// refuses (process exit, arguments, environment, files, `unsafe`, FFI, ...), else why
/// (`evalrs::policy`). ValueError when the prompt or the test does not parse.
#[pyfunction]
fn rust_completion_escape(py: Python<'_>, prompt: &str, body: &str, test: &str) -> PyResult<Option<String>> {
    py.detach(|| evalrs::completion_escape(prompt, body, test)).map_err(to_py_err)
}

/// AST metrics of `source` as a dict; ValueError when it does not parse.
#[pyfunction]
fn rust_ast_metrics<'py>(py: Python<'py>, source: &str) -> PyResult<Bound<'py, PyDict>> {
    let metrics = py
        .detach(|| evalrs::ast_metrics(source))
        .map_err(to_py_err)?;
    metrics_to_dict(py, &metrics)
}

/// The function-level view of `source` (see `evalrs::extract`): one dict per
/// free function, impl block and method. ValueError when it does not parse.
#[pyfunction]
fn rust_extract_functions<'py>(py: Python<'py>, source: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let items = py
        .detach(|| evalrs::extract_items(source))
        .map_err(to_py_err)?;
    items
        .iter()
        .map(|item| {
            let d = PyDict::new(py);
            d.set_item("kind", item.kind.as_str())?;
            d.set_item("name", &item.name)?;
            d.set_item("text", &item.text)?;
            d.set_item("signature", &item.signature)?;
            d.set_item("doc", &item.doc)?;
            d.set_item("body", &item.body)?;
            d.set_item("impl_header", item.impl_header.as_deref())?;
            d.set_item("standalone", item.standalone)?;
            d.set_item("nontrivial", item.nontrivial)?;
            d.set_item("std_uses", &item.std_uses)?;
            d.set_item("start_line", item.start_line)?;
            d.set_item("end_line", item.end_line)?;
            Ok(d)
        })
        .collect()
}

fn metrics_to_dict<'py>(py: Python<'py>, m: &AstMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("functions", m.functions)?;
    dict.set_item("lines", m.lines)?;
    dict.set_item("code_lines", m.code_lines)?;
    dict.set_item("cyclomatic_total", m.cyclomatic_total)?;
    dict.set_item("cyclomatic_max", m.cyclomatic_max)?;
    let per_function = m
        .per_function
        .iter()
        .map(|f| {
            let entry = PyDict::new(py);
            entry.set_item("name", &f.name)?;
            entry.set_item("start_line", f.start_line)?;
            entry.set_item("end_line", f.end_line)?;
            entry.set_item("cyclomatic", f.cyclomatic)?;
            Ok(entry)
        })
        .collect::<PyResult<Vec<_>>>()?;
    dict.set_item("per_function", per_function)?;
    Ok(dict)
}

fn to_py_err(err: CheckError) -> PyErr {
    match err {
        CheckError::Internal(_) => PyRuntimeError::new_err(err.to_string()),
        _ => PyValueError::new_err(err.to_string()),
    }
}
