"""Tests of nanochat_ternary.mhc: the mHC-lite invariants checked from Python, the
Rust maps compared with an independent numpy reference, and bad-input errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nanochat_ternary import mhc

# Local settings (not a global profile, which would change other test files' runs).
fast = settings(max_examples=60, deadline=None)

TOL = 1e-6
stream_counts = st.sampled_from([2, 4])


# --- numpy reference (written from the paper's formulas, independent of the Rust code) ---


def ref_permutations(n: int) -> np.ndarray:
    return np.eye(n)[list(itertools.permutations(range(n)))]


def ref_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def ref_maps(params: mhc.MhcParams, streams: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """streams (tokens, n, dim) -> h_res (tokens, n, n), h_pre (tokens, n), h_post (tokens, n)."""
    tokens = streams.shape[0]
    flat = streams.reshape(tokens, -1)
    xhat = flat / np.sqrt((flat**2).mean(axis=1, keepdims=True) + mhc.RMS_NORM_EPS)

    def project(m: mhc.MapParams) -> np.ndarray:
        return m.alpha * (xhat @ m.weight) + m.bias

    weights = ref_softmax(project(params.res))
    h_res = np.einsum("tk,kij->tij", weights, ref_permutations(params.n))
    return h_res, ref_sigmoid(project(params.pre)), 2.0 * ref_sigmoid(project(params.post))


# --- strategies ---


@st.composite
def logits_for(draw: st.DrawFn, scale: float = 50.0) -> np.ndarray:
    n = draw(stream_counts)
    elems = st.floats(-scale, scale, allow_nan=False)
    return draw(arrays(np.float64, math.factorial(n), elements=elems))


@st.composite
def random_params_and_streams(draw: st.DrawFn) -> tuple[mhc.MhcParams, np.ndarray]:
    n = draw(stream_counts)
    dim = draw(st.integers(1, 6))
    tokens = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def map_params(outputs: int) -> mhc.MapParams:
        return mhc.MapParams(
            weight=rng.normal(0.0, 2.0, (n * dim, outputs)),
            alpha=float(rng.uniform(-3.0, 3.0)),
            bias=rng.normal(0.0, 4.0, outputs),
        )

    params = mhc.MhcParams(n, dim, map_params(math.factorial(n)), map_params(n), map_params(n))
    scale = 10.0 ** rng.uniform(-3, 3)
    return params, rng.normal(0.0, scale, (tokens, n, dim))


# --- permutations and static H_res ---


@pytest.mark.parametrize("n", [2, 4])
def test_permutations_are_distinct_identity_first_lexicographic(n: int) -> None:
    perms = mhc.permutations(n)
    assert perms.shape == (math.factorial(n), n, n)
    np.testing.assert_array_equal(perms[0], np.eye(n))
    np.testing.assert_array_equal(perms, ref_permutations(n))
    assert len({p.tobytes() for p in perms}) == math.factorial(n)
    for p in perms:
        assert set(np.unique(p)) <= {0.0, 1.0}
        assert mhc.is_doubly_stochastic(p, 0.0)


@fast
@given(logits_for())
def test_h_res_is_doubly_stochastic(logits: np.ndarray) -> None:
    h = mhc.h_res(logits)
    assert (h >= 0).all()
    np.testing.assert_allclose(h.sum(axis=0), 1.0, atol=TOL)
    np.testing.assert_allclose(h.sum(axis=1), 1.0, atol=TOL)
    assert mhc.is_doubly_stochastic(h, TOL)
    ref = np.einsum("k,kij->ij", ref_softmax(logits), ref_permutations(h.shape[0]))
    np.testing.assert_allclose(h, ref, atol=1e-12)


@fast
@given(st.integers(1, 8), stream_counts, st.integers(0, 2**32 - 1))
def test_products_of_h_res_are_doubly_stochastic_with_unit_norm(depth: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = mhc.h_res(rng.uniform(-50.0, 50.0, (depth, math.factorial(n))))
    assert batch.shape == (depth, n, n)
    product = np.eye(n)
    for h in batch:
        product = mhc.matmul(product, h)
    assert mhc.is_doubly_stochastic(product, TOL)
    norm = mhc.spectral_norm(product)
    assert norm <= 1.0 + TOL
    assert norm == pytest.approx(np.linalg.norm(product, 2), abs=1e-9)


@fast
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_spectral_norm_matches_numpy(rows: int, cols: int, seed: int) -> None:
    m = np.random.default_rng(seed).normal(size=(rows, cols))
    assert mhc.spectral_norm(m) == pytest.approx(np.linalg.norm(m, 2), rel=1e-10)
    np.testing.assert_allclose(mhc.matmul(m, m.T), m @ m.T, atol=1e-12)


# --- dynamic maps ---


@fast
@given(random_params_and_streams())
def test_dynamic_maps_match_numpy_reference(case: tuple[mhc.MhcParams, np.ndarray]) -> None:
    params, streams = case
    maps = mhc.dynamic_maps(params, streams)
    ref_res, ref_pre, ref_post = ref_maps(params, streams)
    np.testing.assert_allclose(maps.h_res, ref_res, atol=1e-6)
    np.testing.assert_allclose(maps.h_pre, ref_pre, atol=1e-6)
    np.testing.assert_allclose(maps.h_post, ref_post, atol=1e-6)
    for h in maps.h_res:
        assert mhc.is_doubly_stochastic(h, TOL)
    # The single-token form agrees with the batch, and raw (W, alpha, b) triples work too.
    single = mhc.dynamic_maps(params, streams[0])
    np.testing.assert_array_equal(single.h_res, maps.h_res[0])
    triples = [(m.weight, m.alpha, m.bias) for m in (params.res, params.pre, params.post)]
    np.testing.assert_array_equal(mhc.dynamic_maps(triples, streams).h_post, maps.h_post)


@fast
@given(stream_counts, st.integers(1, 6), st.integers(0, 100), st.integers(0, 2**32 - 1))
def test_official_init(n: int, dim: int, layer: int, seed: int) -> None:
    params = mhc.init_params(n, dim, layer)
    home = layer % n
    assert not params.res.weight.any() and not params.pre.weight.any() and not params.post.weight.any()
    assert params.res.alpha == params.pre.alpha == params.post.alpha == 0.01
    assert params.res.bias[0] == 0.0 and (params.res.bias[1:] == -8.0).all()
    expected_gate_bias = np.where(np.arange(n) == home, 1.0, -1.0)
    np.testing.assert_array_equal(params.pre.bias, expected_gate_bias)
    np.testing.assert_array_equal(params.post.bias, expected_gate_bias)

    streams = np.random.default_rng(seed).normal(size=(3, n, dim))
    maps = mhc.dynamic_maps(params, streams)
    off_diagonal = maps.h_res[:, ~np.eye(n, dtype=bool)]
    # Each off-diagonal entry collects (n-1)! permutations of weight e^-8 / Z:
    # 3.4e-4 for n=2, 2.0e-3 for n=4 (so "< 1e-3" only holds for n=2).
    z = 1.0 + (math.factorial(n) - 1) * math.exp(-8.0)
    np.testing.assert_allclose(off_diagonal, math.factorial(n - 1) * math.exp(-8.0) / z, rtol=1e-12)
    assert off_diagonal.max() < (1e-3 if n == 2 else 2.1e-3)
    others = np.arange(n) != home
    assert (maps.h_pre[:, home, None] > maps.h_pre[:, others]).all()
    assert (maps.h_post[:, home, None] > maps.h_post[:, others]).all()


# --- stream plumbing and the residual update ---


def toy_sublayer(x: np.ndarray) -> np.ndarray:
    return np.tanh(x * np.arange(1, x.shape[-1] + 1)) + 0.1


@fast
@given(random_params_and_streams())
def test_plumbing_matches_numpy(case: tuple[mhc.MhcParams, np.ndarray]) -> None:
    params, streams = case
    n = params.n
    hidden = streams[:, 0, :]
    np.testing.assert_array_equal(mhc.expand(hidden, n), np.repeat(hidden[:, None, :], n, axis=1))
    np.testing.assert_allclose(mhc.collapse(streams), streams.sum(axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(mhc.expand(hidden[0], n), np.stack([hidden[0]] * n))

    maps = mhc.dynamic_maps(params, streams)
    f_in = mhc.pre_mix(maps.h_pre, streams)
    np.testing.assert_allclose(f_in, np.einsum("ti,tid->td", maps.h_pre, streams), rtol=1e-12, atol=1e-12)
    f_out = toy_sublayer(f_in)
    updated = mhc.post_update(maps.h_res, maps.h_post, streams, f_out)
    expected = np.einsum("tij,tjd->tid", maps.h_res, streams) + maps.h_post[:, :, None] * f_out[:, None, :]
    np.testing.assert_allclose(updated, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(mhc.residual_update(params, streams, toy_sublayer), updated, rtol=1e-12, atol=1e-9)


@fast
@given(random_params_and_streams())
def test_residual_path_preserves_stream_sum(case: tuple[mhc.MhcParams, np.ndarray]) -> None:
    params, streams = case
    updated = mhc.residual_update(params, streams, np.zeros_like)
    scale = np.abs(streams).max()
    np.testing.assert_allclose(mhc.collapse(updated), mhc.collapse(streams), atol=1e-12 * scale)


@fast
@given(stream_counts, arrays(np.float64, 4, elements=st.floats(0.1, 2.0)))
def test_copies_of_one_input_diverge_under_official_init(n: int, hidden: np.ndarray) -> None:
    streams = mhc.expand(hidden, n)
    for layer in range(3):
        streams = mhc.residual_update(mhc.init_params(n, hidden.size, layer), streams, toy_sublayer)
    gaps = [np.abs(streams[i] - streams[j]).sum() for i in range(n) for j in range(i + 1, n)]
    assert min(gaps) > 1e-3


def test_symmetric_gates_keep_streams_identical() -> None:
    """The failure mode the official init avoids: equal streams + symmetric gates stay equal."""
    n, dim = 4, 3
    init = mhc.init_params(n, dim, 0)
    symmetric = mhc.MapParams(init.pre.weight, init.pre.alpha, np.ones(n))
    params = mhc.MhcParams(n, dim, init.res, symmetric, symmetric)
    streams = mhc.expand(np.array([0.3, -1.2, 0.8]), n)
    for _ in range(3):
        streams = mhc.residual_update(params, streams, toy_sublayer)
    np.testing.assert_allclose(streams, np.broadcast_to(streams[0], streams.shape), atol=1e-12)


# --- bad input ---


def test_bad_inputs_raise_value_error() -> None:
    params = mhc.init_params(2, 3, 0)
    streams = np.ones((2, 2, 3))
    cases = [
        (lambda: mhc.permutations(3), "n=3"),
        (lambda: mhc.h_res(np.zeros(6)), "logits"),
        (lambda: mhc.h_res(np.array([0.0, np.nan])), "non-finite"),
        (lambda: mhc.h_res(np.zeros((2, 2, 2))), "1 or 2-D"),
        (lambda: mhc.init_params(3, 4, 0), "n=3"),
        (lambda: mhc.init_params(2, 0, 0), "must be positive"),
        (lambda: mhc.init_params(2, 4, -1), "layer_index"),
        (lambda: mhc.dynamic_maps(params, np.ones((2, 2, 4))), "expected (..., 2, 3)"),
        (lambda: mhc.dynamic_maps(params, np.full((2, 3), np.inf)), "non-finite"),
        (lambda: mhc.dynamic_maps(params, np.ones(6)), "2 or 3-D"),
        (lambda: mhc.dynamic_maps((params.res, params.pre), streams), "(res, pre, post)"),
        (lambda: mhc.dynamic_maps([(params.res.weight.T, 0.01, params.res.bias), params.pre, params.post], streams),
         "W_res: expected shape (6, 2)"),
        (lambda: mhc.dynamic_maps([params.res, (params.pre.weight, 0.01, np.zeros(3)), params.post], streams),
         "W_pre"),
        (lambda: mhc.dynamic_maps([params.res, params.pre, (params.post.weight, np.nan, params.post.bias)],
                                  streams), "alpha_post"),
        (lambda: mhc.dynamic_maps(
            [(np.full((6, 2), 1e308), 1e308, params.res.bias), params.pre, params.post], streams), "overflow"),
        (lambda: mhc.expand(np.ones((2, 3)), 5), "n=5"),
        (lambda: mhc.collapse(np.ones((2, 3, 3))), "n=3"),
        (lambda: mhc.collapse(np.ones((2, 2, 0))), "must be positive"),
        (lambda: mhc.pre_mix(np.ones((3, 2)), streams), "leading (token) axis"),
        (lambda: mhc.pre_mix(np.ones((2, 4)), streams), "h_pre"),
        (lambda: mhc.post_update(np.eye(2), np.ones(2), streams[0], np.ones(4)), "sub-layer output"),
        (lambda: mhc.post_update(np.eye(2), np.ones(2), streams[0], np.array([1.0, np.nan, 0.0])), "non-finite"),
        (lambda: mhc.residual_update(params, streams, lambda x: x[:, :2]), "sublayer output"),
        (lambda: mhc.is_doubly_stochastic(np.ones((2, 3)), 1e-6), "square"),
        (lambda: mhc.is_doubly_stochastic(np.eye(2), -1.0), "tolerance"),
        (lambda: mhc.spectral_norm(np.array([[np.inf]])), "non-finite"),
        (lambda: mhc.matmul(np.ones((2, 3)), np.ones((2, 3))), "incompatible shapes"),
        (lambda: mhc.h_res(["a", "b"]), "cannot convert"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert fragment in str(info.value), (fragment, str(info.value))


def test_is_doubly_stochastic_rejects_row_stochastic_and_negative() -> None:
    assert not mhc.is_doubly_stochastic(np.array([[0.3, 0.7], [0.3, 0.7]]))
    assert not mhc.is_doubly_stochastic(np.array([[1.5, -0.5], [-0.5, 1.5]]))
    assert mhc.is_doubly_stochastic(np.full((4, 4), 0.25))


def test_training_model_residual_maps() -> None:
    """QatModel.residual_maps: one H_res per sub-layer (2 per block, every loop of a LoopLM
    stack), each doubly stochastic; the first equals the numpy reference on the expanded
    embedding, and the composite (their product) keeps unit forward and backward gain."""
    import torch

    from nanochat_ternary.model_config import ModelConfig
    from nanochat_ternary.qat import QatModel

    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_seq_len=16)
    x = torch.tensor([[1, 5, 9, 33, 2, 7]])
    assert QatModel(ModelConfig.from_dict(base)).residual_maps(x) == []
    for n, loop in ((2, None), (4, {"loops": 2})):
        model = QatModel(ModelConfig.from_dict({**base, "mhc_streams": n, "loop": loop}), seed=n)
        params = model.named_parameters()
        with torch.no_grad():  # move the maps off their near-identity init
            g = torch.Generator().manual_seed(n)
            for name, p in params.items():
                if ".mhc_" in name and name.endswith(".weight"):
                    p.copy_(torch.randn(p.shape, generator=g))
                if ".mhc_" in name and name.endswith(".alpha"):
                    p.fill_(0.5)
        maps = model.residual_maps(x)
        assert len(maps) == 2 * 2 * (loop["loops"] if loop else 1)
        for m in maps:
            assert m.shape == (1, 6, n, n)
            assert all(mhc.is_doubly_stochastic(t) for t in m[0].double().numpy())
        res = lambda s: np.asarray(params[f"blocks.0.mhc_attn.res.{s}"].double().numpy())  # noqa: E731
        first = mhc.MapParams(res("weight"), float(res("alpha").reshape(())), res("bias"))
        pre = mhc.MapParams(np.zeros((n * 32, n)), 0.0, np.zeros(n))
        streams = mhc.expand(params["embed"].double().numpy()[x[0].numpy()], n)
        ref = mhc.dynamic_maps((first, pre, pre), streams).h_res
        np.testing.assert_allclose(maps[0][0].double().numpy(), ref, atol=1e-5)
        composite = maps[0][0].double()
        for m in maps[1:]:
            composite = m[0].double() @ composite
        np.testing.assert_allclose(composite.sum(-1).numpy(), 1.0, atol=1e-5)
        np.testing.assert_allclose(composite.sum(-2).numpy(), 1.0, atol=1e-5)
        assert float((composite - torch.eye(n, dtype=torch.float64)).abs().max()) > 1e-3
