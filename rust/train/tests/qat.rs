//! End-to-end checks of quantization-aware training on small models: mHC
//! streams diverge and H_res learns, and a tiny model overfits one batch.
use std::sync::{Mutex, MutexGuard};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use train::optim::{Lion, Muon};
use train::{FfnActivation, ModelConfig, Transformer};

/// libtorch's RNG is global: tests that seed it must not interleave, or each
/// one's "seeded" init depends on what ran beside it.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config(streams: usize) -> ModelConfig {
    ModelConfig {
        name: "test".into(),
        vocab_size: 64,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 64,
        ffn_activation: FfnActivation::Swiglu,
        max_seq_len: 16,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
        mhc_streams: streams,
        ternary: true,
        looping: None,
    }
}

/// Also pins libtorch to one thread: cargo runs tests in parallel on a
/// shared 2-core machine, and oversubscribed OpenMP workers spin-wait, which
/// measured 30x slower than one thread per test.
fn batch(seed: i64, b: i64, t: i64, vocab: i64) -> (Tensor, Tensor) {
    tch::set_num_threads(1);
    tch::manual_seed(seed);
    let seq = Tensor::randint(vocab, [b, t + 1], (Kind::Int64, Device::Cpu));
    (seq.narrow(1, 0, t), seq.narrow(1, 1, t))
}

fn var(vs: &VarStore, name: &str) -> Tensor {
    vs.variables()
        .remove(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// In f64 the gradients that vanish by symmetry come out ~1e-18 instead of
/// f32 rounding noise (~1e-10), far from the real ones (~1e-7 at init).
fn f64_model(streams: usize) -> (VarStore, Transformer) {
    tch::manual_seed(0);
    let (mut vs, model) = Transformer::with_var_store(&config(streams), Device::Cpu).unwrap();
    vs.double();
    (vs, model)
}

/// Largest |stream_i - stream_0| over the residual state after block 0.
fn stream_spread(model: &Transformer, tokens: &Tensor) -> f64 {
    let state = &model.block_states(tokens).unwrap()[0]; // (B, T, n, C)
    let n = state.size()[2];
    let first = state.narrow(2, 0, 1);
    (state.narrow(2, 1, n - 1) - first).abs().max().double_value(&[])
}

/// `connection` is e.g. "blocks.0.mhc_mlp".
fn res_grad_norm(vs: &VarStore, connection: &str) -> f64 {
    let w = var(vs, &format!("{connection}.res.weight"));
    let b = var(vs, &format!("{connection}.res.bias"));
    w.grad().norm().double_value(&[]) + b.grad().norm().double_value(&[])
}

#[test]
fn mhc_streams_diverge_and_h_res_learns() {
    let _serial = serial();
    for n in [2, 4] {
        let (vs, model) = f64_model(n);
        let (x, y) = batch(1, 2, 12, 64);
        assert!(stream_spread(&model, &x) > 1e-3, "n={n}: streams stayed equal");
        model.loss(&x, &y).unwrap().backward();
        // Two connections have no H_res gradient by construction: the first
        // sees n identical copies of the embedding (any doubly stochastic H_res
        // maps equal streams to themselves), and the last feeds the collapse,
        // which sums the streams (1ᵀ·H_res = 1ᵀ since columns sum to 1). Every
        // connection in between must learn. Gradients are small at init because
        // H_res ≈ I puts weight e^-8 on the other permutations.
        for dead in ["blocks.0.mhc_attn", "blocks.1.mhc_mlp"] {
            let g = res_grad_norm(&vs, dead);
            println!("n={n} {dead}: |grad H_res| = {g:e}");
            assert!(g < 1e-14, "n={n}: {dead} has H_res gradient {g:e}");
        }
        for connection in ["blocks.0.mhc_mlp", "blocks.1.mhc_attn"] {
            let g = res_grad_norm(&vs, connection);
            println!("n={n} {connection}: |grad H_res| = {g:e}");
            assert!(g > 1e-9, "n={n}: H_res gradient {g:e} in {connection}");
        }
        let bias = var(&vs, "blocks.1.mhc_attn.res.bias");
        let before = bias.detach().copy();
        let mut lion = Lion::new(vs.trainable_variables(), 1e-3, 0.0);
        for _ in 0..3 {
            lion.zero_grad();
            model.loss(&x, &y).unwrap().backward();
            lion.step();
        }
        let moved = (bias.detach() - before).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "n={n}: H_res bias did not move ({moved})");
    }
}

/// The failure mode the official init avoids: with symmetric gate biases the
/// copies of the embedding stay equal and H_res gets no gradient. This shows
/// the checks above can fail.
#[test]
fn symmetric_init_is_degenerate() {
    let _serial = serial();
    let (vs, model) = f64_model(2);
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.contains(".pre.bias") || name.contains(".post.bias") {
                let _ = t.shallow_clone().fill_(1.0);
            }
        }
    });
    let (x, y) = batch(1, 2, 12, 64);
    let spread = stream_spread(&model, &x);
    println!("symmetric: stream spread {spread:e}");
    assert!(spread < 1e-6);
    model.loss(&x, &y).unwrap().backward();
    for connection in ["blocks.0.mhc_mlp", "blocks.1.mhc_attn"] {
        let g = res_grad_norm(&vs, connection);
        println!("symmetric: {connection} |grad H_res| = {g:e}");
        assert!(g < 1e-14, "{connection}: {g:e}");
    }
}

/// Muon for the 2-D block matrices, Lion for embeddings, norms and mHC.
fn overfit(streams: usize, steps: usize) -> (f64, f64) {
    tch::manual_seed(0);
    let (vs, model) = Transformer::with_var_store(&config(streams), Device::Cpu).unwrap();
    let (mut hidden, mut rest) = (Vec::new(), Vec::new());
    for (name, t) in vs.variables() {
        let is_block_matrix = name.starts_with("blocks.") && t.dim() == 2 && !name.contains(".mhc_");
        if is_block_matrix {
            hidden.push(t)
        } else {
            rest.push(t)
        }
    }
    let mut muon = Muon::new(hidden, 0.02, 0.0).unwrap();
    let mut lion = Lion::new(rest, 3e-3, 0.0);
    let (x, y) = batch(2, 4, 16, 64);
    let mut losses = Vec::new();
    for _ in 0..steps {
        muon.zero_grad();
        lion.zero_grad();
        let loss = model.loss(&x, &y).unwrap();
        loss.backward();
        muon.step().unwrap();
        lion.step();
        losses.push(loss.double_value(&[]));
    }
    (losses[0], *losses.last().unwrap())
}

#[test]
fn tiny_model_overfits_one_batch() {
    let _serial = serial();
    for streams in [1, 2] {
        let (first, last) = overfit(streams, 80);
        println!("streams {streams}: loss {first:.3} -> {last:.3}");
        assert!(
            last < 0.1 * first,
            "streams {streams}: loss only fell from {first} to {last}"
        );
    }
}
