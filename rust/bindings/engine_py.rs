//! The inference engine (`engine` crate) for Python: `Engine` (load, logits, generate, stream)
//! and its `TokenStream` iterator. The public wrapper is the API engineer's `TernaryModel`.
//! All model work runs with the GIL released. Errors: missing / unreadable files → OSError
//! (FileNotFoundError when absent); bad content and invalid arguments → ValueError.

use std::sync::{Arc, Mutex};

use engine::{EngineError, Generation, Model, SamplingParams};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;

fn io_err(source: &std::io::Error, msg: String) -> PyErr {
    match source.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        _ => PyOSError::new_err(msg),
    }
}

fn to_py_err(e: EngineError) -> PyErr {
    let msg = e.to_string();
    match &e {
        EngineError::Io { source, .. } => io_err(source, msg),
        EngineError::Gguf(gguf::GgufError::Io { source, .. }) => io_err(source, msg),
        EngineError::Checkpoint(ternary::checkpoint::CheckpointError::Io { source, .. }) => io_err(source, msg),
        _ => PyValueError::new_err(msg),
    }
}

fn ids_from_py(ids: &[i64], what: &str) -> PyResult<Vec<u32>> {
    ids.iter()
        .map(|&id| {
            u32::try_from(id).map_err(|_| PyValueError::new_err(format!("{what}: token id {id} is not a valid id")))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn sampling(
    max_new_tokens: i64,
    temperature: f64,
    top_k: i64,
    top_p: f64,
    min_p: f64,
    repetition_penalty: f64,
    seed: i64,
    stop_ids: &[i64],
    stop_strings: Vec<String>,
) -> PyResult<SamplingParams> {
    if max_new_tokens < 1 {
        return Err(PyValueError::new_err(format!("max_new_tokens must be at least 1, got {max_new_tokens}")));
    }
    if top_k < 0 {
        return Err(PyValueError::new_err(format!("top_k must be >= 0 (0 = off), got {top_k}")));
    }
    let p = SamplingParams {
        max_new_tokens: max_new_tokens as usize,
        temperature: temperature as f32,
        top_k: top_k as usize,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        // Any Python int seed works; negative ones keep their bit pattern.
        seed: seed as u64,
        stop_ids: ids_from_py(stop_ids, "stop_ids")?,
        stop_strings,
        ignore_eos: false,
        first_token_ids: Vec::new(),
        no_repeat_ngram_size: 0,
    };
    p.validate().map_err(to_py_err)?;
    Ok(p)
}

/// A loaded model (GGUF file or HF-style directory).
#[pyclass(name = "Engine", module = "nanochat_ternary._core", frozen)]
pub struct PyEngine(Arc<Model>);

#[pymethods]
impl PyEngine {
    /// `kv_cache`: the KV cache's element type, "f16" (default: half the bytes per decode
    /// step) or "f32" (exactly what the training model computes).
    #[new]
    #[pyo3(signature = (path, kv_cache="f16"))]
    fn new(py: Python<'_>, path: std::path::PathBuf, kv_cache: &str) -> PyResult<Self> {
        let kv_precision = match kv_cache {
            "f16" => engine::KvPrecision::F16,
            "f32" => engine::KvPrecision::F32,
            other => return Err(PyValueError::new_err(format!("kv_cache must be \"f16\" or \"f32\", got {other:?}"))),
        };
        let mut model = py.detach(|| engine::load(&path)).map_err(to_py_err)?;
        model.kv_precision = kv_precision;
        Ok(Self(Arc::new(model)))
    }

    /// The ModelConfig JSON plus `"architecture"`.
    fn config_json(&self) -> String {
        self.0.config.to_json_with_architecture(&self.0.architecture)
    }

    /// HF `tokenizer.json` text of the embedded tokenizer, if the model has one.
    fn tokenizer_json(&self) -> Option<String> {
        self.0.tokenizer_json.clone()
    }

    /// The file's BOS token id (None when it names none).
    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.0.bos_id
    }

    /// The file's EOS token id (None when it names none): generation stops there.
    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.0.eos_id
    }

    /// Whether a prompt starts with the BOS token (the file's flag, or llama.cpp's default).
    #[getter]
    fn add_bos_token(&self) -> bool {
        self.0.add_bos
    }

    /// Whether an encoded text ends with the EOS token (the file's flag; default False).
    #[getter]
    fn add_eos_token(&self) -> bool {
        self.0.add_eos
    }

    /// Logits (T, vocab) float32 of one causal forward from an empty cache.
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = ids_from_py(&ids, "ids")?;
        if ids.is_empty() {
            return Err(PyValueError::new_err("ids is empty"));
        }
        let model = self.0.clone();
        let logits = py.detach(|| model.logits(&ids)).map_err(to_py_err)?;
        let a = Array2::from_shape_vec((ids.len(), self.0.config.vocab_size), logits)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// New ids for each prompt (stop id / stop string excluded). `first_token_ids`: when not
    /// empty, the first new token of every prompt is one of these (token healing).
    /// `no_repeat_ngram_size`: 0 = off, else no n-gram of that many tokens repeats.
    #[pyo3(signature = (prompts, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                        repetition_penalty=1.0, seed=0, stop_ids=Vec::new(), stop_strings=Vec::new(),
                        first_token_ids=Vec::new(), no_repeat_ngram_size=0))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<i64>>,
        max_new_tokens: i64,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        repetition_penalty: f64,
        seed: i64,
        stop_ids: Vec<i64>,
        stop_strings: Vec<String>,
        first_token_ids: Vec<i64>,
        no_repeat_ngram_size: usize,
    ) -> PyResult<Vec<Vec<u32>>> {
        let mut params =
            sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, &stop_ids, stop_strings)?;
        params.first_token_ids = ids_from_py(&first_token_ids, "first_token_ids")?;
        params.no_repeat_ngram_size = no_repeat_ngram_size;
        let prompts = prompts.iter().map(|p| ids_from_py(p, "prompt")).collect::<PyResult<Vec<_>>>()?;
        let model = self.0.clone();
        py.detach(|| engine::generate(&model, &prompts, &params)).map_err(to_py_err)
    }

    /// A streaming iterator of new ids for one prompt (`first_token_ids` as in `generate`).
    #[pyo3(signature = (prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                        repetition_penalty=1.0, seed=0, stop_ids=Vec::new(), stop_strings=Vec::new(),
                        first_token_ids=Vec::new(), no_repeat_ngram_size=0))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        prompt: Vec<i64>,
        max_new_tokens: i64,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        repetition_penalty: f64,
        seed: i64,
        stop_ids: Vec<i64>,
        stop_strings: Vec<String>,
        first_token_ids: Vec<i64>,
        no_repeat_ngram_size: usize,
    ) -> PyResult<PyTokenStream> {
        let mut params =
            sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, &stop_ids, stop_strings)?;
        params.first_token_ids = ids_from_py(&first_token_ids, "first_token_ids")?;
        params.no_repeat_ngram_size = no_repeat_ngram_size;
        let prompt = ids_from_py(&prompt, "prompt")?;
        let generation = Generation::new(self.0.clone(), &prompt, params).map_err(to_py_err)?;
        Ok(PyTokenStream(Mutex::new(generation)))
    }

    #[getter]
    fn context_length(&self) -> usize {
        self.0.config.max_seq_len
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.0.config.vocab_size
    }

    /// LoopLM early-exit threshold: a token leaves after the first loop whose cumulative exit
    /// probability reaches it (1.0: every loop). Settable in (0, 1]; below 1 only with an exit gate.
    #[getter]
    fn exit_threshold(&self) -> f32 {
        self.0.exit_threshold.get()
    }

    #[setter]
    fn set_exit_threshold(&self, value: f64) -> PyResult<()> {
        self.0.set_exit_threshold(value).map_err(to_py_err)
    }

    /// What the KV cache holds for the loops an early-exited token skips: "copy" (default: its
    /// exit loop's keys and values; the skipped loops do not run) or "compute" (they run anyway,
    /// exact and without speed-up: the reference).
    #[getter]
    fn exit_kv(&self) -> &'static str {
        match self.0.exit_kv() {
            engine::ExitKv::Copy => "copy",
            engine::ExitKv::Compute => "compute",
        }
    }

    #[setter]
    fn set_exit_kv(&self, mode: &str) -> PyResult<()> {
        let mode = match mode {
            "copy" => engine::ExitKv::Copy,
            "compute" => engine::ExitKv::Compute,
            other => return Err(PyValueError::new_err(format!("exit_kv must be \"copy\" or \"compute\", got {other:?}"))),
        };
        self.0.set_exit_kv(mode);
        Ok(())
    }

    /// (mean loops per token, tokens counted) since load or `reset_depth()`; (0.0, 0) for a
    /// model without loops.
    fn mean_depth(&self) -> (f64, u64) {
        self.0.mean_depth()
    }

    fn reset_depth(&self) {
        self.0.reset_depth()
    }
}

/// Iterator of generated token ids; each `__next__` runs one decode step without the GIL.
#[pyclass(name = "TokenStream", module = "nanochat_ternary._core", frozen)]
pub struct PyTokenStream(Mutex<Generation>);

#[pymethods]
impl PyTokenStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        let next = py.detach(|| {
            let mut generation = self.0.lock().unwrap_or_else(|e| e.into_inner());
            generation.next()
        });
        match next {
            None => Ok(None),
            Some(r) => r.map(Some).map_err(to_py_err),
        }
    }
}

/// One step's outcome for one sequence: (id, new tokens as (id, logprob, top alternatives),
/// finish reason "stop" / "length" / "error" or None, error message or None).
type PyStepEvent = (u64, Vec<(u32, f32, Vec<(u32, f32)>)>, Option<&'static str>, Option<String>);

/// Continuous-batching scheduler over one `Engine`: every running sequence decoded in one
/// batched forward per `step()`, chunked prefill, KV byte budget. All model work (and the wait
/// for the lock) runs with the GIL released.
#[pyclass(name = "Scheduler", module = "nanochat_ternary._core", frozen)]
pub struct PyScheduler(Mutex<engine::Scheduler>);

impl PyScheduler {
    fn with<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut engine::Scheduler) -> R + Send) -> R {
        py.detach(|| {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s)
        })
    }
}

#[pymethods]
impl PyScheduler {
    #[new]
    #[pyo3(signature = (engine, max_batch=16, prefill_chunk=256, kv_budget_bytes=1usize << 30))]
    fn new(engine: PyRef<'_, PyEngine>, max_batch: usize, prefill_chunk: usize, kv_budget_bytes: usize) -> PyResult<Self> {
        let config = engine::SchedulerConfig { max_batch, prefill_chunk, kv_budget_bytes };
        let s = engine::Scheduler::new(engine.0.clone(), config).map_err(to_py_err)?;
        Ok(Self(Mutex::new(s)))
    }

    /// Queues a request; returns its id. ValueError when it is invalid or its KV cache alone
    /// exceeds the budget. `logprobs`: None for no log-probabilities, else how many top
    /// alternatives to report per token (0..=20).
    #[pyo3(signature = (prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                        repetition_penalty=1.0, seed=0, stop_ids=Vec::new(), ignore_eos=false, logprobs=None))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        prompt: Vec<i64>,
        max_new_tokens: i64,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        repetition_penalty: f64,
        seed: i64,
        stop_ids: Vec<i64>,
        ignore_eos: bool,
        logprobs: Option<i64>,
    ) -> PyResult<u64> {
        let mut params =
            sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, &stop_ids, Vec::new())?;
        params.ignore_eos = ignore_eos;
        let prompt = ids_from_py(&prompt, "prompt")?;
        let logprobs = match logprobs {
            None => None,
            Some(k) => Some(usize::try_from(k).map_err(|_| PyValueError::new_err(format!("logprobs must be >= 0, got {k}")))?),
        };
        self.with(py, |s| s.add(&prompt, params, logprobs)).map_err(to_py_err)
    }

    /// Drops a waiting or running sequence now; False when it is unknown (already finished).
    fn cancel(&self, py: Python<'_>, id: u64) -> bool {
        self.with(py, |s| s.cancel(id))
    }

    /// Admits waiting requests and runs one batched step; returns one event per sequence that
    /// got a token or ended: (id, [(token, logprob, [(alt, logprob), ...])], finish, error).
    /// logprob is NaN when the request asked for none.
    fn step(&self, py: Python<'_>) -> Vec<PyStepEvent> {
        let events = self.with(py, |s| s.step());
        events
            .into_iter()
            .map(|e| {
                let tokens = e.tokens.into_iter().map(|t| (t.id, t.logprob, t.top)).collect();
                let (finish, error) = match e.finish {
                    None => (None, None),
                    Some(engine::Finish::Stop) => (Some("stop"), None),
                    Some(engine::Finish::Length) => (Some("length"), None),
                    Some(engine::Finish::Error(msg)) => (Some("error"), Some(msg)),
                };
                (e.id, tokens, finish, error)
            })
            .collect()
    }

    /// Sequences running (decoding or prefilling).
    #[getter]
    fn running(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.running())
    }

    /// Requests waiting for a batch slot or KV memory.
    #[getter]
    fn waiting(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.waiting())
    }

    /// KV bytes reserved by the running sequences.
    #[getter]
    fn reserved_bytes(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.reserved_bytes())
    }

    /// KV bytes the running sequences' caches hold now.
    #[getter]
    fn kv_bytes(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.kv_bytes())
    }

    /// KV bytes of one position (keys and values of every layer).
    #[getter]
    fn kv_bytes_per_position(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.kv_bytes_per_position())
    }

    #[getter]
    fn max_batch(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.config().max_batch)
    }

    #[getter]
    fn kv_budget_bytes(&self, py: Python<'_>) -> usize {
        self.with(py, |s| s.config().kv_budget_bytes)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyTokenStream>()?;
    m.add_class::<PyScheduler>()?;
    Ok(())
}
