//! Raw bindings of the `train` crate: model configs (JSON strings), a QAT
//! model whose forward pass and loss run in Rust on libtorch, and the trainer
//! (optimizer steps, evaluation, exact-resume checkpoints). Tensors cross
//! the boundary without copies (see `torch_io`); compute runs with the GIL
//! released (libtorch refuses autograd while it is held). Config and input
//! errors become ValueError; a libtorch failure (a panic inside tch, e.g. out
//! of memory) becomes RuntimeError instead of unwinding into Python.
//!
//! Data-parallel training uses `QatTrainer.step_reduced`: the gradients are
//! computed in Rust, handed to a Python callable as torch tensors sharing the
//! trainer's storage (no copies) to be all-reduced in place by
//! torch.distributed, then clipped and applied in Rust.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tch::nn::VarStore;
use tch::{Device, Tensor};
use train::trainer::Gradients;
use train::{ModelConfig, StepMetrics, TrainError, TrainHyper, Teacher, Trainer, Transformer};

use crate::torch_io::{tensor_from_py, tensor_to_py};

fn to_py_err(e: impl Into<TrainError>) -> PyErr {
    let e: TrainError = e.into();
    match e {
        TrainError::Torch(e) => PyRuntimeError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// Runs `f`, turning a panic from inside tch into a Python RuntimeError.
pub(crate) fn guarded<T>(f: impl FnOnce() -> train::Result<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(to_py_err),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(PyRuntimeError::new_err(format!("libtorch failed: {msg}")))
        }
    }
}

pub(crate) fn parse_device(name: &str) -> PyResult<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unknown device {name:?}; expected \"cpu\", \"cuda\" or \"cuda:N\""
                )))
            }
        },
    };
    if let Device::Cuda(index) = device {
        let count = tch::Cuda::device_count() as usize;
        if index >= count {
            return Err(PyValueError::new_err(format!(
                "device {name:?} requested but libtorch sees {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

fn parse_config(config_json: &str) -> PyResult<ModelConfig> {
    ModelConfig::from_json(config_json).map_err(to_py_err)
}

struct Inner {
    vs: VarStore,
    model: Transformer,
}

/// A ternary transformer built from a JSON config, with parameters in Rust.
#[pyclass(name = "QatModel", module = "nanochat_ternary._core")]
struct QatModel {
    inner: Mutex<Inner>,
    device: Device,
}

impl QatModel {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("QatModel is unusable: an earlier call panicked while holding it"))
    }
}

#[pymethods]
impl QatModel {
    #[new]
    #[pyo3(signature = (config_json, seed = 0, device = "cpu"))]
    fn new(py: Python<'_>, config_json: &str, seed: i64, device: &str) -> PyResult<Self> {
        let config = parse_config(config_json)?;
        let device = parse_device(device)?;
        let (vs, model) = py.detach(|| {
            guarded(|| {
                tch::manual_seed(seed);
                Transformer::with_var_store(&config, device)
            })
        })?;
        Ok(Self {
            inner: Mutex::new(Inner { vs, model }),
            device,
        })
    }

    /// The validated config as JSON.
    fn config_json(&self) -> PyResult<String> {
        Ok(self.lock()?.model.config().to_json())
    }

    #[getter]
    fn param_count(&self) -> PyResult<u64> {
        Ok(self.lock()?.model.config().param_count())
    }

    /// Logits (B, T, vocab) for int64 token ids (B, T), without autograd.
    fn forward<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let tokens = tensor_from_py(tokens)?;
        let mut guard = self.lock()?;
        // `&mut Inner` is Send (Tensor is Send but not Sync), so the closure may
        // run without the GIL while the guard keeps other callers out.
        let inner: &mut Inner = &mut guard;
        let device = self.device;
        let logits = py.detach(move || guarded(|| tch::no_grad(|| inner.model.forward(&tokens.to_device(device)))))?;
        tensor_to_py(py, &logits)
    }

    /// LoopLM: (logits (B, T, vocab) of every loop's readout, exit-gate λ (B, T) of every loop —
    /// empty without a gate), without autograd. A model without loops gives one readout.
    #[allow(clippy::type_complexity)]
    fn loop_logits<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<(Vec<Bound<'py, PyAny>>, Vec<Bound<'py, PyAny>>)> {
        let tokens = tensor_from_py(tokens)?;
        let mut guard = self.lock()?;
        let inner: &mut Inner = &mut guard;
        let device = self.device;
        let (logits, lambdas) = py.detach(move || guarded(|| tch::no_grad(|| inner.model.loop_logits(&tokens.to_device(device)))))?;
        let logits = logits.iter().map(|t| tensor_to_py(py, t)).collect::<PyResult<Vec<_>>>()?;
        let lambdas = lambdas.iter().map(|t| tensor_to_py(py, t)).collect::<PyResult<Vec<_>>>()?;
        Ok((logits, lambdas))
    }

    /// mHC: every sub-layer's residual map H_res (B, T, n, n), in forward order (empty for a
    /// plain residual), without autograd.
    fn residual_maps<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let tokens = tensor_from_py(tokens)?;
        let mut guard = self.lock()?;
        let inner: &mut Inner = &mut guard;
        let device = self.device;
        let maps = py.detach(move || guarded(|| tch::no_grad(|| inner.model.residual_maps(&tokens.to_device(device)))))?;
        maps.iter().map(|t| tensor_to_py(py, t)).collect()
    }

    /// Mean next-token cross-entropy of `targets` given `tokens` (both (B, T)
    /// int64), without autograd.
    fn loss(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>, targets: &Bound<'_, PyAny>) -> PyResult<f64> {
        let (tokens, targets) = (tensor_from_py(tokens)?, tensor_from_py(targets)?);
        let mut guard = self.lock()?;
        let inner: &mut Inner = &mut guard;
        let device = self.device;
        py.detach(move || {
            guarded(|| {
                tch::no_grad(|| {
                    let loss = inner
                        .model
                        .loss(&tokens.to_device(device), &targets.to_device(device))?;
                    Ok(loss.f_double_value(&[])?)
                })
            })
        })
    }

    /// (name, tensor) for every parameter, sorted by name. The tensors are
    /// detached views of the model's own storage: copying into them (under
    /// torch.no_grad) changes the model.
    fn named_parameters<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        named_parameters(py, &self.lock()?.vs)
    }

    /// A model with the weights of a trainer checkpoint (CRC verified).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu"))]
    fn from_checkpoint(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let device = parse_device(device)?;
        let (vs, model) = py.detach(|| {
            guarded(|| {
                let (config, weights) = train::trainer::read_checkpoint_weights(&path)?;
                let (vs, model) = Transformer::with_var_store(&config, device)?;
                train::trainer::load_weights(&vs, weights, &path.display().to_string())?;
                Ok((vs, model))
            })
        })?;
        Ok(Self {
            inner: Mutex::new(Inner { vs, model }),
            device,
        })
    }
}

fn named_parameters<'py>(py: Python<'py>, vs: &VarStore) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter()
        .map(|(name, t)| Ok((name, tensor_to_py(py, &t.detach())?)))
        .collect()
}

/// Model + Muon/Lion + WSD schedule; see `train::Trainer`.
#[pyclass(name = "QatTrainer", module = "nanochat_ternary._core")]
pub(crate) struct QatTrainer {
    inner: Mutex<Trainer>,
}

impl QatTrainer {
    pub(crate) fn lock(&self) -> PyResult<MutexGuard<'_, Trainer>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("QatTrainer is unusable: an earlier call panicked while holding it"))
    }
}

#[pymethods]
impl QatTrainer {
    /// A fresh model (seeded by the hyper-parameters' `seed`) and optimizers.
    #[new]
    #[pyo3(signature = (config_json, hyper_json, device = "cpu"))]
    fn new(py: Python<'_>, config_json: &str, hyper_json: &str, device: &str) -> PyResult<Self> {
        let config = parse_config(config_json)?;
        let hyper = TrainHyper::from_json(hyper_json).map_err(to_py_err)?;
        let device = parse_device(device)?;
        let trainer = py.detach(|| guarded(|| Trainer::new(&config, hyper, device)))?;
        Ok(Self {
            inner: Mutex::new(trainer),
        })
    }

    /// A trainer restored from a checkpoint, and the data state saved with it.
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<(Self, String)> {
        let device = parse_device(device)?;
        let (trainer, data_state) = py.detach(|| guarded(|| Trainer::load(&path, device)))?;
        Ok((
            Self {
                inner: Mutex::new(trainer),
            },
            data_state,
        ))
    }

    /// One optimizer step over micro-batches [(tokens, targets), ...];
    /// returns the step's metrics.
    fn step<'py>(
        &self,
        py: Python<'py>,
        micro_batches: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batches = micro_batches
            .iter()
            .map(|(x, y)| Ok((tensor_from_py(x)?, tensor_from_py(y)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let mut guard = self.lock()?;
        let trainer: &mut Trainer = &mut guard;
        let m = py.detach(move || guarded(|| trainer.step(&batches)))?;
        metrics_dict(py, &m)
    }

    /// One data-parallel optimizer step: computes this rank's gradients over
    /// its micro-batches (GIL released), calls `reduce(grads, stats)` with the
    /// gradient tensors (one per parameter, sharing the trainer's storage, not
    /// copies) and a float64 tensor [loss, ce, entropy, kl, tokens] of this
    /// rank's means and token count; `reduce` must leave in place the global
    /// token-weighted mean gradients in `grads` and the global means and
    /// token count in `stats`. Then
    /// clips and applies the update (GIL released). An exception raised by
    /// `reduce` propagates and the step is not applied.
    fn step_reduced<'py>(
        &self,
        py: Python<'py>,
        micro_batches: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        reduce: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batches = micro_batches
            .iter()
            .map(|(x, y)| Ok((tensor_from_py(x)?, tensor_from_py(y)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let mut guard = self.lock()?;
        let trainer: &mut Trainer = &mut guard;
        let (g, stats) = {
            // `&mut Trainer` is Send (a shared `&Trainer` is not: Tensor is not Sync).
            let trainer: &mut Trainer = &mut *trainer;
            py.detach(move || {
                guarded(|| {
                    let mut g = trainer.gradients(&batches)?;
                    // torch.distributed collectives need contiguous tensors; a no-op when they are.
                    for t in g.grads.iter_mut() {
                        if !t.is_contiguous() {
                            *t = t.f_contiguous()?;
                        }
                    }
                    let local = [g.loss, g.ce, g.entropy, g.kl.unwrap_or(0.0), g.tokens as f64];
                    let stats = Tensor::from_slice(&local);
                    Ok((g, stats))
                })
            })?
        };
        let py_grads = PyList::empty(py);
        for t in &g.grads {
            py_grads.append(tensor_to_py(py, t)?)?;
        }
        reduce.call1((py_grads, tensor_to_py(py, &stats)?))?;
        let means = Vec::<f64>::try_from(&stats)
            .map_err(|e| PyRuntimeError::new_err(format!("reading the reduced stats: {e}")))?;
        if means.len() != 5 || means[4].is_nan() || means[4] < 1.0 {
            return Err(PyValueError::new_err(format!(
                "reduce left stats {means:?}; expected [loss, ce, entropy, kl, tokens] with tokens >= 1"
            )));
        }
        let reduced = Gradients {
            grads: g.grads,
            loss: means[0],
            ce: means[1],
            entropy: means[2],
            tokens: means[4].round() as u64,
            kl: g.kl.map(|_| means[3]),
        };
        let m = py.detach(move || guarded(|| trainer.apply_gradients(reduced)))?;
        metrics_dict(py, &m)
    }

    /// Distills from the weights of a trainer checkpoint (CRC verified) from
    /// now on with the loss alpha·CE + (1 − alpha)·T²·KL; returns the teacher
    /// checkpoint's (config JSON, data state) so the caller can check its
    /// tokenizer. A teacher with another vocabulary is a ValueError.
    fn set_teacher(&self, py: Python<'_>, path: PathBuf, alpha: f64, temperature: f64) -> PyResult<(String, String)> {
        let mut guard = self.lock()?;
        let trainer: &mut Trainer = &mut guard;
        py.detach(move || {
            guarded(|| {
                let (teacher, state) = Teacher::from_checkpoint(&path, trainer.device())?;
                trainer.set_teacher(teacher, alpha, temperature)?;
                Ok((state.model.to_json(), state.data_state))
            })
        })
    }

    /// Whether a teacher is attached.
    #[getter]
    fn has_teacher(&self) -> PyResult<bool> {
        Ok(self.lock()?.teacher().is_some())
    }

    /// Mean cross-entropy of `targets` given `tokens`, no autograd.
    fn eval_loss(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>, targets: &Bound<'_, PyAny>) -> PyResult<f64> {
        let (tokens, targets) = (tensor_from_py(tokens)?, tensor_from_py(targets)?);
        let mut guard = self.lock()?;
        let trainer: &mut Trainer = &mut guard;
        py.detach(move || guarded(|| trainer.eval_loss(&tokens, &targets)))
    }

    /// Writes an exact-resume checkpoint atomically; `data_state` is stored as given.
    fn save(&self, py: Python<'_>, path: PathBuf, data_state: &str) -> PyResult<()> {
        let mut guard = self.lock()?;
        let trainer: &mut Trainer = &mut guard;
        py.detach(move || guarded(|| trainer.save(&path, data_state)))
    }

    /// Optimizer steps done.
    #[getter]
    fn step_count(&self) -> PyResult<u64> {
        Ok(self.lock()?.step_count())
    }

    fn config_json(&self) -> PyResult<String> {
        Ok(self.lock()?.config().to_json())
    }

    fn hyper_json(&self) -> PyResult<String> {
        Ok(self.lock()?.hyper().to_json())
    }

    /// WSD branch: the schedule ends `decay_steps` from now, decaying from the next step.
    fn decay_now(&self, decay_steps: u64) -> PyResult<()> {
        self.lock()?.decay_now(decay_steps).map_err(to_py_err)
    }

    /// (Muon, Lion) learning rates of the next step.
    fn learning_rates(&self) -> PyResult<(f64, f64)> {
        Ok(self.lock()?.learning_rates())
    }

    /// (Muon parameter names, Lion parameter names).
    fn param_groups(&self) -> PyResult<(Vec<String>, Vec<String>)> {
        let guard = self.lock()?;
        let (muon, lion) = guard.param_groups();
        Ok((muon.to_vec(), lion.to_vec()))
    }

    /// (name, tensor) of the current weights, sorted by name; views of the
    /// trainer's storage (copy them to keep a snapshot).
    fn named_parameters<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        named_parameters(py, self.lock()?.var_store())
    }
}

pub(crate) fn metrics_dict<'py>(py: Python<'py>, m: &StepMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("step", m.step)?;
    dict.set_item("loss", m.loss)?;
    dict.set_item("ce", m.ce)?;
    dict.set_item("entropy", m.entropy)?;
    dict.set_item("lr_muon", m.lr_muon)?;
    dict.set_item("lr_lion", m.lr_lion)?;
    dict.set_item("grad_norm", m.grad_norm)?;
    dict.set_item("tokens", m.tokens)?;
    if let Some(kl) = m.kl {
        dict.set_item("kl", kl)?;
    }
    Ok(dict)
}

/// (objective, ce, kl) of the distillation loss α·CE + (1 − α)·T²·KL(softmax(teacher/T) ‖
/// softmax(student/T)) on (B, T, vocab) logits and (B, T) int64 targets, no autograd: the
/// formula the trainer uses.
#[pyfunction]
fn train_distill_loss(
    py: Python<'_>,
    student: &Bound<'_, PyAny>,
    teacher: &Bound<'_, PyAny>,
    targets: &Bound<'_, PyAny>,
    alpha: f64,
    temperature: f64,
) -> PyResult<(f64, f64, f64)> {
    let (s, t, y) = (tensor_from_py(student)?, tensor_from_py(teacher)?, tensor_from_py(targets)?);
    py.detach(move || {
        guarded(|| {
            tch::no_grad(|| {
                let (obj, ce, kl) = train::distill::distill_loss(&s, &t, &y, alpha, temperature)?;
                Ok((obj.f_double_value(&[])?, ce.f_double_value(&[])?, kl.f_double_value(&[])?))
            })
        })
    })
}

/// Default optimization hyper-parameters as JSON.
#[pyfunction]
fn train_default_hyper() -> String {
    TrainHyper::default().to_json()
}

/// The JSON text of a shipped preset.
#[pyfunction]
fn train_preset_config(name: &str) -> PyResult<String> {
    Ok(ModelConfig::preset(name).map_err(to_py_err)?.to_json())
}

#[pyfunction]
fn train_preset_names() -> Vec<&'static str> {
    train::PRESET_NAMES.to_vec()
}

/// Parses and validates a config; returns it as normalized JSON (defaults filled in).
#[pyfunction]
fn train_validate_config(config_json: &str) -> PyResult<String> {
    Ok(parse_config(config_json)?.to_json())
}

/// Exact trainable parameter count of a config.
#[pyfunction]
fn train_param_count(config_json: &str) -> PyResult<u64> {
    Ok(parse_config(config_json)?.param_count())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<QatModel>()?;
    m.add_class::<QatTrainer>()?;
    m.add_function(wrap_pyfunction!(train_default_hyper, m)?)?;
    m.add_function(wrap_pyfunction!(train_distill_loss, m)?)?;
    m.add_function(wrap_pyfunction!(train_preset_config, m)?)?;
    m.add_function(wrap_pyfunction!(train_preset_names, m)?)?;
    m.add_function(wrap_pyfunction!(train_validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(train_param_count, m)?)?;
    Ok(())
}
