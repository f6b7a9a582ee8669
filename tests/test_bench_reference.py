"""The plain-PyTorch reference of `benchmarks/bench_train.py` computes exactly
what the Rust QAT model and trainer compute: same parameter names and shapes,
same logits and loss for the same weights, same weights after optimizer
steps. Otherwise the benchmark would compare different work."""

import os
import subprocess
import sys

import pytest
import torch

from nanochat_ternary.model_config import ModelConfig
from nanochat_ternary.qat import QatModel

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)

from reference_model import ReferenceModel, Wsd, is_projection  # noqa: E402


def small(**overrides):
    values = dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=40, max_seq_len=16)
    values.update(overrides)
    return ModelConfig(**values)


CONFIGS = {
    "plain-gqa": small(),
    "mhc2-relu2-untied": small(mhc_streams=2, ffn_activation="relu2", tie_embeddings=False),
    "mhc4": small(mhc_streams=4, n_kv_heads=4),
}


@pytest.fixture(autouse=True)
def one_thread():
    # Fixed single-threaded reductions keep both sides' float sums comparable
    # and leave the shared cores to others.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomize_mhc(params: dict[str, torch.Tensor], seed: int = 0) -> None:
    """The official mHC init has W = 0; random maps make every path count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in params.items():
            if ".mhc_" in name and name.endswith(".weight"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def reference_like(config: ModelConfig, params: dict[str, torch.Tensor]) -> ReferenceModel:
    ref = ReferenceModel(config)
    ref.load_state_dict({k: v.detach().clone() for k, v in params.items()}, strict=True)
    return ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_and_init_distribution(name):
    config = CONFIGS[name]
    ours = QatModel(config, seed=1).named_parameters()
    torch.manual_seed(1)
    ref = dict(ReferenceModel(config).named_parameters())
    assert {k: tuple(v.shape) for k, v in ref.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert sum(p.numel() for p in ref.values()) == config.param_count
    for key, theirs in ours.items():
        mine = ref[key].detach()
        if ".mhc_" in key or key.endswith(".gain"):
            # Deterministic inits (ones, the official mHC init): identical.
            torch.testing.assert_close(mine, theirs, atol=0, rtol=0, msg=key)
        else:
            # Random inits: same std to within sampling error.
            assert abs(mine.std().item() / theirs.std().item() - 1) < 0.15, key
    projections = sorted(k for k in ours if is_projection(k))
    assert len(projections) == config.n_layers * (7 if config.ffn_activation == "swiglu" else 6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_loss_equal_the_rust_model(name):
    config = CONFIGS[name]
    model = QatModel(config, seed=3)
    params = model.named_parameters()
    randomize_mhc(params)
    ref = reference_like(config, params)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (3, 12), generator=gen)
    targets = torch.randint(0, config.vocab_size, (3, 12), generator=gen)
    with torch.no_grad():
        logits = ref(tokens)
        loss = ref.loss(tokens, targets).item()
    torch.testing.assert_close(logits, model.forward(tokens), atol=1e-5, rtol=1e-5)
    assert abs(loss - model.loss(tokens, targets)) < 1e-5
    # Not vacuous: a different weight changes the reference's logits.
    with torch.no_grad():
        ref.blocks[0].attn.wq.mul_(-1)
        assert not torch.allclose(ref(tokens), logits, atol=1e-3)


def test_wsd_schedule_values():
    # The values of the Rust `wsd_values` test (rust/train/src/optim.rs).
    s = Wsd(1.0, 0.1, 100, 10, 0.2)
    assert s.decay == 20
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(4) == pytest.approx(0.5)
    assert s.lr(9) == s.lr(10) == s.lr(79) == 1.0
    assert s.lr(80) == pytest.approx(0.1 + 0.9 * 0.95)
    assert s.lr(89) == pytest.approx(0.55)
    assert s.lr(99) == pytest.approx(0.1) == s.lr(500)
    c = Wsd(1.0, 0.0, 100, 0, 0.2, cosine=True)
    assert c.lr(0) == 1.0 and c.lr(89) == pytest.approx(0.5) and c.lr(99) == pytest.approx(0.0)
    # Rust rounds half away from zero: 0.5 · 5 = 2.5 -> 3 decay steps.
    assert Wsd(1.0, 0.0, 5, 0, 0.5).decay == 3


def make_batches(config: ModelConfig, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two micro-batches of different sizes, so token weighting matters."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for rows in (2, 1):
        ids = torch.randint(0, config.vocab_size, (rows, 13), generator=gen)
        batches.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return batches


def relative_change_error(theirs: torch.Tensor, ours: torch.Tensor, before: torch.Tensor) -> float:
    """‖Δ_reference − Δ_ours‖ / ‖Δ_ours‖ of one parameter's update."""
    return ((theirs - before) - (ours - before)).norm().item() / (ours - before).norm().item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_steps_equal_the_rust_trainer(name, monkeypatch):
    import json

    # The reference is the f32 fake-quant math; the trainer's default CPU
    # path (int8 forward, bf16 backward: rust/train/src/cpu_bitlinear.rs)
    # equals it up to bf16 rounding of the gradients, which Lion's sign()
    # and bf16 Newton-Schulz amplify past these tolerances. That path is
    # checked against the f32 math in its own tests and by the quality guard.
    monkeypatch.setenv("NCT_QAT_MATMUL", "fp32")

    from nanochat_ternary import _core
    from reference_model import ReferenceTrainer, TrainHyper, newton_schulz_dtype

    config = CONFIGS[name]
    hyper = dict(json.loads(_core.train_default_hyper()), total_steps=20, warmup=2, weight_decay=0.1, clip=0.5, seed=5)
    ours = _core.QatTrainer(config.to_json(), json.dumps(hyper), "cpu")
    params = dict(ours.named_parameters())
    randomize_mhc(params)
    ref_model = reference_like(config, params)
    theirs = ReferenceTrainer(ref_model, TrainHyper(**hyper))
    muon_names, lion_names = ours.param_groups()
    assert sorted(muon_names) == sorted(n for n in params if is_projection(n))
    assert sorted(lion_names) == sorted(n for n in params if not is_projection(n))
    # Two H_res maps have an exactly zero gradient, so what each side computes
    # for them is float noise that Lion's sign() turns into ±lr steps: the
    # first one mixes identical copies of the embedding (any doubly
    # stochastic H maps equal streams to themselves), and the last one feeds
    # collapse, a sum over streams (Σ_i (H·x)_i = Σ_j x_j).
    zero_grad_maps = ("blocks.0.mhc_attn.res", f"blocks.{config.n_layers - 1}.mhc_mlp.res")
    noise_driven = {f"{m}.{p}" for m in zero_grad_maps for p in ("weight", "bias", "alpha")}
    # Newton–Schulz runs in bf16 on CPUs with AVX512-BF16 (both sides pick
    # the same precision): bf16 rounding turns 1e-7 gradient differences into
    # percent-level differences of the Muon update, and those feed the next
    # step. In f32 everything agrees to float rounding.
    bf16 = newton_schulz_dtype("cpu") == torch.bfloat16
    for step in range(2):
        before = {k: v.detach().clone() for k, v in ours.named_parameters()}
        batches = make_batches(config, seed=step)
        metrics = ours.step(batches)
        loss = theirs.step(batches)
        assert abs(metrics["loss"] - loss) < (1e-4 if bf16 and step else 1e-5), step
        assert metrics["lr_muon"] == pytest.approx(hyper["lr_muon"] * theirs.schedule.lr(step))
        assert metrics["lr_lion"] == pytest.approx(hyper["lr_lion"] * theirs.schedule.lr(step))
        # The clip is active (grad norm above 0.5), so clipping is compared too.
        assert metrics["grad_norm"] > hyper["clip"]
        ref_params = dict(ref_model.named_parameters())
        for key, value in ours.named_parameters():
            mine, msg = ref_params[key].detach(), f"{key} step {step}"
            assert not torch.equal(value, before[key]), f"{msg}: not updated"
            if key in noise_driven:
                assert (mine - value).abs().max() <= 2 * (step + 1) * hyper["lr_lion"] * 1.01, msg
            elif not bf16:
                torch.testing.assert_close(mine, value, atol=2e-6, rtol=1e-5, msg=msg)
            elif step == 0 and not is_projection(key):
                # Same weights, same gradients: Lion's update is exact.
                torch.testing.assert_close(mine, value, atol=2e-6, rtol=1e-5, msg=msg)
            elif is_projection(key):
                # A missing shape scale (≥ 18%) or Nesterov term would exceed this.
                limit = 0.05 if step == 0 else 0.12
                assert relative_change_error(mine, value, before[key]) < limit, msg
            else:
                # Lion moves each element by ±lr: after bf16-perturbed weights a
                # few near-zero gradients flip sign, nothing more.
                flipped = ((mine - value).abs() > 0.5 * metrics["lr_lion"]).float().mean().item()
                assert flipped <= 0.01, f"{msg}: {flipped:.1%} of the Lion steps differ"


def test_bench_train_runs_both_implementations_end_to_end():
    """The benchmark CLI on a minimal workload: each worker (ours, the eager
    reference and its bf16-autocast variant) runs in its own subprocess,
    trains on the same data from the same init distribution, and the table
    reports each and ours against each."""
    script = os.path.join(BENCH_DIR, "bench_train.py")
    args = ["--configs", "tiny", "--steps", "2", "--warmup", "1", "--batch", "1", "--seq", "8", "--threads", "1"]
    impls = ["reference", "bf16-autocast", "ours"]  # torch.compile: minutes of compiling, run by hand
    proc = subprocess.run(
        [sys.executable, script, *args, "--impls", ",".join(impls)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("tiny ")]
    assert [r[3] for r in rows] == impls, proc.stdout
    for r in rows:
        tokens_per_s, peak_mb, train_mb = float(r[4]), float(r[6]), float(r[7])
        assert tokens_per_s > 0 and peak_mb > train_mb > 0, r
    # Same init distribution and data: the first losses agree to sampling noise.
    first = [float(r[8].split("->")[0]) for r in rows]
    assert abs(first[0] - first[1]) < 0.2, first
    assert "ratio ours/reference: speed" in proc.stdout and "vs bf16-autocast: " in proc.stdout
    assert "vs torch.compile" not in proc.stdout
    bad = subprocess.run([sys.executable, script, "--configs", "huge"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown config 'huge'" in bad.stderr
    bad = subprocess.run([sys.executable, script, "--impls", "ours,eager"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--impls: unknown ['eager']" in bad.stderr


def test_bench_muon_compares_both_newton_schulz_forms():
    """benchmarks/bench_muon.py on the tiny preset: both forms timed in one run, the fused one (what the
    trainer runs) no farther from the f64 iteration than the textbook one."""
    script = os.path.join(BENCH_DIR, "bench_muon.py")
    proc = subprocess.run([sys.executable, script, "--config", "tiny", "--repeats", "1"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = {line.split()[0]: float(line.split()[-1]) for line in proc.stdout.splitlines()
            if line.startswith(("textbook", "fused"))}  # fmt: skip
    assert set(dist) == {"textbook", "fused"} and 0 < dist["fused"] <= dist["textbook"] + 1e-5 < 0.1, proc.stdout
    assert "ratio fused/textbook: time " in proc.stdout
