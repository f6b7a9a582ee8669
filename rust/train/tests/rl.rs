//! The RL policy-gradient update (`train::rl`): with advantage 1 on every
//! token it is the CE gradient (the PG loss is then −mean log π = CE); zero
//! advantages give zero policy gradient; the advantage scales the gradient
//! linearly; the mask selects tokens; KL to an identical reference is 0 with
//! zero gradient; bad input is refused before anything changes.

mod common;

use common::{batch, hyper, serial};
use tch::{Device, Kind, Tensor};
use train::rl::{policy_gradients, rl_step, RlBatch};
use train::{Teacher, Trainer, Transformer};

fn trainer() -> Trainer {
    Trainer::new(&common::small_config(64, 1, true), hyper(), Device::Cpu).unwrap()
}

fn rl_batch(x: &Tensor, y: &Tensor, mask: Tensor, adv: &[f32]) -> RlBatch {
    RlBatch {
        tokens: x.shallow_clone(),
        targets: y.shallow_clone(),
        mask,
        advantages: Tensor::from_slice(adv),
    }
}

/// Largest ‖a − b‖ / ‖b‖ over the parameters. The CPU BitLinear backward runs in bf16, so
/// gradients that are equal in exact arithmetic (3·g vs the gradient of 3·loss) differ by bf16
/// roundings (~1e-3 relative).
fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).norm().double_value(&[]) / (y.norm().double_value(&[]) + 1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn unit_advantage_on_every_token_is_the_ce_gradient() {
    let _serial = serial();
    let t = trainer();
    let (x, y) = batch(1, 3, 10);
    let ce = t.gradients(&[(x.shallow_clone(), y.shallow_clone())]).unwrap();
    let ones = Tensor::ones([3, 10], (Kind::Float, Device::Cpu));
    let (pg, kl, entropy, logprob, tokens) =
        policy_gradients(&t, &[rl_batch(&x, &y, ones, &[1.0, 1.0, 1.0])], None, 0.0).unwrap();
    assert_eq!(tokens, 30);
    assert!((pg.loss - ce.ce).abs() < 1e-5 * ce.ce, "{} vs {}", pg.loss, ce.ce);
    assert!((-logprob - ce.ce).abs() < 1e-5 * ce.ce);
    assert!(kl == 0.0 && entropy > 0.0);
    let diff = max_rel_diff(&pg.grads, &ce.grads);
    assert!(diff < 1e-3, "relative gradient difference {diff}");
}

#[test]
fn advantages_scale_and_mask_select() {
    let _serial = serial();
    let t = trainer();
    let (x, y) = batch(2, 2, 8);
    let ones = || Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
    let zero = policy_gradients(&t, &[rl_batch(&x, &y, ones(), &[0.0, 0.0])], None, 0.0).unwrap().0;
    assert!(zero.grads.iter().all(|g| g.abs().max().double_value(&[]) == 0.0));
    let one = policy_gradients(&t, &[rl_batch(&x, &y, ones(), &[1.0, -0.5])], None, 0.0).unwrap().0;
    let three = policy_gradients(&t, &[rl_batch(&x, &y, ones(), &[3.0, -1.5])], None, 0.0).unwrap().0;
    let tripled: Vec<Tensor> = one.grads.iter().map(|g| g * 3.0).collect();
    let diff = max_rel_diff(&three.grads, &tripled);
    assert!(diff < 1e-2, "tripled advantages: relative gradient difference {diff}");
    // Row 1 masked out entirely: the same as a batch of row 0 alone.
    let mask = Tensor::cat(&[Tensor::ones([1, 8], (Kind::Float, Device::Cpu)), Tensor::zeros([1, 8], (Kind::Float, Device::Cpu))], 0);
    let masked = policy_gradients(&t, &[rl_batch(&x, &y, mask, &[1.0, 5.0])], None, 0.0).unwrap().0;
    let (x0, y0) = (x.narrow(0, 0, 1), y.narrow(0, 0, 1));
    let alone = policy_gradients(&t, &[rl_batch(&x0, &y0, Tensor::ones([1, 8], (Kind::Float, Device::Cpu)), &[1.0])], None, 0.0)
        .unwrap()
        .0;
    let diff = max_rel_diff(&masked.grads, &alone.grads);
    assert!(diff < 1e-2, "masked row vs alone: relative gradient difference {diff}");
}

#[test]
fn kl_to_an_identical_reference_is_zero_and_a_step_updates() {
    let _serial = serial();
    let mut t = trainer();
    // The reference: a copy of the policy's weights.
    let (vs, model) = Transformer::with_var_store(t.config(), Device::Cpu).unwrap();
    let src = t.var_store().variables();
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            v.copy_(&src[&name]);
        }
    });
    let reference = Teacher::new(vs, model);
    let (x, y) = batch(3, 2, 8);
    let ones = Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
    let plain = policy_gradients(&t, &[rl_batch(&x, &y, ones.shallow_clone(), &[1.0, -1.0])], None, 0.0).unwrap().0;
    let (with_kl, kl, _, _, _) =
        policy_gradients(&t, &[rl_batch(&x, &y, ones.shallow_clone(), &[1.0, -1.0])], Some(&reference), 0.5).unwrap();
    // 0 up to the rounding between the policy's prequantized and the reference's per-call BitLinear.
    assert!(kl.abs() < 1e-4, "kl {kl}");
    let diff = max_rel_diff(&with_kl.grads, &plain.grads);
    // Analytically zero (d k3 / d log π = 1 − exp(d) = 0 at d = 0); bf16 backward roundings remain.
    assert!(diff < 2e-2, "KL at the reference moved the gradient by {diff}");
    let before = t.var_store().variables()["blocks.0.attn.wq"].copy();
    let m = rl_step(&mut t, &[rl_batch(&x, &y, ones, &[1.0, -1.0])], Some(&reference), 0.5).unwrap();
    assert_eq!(m.step.step, 1);
    assert!(!before.equal(&t.var_store().variables()["blocks.0.attn.wq"]));
    // After the update the policy differs from the reference: KL > 0.
    let ones = Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
    let (_, kl, _, _, _) = policy_gradients(&t, &[rl_batch(&x, &y, ones, &[1.0, -1.0])], Some(&reference), 0.5).unwrap();
    assert!(kl > 0.0);
}

#[test]
fn bad_input_is_refused() {
    let _serial = serial();
    let mut t = trainer();
    let (x, y) = batch(4, 2, 8);
    let ones = || Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
    let zeros = Tensor::zeros([2, 8], (Kind::Float, Device::Cpu));
    let cases = [
        (vec![], 0.0, "at least one micro-batch"),
        (vec![rl_batch(&x, &y, zeros, &[1.0, 1.0])], 0.0, "no completion tokens"),
        (vec![rl_batch(&x, &y, ones(), &[1.0])], 0.0, "one per row"),
        (vec![rl_batch(&x, &y, ones(), &[1.0, f32::INFINITY])], 0.0, "NaN or infinite"),
        (vec![rl_batch(&x, &y, ones(), &[1.0, 1.0])], 0.1, "needs a reference"),
        (vec![rl_batch(&x, &y, ones(), &[1.0, 1.0])], -1.0, "kl_coef"),
        (vec![rl_batch(&x, &y, ones().to_kind(Kind::Int64), &[1.0, 1.0])], 0.0, "float tensor"),
    ];
    for (batches, kl, message) in cases {
        let err = rl_step(&mut t, &batches, None, kl).unwrap_err().to_string();
        assert!(err.contains(message), "{err:?} lacks {message:?}");
    }
    assert_eq!(t.step_count(), 0);
}
