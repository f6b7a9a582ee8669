"""nanochat_ternary.kernels against numpy references, for every variant this CPU supports."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary import kernels

VARIANTS = kernels.supported_variants()
RNG = np.random.default_rng(0)


def random_trits(rows: int, cols: int) -> np.ndarray:
    return RNG.integers(-1, 2, size=(rows, cols), dtype=np.int8)


def reference_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amax = np.abs(x).max(axis=1)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return q, (amax / np.float32(127.0)).astype(np.float32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (17, 33), (100, 257)])
def test_gemm_i32_is_exact(variant: str, shape: tuple[int, int]) -> None:
    rows, cols = shape
    trits = random_trits(rows, cols)
    x = RNG.integers(-128, 128, size=(19, cols), dtype=np.int8)
    w = kernels.pack(trits)
    expected = x.astype(np.int64) @ trits.T.astype(np.int64)
    got = kernels.gemm_i32(w, x, variant)
    assert got.dtype == np.int32 and got.shape == (19, rows)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_extremes(variant: str) -> None:
    cols = 515
    for value in (-1, 0, 1):
        w = kernels.pack(np.full((18, cols), value, dtype=np.int8))
        for xv in (-128, 127):
            x = np.full((2, cols), xv, dtype=np.int8)
            np.testing.assert_array_equal(kernels.gemm_i32(w, x, variant), np.full((2, 18), value * xv * cols))


def test_quantize_matches_numpy() -> None:
    x = RNG.standard_normal((5, 300)).astype(np.float32)
    x[2] = 0.0
    q, s = kernels.quantize_activations(x)
    q_ref, s_ref = reference_quantize(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert q.min() >= -127


@pytest.mark.parametrize("variant", VARIANTS)
def test_float_gemv_gemm_match_reference(variant: str) -> None:
    rows, cols, group = 40, 96, 32
    trits = random_trits(rows, cols)
    scales = RNG.uniform(0.01, 0.1, size=(rows, cols // group)).astype(np.float32)
    w = kernels.pack(trits, scales, group_cols=group)
    assert w.shape == (rows, cols) and w.group_cols == group
    np.testing.assert_array_equal(w.to_trits(), trits)
    np.testing.assert_array_equal(w.scales(), scales)
    x = RNG.standard_normal((3, cols)).astype(np.float32)
    q, s = reference_quantize(x)
    dequant_w = trits.astype(np.float64) * np.repeat(scales, group, axis=1)
    expected = (q.astype(np.float64) * s[:, None]) @ dequant_w.T
    y = kernels.gemm(w, x, variant)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernels.gemv(w, x[0], variant), y[0])


def test_packed_layout_is_two_bits_per_weight() -> None:
    w = kernels.pack(random_trits(64, 256), 0.5)
    assert w.packed_bytes().nbytes == 64 * 256 // 4


def test_concurrent_callers_share_the_pool() -> None:
    trits = random_trits(300, 500)
    w = kernels.pack(trits)
    x = RNG.integers(-127, 128, size=(4, 500), dtype=np.int8)
    expected = x.astype(np.int64) @ trits.T.astype(np.int64)
    kernels.set_num_threads(2)
    assert kernels.num_threads() == 2
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                np.testing.assert_array_equal(kernels.gemm_i32(w, x), expected)
        except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_working_threads() -> None:
    """A fork()ed process inherits the kernels' team but not its threads: its parallel calls must
    neither hang waiting for workers that do not exist nor give wrong results."""
    trits = random_trits(300, 500)
    w = kernels.pack(trits)
    x = RNG.integers(-127, 128, size=(64, 500), dtype=np.int8)
    expected = x.astype(np.int64) @ trits.T.astype(np.int64)
    kernels.set_num_threads(2)
    np.testing.assert_array_equal(kernels.gemm_i32(w, x), expected)  # the parent's team is running
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the results are right
        ok = all(np.array_equal(kernels.gemm_i32(w, x), expected) for _ in range(5))
        os._exit(0 if ok and kernels.num_threads() == 2 else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in a parallel kernel call")
    np.testing.assert_array_equal(kernels.gemm_i32(w, x), expected)  # and the parent's still works


def test_bad_inputs() -> None:
    w = kernels.pack(random_trits(4, 8))
    with pytest.raises(ValueError, match="columns"):
        kernels.gemm(w, np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="columns"):
        kernels.gemv(w, np.zeros(7, dtype=np.float32))
    with pytest.raises(TypeError):
        kernels.gemv(w, np.zeros(8, dtype=np.float64))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kernels.gemm_i32(w, np.zeros((2, 8), dtype=np.int16))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguous"):
        kernels.gemm(w, np.zeros((2, 16), dtype=np.float32)[:, ::2])
    with pytest.raises(ValueError, match="not finite"):
        kernels.gemv(w, np.full(8, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown kernel variant"):
        kernels.gemv(w, np.zeros(8, dtype=np.float32), "avx9000")
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        kernels.pack(np.full((2, 2), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="scales"):
        kernels.pack(random_trits(2, 2), np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError):
        kernels.set_num_threads(0)


def test_tq2_0_conversion_roundtrip() -> None:
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    rows, cols = 3, 512
    weights = RNG.integers(-1, 2, size=(rows, cols)).astype(np.float32) * 0.5
    blocks = gguf_quants.quantize(weights, GGMLQuantizationType.TQ2_0)
    w = kernels.PlanarMatrix.from_tq2_0(np.ascontiguousarray(blocks).reshape(-1).view(np.uint8), rows, cols)
    np.testing.assert_array_equal(w.to_trits(), (weights * 2).astype(np.int8))
    np.testing.assert_allclose(w.scales(), 0.5)
