"""Type stubs for the compiled extension `nanochat_ternary._core`.

Users should import from the public modules (`nanochat_ternary.codec`,
`.gguf`, `.mhc`, `.checkpoint`); these are the raw bindings beneath them.
"""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

__version__: str

# --- codec (rust/bindings/codec.rs) ---

def codec_quantize_absmean(
    w: npt.NDArray[np.float32], group_size: int | None = None
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def codec_dequantize(
    trits: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], group_size: int | None = None
) -> npt.NDArray[np.float32]: ...
def codec_pack(
    trits: npt.NDArray[np.int8],
    format: str,
    scales: npt.NDArray[np.float32] | None = None,
    group_size: int | None = None,
) -> npt.NDArray[np.uint8]: ...
def codec_unpack(
    data: npt.NDArray[np.uint8], rows: int, cols: int, format: str
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32] | None]: ...
def codec_quantize_tq(x: npt.NDArray[np.float32], format: str) -> npt.NDArray[np.uint8]: ...
def codec_dequantize_tq(data: npt.NDArray[np.uint8], format: str) -> npt.NDArray[np.float32]: ...

# --- gguf (rust/bindings/gguf_io.rs) ---
# Metadata types are "type paths": lists of GGUF value type ids, e.g. [4] = UINT32,
# [9, 8] = array of STRING, [9, 9, 4] = array of arrays of UINT32.

class GgufFile:
    """A parsed, validated GGUF file (memory-mapped)."""

    def __init__(self, path: str) -> None: ...
    @staticmethod
    def from_bytes(data: bytes) -> GgufFile: ...
    @property
    def version(self) -> int: ...
    @property
    def alignment(self) -> int: ...
    @property
    def data_start(self) -> int: ...
    def metadata(self) -> list[tuple[str, list[int], object]]: ...
    def tensor_infos(self) -> list[tuple[str, list[int], str, int, int, int, int]]:
        """(name, dims in ggml order, type name, type id, offset, n_bytes, n_elements)."""
    def tensor_bytes(self, name: str) -> npt.NDArray[np.uint8]: ...
    def tensor_f32(self, name: str) -> npt.NDArray[np.float32]: ...

class GgufWriter:
    """Collects metadata and tensors; writes GGUF v3 atomically."""

    def __init__(self) -> None: ...
    @property
    def alignment(self) -> int: ...
    def add(self, key: str, type_path: list[int], value: object) -> None: ...
    def add_tensor(self, name: str, dims: list[int], ggml_type: str, data: npt.NDArray[np.uint8]) -> None: ...
    def write(self, path: str) -> None: ...
    def to_bytes(self) -> bytes: ...

# --- mhc (rust/bindings/mhc_py.rs) ---
# float64 throughout; crate errors raise ValueError. Public API: nanochat_ternary.mhc.

_MhcMap = tuple[npt.NDArray[np.float64], float, npt.NDArray[np.float64]]  # (W (n*dim, out), alpha, b (out,))

MHC_RMS_NORM_EPS: float

def mhc_permutations(n: int) -> npt.NDArray[np.float64]: ...  # (n!, n, n)
def mhc_h_res(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...  # (T, n!) -> (T, n, n)
def mhc_init_params(n: int, dim: int, layer_index: int) -> tuple[_MhcMap, _MhcMap, _MhcMap]: ...
def mhc_dynamic_maps(
    streams: npt.NDArray[np.float64], res: _MhcMap, pre: _MhcMap, post: _MhcMap
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def mhc_expand(hidden: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]: ...  # (T, C) -> (T, n, C)
def mhc_collapse(streams: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...  # (T, n, C) -> (T, C)
def mhc_pre_mix(h_pre: npt.NDArray[np.float64], streams: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def mhc_post_update(
    h_res: npt.NDArray[np.float64],
    h_post: npt.NDArray[np.float64],
    streams: npt.NDArray[np.float64],
    f_out: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]: ...
def mhc_is_doubly_stochastic(m: npt.NDArray[np.float64], tol: float) -> bool: ...
def mhc_spectral_norm(m: npt.NDArray[np.float64]) -> float: ...
def mhc_matmul(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...

# --- kernels (rust/bindings/kernels_py.rs) ---

class PlanarMatrix:
    """A ternary matrix in the planar kernel layout (2 bits/weight, 64-byte aligned)."""

    @staticmethod
    def from_trits(
        trits: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], group_cols: int | None = None
    ) -> PlanarMatrix: ...
    @staticmethod
    def from_tq2_0(blocks: npt.NDArray[np.uint8], rows: int, cols: int) -> PlanarMatrix: ...
    def to_trits(self) -> npt.NDArray[np.int8]: ...
    def packed_bytes(self) -> npt.NDArray[np.uint8]: ...
    def scales(self) -> npt.NDArray[np.float32]: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def group_cols(self) -> int: ...

def kernels_quantize_activations(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def kernels_gemv(
    w: PlanarMatrix, x: npt.NDArray[np.float32], variant: str | None = None
) -> npt.NDArray[np.float32]: ...
def kernels_gemm(
    w: PlanarMatrix, x: npt.NDArray[np.float32], variant: str | None = None
) -> npt.NDArray[np.float32]: ...
def kernels_gemm_i32(
    w: PlanarMatrix, x: npt.NDArray[np.int8], variant: str | None = None
) -> npt.NDArray[np.int32]: ...
def kernels_supported_variants() -> list[str]: ...
def kernels_default_variant() -> str: ...
def kernels_set_num_threads(threads: int) -> None: ...
def kernels_num_threads() -> int: ...

# --- eval (rust/bindings/eval_py.rs) ---

RUST_MAX_SOURCE_BYTES: int

def rust_parse_error(source: str) -> tuple[int, int, str] | None:
    """None if `source` parses as a Rust file (syn), else (line, column, message).

    Raises ValueError for sources over RUST_MAX_SOURCE_BYTES or nested too deeply."""

def rust_completion_escape(prompt: str, body: str, test: str) -> str | None:
    """None when a generated function body stays inside its function and uses nothing the
    harness refuses (process exit, program arguments, environment, files, sockets, `unsafe`,
    `extern`, inline assembly, `include!`-style macros, linkage attributes), else the reason
    (rust/evalrs/src/policy.rs). The program checked is prompt + body + "\n}" + test.

    Raises ValueError when the prompt or the test does not parse (a broken task)."""

def rust_ast_metrics(source: str) -> dict[str, object]:
    """functions, lines, code_lines, cyclomatic_total, cyclomatic_max and
    per_function (list of dicts: name, start_line, end_line, cyclomatic).

    Raises ValueError when the source does not parse."""

def rust_extract_functions(source: str) -> list[dict[str, object]]:
    """The function-level view of a source file (rust/evalrs/src/extract.rs): one dict per
    free function, impl block and method, in source order, with kind ("function", "impl",
    "method"), name, text (attributes and doc comments kept, de-indented so the closing
    brace is at column 0), signature, doc, body, impl_header (methods; else None),
    standalone (a free function that looks std-only: a candidate for compiling alone),
    nontrivial (nonempty body without todo!/unimplemented!/unreachable!/panic!),
    std_uses (for a standalone function, the `use std::...` lines of its module it needs,
    to be compiled before `text`; else ""), start_line and end_line (1-based).

    Raises ValueError when the source does not parse (or is too large or deep)."""

# --- checkpoint (rust/bindings/checkpoint_py.rs) ---

def save_checkpoint(
    path: str,
    dense: list[tuple[str, str, list[int], npt.NDArray[np.uint8]]],
    ternary: list[tuple[str, npt.NDArray[np.int8], npt.NDArray[np.float32], int | None]],
    metadata: dict[str, str],
) -> None:
    """Atomically write dense entries (name, safetensors dtype name, shape, raw
    little-endian bytes) and ternary entries (name, trits rows x cols, scales,
    group size or None). Raises ValueError (bad entries) or OSError."""

def load_checkpoint(
    path: str,
) -> tuple[
    list[tuple[str, str, list[int], npt.NDArray[np.uint8]]],
    list[tuple[str, npt.NDArray[np.int8], npt.NDArray[np.float32], int | None]],
    dict[str, str],
]:
    """Read and CRC-verify a checkpoint: (dense entries, ternary entries, metadata).
    Raises ValueError for corrupt or foreign files, OSError if unreadable."""

# --- torch interop (rust/bindings/torch_io.rs) ---

def torch_view(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """A view of `t` with `shape`, made by libtorch in Rust; shares `t`'s storage."""

def torch_scale_(t: torch.Tensor, alpha: float) -> None:
    """Multiply `t` by `alpha` in place from Rust (GIL released)."""

# --- train (rust/bindings/train_py.rs) ---
# Configs travel as JSON strings; bad configs and inputs raise ValueError,
# libtorch failures RuntimeError. Public API: nanochat_ternary.model_config, .qat.

class QatModel:
    """Ternary (BitNet b1.58) transformer with QAT forward pass, parameters in Rust."""

    def __init__(self, config_json: str, seed: int = 0, device: str = "cpu") -> None: ...
    def config_json(self) -> str: ...
    @property
    def param_count(self) -> int: ...
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for int64 ids (B, T), no autograd."""
    def loop_logits(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """LoopLM: every loop's logits (B, T, vocab) and the exit gate's lambda (B, T) per loop."""
    def residual_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """mHC: every sub-layer's H_res (B, T, n, n) in forward order (empty without mHC)."""
    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean cross-entropy of `targets` given `tokens`, no autograd."""
    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) sorted by name; tensors share the model's storage."""
    @staticmethod
    def from_checkpoint(path: str, device: str = "cpu") -> QatModel:
        """A model with the weights of a trainer checkpoint (CRC verified)."""

class QatTrainer:
    """Model + Muon/Lion optimizers + WSD schedule; hyper-parameters as JSON."""

    def __init__(self, config_json: str, hyper_json: str, device: str = "cpu") -> None: ...
    @staticmethod
    def load(path: str, device: str = "cpu") -> tuple[QatTrainer, str]:
        """(trainer, data_state) from an exact-resume checkpoint."""
    def step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step; metrics step, loss, ce, entropy, lr_muon, lr_lion, grad_norm, tokens
        (and kl when distilling)."""
    def step_reduced(
        self,
        micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
        reduce: Callable[[list[torch.Tensor], torch.Tensor], None],
    ) -> dict[str, float]:
        """Data-parallel step: reduce(grads, stats) turns in place this rank's gradients (sharing the
        trainer's storage) and float64 [loss, ce, entropy, kl, tokens] into the global token-weighted
        means and token count; then clip + update."""
    def set_teacher(self, path: str, alpha: float, temperature: float) -> tuple[str, str]:
        """Distill from a trainer checkpoint (loss alpha*CE + (1-alpha)*T^2*KL); returns its
        (config JSON, data state)."""
    @property
    def has_teacher(self) -> bool: ...
    def eval_loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> float: ...
    def save(self, path: str, data_state: str) -> None: ...
    @property
    def step_count(self) -> int: ...
    def config_json(self) -> str: ...
    def hyper_json(self) -> str: ...
    def decay_now(self, decay_steps: int) -> None: ...
    def learning_rates(self) -> tuple[float, float]: ...
    def param_groups(self) -> tuple[list[str], list[str]]: ...
    def named_parameters(self) -> list[tuple[str, torch.Tensor]]: ...

def train_default_hyper() -> str: ...
def train_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float, temperature: float
) -> tuple[float, float, float]:
    """(alpha*CE + (1-alpha)*T^2*KL, CE, KL) on (B, T, V) logits, no autograd."""
def train_preset_config(name: str) -> str: ...
def train_preset_names() -> list[str]: ...
def train_validate_config(config_json: str) -> str: ...
def train_param_count(config_json: str) -> int: ...

# --- RL (rust/bindings/rl_py.rs) ---------------------------------------------------------------

class RlReference:
    """A frozen policy (a trainer checkpoint's weights) for the RL KL penalty."""

    def __init__(self, path: str, device: str = "cpu") -> None: ...

def rl_step(
    trainer: QatTrainer,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    reference: RlReference | None = None,
    kl_coef: float = 0.0,
) -> dict[str, float]:
    """One policy-gradient step over (tokens, targets, mask, advantages) micro-batches."""

# --- tokens (rust/bindings/tokens_py.rs) ---
# Byte-level BPE (HF tokenizer.json). Errors: ValueError, OSError for unreadable files.
# Public API: nanochat_ternary.tokenizer.Tokenizer.

class BpeTokenizer:
    """A loaded or trained tokenizer; encode/decode/train release the GIL."""

    @staticmethod
    def from_file(path: str) -> BpeTokenizer: ...
    @staticmethod
    def from_json(json: str) -> BpeTokenizer: ...
    @staticmethod
    def train(
        texts: list[str],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: list[str] | None = None,
        max_token_length: int | None = None,
    ) -> BpeTokenizer: ...
    @staticmethod
    def train_files(
        paths: list[str],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: list[str] | None = None,
        max_token_length: int | None = None,
    ) -> BpeTokenizer: ...
    @staticmethod
    def from_gguf_vocab(
        model: str,
        pre: str,
        tokens: list[str],
        merges: list[str],
        token_types: list[int],
        scores: list[float] | None = None,
        add_space_prefix: bool | None = None,
    ) -> BpeTokenizer: ...
    def gguf_vocab(self) -> dict[str, object]:
        """model, pre, tokens, merges, token_types, bos_id, eos_id, pad_id."""
    def to_json(self) -> str: ...
    def save(self, path: str) -> None: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[npt.NDArray[np.uint32]]: ...
    def decode(self, ids: list[int]) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def is_byte_level(self) -> bool: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    def token_bytes(self, id: int) -> bytes: ...
    def special_tokens(self) -> list[tuple[int, str]]: ...

# --- engine (rust/bindings/engine_py.rs) ---
class Engine:
    """A loaded model (a .gguf file or an HF-style directory) for torch-free inference.

    ``kv_cache``: the KV cache's element type, ``"f16"`` (default) or ``"f32"``."""
    def __init__(self, path: str, kv_cache: str = "f16") -> None: ...
    def config_json(self) -> str: ...
    def tokenizer_json(self) -> str | None: ...
    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def eos_token_id(self) -> int | None: ...
    @property
    def add_bos_token(self) -> bool: ...
    @property
    def add_eos_token(self) -> bool: ...
    def logits(self, ids: list[int]) -> npt.NDArray[np.float32]: ...
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop_ids: list[int] = ...,
        stop_strings: list[str] = ...,
        first_token_ids: list[int] = ...,
        no_repeat_ngram_size: int = 0,
    ) -> list[list[int]]: ...
    def stream(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop_ids: list[int] = ...,
        stop_strings: list[str] = ...,
        first_token_ids: list[int] = ...,
        no_repeat_ngram_size: int = 0,
    ) -> TokenStream: ...
    @property
    def exit_threshold(self) -> float:
        """LoopLM early-exit threshold in (0, 1] (1.0: every loop; < 1 needs an exit gate)."""
    @exit_threshold.setter
    def exit_threshold(self, value: float) -> None: ...
    @property
    def exit_kv(self) -> str:
        """What the KV cache holds for skipped loops: "copy" (default) or "compute" (exact)."""
    @exit_kv.setter
    def exit_kv(self, mode: str) -> None: ...
    def mean_depth(self) -> tuple[float, int]:
        """(mean loops per token, tokens counted) since load or ``reset_depth()``."""
    def reset_depth(self) -> None: ...
    @property
    def context_length(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...

class TokenStream:
    """Iterator of generated token ids; each step runs without the GIL."""
    def __iter__(self) -> TokenStream: ...
    def __next__(self) -> int: ...

class Scheduler:
    """Continuous batching over one Engine: every running sequence is decoded in one batched
    forward per ``step()`` (chunked prefill, FIFO admission within ``max_batch`` and a KV byte
    budget; cancel and finish free at once). Model work runs without the GIL.

    ``step()`` events: ``(id, [(token, logprob, [(alt_token, logprob), ...])], finish, error)``;
    finish is ``"stop"`` (EOS / stop id, not emitted), ``"length"``, ``"error"`` or None;
    logprob is NaN when the request asked for no log-probabilities."""
    def __init__(
        self, engine: Engine, max_batch: int = 16, prefill_chunk: int = 256, kv_budget_bytes: int = 1073741824
    ) -> None: ...
    def add(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop_ids: list[int] = ...,
        ignore_eos: bool = False,
        logprobs: int | None = None,
    ) -> int: ...
    def cancel(self, id: int) -> bool: ...
    def step(
        self,
    ) -> list[tuple[int, list[tuple[int, float, list[tuple[int, float]]]], str | None, str | None]]: ...
    @property
    def running(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def kv_bytes(self) -> int: ...
    @property
    def kv_bytes_per_position(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def kv_budget_bytes(self) -> int: ...
