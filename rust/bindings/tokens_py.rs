//! Raw bindings of the `tokens` crate (byte-level BPE tokenizers, and the
//! SentencePiece vocabularies GGUF files carry). Encoding,
//! decoding and training run with the GIL released; crate errors become
//! ValueError (OSError for unreadable files). `nanochat_ternary.tokenizer`
//! wraps this class with the public API.
use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokens::{GgufVocab, Tokenizer, TokensError, TrainOptions};

fn to_py_err(e: TokensError) -> PyErr {
    match e {
        TokensError::Io { .. } => PyOSError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

#[pyclass(module = "nanochat_ternary._core", name = "BpeTokenizer", frozen)]
struct PyBpeTokenizer {
    tok: Tokenizer,
}

fn options(
    vocab_size: usize,
    min_frequency: u64,
    special_tokens: Option<Vec<String>>,
    max_token_length: Option<usize>,
) -> TrainOptions {
    let mut opts = TrainOptions { vocab_size, min_frequency, max_token_length, ..TrainOptions::default() };
    if let Some(special) = special_tokens {
        opts.special_tokens = special;
    }
    opts
}

#[pymethods]
impl PyBpeTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let tok = py.detach(|| Tokenizer::from_file(&path)).map_err(to_py_err)?;
        Ok(PyBpeTokenizer { tok })
    }

    /// Parses `tokenizer.json` text.
    #[staticmethod]
    fn from_json(py: Python<'_>, json: &str) -> PyResult<Self> {
        let tok = py.detach(|| Tokenizer::from_json(json)).map_err(to_py_err)?;
        Ok(PyBpeTokenizer { tok })
    }

    /// Trains a byte-level BPE on `texts` (one document each).
    #[staticmethod]
    #[pyo3(signature = (texts, vocab_size, min_frequency=2, special_tokens=None, max_token_length=None))]
    fn train(
        py: Python<'_>,
        texts: Vec<String>,
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: Option<Vec<String>>,
        max_token_length: Option<usize>,
    ) -> PyResult<Self> {
        let opts = options(vocab_size, min_frequency, special_tokens, max_token_length);
        let tok = py.detach(|| tokens::train_bpe(texts.into_iter(), &opts)).map_err(to_py_err)?;
        Ok(PyBpeTokenizer { tok })
    }

    /// Trains on whole files (each one document, UTF-8), read from Rust.
    #[staticmethod]
    #[pyo3(signature = (paths, vocab_size, min_frequency=2, special_tokens=None, max_token_length=None))]
    fn train_files(
        py: Python<'_>,
        paths: Vec<PathBuf>,
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: Option<Vec<String>>,
        max_token_length: Option<usize>,
    ) -> PyResult<Self> {
        let opts = options(vocab_size, min_frequency, special_tokens, max_token_length);
        let tok = py.detach(|| tokens::train_bpe_files(&paths, &opts)).map_err(to_py_err)?;
        Ok(PyBpeTokenizer { tok })
    }

    /// Rebuilds a tokenizer from GGUF `tokenizer.ggml.*` metadata (`pre` "" = absent;
    /// `scores` and `add_space_prefix` are for the SentencePiece `llama` model).
    #[staticmethod]
    #[pyo3(signature = (model, pre, tokens, merges, token_types, scores=None, add_space_prefix=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_gguf_vocab(
        py: Python<'_>,
        model: String,
        pre: String,
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Vec<i32>,
        scores: Option<Vec<f32>>,
        add_space_prefix: Option<bool>,
    ) -> PyResult<Self> {
        let vocab = GgufVocab {
            model,
            pre,
            tokens,
            merges,
            token_types,
            scores,
            add_space_prefix,
            bos_id: None,
            eos_id: None,
            pad_id: None,
        };
        let tok = py.detach(|| Tokenizer::from_gguf_vocab(&vocab)).map_err(to_py_err)?;
        Ok(PyBpeTokenizer { tok })
    }

    /// `tokenizer.ggml.*` metadata: dict with model, pre, tokens, merges,
    /// token_types, bos_id, eos_id, pad_id (ids may be None).
    fn gguf_vocab<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let v = py.detach(|| self.tok.to_gguf_vocab()).map_err(to_py_err)?;
        let d = PyDict::new(py);
        d.set_item("model", v.model)?;
        d.set_item("pre", v.pre)?;
        d.set_item("tokens", v.tokens)?;
        d.set_item("merges", v.merges)?;
        d.set_item("token_types", v.token_types)?;
        d.set_item("bos_id", v.bos_id)?;
        d.set_item("eos_id", v.eos_id)?;
        d.set_item("pad_id", v.pad_id)?;
        Ok(d)
    }

    fn to_json(&self) -> PyResult<String> {
        self.tok.to_json().map_err(to_py_err)
    }

    /// Writes `tokenizer.json` atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.tok.save(&path)).map_err(to_py_err)
    }

    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        py.detach(|| self.tok.encode(text)).map_err(to_py_err)
    }

    /// Every text encoded in parallel; one uint32 array per text.
    fn encode_batch<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Vec<Bound<'py, PyArray1<u32>>>> {
        let all = py.detach(|| self.tok.encode_batch(&texts)).map_err(to_py_err)?;
        Ok(all.into_iter().map(|ids| ids.into_pyarray(py)).collect())
    }

    fn decode(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        py.detach(|| self.tok.decode(&ids)).map_err(to_py_err)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.tok.vocab_size()
    }

    #[getter]
    fn is_byte_level(&self) -> bool {
        self.tok.is_byte_level()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    /// The raw bytes token `id` stands for.
    fn token_bytes<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.tok.token_bytes(id).map_err(to_py_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// (id, token) of every special token, by id.
    fn special_tokens(&self) -> Vec<(u32, String)> {
        self.tok.special_tokens()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBpeTokenizer>()
}
