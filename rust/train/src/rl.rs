//! The policy-gradient update of RL from verifiable rewards (MaxRL / GRPO).
//!
//! A rollout is a prompt and a sampled completion; the caller turns each
//! prompt group's rewards into one advantage per rollout (MaxRL and GRPO
//! differ only there) and hands this module (tokens, targets, mask,
//! advantage) rows: `mask` is 1 on the positions whose target is a
//! completion token, 0 on prompt and padding positions. The objective,
//! token-level over every completion token of the step,
//!
//! ```text
//! L = −Σ mask·A·log π(target) / Σ mask  +  β · Σ mask·k3 / Σ mask,
//! k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1   (≥ 0, unbiased KL(π‖π_ref) estimate)
//! ```
//!
//! is on-policy (one update per batch of fresh rollouts, so the importance
//! ratio is 1 and needs no clipping) and runs through the QAT model exactly
//! like supervised training: projections ternarized once per step, STE
//! gradients, Muon + Lion at the trainer's schedule, clipping, via
//! [`Trainer::apply_gradients`]. The KL reference is a frozen copy of the
//! starting policy ([`Teacher`]).
use tch::{Kind, Tensor};

use crate::distill::Teacher;
use crate::error::{Result, TrainError};
use crate::trainer::{Gradients, StepMetrics, Trainer};

/// One micro-batch of rollouts: (B, T) int64 `tokens` and `targets`, (B, T)
/// float `mask` (1 on completion-token targets) and (B,) float `advantages`.
#[derive(Debug)]
pub struct RlBatch {
    pub tokens: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    pub advantages: Tensor,
}

/// What an RL step reports besides the trainer's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RlMetrics {
    pub step: StepMetrics,
    /// Mean k3 KL estimate to the reference over completion tokens (0 without one).
    pub kl: f64,
    /// Mean entropy (nats) of the policy over completion positions.
    pub entropy: f64,
    /// Mean log-probability of the sampled completion tokens.
    pub logprob: f64,
    /// Completion tokens in the step.
    pub completion_tokens: u64,
}

fn check_batch(trainer: &Trainer, b: &RlBatch, index: usize) -> Result<()> {
    let model = trainer.model();
    let what = |s: &str| format!("micro-batch {index}: {s}");
    model.check_tokens(&b.tokens, &what("tokens"))?;
    model.check_tokens(&b.targets, &what("targets"))?;
    let size = b.tokens.size();
    if b.targets.size() != size || b.mask.size() != size {
        return Err(TrainError::BadInput(what(&format!(
            "tokens {:?}, targets {:?} and mask {:?} must have one shape",
            size,
            b.targets.size(),
            b.mask.size()
        ))));
    }
    if b.advantages.size() != [size[0]] {
        return Err(TrainError::BadInput(what(&format!(
            "advantages has shape {:?}, expected [{}] (one per row)",
            b.advantages.size(),
            size[0]
        ))));
    }
    for (name, t) in [("mask", &b.mask), ("advantages", &b.advantages)] {
        if !t.is_floating_point() {
            return Err(TrainError::BadInput(what(&format!("{name} must be a float tensor"))));
        }
        let finite = t.isfinite().all().int64_value(&[]) == 1;
        if !finite {
            return Err(TrainError::BadInput(what(&format!("{name} has NaN or infinite values"))));
        }
    }
    Ok(())
}

/// Gradients of the RL objective over `batches` (no update): one per
/// parameter in [`Trainer::param_groups`] order, plus the step's KL,
/// entropy, mean log-probability and completion-token count.
pub fn policy_gradients(
    trainer: &Trainer,
    batches: &[RlBatch],
    reference: Option<&Teacher>,
    kl_coef: f64,
) -> Result<(Gradients, f64, f64, f64, u64)> {
    if batches.is_empty() {
        return Err(TrainError::BadInput("an RL step needs at least one micro-batch".into()));
    }
    if !(kl_coef.is_finite() && kl_coef >= 0.0) {
        return Err(TrainError::BadInput(format!("kl_coef must be a finite number >= 0, got {kl_coef}")));
    }
    if kl_coef > 0.0 && reference.is_none() {
        return Err(TrainError::BadInput("kl_coef > 0 needs a reference policy".into()));
    }
    for (i, b) in batches.iter().enumerate() {
        check_batch(trainer, b, i)?;
        if let Some(r) = reference {
            r.model().check_tokens(&b.tokens, "tokens (for the reference policy)")?;
        }
    }
    let device = trainer.device();
    let total: f64 = batches.iter().map(|b| b.mask.sum(Kind::Double).double_value(&[])).sum();
    if total < 1.0 {
        return Err(TrainError::BadInput("the step has no completion tokens (every mask is 0)".into()));
    }
    let model = trainer.model();
    let quantized: Vec<Tensor> = model.step_weights().into_iter().map(|w| w.set_requires_grad(true)).collect();
    let vars = trainer.var_store().variables();
    let (_, lion_names) = trainer.param_groups();
    let inputs: Vec<Tensor> = quantized
        .iter()
        .map(Tensor::shallow_clone)
        .chain(lion_names.iter().filter_map(|n| vars.get(n).map(Tensor::shallow_clone)))
        .collect();
    let vocab = model.config().vocab_size as i64;
    let cuda = device.is_cuda();
    let mut grads: Vec<Tensor> = Vec::new();
    // [loss, kl, entropy, logprob] sums over completion tokens.
    let mut sums = [0.0f64; 4];
    model.with_prequantized(&quantized, || -> Result<()> {
        for b in batches {
            let tokens = b.tokens.f_to_device(device)?;
            let targets = b.targets.f_to_device(device)?;
            let mask = b.mask.f_to_device(device)?.to_kind(Kind::Float);
            let adv = b.advantages.f_to_device(device)?.to_kind(Kind::Float).unsqueeze(1);
            let logits = tch::autocast(cuda, || model.forward_prechecked(&tokens));
            let log_probs = logits.log_softmax(-1, Kind::Float);
            let picked = log_probs.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
            let pg = -(&picked * &adv * &mask).sum(Kind::Float);
            let kl = match reference {
                Some(r) if kl_coef > 0.0 => {
                    let ref_lp = r.logits(&tokens).log_softmax(-1, Kind::Float);
                    let ref_picked = ref_lp.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
                    let d = ref_picked - &picked;
                    (d.exp() - &d - 1.0) * &mask
                }
                _ => Tensor::zeros_like(&mask),
            };
            let kl_sum = kl.sum(Kind::Float);
            let objective = (&pg + &kl_sum * kl_coef) / total;
            let micro = Tensor::f_run_backward(&[&objective], &inputs, false, false)?;
            if grads.is_empty() {
                grads = micro;
            } else {
                for (acc, g) in grads.iter_mut().zip(&micro) {
                    let _ = acc.f_add_(g)?;
                }
            }
            let entropy = tch::no_grad(|| {
                let lp = log_probs.detach().reshape([-1, vocab]);
                let h = -(lp.exp() * &lp).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
                (h * mask.reshape([-1])).sum(Kind::Float)
            });
            for (sum, v) in sums.iter_mut().zip([
                objective.detach() * total,
                kl_sum.detach(),
                entropy,
                (picked.detach() * &mask).sum(Kind::Float),
            ]) {
                *sum += v.f_double_value(&[])?;
            }
        }
        Ok(())
    })??;
    let mean = |s: f64| s / total;
    let gradients = Gradients {
        grads,
        loss: mean(sums[0]),
        ce: -mean(sums[3]),
        entropy: mean(sums[2]),
        tokens: total as u64,
        kl: Some(mean(sums[1])),
    };
    Ok((gradients, mean(sums[1]), mean(sums[2]), mean(sums[3]), total as u64))
}

/// One RL optimizer step: [`policy_gradients`], then clip and Muon + Lion.
pub fn rl_step(
    trainer: &mut Trainer,
    batches: &[RlBatch],
    reference: Option<&Teacher>,
    kl_coef: f64,
) -> Result<RlMetrics> {
    let (gradients, kl, entropy, logprob, completion_tokens) =
        policy_gradients(trainer, batches, reference, kl_coef)?;
    let step = trainer.apply_gradients(gradients)?;
    Ok(RlMetrics {
        step,
        kl,
        entropy,
        logprob,
        completion_tokens,
    })
}
