//! Ternary × int8 kernels (`kernels` crate) and the planar layout for Python. The public wrapper is
//! `nanochat_ternary.kernels`. Arrays must have the exact dtype (PyO3 raises `TypeError`
//! otherwise) and be C-contiguous (`ValueError` otherwise: the kernels stream memory in order, so a
//! silent copy would hide a large cost). Alignment is never required: activations are copied into
//! padded buffers and weights live in the 64-byte aligned planar storage. The GIL is released
//! around all real work; kernel errors become `ValueError`.

use kernels::{KernelError, QuantizedActivations, Variant};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ternary::planar::PlanarMatrix;

fn to_py_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    name: &str,
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array")))
}

fn variant(name: Option<&str>) -> PyResult<Option<Variant>> {
    name.map_or(Ok(None), |n| Variant::parse(n).map_err(to_py_err))
}

fn matrix_2d<T: numpy::Element>(py: Python<'_>, rows: usize, cols: usize, v: Vec<T>) -> PyResult<Bound<'_, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v).map_err(to_py_err)?;
    Ok(a.into_pyarray(py))
}

/// A ternary matrix packed in the planar kernel layout (2 bits per weight, 64-byte aligned).
#[pyclass(name = "PlanarMatrix", module = "nanochat_ternary._core", frozen)]
pub struct PyPlanarMatrix(PlanarMatrix);

#[pymethods]
impl PyPlanarMatrix {
    /// Packs int8 trits (rows × cols, values -1/0/+1) with float32 scales (rows × groups, or
    /// flat). `group_cols=None` means one scale per row.
    #[staticmethod]
    #[pyo3(signature = (trits, scales, group_cols=None))]
    fn from_trits(
        py: Python<'_>,
        trits: PyReadonlyArray2<'_, i8>,
        scales: PyReadonlyArray1<'_, f32>,
        group_cols: Option<usize>,
    ) -> PyResult<Self> {
        let (rows, cols) = (trits.shape()[0], trits.shape()[1]);
        let (t, s) = (contiguous("trits", &trits)?, contiguous("scales", &scales)?);
        let group = group_cols.unwrap_or(cols);
        let m = py.detach(|| PlanarMatrix::from_trits(t, rows, cols, s, group)).map_err(to_py_err)?;
        Ok(Self(m))
    }

    /// Converts GGUF TQ2_0 blocks (uint8, 66 bytes per 256 weights, row-major) of a rows × cols
    /// matrix; one scale per 256 columns.
    #[staticmethod]
    fn from_tq2_0(py: Python<'_>, blocks: PyReadonlyArray1<'_, u8>, rows: usize, cols: usize) -> PyResult<Self> {
        let b = contiguous("blocks", &blocks)?;
        Ok(Self(py.detach(|| PlanarMatrix::from_tq2_0(b, rows, cols)).map_err(to_py_err)?))
    }

    /// The trits as an int8 rows × cols array (exact inverse of `from_trits`).
    fn to_trits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i8>>> {
        let t = py.detach(|| self.0.to_trits());
        matrix_2d(py, self.0.rows(), self.0.cols(), t)
    }

    /// The packed bytes (uint8) in the layout documented in `rust/ternary/src/planar.rs`.
    fn packed_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.0.as_bytes().to_vec().into_pyarray(py)
    }

    /// Scales, float32 rows × groups_per_row.
    fn scales<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        matrix_2d(py, self.0.rows(), self.0.groups_per_row(), self.0.scales().to_vec())
    }

    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.0.rows(), self.0.cols())
    }

    #[getter]
    fn group_cols(&self) -> usize {
        self.0.group_cols()
    }

    fn __repr__(&self) -> String {
        format!(
            "PlanarMatrix(rows={}, cols={}, group_cols={}, bytes={})",
            self.0.rows(),
            self.0.cols(),
            self.0.group_cols(),
            self.0.as_bytes().len()
        )
    }
}

/// int8 values (n × cols) and their float32 per-token scales, as NumPy arrays.
type QuantizedPair<'py> = (Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>);

/// Per-token int8 quantization of float32 n × cols activations: (int8 n × cols, float32 scales).
#[pyfunction]
fn kernels_quantize_activations<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
) -> PyResult<QuantizedPair<'py>> {
    let (n, cols) = (x.shape()[0], x.shape()[1]);
    let data = contiguous("x", &x)?;
    let q = py.detach(|| QuantizedActivations::quantize(data, n, cols)).map_err(to_py_err)?;
    let values: Vec<i8> = (0..n).flat_map(|t| q.token(t).iter().copied()).collect();
    Ok((matrix_2d(py, n, cols, values)?, q.scales().to_vec().into_pyarray(py)))
}

/// Float GEMM: quantizes float32 x (n × cols) per token, returns float32 n × rows.
#[pyfunction]
#[pyo3(signature = (w, x, variant=None))]
fn kernels_gemm<'py>(
    py: Python<'py>,
    w: &PyPlanarMatrix,
    x: PyReadonlyArray2<'py, f32>,
    variant: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let v = self::variant(variant)?;
    let (n, cols) = (x.shape()[0], x.shape()[1]);
    if cols != w.0.cols() {
        return Err(to_py_err(KernelError::ColsMismatch { expected: w.0.cols(), got: cols }));
    }
    let data = contiguous("x", &x)?;
    let y = py.detach(|| kernels::gemm(&w.0, data, n, v)).map_err(to_py_err)?;
    matrix_2d(py, n, w.0.rows(), y)
}

/// Float GEMV of one float32 token (cols,) → float32 (rows,).
#[pyfunction]
#[pyo3(signature = (w, x, variant=None))]
fn kernels_gemv<'py>(
    py: Python<'py>,
    w: &PyPlanarMatrix,
    x: PyReadonlyArray1<'py, f32>,
    variant: Option<&str>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let v = self::variant(variant)?;
    let data = contiguous("x", &x)?;
    let y = py.detach(|| kernels::gemv(&w.0, data, v)).map_err(to_py_err)?;
    Ok(y.into_pyarray(py))
}

/// Integer GEMM on int8 activations (n × cols, any value in [-128, 127]): int32 n × rows of
/// Σ trit·x, scales ignored. Identical for every variant.
#[pyfunction]
#[pyo3(signature = (w, x, variant=None))]
fn kernels_gemm_i32<'py>(
    py: Python<'py>,
    w: &PyPlanarMatrix,
    x: PyReadonlyArray2<'py, i8>,
    variant: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let v = self::variant(variant)?;
    let (n, cols) = (x.shape()[0], x.shape()[1]);
    let data = contiguous("x", &x)?;
    let y = py
        .detach(|| {
            let q = QuantizedActivations::from_i8(data, n, cols, &vec![1.0; n])?;
            kernels::gemm_i32(&w.0, &q, v)
        })
        .map_err(to_py_err)?;
    matrix_2d(py, n, w.0.rows(), y)
}

/// Kernel variants this CPU supports, slowest first ("scalar", "avx2", "avx512").
#[pyfunction]
fn kernels_supported_variants() -> Vec<&'static str> {
    Variant::supported().into_iter().map(Variant::name).collect()
}

/// The variant used when none is forced (honours NCT_KERNEL).
#[pyfunction]
fn kernels_default_variant() -> PyResult<&'static str> {
    kernels::Kernel::resolve(None).map(|k| k.variant().name()).map_err(to_py_err)
}

/// Sets the kernel thread-pool size (shared by all callers).
#[pyfunction]
fn kernels_set_num_threads(threads: usize) -> PyResult<()> {
    kernels::set_num_threads(threads).map_err(to_py_err)
}

/// The kernel thread-pool size.
#[pyfunction]
fn kernels_num_threads() -> usize {
    kernels::num_threads()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPlanarMatrix>()?;
    m.add_function(wrap_pyfunction!(kernels_quantize_activations, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_gemv, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_gemm, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_gemm_i32, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_supported_variants, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_default_variant, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_num_threads, m)?)?;
    Ok(())
}
