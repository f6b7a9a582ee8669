//! RL bindings (`train::rl`): the policy-gradient step of MaxRL / GRPO on a
//! `QatTrainer`, and the frozen reference policy of its KL penalty. Compute
//! runs with the GIL released; errors map as in `train_py`.
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use train::rl::{rl_step, RlBatch};
use train::Teacher;

use crate::torch_io::tensor_from_py;
use crate::train_py::{guarded, metrics_dict, parse_device, QatTrainer};

/// A frozen policy (the weights of a trainer checkpoint) for the KL penalty.
#[pyclass(name = "RlReference", module = "nanochat_ternary._core", frozen)]
struct RlReference(Mutex<Teacher>);

#[pymethods]
impl RlReference {
    #[new]
    #[pyo3(signature = (path, device = "cpu"))]
    fn new(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let device = parse_device(device)?;
        let (teacher, _) = py.detach(|| guarded(|| Teacher::from_checkpoint(&path, device)))?;
        Ok(Self(Mutex::new(teacher)))
    }
}

/// One RL optimizer step on `trainer` over micro-batches
/// [(tokens, targets, mask, advantages), ...] ((B, T) int64, (B, T) int64,
/// (B, T) float, (B,) float); `reference` and `kl_coef` add the KL penalty.
/// Returns the trainer's step metrics plus kl, pg_entropy, logprob and
/// completion_tokens.
#[pyfunction(name = "rl_step")]
#[pyo3(signature = (trainer, micro_batches, reference = None, kl_coef = 0.0))]
#[allow(clippy::type_complexity)]
fn rl_step_py<'py>(
    py: Python<'py>,
    trainer: &QatTrainer,
    micro_batches: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    reference: Option<&RlReference>,
    kl_coef: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let batches = micro_batches
        .iter()
        .map(|(x, y, m, a)| {
            Ok(RlBatch {
                tokens: tensor_from_py(x)?,
                targets: tensor_from_py(y)?,
                mask: tensor_from_py(m)?,
                advantages: tensor_from_py(a)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let mut guard = trainer.lock()?;
    let t: &mut train::Trainer = &mut guard;
    let mut reference_guard = match reference {
        Some(r) => Some(
            r.0.lock()
                .map_err(|_| PyRuntimeError::new_err("RlReference is unusable: an earlier call panicked"))?,
        ),
        None => None,
    };
    if kl_coef > 0.0 && reference_guard.is_none() {
        return Err(PyValueError::new_err("kl_coef > 0 needs a reference policy"));
    }
    // `&Teacher` is not Send (Tensor is not Sync): the closure takes a `&mut` instead.
    let teacher: Option<&mut Teacher> = reference_guard.as_deref_mut();
    let m = py.detach(move || guarded(|| rl_step(t, &batches, teacher.map(|r| &*r), kl_coef)))?;
    let dict = metrics_dict(py, &m.step)?;
    dict.set_item("kl", m.kl)?;
    dict.set_item("pg_entropy", m.entropy)?;
    dict.set_item("logprob", m.logprob)?;
    dict.set_item("completion_tokens", m.completion_tokens)?;
    Ok(dict)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RlReference>()?;
    m.add_function(wrap_pyfunction!(rl_step_py, m)?)?;
    Ok(())
}
