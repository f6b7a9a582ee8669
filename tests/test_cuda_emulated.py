"""The CUDA kernels of csrc/ run on the CPU (tests/cuda_emu/emu.h: a std::thread per CUDA thread,
barriers for __syncthreads and warp shuffles) with the launch geometry nanochat_ternary.cuda.ops
uses, against the CPU references bit for bit. This checks the kernels' indexing, tails, padding,
reductions and shared-memory tiling without a GPU (not their speed, nor the hardware's own
arithmetic: test_cuda_gpu.py does that). Skips without g++."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary.cuda import layout, nvrtc, ops, ref

EMU = Path(__file__).with_name("cuda_emu")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to build the emulator")
_LIBS: dict[int, ctypes.CDLL] = {}


def emu(gemv_rows: int = 2) -> ctypes.CDLL:
    if gemv_rows not in _LIBS:
        out = Path(__import__("tempfile").mkdtemp(prefix="nct-emu-")) / f"emu{gemv_rows}.so"
        cmd = ["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared", "-pthread",
               f"-I{EMU}", f"-I{nvrtc.CSRC}", f"-DGEMV_ROWS={gemv_rows}", str(EMU / "kernels.cpp"), "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        _LIBS[gemv_rows] = ctypes.CDLL(str(out))
    return _LIBS[gemv_rows]


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    assert a.flags.c_contiguous and a.ctypes.data % 16 == 0
    return ctypes.c_void_p(a.ctypes.data)


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts on a 16-byte boundary (the kernels' vector loads need it)."""
    raw = np.zeros(a.nbytes + 16, dtype=np.uint8)
    start = (-raw.ctypes.data) % 16
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def run_ternarize(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = w.shape
    n_words = layout.words_per_row(cols)
    partials = ops.absmean_partials(rows * cols)
    if w.dtype == torch.bfloat16:
        host, suffix = aligned(w.view(torch.int16).numpy().view(np.uint16)), "bf16"
    else:
        host, suffix = aligned(w.numpy()), "f32"
    sums = aligned(np.zeros(partials, dtype=np.float64))
    words = aligned(np.zeros((rows, n_words), dtype=np.uint32))
    scale = aligned(np.zeros(1, dtype=np.float32))
    lib = emu()
    getattr(lib, f"emu_absmean_partial_{suffix}")(partials, 256, ptr(host), ctypes.c_long(rows * cols), ptr(sums))
    (gx, _, _), (bx, _, _) = ops.pack_launch(rows, n_words)
    getattr(lib, f"emu_ternarize_pack_{suffix}")(gx, bx, ptr(host), ptr(sums), partials, ptr(words), ptr(scale),
                                                 rows, cols, n_words)
    return sums, words, scale


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 201), (300, 77), (16, 4097)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ternarize_kernels(shape, dtype):
    w = (torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])) * 0.3).to(dtype)
    sums, words, scale = run_ternarize(w)
    want_sums = ref.absmean_partial(w, ops.absmean_partials(w.numel()))
    np.testing.assert_array_equal(sums, want_sums.numpy())
    want_words, want_scale = ref.ternarize_pack(w, want_sums)
    np.testing.assert_array_equal(words.view(np.int32), want_words.numpy())
    assert scale[0] == want_scale.item()


def test_ternarize_kernel_non_finite_weights_give_a_nan_scale():
    w = torch.randn(5, 70)
    w[2, 9] = float("inf")
    _, words, scale = run_ternarize(w)
    assert np.isnan(scale[0])
    np.testing.assert_array_equal(words.view(np.int32), ref.ternarize_pack(w)[0].numpy())


@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (19, 201), (3, 1000), (2, 4097)])
@pytest.mark.parametrize("mode", [ref.MODE_QAT, ref.MODE_ENGINE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_kernel(shape, mode, dtype):
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) * 3).to(dtype)
    if shape[0] >= 3:
        x[1] = 0.0
        x[2, shape[1] // 2] = float("nan")
    tokens, cols = shape
    padded = layout.padded_cols(cols)
    host = aligned(x.view(torch.int16).numpy().view(np.uint16)) if dtype == torch.bfloat16 else aligned(x.numpy())
    q = aligned(np.full((tokens, padded), 99, dtype=np.int8))  # the kernel must write the padding too
    d = aligned(np.zeros(tokens, dtype=np.float32))
    entry = "emu_act_quant_bf16" if dtype == torch.bfloat16 else "emu_act_quant_f32"
    getattr(emu(), entry)(tokens, 256, ptr(host), ptr(q), ptr(d), cols, padded, mode)
    q_ref, d_ref = ref.act_quant(x, mode)
    np.testing.assert_array_equal(q, q_ref.numpy())
    np.testing.assert_array_equal(np.isnan(d), d_ref.isnan().numpy())
    np.testing.assert_array_equal(np.nan_to_num(d, nan=-1), d_ref.nan_to_num(-1).numpy())


def matmul_inputs(rows, cols, tokens, per_row):
    g = torch.Generator().manual_seed(rows * 31 + cols)
    trits = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
    words = layout.pack_torch(trits)
    q, d = ref.act_quant(torch.randn(tokens, cols, generator=g), ref.MODE_ENGINE)
    q[0, : min(cols, 3)] = -128  # the kernels accept the full int8 range
    scale = torch.rand(rows, generator=g) + 0.5 if per_row else torch.tensor([0.037])
    return words, q, d, scale


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 201), (100, 257), (17, 1000), (9, 4097)])
@pytest.mark.parametrize("rows_per_warp", [1, 2, 8])
def test_gemv_kernel(shape, rows_per_warp):
    rows, cols = shape
    words, q, d, scale = matmul_inputs(rows, cols, 1, per_row=rows_per_warp == 2)
    y = aligned(np.zeros(rows, dtype=np.float32))
    (gx, _, _), (bx, _, _) = ops.gemv_launch(rows, rows_per_warp)
    args = [aligned(words.numpy().view(np.uint32)), aligned(q.numpy()), aligned(d.numpy()), aligned(scale.numpy())]
    emu(rows_per_warp).emu_ternary_gemv(gx, bx, *map(ptr, args), int(scale.numel() > 1), ptr(y), rows, words.shape[1])
    np.testing.assert_array_equal(y, ref.ternary_gemv(words, q[0], d, scale, rows, cols).numpy())


@pytest.mark.parametrize("shape", [(1, 1), (37, 201), (100, 257), (65, 1000), (130, 64)])
@pytest.mark.parametrize("tokens", [2, 70])
def test_gemm_kernel(shape, tokens):
    rows, cols = shape
    words, q, d, scale = matmul_inputs(rows, cols, tokens, per_row=tokens == 70)
    y = aligned(np.zeros((tokens, rows), dtype=np.float32))
    (gx, gy, _), (bx, _, _) = ops.gemm_launch(rows, tokens)
    args = [aligned(words.numpy().view(np.uint32)), aligned(q.numpy()), aligned(d.numpy()), aligned(scale.numpy())]
    emu().emu_ternary_gemm(gx, gy, bx, *map(ptr, args), int(scale.numel() > 1), ptr(y), tokens, rows, words.shape[1])
    np.testing.assert_array_equal(y, ref.ternary_gemm(words, q, d, scale, rows, cols).numpy())


# ----------------------------------------------------------------------------- ops' CUDA branch, end to end


@pytest.fixture
def ops_on_emulator(monkeypatch):
    """Routes nanochat_ternary.cuda.ops' CUDA branch (buffer allocation, argument lists, launch
    geometry) into the emulated kernels, with CPU tensors standing in for CUDA ones."""

    def launch(kernel, entry, grid, block, args, device, defines=None):
        lib = emu((defines or {}).get("GEMV_ROWS", 2))
        conv = []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.is_contiguous() and a.data_ptr() % 16 == 0, entry
                conv.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, ops.driver.Long):
                conv.append(ctypes.c_long(a.value))
            else:
                conv.append(ctypes.c_int(a))
        head = (grid[0], grid[1], block[0]) if entry == "ternary_gemm" else (grid[0], block[0])
        assert grid[2] == 1 and block[1:] == (1, 1) and (entry == "ternary_gemm" or grid[1] == 1)
        getattr(lib, f"emu_{entry}")(*head, *conv)

    monkeypatch.setattr(ops, "_on_gpu", lambda t: True)
    monkeypatch.setattr(ops, "_launch", launch)


def test_ops_cuda_branch_on_the_emulator(ops_on_emulator):
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(70, 333, generator=g).to(dtype)
        packed = ops.ternarize(w)
        want_words, want_scale = ref.ternarize_pack(w, ref.absmean_partial(w, ops.absmean_partials(w.numel())))
        assert torch.equal(packed.words, want_words) and torch.equal(packed.scale, want_scale)
        x = torch.randn(5, 333, generator=g).to(dtype)
        for mode, code in (("qat", ref.MODE_QAT), ("engine", ref.MODE_ENGINE)):
            q, d = ops.quantize_activations(x, mode)
            q_ref, d_ref = ref.act_quant(x, code)
            assert torch.equal(q, q_ref) and torch.equal(d, d_ref)
    q, d = ops.quantize_activations(torch.randn(9, 333, generator=g), "engine")
    want = ref.ternary_gemm(packed.words, q, d, packed.scale, 70, 333)
    assert torch.equal(ops.matmul(q, d, packed), want)  # GEMM
    for rows_per_warp in (1, 2, 8):
        assert torch.equal(ops.matmul(q[:1].clone(), d[:1].clone(), packed, rows_per_warp), want[:1])  # GEMV
    per_row = ops.PackedTernary(packed.words, torch.rand(70, generator=g) + 0.5, 70, 333)
    assert torch.equal(ops.matmul(q, d, per_row), ref.ternary_gemm(per_row.words, q, d, per_row.scale, 70, 333))


def test_bit_linear_cuda_branch_on_the_emulator(ops_on_emulator, monkeypatch):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 100, generator=g, requires_grad=True)
    w = torch.randn(40, 100, generator=g, requires_grad=True)
    y = ops.bit_linear(x, w)
    y.backward(torch.ones_like(y))
    monkeypatch.setattr(ops, "_on_gpu", lambda t: False)  # the reference path
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    y2 = ops.bit_linear(x2, w2)
    y2.backward(torch.ones_like(y2))
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad) and torch.equal(w.grad, w2.grad)
