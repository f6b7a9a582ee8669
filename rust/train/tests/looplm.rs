//! LoopLM in the trainer: the shared stack's parameters (plus the gate) are what the config
//! counts, the objective is Σ_t p(t)·CE_t − β·H(p) computed by hand from every loop's logits and
//! λ, training lowers it, and a run resumes bit for bit.
mod common;

use common::{batch, hyper, serial, MatmulPath};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use train::config::LoopConfig;
use train::{ModelConfig, Trainer, Transformer};

fn config(streams: usize, loops: usize, gate: bool, beta: f64) -> ModelConfig {
    ModelConfig {
        looping: Some(LoopConfig { loops, exit_gate: gate, entropy_weight: beta, exit_threshold: 1.0 }),
        ..common::small_config(64, streams, true)
    }
}

fn build(c: &ModelConfig) -> (VarStore, Transformer) {
    tch::manual_seed(5);
    let (vs, model) = Transformer::with_var_store(c, Device::Cpu).unwrap();
    // A gate that is not at its zero init, so λ differs per position and loop.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.starts_with("exit_gate.") {
                let _ = t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.5));
            }
        }
    });
    (vs, model)
}

#[test]
fn parameters_are_shared_across_loops() {
    let _serial = serial();
    for (streams, gate) in [(1, true), (2, false), (4, true)] {
        let c = config(streams, 3, gate, 0.0);
        let (vs, _) = build(&c);
        let numel: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(numel as u64, c.param_count());
        let plain = common::small_config(64, streams, true);
        assert_eq!(c.param_count(), plain.param_count() + if gate { 33 } else { 0 });
    }
}

#[test]
fn objective_is_the_expected_ce_minus_the_exit_entropy() {
    let _serial = serial();
    let _fp32 = MatmulPath::set("fp32");
    let (x, y) = batch(1, 2, 10);
    for beta in [0.0, 0.1] {
        let c = config(1, 3, true, beta);
        let (_vs, model) = build(&c);
        let (logits, lambdas) = model.loop_logits(&x).unwrap();
        assert_eq!((logits.len(), lambdas.len()), (3, 3));
        // By hand: per position p(t) from λ, CE_t from each loop's logits.
        let ces: Vec<Tensor> = logits
            .iter()
            .map(|l| l.reshape([-1, 64]).log_softmax(-1, Kind::Float).nll_loss_nd::<Tensor>(&y.reshape([-1]), None, tch::Reduction::None, -100))
            .collect();
        let mut survive = Tensor::ones([20], (Kind::Float, Device::Cpu));
        let mut expected = Tensor::zeros([20], (Kind::Float, Device::Cpu));
        let mut entropy = Tensor::zeros([20], (Kind::Float, Device::Cpu));
        let mut total_p = Tensor::zeros([20], (Kind::Float, Device::Cpu));
        for t in 0..3 {
            let p = if t == 2 { survive.copy() } else { lambdas[t].reshape([-1]) * &survive };
            if t < 2 {
                survive = &survive * (1.0 - lambdas[t].reshape([-1]));
            }
            expected += &p * &ces[t];
            entropy -= &p * p.log();
            total_p += &p;
        }
        assert!(total_p.allclose(&Tensor::ones([20], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
        let by_hand = (expected - entropy * beta).mean(Kind::Float).double_value(&[]);
        let out = model.loop_objective(&x, &y);
        let value = out.value.double_value(&[]);
        assert!((value - by_hand).abs() < 1e-5, "beta {beta}: {value} vs {by_hand}");
        // ce_last is the full-depth CE, which `loss` (the last loop's logits) reports too.
        let ce = out.ce_last.double_value(&[]);
        assert!((ce - model.loss(&x, &y).unwrap().double_value(&[])).abs() < 1e-6);
        assert!((ce - ces[2].mean(Kind::Float).double_value(&[])).abs() < 1e-6);
        let sum: f64 = out.exit_probs.iter().map(|p| p.double_value(&[])).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    // Without a gate the objective is the last loop's CE.
    let c = config(2, 2, false, 0.0);
    let (_vs, model) = build(&c);
    let out = model.loop_objective(&x, &y);
    assert_eq!(out.value.double_value(&[]), out.ce_last.double_value(&[]));
    assert!(out.exit_probs.is_empty());
}

#[test]
fn a_loop_model_trains_and_resumes_exactly() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("train-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let c = config(1, 3, true, 0.05);
    let batches: Vec<(Tensor, Tensor)> = (0..6).map(|i| batch(20 + i, 2, 12)).collect();
    let step = |t: &mut Trainer, i: usize| t.step(&[(batches[i].0.shallow_clone(), batches[i].1.shallow_clone())]).unwrap();

    let mut straight = Trainer::new(&c, hyper(), Device::Cpu).unwrap();
    let full: Vec<f64> = (0..6).map(|i| step(&mut straight, i).loss).collect();
    let mut first = Trainer::new(&c, hyper(), Device::Cpu).unwrap();
    let mut resumed: Vec<f64> = (0..3).map(|i| step(&mut first, i).loss).collect();
    first.save(&path, "{}").unwrap();
    let (mut second, _) = Trainer::load(&path, Device::Cpu).unwrap();
    assert_eq!(second.config(), &c);
    resumed.extend((3..6).map(|i| step(&mut second, i).loss));
    assert_eq!(full, resumed, "bit-equal losses after resume");

    // The gate is trained (Lion moves it off its zero init) and one batch is overfit.
    let gate = second.var_store().variables()["exit_gate.weight"].abs().sum(Kind::Float).double_value(&[]);
    assert!(gate > 0.0);
    let (x, y) = batch(99, 2, 12);
    let before = second.eval_loss(&x, &y).unwrap();
    for _ in 0..12 {
        second.step(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
    }
    let after = second.eval_loss(&x, &y).unwrap();
    assert!(after < before - 0.3, "{before} -> {after}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distilling_into_a_loop_model_is_a_clear_error() {
    let _serial = serial();
    let c = config(1, 2, true, 0.0);
    let mut trainer = Trainer::new(&c, hyper(), Device::Cpu).unwrap();
    let (vs, model) = Transformer::with_var_store(&common::small_config(64, 1, true), Device::Cpu).unwrap();
    let msg = trainer.set_teacher(train::Teacher::new(vs, model), 0.5, 1.0).unwrap_err().to_string();
    assert!(msg.contains("LoopLM"), "{msg}");
}
