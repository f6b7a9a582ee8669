//! The `nanochat_ternary._core` extension module: a thin PyO3 layer over the
//! pure-Rust crates. Each file converts types, releases the GIL around real
//! work and maps errors to Python exceptions; no logic lives here.
use pyo3::prelude::*;

mod checkpoint_py;
mod codec;
mod eval_py;
mod gguf_io;
mod kernels_py;
mod mhc_py;
mod torch_io;
mod rl_py;
mod train_py;
mod tokens_py;
mod engine_py;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    checkpoint_py::register(m)?;
    codec::register(m)?;
    gguf_io::register(m)?;
    kernels_py::register(m)?;
    eval_py::register(m)?;
    mhc_py::register(m)?;
    torch_io::register(m)?;
    train_py::register(m)?;
    rl_py::register(m)?;
    tokens_py::register(m)?;
    engine_py::register(m)?;
    Ok(())
}
