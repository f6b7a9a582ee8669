//! The trainer: gradients with weights ternarized once per step equal the
//! plain STE gradients, accumulation, clipping, entropy regularization,
//! exact resume from a checkpoint and clear errors for bad checkpoints.
use std::collections::BTreeMap;

mod common;

use common::{batch, hyper, serial, MatmulPath};
use tch::{Device, Kind, Tensor};
use train::trainer::{clip_grad_norm, read_checkpoint_weights};
use train::{FfnActivation, ModelConfig, TrainHyper, Trainer};

fn config(streams: usize) -> ModelConfig {
    common::small_config(64, streams, true)
}

fn params(trainer: &Trainer) -> BTreeMap<String, Tensor> {
    trainer
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    a.iter()
        .map(|(n, t)| (t - &b[n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn prequantized_gradients_equal_the_plain_ste_gradients() {
    let _serial = serial();
    let _path = MatmulPath::set("fp32");
    for streams in [1, 2] {
        let trainer = Trainer::new(&config(streams), hyper(), Device::Cpu).unwrap();
        let (x, y) = batch(1, 3, 12);
        let got = trainer.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
        // The default path ternarizes inside every BitLinear call.
        trainer.model().loss(&x, &y).unwrap().backward();
        let vars = trainer.var_store().variables();
        let (muon, lion) = trainer.param_groups();
        assert_eq!(muon.len(), 2 * 7);
        assert!(lion.iter().any(|n| n == "embed") && lion.iter().any(|n| n.contains("mhc")) == (streams > 1));
        for (name, g) in muon.iter().chain(lion).zip(&got.grads) {
            // The plain path's weight value is w + (q(w) - w), within an ulp of
            // q(w): enough to move an activation across an int8 rounding
            // boundary now and then (1/127 of its token's max), so the two
            // agree to ~1e-3 relative, not to f32 rounding (seen: 2e-3 on a
            // CPU with AMX, where the f32 kernels sum in another order).
            let want = vars[name].grad();
            let (diff, norm) = ((g - &want).norm().double_value(&[]), want.norm().double_value(&[]));
            assert!(diff <= 2e-2 * norm + 1e-6, "{name}: |difference| {diff:e}, |gradient| {norm:e}");
        }
        let loss = trainer.model().loss(&x, &y).unwrap().double_value(&[]);
        assert!((got.ce - loss).abs() < 1e-4 && got.loss == got.ce && got.tokens == 36, "{} vs {loss}", got.ce);
    }
}

#[test]
fn int8_path_gradients_equal_the_f32_path_up_to_bf16() {
    // The default CPU path (int8 forward with the norms and SwiGLU fused into the quantization,
    // stacked q/k/v and gate/up projections, bf16 backward and LM head) against the fake-quant f32
    // path on the same weights and batch: both FFN activations, with and without mHC streams.
    let _serial = serial();
    for (activation, streams) in [(FfnActivation::Swiglu, 2), (FfnActivation::Swiglu, 1), (FfnActivation::Relu2, 1)] {
        let config = ModelConfig { ffn_activation: activation, ..config(streams) };
        let trainer = Trainer::new(&config, hyper(), Device::Cpu).unwrap();
        let (x, y) = batch(4, 3, 12);
        let run = |mode: &str| {
            let _path = MatmulPath::set(mode);
            trainer.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap()
        };
        let (int8, f32) = (run("int8"), run("fp32"));
        assert!((int8.ce - f32.ce).abs() < 1e-2 * f32.ce, "CE {} vs {}", int8.ce, f32.ce);
        let flat = |g: &[Tensor]| Tensor::cat(&g.iter().map(|t| t.flatten(0, -1)).collect::<Vec<_>>(), 0);
        let (a, b) = (flat(&int8.grads), flat(&f32.grads));
        let rel = (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]);
        // Measured 1.9 % (SwiGLU, 2 streams), 2.6 % (SwiGLU, 1 stream), 1.6 % (ReLU²), the same with
        // the unfused projections: bf16 rounding of q, k, v, the logits and the backward's g.
        assert!(rel > 0.0 && rel < 3e-2, "{activation:?}, {streams} streams: relative gradient difference {rel}");
        // Every parameter on its own (norm gains included: their gradients come from the fused backward).
        let (muon, lion) = trainer.param_groups();
        // (mHC's α gradients are zero at init on both paths: they scale x̂·W with W = 0; H_res's bias
        // gradients are float noise, ~1e-10, hence the floor relative to the whole gradient.)
        let floor = 1e-6 * b.norm().double_value(&[]);
        for (name, (a, b)) in muon.iter().chain(lion).zip(int8.grads.iter().zip(&f32.grads)) {
            let (norm, diff) = (b.norm().double_value(&[]), (a - b).norm().double_value(&[]));
            assert!(norm > 0.0 || name.ends_with("alpha"), "{name}: zero gradient");
            assert!(diff <= 0.1 * norm + floor, "{activation:?}, {streams} streams, {name}: |difference| {diff:e}, |gradient| {norm:e}");
        }
    }
    let trainer = Trainer::new(&config(1), hyper(), Device::Cpu).unwrap();
    let (x, y) = batch(4, 3, 12);
    let _bad = MatmulPath::set("int4");
    let err = trainer.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap_err().to_string();
    assert!(err.contains("NCT_QAT_MATMUL") && err.contains("fp32"), "{err}");
}

#[test]
fn two_half_micro_batches_equal_one_batch() {
    let _serial = serial();
    let _path = MatmulPath::set("fp32");
    let (x, y) = batch(2, 4, 10);
    let mut whole = Trainer::new(&config(2), hyper(), Device::Cpu).unwrap();
    let mut halves = Trainer::new(&config(2), hyper(), Device::Cpu).unwrap();
    assert_eq!(max_diff(&params(&whole), &params(&halves)), 0.0, "same seed, same init");
    for step in 0..2 {
        let a = whole.step(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
        let micro = [(x.narrow(0, 0, 2), y.narrow(0, 0, 2)), (x.narrow(0, 2, 2), y.narrow(0, 2, 2))];
        let b = halves.step(&micro).unwrap();
        assert!((a.loss - b.loss).abs() < 1e-5 && (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm);
        assert_eq!((a.tokens, b.tokens), (40, 40));
        if step == 0 {
            // One step: float rounding, amplified at most by bf16 Newton–Schulz
            // (later steps drift further once a weight at a ternary threshold flips).
            let diff = max_diff(&params(&whole), &params(&halves));
            assert!(diff < 1e-3, "max parameter difference {diff}");
        }
    }
}

#[test]
fn clipping_bounds_the_global_norm() {
    let _serial = serial();
    let mut grads = vec![Tensor::from_slice(&[3.0f32, 0.0]), Tensor::from_slice(&[4.0f32])];
    assert_eq!(clip_grad_norm(&mut grads, 10.0).unwrap(), 5.0);
    assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), vec![3.0, 0.0]);
    assert_eq!(clip_grad_norm(&mut grads, 1.0).unwrap(), 5.0);
    let after = clip_grad_norm(&mut grads, 0.0).unwrap();
    assert!((after - 1.0).abs() < 1e-5, "{after}");
    assert!((Vec::<f32>::try_from(&grads[1]).unwrap()[0] - 0.8).abs() < 1e-5);

    // In training, clipping changes how momentum weighs the steps.
    let (x, y) = batch(3, 2, 8);
    let run = |clip: f64| {
        let mut t = Trainer::new(&config(1), TrainHyper { clip, ..hyper() }, Device::Cpu).unwrap();
        let norms: Vec<f64> = (0..3)
            .map(|_| t.step(&[(x.shallow_clone(), y.shallow_clone())]).unwrap().grad_norm)
            .collect();
        (norms, params(&t))
    };
    let (norms, clipped) = run(1e-3);
    let (norms_free, free) = run(0.0);
    assert_eq!(norms[0], norms_free[0], "the reported norm is the pre-clip norm");
    assert!(norms[0] > 1e-3);
    assert!(max_diff(&clipped, &free) > 1e-4);
}

#[test]
fn entropy_regularization() {
    let _serial = serial();
    let (x, y) = batch(4, 2, 8);
    let trainer = Trainer::new(&config(1), TrainHyper { entropy_weight: 0.5, ..hyper() }, Device::Cpu).unwrap();
    let plain = Trainer::new(&config(1), hyper(), Device::Cpu).unwrap();
    let g = trainer.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
    let g0 = plain.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
    // Entropy by hand from the model's logits.
    let logits = tch::no_grad(|| trainer.model().forward(&x).unwrap());
    let p = logits.softmax(-1, Kind::Double);
    let h = (-(&p * p.log()).sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)).mean(Kind::Double);
    let h = h.double_value(&[]);
    assert!((g.entropy - h).abs() < 1e-5 && (g0.entropy - h).abs() < 1e-5, "{} {h}", g.entropy);
    assert!((g.loss - (g.ce - 0.5 * g.entropy)).abs() < 1e-5, "f32 objective");
    // The same CE: bit for bit on the f32 path; on the int8 path the plain
    // objective takes the fused CE kernel, equal to float rounding.
    assert!((g.ce - g0.ce).abs() <= 1e-6 * g0.ce, "{} vs {}", g.ce, g0.ce);
    assert!(h > 3.5 && h < 64f64.ln() + 1e-6, "near-uniform at init: {h}");
    // Large batches report the entropy of every k-th position (k = 2 here).
    let (bx, by) = batch(7, 40, 16);
    let sampled = plain.gradients(&[(bx.shallow_clone(), by)]).unwrap().entropy;
    let logits = tch::no_grad(|| plain.model().forward(&bx).unwrap()).reshape([-1, 64]);
    let p = logits.slice(0, 0, 640, 2).softmax(-1, Kind::Double);
    let by_hand = (-(&p * p.log()).sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)).mean(Kind::Double);
    assert!((sampled - by_hand.double_value(&[])).abs() < 1e-5, "{sampled}");
    // The entropy term changes the gradient of the head.
    let differs = g.grads.iter().zip(&g0.grads).any(|(a, b)| !a.allclose(b, 1e-6, 1e-9, false));
    assert!(differs);
}

#[test]
fn interrupted_and_resumed_run_reproduces_the_losses_exactly() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("train-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let batches: Vec<(Tensor, Tensor)> = (0..6).map(|i| batch(10 + i, 2, 12)).collect();
    let step = |t: &mut Trainer, i: usize| t.step(&[(batches[i].0.shallow_clone(), batches[i].1.shallow_clone())]).unwrap();

    let mut straight = Trainer::new(&config(2), hyper(), Device::Cpu).unwrap();
    let full: Vec<f64> = (0..6).map(|i| step(&mut straight, i).loss).collect();

    let mut first = Trainer::new(&config(2), hyper(), Device::Cpu).unwrap();
    let mut resumed_losses: Vec<f64> = (0..3).map(|i| step(&mut first, i).loss).collect();
    first.save(&path, r#"{"position": 3}"#).unwrap();
    drop(first);
    let (mut resumed, data_state) = Trainer::load(&path, Device::Cpu).unwrap();
    assert_eq!(data_state, r#"{"position": 3}"#);
    assert_eq!(resumed.step_count(), 3);
    resumed_losses.extend((3..6).map(|i| step(&mut resumed, i).loss));
    assert_eq!(full, resumed_losses, "bit-equal losses after resume");
    assert_eq!(max_diff(&params(&straight), &params(&resumed)), 0.0);

    // The weights alone, for export.
    let (cfg, weights) = read_checkpoint_weights(&path).unwrap();
    assert_eq!(cfg, config(2));
    assert_eq!(weights.len(), resumed.var_store().variables().len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_and_foreign_checkpoints_are_clear_errors() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("train-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let trainer = Trainer::new(&config(1), hyper(), Device::Cpu).unwrap();
    trainer.save(&path, "{}").unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let err = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Trainer::load(&path, Device::Cpu).unwrap_err().to_string()
    };
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    assert!(err(&flipped).contains("corrupt"), "{}", err(&flipped));
    let truncated = err(&bytes[..bytes.len() / 2]);
    assert!(truncated.contains("safetensors") || truncated.contains("checkpoint"), "{truncated}");
    let missing = Trainer::load(&dir.join("nope.safetensors"), Device::Cpu).unwrap_err().to_string();
    assert!(missing.contains("nope.safetensors"), "{missing}");
    // A valid checkpoint without trainer state.
    ternary::checkpoint::save(&path, &ternary::checkpoint::Checkpoint::default()).unwrap();
    let foreign = Trainer::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(foreign.contains("not a trainer checkpoint"), "{foreign}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_hyper_parameters_and_batches_are_clear_errors() {
    let _serial = serial();
    let msg = |h: TrainHyper| Trainer::new(&config(1), h, Device::Cpu).unwrap_err().to_string();
    assert!(msg(TrainHyper { lr_muon: -1.0, ..hyper() }).contains("lr_muon"));
    assert!(msg(TrainHyper { lr_lion: f64::NAN, ..hyper() }).contains("lr_lion"));
    assert!(msg(TrainHyper { warmup: 30, ..hyper() }).contains("exceed total_steps"));
    assert!(msg(TrainHyper { decay_frac: 1.5, ..hyper() }).contains("decay_frac"));
    assert!(msg(TrainHyper { total_steps: 0, ..hyper() }).contains("total_steps"));
    assert!(msg(TrainHyper { clip: -1.0, ..hyper() }).contains("clip"));
    assert!(TrainHyper::from_json(r#"{"lr_muonn": 1}"#).unwrap_err().to_string().contains("lr_muonn"));

    let mut trainer = Trainer::new(&config(1), hyper(), Device::Cpu).unwrap();
    assert!(trainer.step(&[]).unwrap_err().to_string().contains("at least one"));
    let (x, y) = batch(5, 2, 8);
    let too_long = Tensor::zeros([1, 17], (Kind::Int64, Device::Cpu));
    let e = trainer.step(&[(too_long.shallow_clone(), too_long)]).unwrap_err().to_string();
    assert!(e.contains("max_seq_len"), "{e}");
    let e = trainer.step(&[(x.shallow_clone(), y.narrow(1, 0, 4))]).unwrap_err().to_string();
    assert!(e.contains("differs"), "{e}");
    assert_eq!(trainer.step_count(), 0, "failed steps change nothing");
}

#[test]
fn trainer_overfits_one_batch_and_follows_the_schedule() {
    let _serial = serial();
    let h = TrainHyper {
        total_steps: 80,
        warmup: 4,
        decay_frac: 0.1,
        lr_lion: 3e-3,
        ..TrainHyper::default()
    };
    let mut trainer = Trainer::new(&config(1), h, Device::Cpu).unwrap();
    let (x, y) = batch(6, 4, 16);
    let metrics: Vec<_> = (0..80).map(|_| trainer.step(&[(x.shallow_clone(), y.shallow_clone())]).unwrap()).collect();
    assert!((metrics[0].lr_muon - 0.02 / 4.0).abs() < 1e-12);
    assert_eq!(metrics[10].lr_lion, 3e-3);
    assert!(metrics[79].lr_muon.abs() < 1e-12, "decays to the floor");
    let (first, last) = (metrics[0].ce, metrics[79].ce);
    assert!(last < 0.1 * first, "loss only fell from {first} to {last}");
}
