//! Distillation and the data-parallel seam of the trainer: α = 1 with a
//! teacher is plain CE training bit for bit, a teacher of another vocabulary
//! is refused, the loss matches its formula, and averaging the gradients of
//! two half batches then applying them equals one step over both halves.

mod common;

use common::{batch, hyper, serial};
use tch::{Device, Tensor};
use train::distill::distill_loss;
use train::trainer::Gradients;
use train::{ModelConfig, Teacher, Trainer, Transformer};

fn config(vocab: usize, ternary: bool) -> ModelConfig {
    common::small_config(vocab, 1, ternary)
}

fn teacher(vocab: usize, seed: i64) -> Teacher {
    tch::manual_seed(seed);
    let (vs, model) = Transformer::with_var_store(&config(vocab, false), Device::Cpu).unwrap();
    Teacher::new(vs, model)
}

fn weights(trainer: &Trainer) -> Vec<(String, Tensor)> {
    let mut vars: Vec<_> = trainer.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

fn same_weights(a: &Trainer, b: &Trainer) -> bool {
    weights(a).iter().zip(weights(b)).all(|((n, x), (m, y))| *n == m && x.equal(&y))
}

#[test]
fn alpha_one_with_a_teacher_is_plain_training_bit_for_bit() {
    let _serial = serial();
    let mut plain = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    let mut distilled = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    distilled.set_teacher(teacher(64, 7), 1.0, 2.0).unwrap();
    for step in 0..3 {
        let (x, y) = batch(step, 4, 12);
        let a = plain.step(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
        let b = distilled.step(&[(x, y)]).unwrap();
        assert_eq!((a.loss, a.ce, a.grad_norm), (b.loss, b.ce, b.grad_norm));
        assert!(a.kl.is_none() && b.kl.unwrap() > 0.0);
    }
    assert!(same_weights(&plain, &distilled));
}

#[test]
fn distillation_changes_the_objective_by_its_formula() {
    let _serial = serial();
    let mut trainer = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    trainer.set_teacher(teacher(64, 3), 0.25, 2.0).unwrap();
    let (x, y) = batch(5, 3, 10);
    let m = trainer.step(&[(x, y)]).unwrap();
    let kl = m.kl.unwrap();
    let expected = 0.25 * m.ce + 0.75 * 4.0 * kl;
    assert!((m.loss - expected).abs() < 1e-5 * expected.abs(), "{} vs {expected}", m.loss);

    // The reference function on hand-made logits: identical logits have KL 0.
    let s = Tensor::from_slice(&[1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0]).reshape([1, 2, 3]);
    let t = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 1.0, 1.0, 1.0]).reshape([1, 2, 3]);
    let targets = Tensor::from_slice(&[2i64, 0]).reshape([1, 2]);
    let (_, _, zero) = distill_loss(&s, &s, &targets, 0.5, 3.0).unwrap();
    assert!(zero.double_value(&[]).abs() < 1e-7);
    let (obj, ce, kl) = distill_loss(&s, &t, &targets, 0.5, 3.0).unwrap();
    let (obj, ce, kl) = (obj.double_value(&[]), ce.double_value(&[]), kl.double_value(&[]));
    assert!(kl > 0.0 && (obj - (0.5 * ce + 0.5 * 9.0 * kl)).abs() < 1e-5);
    assert!(distill_loss(&s, &t, &targets, 1.5, 1.0).unwrap_err().to_string().contains("distill_alpha"));
}

#[test]
fn a_teacher_of_another_vocabulary_is_refused() {
    let _serial = serial();
    let mut trainer = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    let err = trainer.set_teacher(teacher(96, 1), 0.5, 2.0).unwrap_err().to_string();
    assert!(err.contains("vocab_size is 96") && err.contains("same tokenizer"), "{err}");
    assert!(trainer.teacher().is_none());
    let mut bad = |alpha, temperature| trainer.set_teacher(teacher(64, 1), alpha, temperature).unwrap_err().to_string();
    assert!(bad(-0.1, 2.0).contains("distill_alpha"));
    assert!(bad(0.5, 0.0).contains("distill_temperature"));
    assert!(trainer.teacher().is_none());
}

#[test]
fn averaged_half_batch_gradients_equal_one_accumulated_step() {
    let _serial = serial();
    // What two data-parallel ranks do (each its half, gradients summed and
    // halved) against one process accumulating both halves: bit for bit,
    // because scaling by 1/2 is exact in floating point.
    let mut single = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    let mut parallel = Trainer::new(&config(64, true), hyper(), Device::Cpu).unwrap();
    for step in 0..3 {
        let (x, y) = batch(10 + step, 4, 12);
        let halves = [
            (x.narrow(0, 0, 2).contiguous(), y.narrow(0, 0, 2).contiguous()),
            (x.narrow(0, 2, 2).contiguous(), y.narrow(0, 2, 2).contiguous()),
        ];
        let a = single.step(&halves).unwrap();
        let g0 = parallel.gradients(&halves[..1]).unwrap();
        let g1 = parallel.gradients(&halves[1..]).unwrap();
        let grads = g0.grads.iter().zip(&g1.grads).map(|(p, q)| (p * 0.5) + (q * 0.5)).collect();
        let b = parallel
            .apply_gradients(Gradients {
                grads,
                loss: 0.5 * g0.loss + 0.5 * g1.loss,
                ce: 0.5 * g0.ce + 0.5 * g1.ce,
                entropy: 0.5 * g0.entropy + 0.5 * g1.entropy,
                tokens: g0.tokens + g1.tokens,
                kl: None,
            })
            .unwrap();
        assert_eq!((a.loss, a.grad_norm, a.tokens), (b.loss, b.grad_norm, b.tokens));
        assert!(same_weights(&single, &parallel), "step {step}");
    }
    let short = parallel.gradients(&[batch(1, 2, 4)]).unwrap();
    let err = parallel
        .apply_gradients(Gradients { grads: short.grads.iter().skip(1).map(Tensor::shallow_clone).collect(), ..short })
        .unwrap_err()
        .to_string();
    assert!(err.contains("gradients"), "{err}");
}
