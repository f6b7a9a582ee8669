"""The CUDA kernels on a GPU against their CPU references (bit for bit), through nanochat_ternary.cuda.ops.
Skips without a CUDA GPU and NVRTC; run by scripts/gpu_check.sh on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary.cuda import driver, layout, ops, ref

pytestmark = pytest.mark.skipif(not driver.available(), reason="needs a CUDA GPU and NVRTC")

SHAPES = [(1, 1), (3, 17), (7, 64), (37, 201), (130, 1000), (257, 4097), (4096, 4096)]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ternarize_kernel_equals_reference(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = randn(*shape, seed=shape[1]).to(dtype)
    got = ops.ternarize(w.cuda())
    want = ops.ternarize(w)  # the references, with the same partial count
    assert torch.equal(got.scale.cpu(), want.scale)
    assert torch.equal(got.words.cpu(), want.words)


@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (19, 201), (64, 1000), (3, 4097), (512, 4096)])
@pytest.mark.parametrize("mode", ["qat", "engine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_kernel_equals_reference(shape: tuple[int, int], mode: str, dtype: torch.dtype) -> None:
    x = (randn(*shape, seed=shape[0]) * 3).to(dtype)
    x[0, 0] = 0.0
    if shape[0] > 2:
        x[1] = 0.0
        x[2, shape[1] // 2] = float("nan")
    q, d = ops.quantize_activations(x.cuda(), mode)
    q_ref, d_ref = ops.quantize_activations(x, mode)
    assert torch.equal(q.cpu(), q_ref)
    assert torch.equal(d.cpu().isnan(), d_ref.isnan())
    assert torch.equal(d.cpu().nan_to_num(-1.0), d_ref.nan_to_num(-1.0))


@pytest.mark.parametrize("shape", SHAPES + [(11008, 4096), (4096, 11008)])
@pytest.mark.parametrize("tokens", [1, 3, 64, 100])
def test_gemv_gemm_kernels_equal_reference(shape: tuple[int, int], tokens: int) -> None:
    rows, cols = shape
    if rows * cols > 20_000_000 and tokens > 3:
        pytest.skip("large shapes run at decode sizes only (the CPU reference is slow)")
    trits = torch.randint(-1, 2, (rows, cols), generator=torch.Generator().manual_seed(rows), dtype=torch.int8)
    for scale in (torch.tensor([0.037]), torch.rand(rows, generator=torch.Generator().manual_seed(1)) + 0.5):
        w = ops.PackedTernary.from_trits(trits, scale)
        x = randn(tokens, cols, seed=tokens)
        q, d = ops.quantize_activations(x, "engine")
        want = ops.matmul(q, d, w)
        w_gpu = ops.PackedTernary(w.words.cuda(), w.scale.cuda(), rows, cols)
        got = ops.matmul(q.cuda(), d.cuda(), w_gpu)
        assert torch.equal(got.cpu(), want)
        assert torch.equal(ops.matmul(q.cuda(), d.cuda(), w_gpu, backend="int_mm").cpu(), want)  # cuBLASLt int8


@pytest.mark.parametrize("rows_per_warp", [1, 2, 4, 8])
def test_gemv_rows_per_warp_variants(rows_per_warp: int) -> None:
    trits = torch.randint(-1, 2, (333, 777), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    w = ops.PackedTernary.from_trits(trits, 0.5)
    q, d = ops.quantize_activations(randn(1, 777), "engine")
    want = ops.matmul(q, d, w)
    got = ops.matmul(q.cuda(), d.cuda(), ops.PackedTernary(w.words.cuda(), w.scale.cuda(), 333, 777), rows_per_warp)
    assert torch.equal(got.cpu(), want)


def test_bit_linear_on_gpu_equals_cpu_forward_and_gradients() -> None:
    x = randn(4, 9, 200, seed=1)
    w = randn(96, 200, seed=2)
    g = randn(4, 9, 96, seed=3)
    outs = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_(True)
        wd = w.to(device).requires_grad_(True)
        y = ops.bit_linear(xd, wd)
        y.backward(g.to(device))
        outs.append((y.detach().cpu(), xd.grad.cpu(), wd.grad.cpu()))
    assert torch.equal(outs[0][0], outs[1][0])  # the forward is bit for bit
    for a, b in zip(outs[0][1:], outs[1][1:]):  # backward: float matmuls (cuBLAS vs CPU)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_kernels_run_on_torchs_current_stream() -> None:
    w = randn(512, 1024, seed=4).cuda()
    x = randn(8, 1024, seed=5)
    want = ops.linear(x, ops.ternarize(w.cpu()))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # w was made on the default stream
    with torch.cuda.stream(stream):
        xs = x.cuda(non_blocking=False) * 1.0  # produced on the side stream
        packed = ops.ternarize(w)
        y = ops.linear(xs, packed)
    stream.synchronize()
    assert torch.equal(y.cpu(), want)


def test_gpu_errors_are_clear() -> None:
    w = ops.ternarize(randn(8, 40).cuda())
    with pytest.raises(ValueError, match="on cpu, the other operands on cuda"):
        q, d = ops.quantize_activations(randn(2, 40))
        ops.matmul(q, d, w)
    with pytest.raises(ValueError, match="contiguous"):
        ops.quantize_activations(randn(40, 2).cuda().T)
    with pytest.raises(TypeError, match="float16"):
        ops.ternarize(randn(8, 40).cuda().half())


def test_layout_agrees_with_host_packing_on_gpu() -> None:
    trits = np.random.default_rng(0).integers(-1, 2, (31, 300), dtype=np.int8)
    words = layout.pack_torch(torch.from_numpy(trits).cuda())
    np.testing.assert_array_equal(words.cpu().numpy().view(np.uint32), layout.pack(trits))
    np.testing.assert_array_equal(layout.unpack_torch(words, 300).cpu().numpy(), trits)
    assert ref.MODE_QAT == 0
