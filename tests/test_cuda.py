"""nanochat_ternary.cuda on the CPU: the packed layout, the kernels' CPU references against the
project's own semantics (codec, QAT fake quant, CPU kernels), the ops' checks, NVRTC compilation of
every kernel to PTX (skips without libnvrtc) and the GPU peak table. GPU numerics: test_cuda_gpu.py."""

from __future__ import annotations

import os
import re
import sys
from importlib import resources

import numpy as np
import pytest
import torch

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary import codec, kernels
from nanochat_ternary.cuda import driver, layout, nvrtc, ops, peaks, ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import reference_model as qat  # noqa: E402  (the QAT fake quant, tied to rust/train by test_bench_reference)

SHAPES = [(1, 1), (1, 63), (3, 17), (7, 64), (37, 201), (16, 1000), (5, 4097)]


def trits_of(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=(rows, cols), dtype=np.int8)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_round_trip_numpy_and_torch(shape: tuple[int, int]) -> None:
    rows, cols = shape
    t = trits_of(rows, cols)
    words = layout.pack(t)
    assert words.dtype == np.uint32 and words.shape == (rows, layout.words_per_row(cols))
    assert words.shape[1] % 4 == 0 and layout.padded_cols(cols) == 16 * words.shape[1] >= cols
    np.testing.assert_array_equal(layout.unpack(words, cols), t)
    w_t = layout.pack_torch(torch.from_numpy(t))
    assert w_t.dtype == torch.int32
    np.testing.assert_array_equal(w_t.numpy().view(np.uint32), words)
    np.testing.assert_array_equal(layout.unpack_torch(w_t, cols).numpy(), t)


def test_layout_bit_positions_and_padding() -> None:
    t = trits_of(2, 70, seed=3)
    words = layout.pack(t)
    for k in range(70):  # element k: word k // 16, bits 8 * (k % 4) + 2 * ((k % 16) // 4), code trit + 1
        code = (int(words[1, k // 16]) >> (8 * (k % 4) + 2 * ((k % 16) // 4))) & 3
        assert code == t[1, k] + 1
    codes = (words[:, :, None] >> np.arange(0, 32, 2, dtype=np.uint32)) & 3
    pad = [(int(words[0, k // 16]) >> (8 * (k % 4) + 2 * ((k % 16) // 4))) & 3 for k in range(70, 128)]
    assert pad == [1] * 58 and codes.max() <= 2
    # One shifted, masked word holds 4 consecutive elements in its bytes (what a __dp4a reads).
    j = 2
    lanes = ((int(words[0, 1]) >> (2 * j)) & 0x03030303).to_bytes(4, "little")
    assert list(lanes) == [t[0, 16 + 4 * j + b] + 1 for b in range(4)]


def test_layout_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="int8"):
        layout.pack(np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="-1, 0 and 1"):
        layout.pack(np.full((2, 3), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        layout.pack(np.zeros((0, 3), dtype=np.int8))
    words = layout.pack(trits_of(2, 20))
    with pytest.raises(ValueError, match="words per row"):
        layout.unpack(words, 70)
    bad = words.copy()
    bad[0, 0] |= 3  # code 3 at element 0
    with pytest.raises(ValueError, match="code 3"):
        layout.unpack(bad, 20)
    bad = words.copy()
    bad[0, 3] = 0  # padding codes 0 instead of 1
    with pytest.raises(ValueError, match="padding"):
        layout.unpack(bad, 20)
    with pytest.raises(ValueError, match="positive int"):
        layout.words_per_row(0)


# ----------------------------------------------------------------------------- references vs the project


@pytest.mark.parametrize("shape", SHAPES)
def test_ternarize_reference_equals_the_codec(shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0] * 7 + shape[1]))
    trits, scales = codec.quantize(w.numpy())  # per tensor: s = mean|W|, clip(round(w / (s + 1e-5)))
    n = w.numel()
    partials = ops.absmean_partials(n)
    p = ref.absmean_partial(w, partials)
    assert p.dtype == torch.float64 and p.shape == (partials,)
    assert abs(float(p.sum()) - float(w.abs().double().sum())) <= 1e-9 * float(w.abs().double().sum())
    words, scale = ref.ternarize_pack(w, p)
    np.testing.assert_array_equal(layout.unpack_torch(words, shape[1]).numpy(), trits)
    assert scale.dtype == torch.float32 and scale.item() == scales[0]
    # And the QAT forward's ternarize (rust/train quant.rs) gives trits * s, the same values.
    w_hat = ops.PackedTernary(words, scale, *shape).dequantize()
    assert torch.equal(w_hat, qat.ternarize(w))


def test_ternarize_reference_bf16_and_edge_values() -> None:
    w = torch.randn(9, 130, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    words, scale = ref.ternarize_pack(w)
    trits, scales = codec.quantize(w.float().numpy())
    np.testing.assert_array_equal(layout.unpack_torch(words, 130).numpy(), trits)
    assert scale.item() == scales[0]
    words, scale = ref.ternarize_pack(torch.zeros(3, 5))
    assert scale.item() == 0.0 and layout.unpack_torch(words, 5).abs().sum() == 0
    nan = torch.ones(3, 5)
    nan[1, 2] = float("inf")
    words, scale = ref.ternarize_pack(nan)
    assert scale.isnan().all()  # never a silent finite scale from non-finite weights


@pytest.mark.parametrize("shape", [(1, 1), (1, 63), (3, 17), (19, 201), (4, 1000)])
def test_engine_activation_reference_equals_the_cpu_kernels(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])) * 3
    x[0] = 0.0  # an all-zero token: q = 0, d = 0
    q, d = ref.act_quant(x, ref.MODE_ENGINE)
    qk, dk = kernels.quantize_activations(x.numpy())
    assert q.shape == (shape[0], layout.padded_cols(shape[1])) and not q[:, shape[1]:].any()
    np.testing.assert_array_equal(q[:, : shape[1]].numpy(), qk)
    np.testing.assert_array_equal(d.numpy(), dk)


def test_engine_activation_reference_rounds_like_the_cpu_kernels_on_many_tokens() -> None:
    # bf16-valued activations hit the cases where 127 / m and m.reciprocal() * 127 round apart.
    x = (torch.randn(300, 333, generator=torch.Generator().manual_seed(11)) * 3).to(torch.bfloat16).float()
    q, d = ref.act_quant(x, ref.MODE_ENGINE)
    qk, dk = kernels.quantize_activations(x.numpy())
    np.testing.assert_array_equal(q[:, :333].numpy(), qk)
    np.testing.assert_array_equal(d.numpy(), dk)


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (19, 201), (4, 1000)])
def test_qat_activation_reference_equals_the_fake_quant(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1] + 1)) * 2
    x[-1] = 0.0
    q, d = ref.act_quant(x, ref.MODE_QAT)
    fake = qat.quantize_activations(x)  # round(x * s).clamp(-128, 127) / s, s = (1 / max(m, 1e-5)) * 127
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-5).reciprocal() * 127
    assert torch.equal((fake * s).round(), q[:, : shape[1]].float())
    torch.testing.assert_close(q[:, : shape[1]].float() * d[:, None], fake, rtol=1e-6, atol=0)
    assert torch.equal(d, s[:, 0].reciprocal())


def test_activation_reference_bf16_and_non_finite() -> None:
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(2))
    q16, d16 = ref.act_quant(x.to(torch.bfloat16), ref.MODE_QAT)
    q32, d32 = ref.act_quant(x.to(torch.bfloat16).float(), ref.MODE_QAT)
    assert torch.equal(q16, q32) and torch.equal(d16, d32)
    x[1, 3], x[2, 0] = float("nan"), float("-inf")
    for mode in (ref.MODE_QAT, ref.MODE_ENGINE):
        q, d = ref.act_quant(x, mode)
        assert d[1].isnan() and d[2].isnan() and d[[0, 3]].isfinite().all()
        assert not q[1].any() and not q[2].any()


@pytest.mark.parametrize("shape", [(1, 1), (37, 201), (100, 257), (3, 1000), (64, 4097)])
@pytest.mark.parametrize("tokens", [1, 19])
def test_gemm_reference_equals_the_cpu_kernels(shape: tuple[int, int], tokens: int) -> None:
    rows, cols = shape
    t = trits_of(rows, cols, seed=rows + cols)
    words = layout.pack_torch(torch.from_numpy(t))
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(tokens))
    q, d = ref.act_quant(x, ref.MODE_ENGINE)
    # Integers: exact against the CPU kernels' integer GEMM (unit scales).
    one = torch.ones(1)
    acc = ref.ternary_gemm(words, q, torch.ones(tokens), one, rows, cols)
    qk, dk = kernels.quantize_activations(x.numpy())
    np.testing.assert_array_equal(acc.numpy(), kernels.gemm_i32(kernels.pack(t), qk).astype(np.float32))
    # Floats: the same float32 products as the CPU kernels' float GEMM/GEMV, bit for bit.
    scale = torch.tensor([0.0371])
    y = ref.ternary_gemm(words, q, d, scale, rows, cols)
    m = kernels.pack(t, 0.0371)
    expected = kernels.gemv(m, x[0].numpy())[None] if tokens == 1 else kernels.gemm(m, x.numpy())
    np.testing.assert_array_equal(y.numpy(), expected)
    if tokens == 1:
        assert torch.equal(ref.ternary_gemv(words, q[0], d, scale, rows, cols), y[0])
    # Per-row scales.
    per_row = torch.rand(rows) + 0.5
    y_rows = ref.ternary_gemm(words, q, d, per_row, rows, cols)
    assert torch.equal(y_rows, (acc * per_row[None]) * d[:, None])


# ----------------------------------------------------------------------------- ops (CPU path = references)


def test_ops_linear_on_cpu_equals_the_cpu_kernels() -> None:
    w = torch.randn(45, 300, generator=torch.Generator().manual_seed(9))
    packed = ops.ternarize(w)
    trits, scales = codec.quantize(w.numpy())
    assert torch.equal(packed.trits(), torch.from_numpy(trits)) and packed.scale.item() == scales[0]
    x = torch.randn(2, 3, 300, generator=torch.Generator().manual_seed(1))
    y = ops.linear(x, packed)
    assert y.shape == (2, 3, 45) and y.dtype == torch.float32
    np.testing.assert_array_equal(y.reshape(6, 45).numpy(), kernels.gemm(kernels.pack(trits, scales[0]), x.reshape(6, 300).numpy()))
    from_trits = ops.PackedTernary.from_trits(trits, scales[0])
    assert torch.equal(from_trits.words, packed.words)


@pytest.mark.parametrize("shape", [(1, 1), (37, 201), (64, 1000)])
@pytest.mark.parametrize("tokens", [1, 17, 40])
def test_int_mm_backend_equals_the_reference(shape: tuple[int, int], tokens: int) -> None:
    rows, cols = shape
    packed = ops.PackedTernary.from_trits(trits_of(rows, cols, seed=5), np.float32(0.021))
    q, d = ops.quantize_activations(torch.randn(tokens, cols, generator=torch.Generator().manual_seed(6)), "engine")
    assert torch.equal(ops.matmul(q, d, packed, backend="int_mm"), ops.matmul(q, d, packed))
    per_row = ops.PackedTernary(packed.words, torch.rand(rows) + 0.5, rows, cols)
    assert torch.equal(ops.matmul(q, d, per_row, backend="int_mm"), ops.matmul(q, d, per_row))
    with pytest.raises(ValueError, match="backend must be"):
        ops.matmul(q, d, packed, backend="cublas")


def test_ops_bit_linear_forward_and_straight_through_gradients() -> None:
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 5, 72, generator=g)).requires_grad_(True)
    w = (torch.randn(33, 72, generator=g)).requires_grad_(True)
    y = ops.bit_linear(x, w)
    expected = qat.bit_linear(x.detach(), w.detach())
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(y.shape, generator=g)
    assert torch.equal(ops.bit_linear(x.detach(), w.detach(), "int_mm"), y.detach())
    y.backward(grad)
    w_hat = qat.ternarize(w.detach())
    x_hat = qat.quantize_activations(x.detach())
    torch.testing.assert_close(x.grad, grad @ w_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, grad.reshape(-1, 33).T @ x_hat.reshape(-1, 72), rtol=1e-5, atol=1e-5)


def test_ops_reject_bad_tensors_with_clear_errors() -> None:
    packed = ops.ternarize(torch.randn(8, 40))
    with pytest.raises(TypeError, match="x must have dtype float32 or bfloat16, got float64"):
        ops.quantize_activations(torch.randn(2, 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        ops.quantize_activations(torch.randn(40, 2).T)
    with pytest.raises(ValueError, match="mode must be"):
        ops.quantize_activations(torch.randn(2, 40), mode="int4")
    with pytest.raises(ValueError, match="end in 40 columns"):
        ops.linear(torch.randn(2, 41), packed)
    q, d = ops.quantize_activations(torch.randn(3, 40))
    with pytest.raises(ValueError, match="one scale per token"):
        ops.matmul(q, d[:2].contiguous(), packed)
    with pytest.raises(ValueError, match="64 columns"):
        ops.matmul(q[:, :40].contiguous(), d, packed)
    shifted = torch.zeros(3 * 64 + 1, dtype=torch.int8)[1:].view(3, 64)
    with pytest.raises(ValueError, match="16-byte boundary"):
        ops.matmul(shifted, d, packed)
    with pytest.raises(TypeError, match="q must have dtype int8"):
        ops.matmul(q.to(torch.int32), d, packed)
    with pytest.raises(ValueError, match="words of a 8x200 matrix"):
        ops.PackedTernary(packed.words, packed.scale, 8, 200)
    with pytest.raises(ValueError, match="scale must have shape"):
        ops.PackedTernary(packed.words, torch.ones(3), 8, 40)
    with pytest.raises(ValueError, match="-1, 0 and 1"):
        ops.PackedTernary.from_trits(np.full((2, 2), 3, dtype=np.int8), 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    assert not driver.available()
    # No CUDA tensor can exist here; the gate every op passes before a launch says why it cannot run.
    with pytest.raises(driver.CudaError, match="need a CUDA GPU and NVRTC"):
        ops._launch("ternary_gemv", "ternary_gemv", (1, 1, 1), (32, 1, 1), [], torch.device("cuda", 0))


# ----------------------------------------------------------------------------- NVRTC


def test_kernel_sources_ship_with_the_package() -> None:
    files = {p.name for p in resources.files("nanochat_ternary.cuda").joinpath("csrc").iterdir()}
    assert {f"{k}.cu" for k in nvrtc.KERNELS} <= files
    for name, entries in nvrtc.KERNELS.items():
        src = nvrtc.kernel_source(name)
        for e in entries:
            assert re.search(rf'extern "C" __global__ void {e}\(', src), (name, e)
        assert "#include" not in src  # NVRTC compiles them with no toolkit headers


needs_nvrtc = pytest.mark.skipif(not nvrtc.available(), reason="no libnvrtc (CPU-only torch wheel)")


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(nvrtc.KERNELS))
def test_every_kernel_compiles_to_ptx(name: str, arch: str) -> None:
    ptx = nvrtc.compile_ptx(name, arch)
    assert f".target {arch}" in ptx
    for entry in nvrtc.KERNELS[name]:
        assert re.search(rf"\.entry {entry}\(", ptx), entry
    if name.startswith("ternary_gem"):
        assert "dp4a.s32.s32" in ptx  # the int8 dot products run on dp4a
    if name == "act_quant":
        assert "cvt.rni.f32.f32" in ptx  # round half to even


@needs_nvrtc
def test_gemv_compiles_for_every_rows_per_warp_and_errors_carry_the_log(tmp_path, monkeypatch) -> None:
    for rows in (1, 2, 4, 8):
        assert ".entry ternary_gemv(" in nvrtc.compile_ptx("ternary_gemv", "sm_90", {"GEMV_ROWS": rows})
    assert nvrtc.version()[0] >= 12
    with pytest.raises(ValueError, match="arch must look like"):
        nvrtc.compile_ptx("ternary_gemv", "hopper")
    with pytest.raises(ValueError, match="unknown kernel"):
        nvrtc.compile_ptx("nope")
    (tmp_path / "ternary_gemv.cu").write_text('extern "C" __global__ void ternary_gemv() { undeclared_thing(); }\n')
    monkeypatch.setattr(nvrtc, "CSRC", tmp_path)
    with pytest.raises(nvrtc.NvrtcError, match="undeclared_thing"):
        nvrtc.compile_ptx("ternary_gemv", "sm_86")


def test_missing_nvrtc_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("NCT_NVRTC", "/nonexistent/libnvrtc.so")
    nvrtc._lib.cache_clear()
    try:
        assert not nvrtc.available()
        with pytest.raises(nvrtc.NvrtcUnavailable, match="NVRTC"):
            nvrtc.version()
    finally:
        monkeypatch.delenv("NCT_NVRTC")
        nvrtc._lib.cache_clear()


def test_dense_bf16_peaks() -> None:
    assert peaks.dense_bf16_peak("NVIDIA H100 80GB HBM3") == (989e12, "H100 SXM")
    assert peaks.dense_bf16_peak("NVIDIA H200") == (989e12, "H200 SXM")
    assert peaks.dense_bf16_peak("NVIDIA H100 PCIe") == (756e12, "H100 PCIe")
    assert peaks.dense_bf16_peak("NVIDIA A100-SXM4-80GB") == (312e12, "A100")
    assert peaks.dense_bf16_peak("NVIDIA L40S") == (362e12, "L40S")
    assert peaks.dense_bf16_peak("Tesla T4") is None


# ----------------------------------------------------------------------------- training on CUDA: the parts a CPU can check


def test_mfu_uses_the_gpus_dense_bf16_peak(monkeypatch) -> None:
    from nanochat_ternary.model_config import ModelConfig
    from nanochat_ternary.train import Trainer

    config = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=16)
    trainer = Trainer(config, steps=2, warmup=1, progress=False)
    trainer.device = "cuda"  # what the CUDA run sees; only the peak lookup runs here
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert trainer.peak_flops() == 989e12 and trainer.peak_flops_source == "H100 SXM dense bf16"
    trainer._peak_flops, trainer.peak_flops_source = None, "measured matmul"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    monkeypatch.setattr("nanochat_ternary.train.measured_peak_flops", lambda device: 1.25e14)
    assert trainer.peak_flops() == 1.25e14 and trainer.peak_flops_source == "measured matmul"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_train_cli_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys) -> None:
    from nanochat_ternary import train

    with pytest.raises(SystemExit):
        train.main(["--config", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert "no CUDA GPU is available" in capsys.readouterr().err
