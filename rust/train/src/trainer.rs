//! One optimizer step of quantization-aware training, and the state needed to
//! resume it exactly.
//!
//! A step takes micro-batches of (tokens, targets), accumulates their
//! gradients, clips the global gradient norm and updates with Muon (the 2-D
//! block projections) and Lion (embeddings, head, norm gains, mHC maps), each
//! group at its own peak learning rate times the shared warmup-stable-decay
//! factor. The objective is CE − w·H, H the mean entropy of the predicted
//! distribution (w = 0 by default; CE and H are reported separately).
//!
//! Each projection is ternarized once per step, not once per micro-batch: the
//! ternarized value becomes a leaf tensor that every micro-batch's forward
//! uses, and its accumulated gradient is the latent weight's gradient (the
//! straight-through estimator is the identity). On CUDA the forward pass runs
//! under autocast; on CPU everything is f32 and, with a fixed thread count,
//! bit-for-bit deterministic (nothing in a step draws random numbers).
//!
//! With a [`Teacher`] attached the objective is the distillation loss
//! α·CE + (1 − α)·T²·KL(teacher/T ‖ student/T) − w·H (see [`crate::distill`]).
//! For data-parallel training [`Trainer::gradients`] and
//! [`Trainer::apply_gradients`] are the two halves of [`Trainer::step`]: the
//! caller all-reduces the gradients (and the metric sums) in between.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};
use ternary::checkpoint::{self as ckpt, Checkpoint, SafetensorsDtype};

use crate::config::ModelConfig;
use crate::distill::{self, Teacher};
use crate::error::{Result, TrainError};
use crate::model::Transformer;
use crate::optim::{DecayShape, Lion, Muon, Wsd};

/// `format` field of a trainer checkpoint's metadata.
pub const STATE_FORMAT: &str = "nanochat-ternary-trainer/1";
/// Metadata key of the JSON [`TrainerState`] in a checkpoint.
pub const STATE_KEY: &str = "trainer";

/// Optimization hyper-parameters. Unknown JSON keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainHyper {
    /// Length of the learning-rate schedule in optimizer steps.
    pub total_steps: u64,
    /// Peak learning rate of the Muon group (2-D block projections).
    pub lr_muon: f64,
    /// Peak learning rate of the Lion group (everything else).
    pub lr_lion: f64,
    /// Decoupled weight decay of the Muon group (norm gains, embeddings and
    /// mHC maps are not decayed).
    pub weight_decay: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Fraction of `total_steps` spent decaying at the end.
    pub decay_frac: f64,
    /// Learning rate at the end of the decay, as a fraction of the peak.
    pub lr_floor: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub clip: f64,
    /// w in CE − w·H.
    pub entropy_weight: f64,
    /// Seed of the parameter init.
    pub seed: i64,
}

impl Default for TrainHyper {
    fn default() -> Self {
        Self {
            total_steps: 1000,
            lr_muon: 0.02,
            lr_lion: 1e-3,
            weight_decay: 0.0,
            warmup: 10,
            decay_frac: 0.2,
            lr_floor: 0.0,
            clip: 1.0,
            entropy_weight: 0.0,
            seed: 0,
        }
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: &str) -> TrainError {
    TrainError::InvalidConfig {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl TrainHyper {
    pub fn from_json(json: &str) -> Result<Self> {
        let hyper: Self = serde_json::from_str(json)
            .map_err(|e| TrainError::BadInput(format!("training hyper-parameters: {e}")))?;
        hyper.validate()?;
        Ok(hyper)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<()> {
        let positive_rate = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(field, v, "must be a finite number > 0"))
            }
        };
        positive_rate("lr_muon", self.lr_muon)?;
        positive_rate("lr_lion", self.lr_lion)?;
        let non_negative = |field, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(invalid(field, v, "must be a finite number >= 0"))
            }
        };
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("clip", self.clip)?;
        non_negative("entropy_weight", self.entropy_weight)?;
        if !(0.0..=1.0).contains(&self.lr_floor) {
            return Err(invalid("lr_floor", self.lr_floor, "must lie in [0, 1] (a fraction of the peak)"));
        }
        if !(0.0..=1.0).contains(&self.decay_frac) {
            return Err(invalid("decay_frac", self.decay_frac, "must lie in [0, 1]"));
        }
        if self.total_steps == 0 {
            return Err(invalid("total_steps", 0, "must be at least 1"));
        }
        let decay = (self.decay_frac * self.total_steps as f64).round() as u64;
        if self.warmup + decay > self.total_steps {
            return Err(invalid(
                "warmup",
                self.warmup,
                &format!(
                    "warmup + decay steps ({} + {decay}) exceed total_steps {}",
                    self.warmup, self.total_steps
                ),
            ));
        }
        Ok(())
    }

    /// The schedule as a factor of each group's peak rate.
    pub fn schedule(&self) -> Result<Wsd> {
        Wsd::new(1.0, self.lr_floor, self.total_steps, self.warmup, self.decay_frac, DecayShape::Linear)
    }
}

/// Metrics of one optimizer step (means over its tokens).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Optimizer steps done, this one included.
    pub step: u64,
    /// The optimized objective, CE − w·H.
    pub loss: f64,
    pub ce: f64,
    /// Mean entropy (nats) of the predicted next-token distribution (over
    /// at most [`ENTROPY_SAMPLE_ROWS`] positions per micro-batch unless
    /// `entropy_weight` > 0).
    pub entropy: f64,
    pub lr_muon: f64,
    pub lr_lion: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens in the step.
    pub tokens: u64,
    /// Mean KL(teacher/T ‖ student/T) when distilling.
    pub kl: Option<f64>,
}

/// Output of [`Trainer::gradients`].
#[derive(Debug)]
pub struct Gradients {
    /// One per parameter: the Muon group, then the Lion group.
    pub grads: Vec<Tensor>,
    pub loss: f64,
    pub ce: f64,
    pub entropy: f64,
    pub tokens: u64,
    /// Mean KL(teacher/T ‖ student/T) when distilling.
    pub kl: Option<f64>,
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`
/// (0 = no clipping); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    tch::no_grad(|| {
        if grads.is_empty() {
            return Ok(0.0);
        }
        // One reduction pass per gradient (no squared temporary).
        let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
        let norm = Tensor::stack(&norms, 0).square().sum(Kind::Float).sqrt().f_double_value(&[])?;
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for g in grads.iter_mut() {
                let _ = g.f_mul_scalar_(scale)?;
            }
        }
        Ok(norm)
    })
}

/// What a checkpoint records besides tensors (metadata key [`STATE_KEY`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    pub format: String,
    pub model: ModelConfig,
    pub hyper: TrainHyper,
    pub step: u64,
    /// Opaque to Rust: the data loader's position, as the caller gave it.
    pub data_state: String,
}

/// Model, optimizers and schedule.
#[derive(Debug)]
pub struct Trainer {
    hyper: TrainHyper,
    device: Device,
    vs: VarStore,
    model: Transformer,
    muon: Muon,
    lion: Lion,
    /// VarStore names of the Muon and Lion parameters, in optimizer order.
    muon_names: Vec<String>,
    lion_names: Vec<String>,
    schedule: Wsd,
    step: u64,
    /// The teacher and (α, T) when distilling.
    teacher: Option<(Teacher, f64, f64)>,
}

/// Checks a (tokens, targets) pair where it lies (normally host memory, so
/// no device synchronization) and copies it to `device`.
fn checked_pair(model: &Transformer, tokens: &Tensor, targets: &Tensor, device: Device) -> Result<(Tensor, Tensor)> {
    if tokens.size() != targets.size() {
        return Err(TrainError::BadInput(format!(
            "targets shape {:?} differs from tokens shape {:?}",
            targets.size(),
            tokens.size()
        )));
    }
    model.check_tokens(tokens, "tokens")?;
    model.check_tokens(targets, "targets")?;
    Ok((tokens.f_to_device(device)?, targets.f_to_device(device)?))
}

/// The distillation part of an objective: the teacher and (α, T).
#[derive(Clone, Copy)]
struct Distill<'a> {
    teacher: &'a Teacher,
    alpha: f64,
    temperature: f64,
}

/// Terms of one micro-batch's objective.
struct Objective {
    /// What is differentiated: CE (or the distillation loss) − w·H.
    value: Tensor,
    ce: Tensor,
    entropy: Tensor,
    /// Mean KL to the teacher (detached), when distilling.
    kl: Option<Tensor>,
}

/// The objective of one checked micro-batch; entropy carries a gradient only
/// when it is part of the objective.
fn objective(
    model: &Transformer,
    tokens: &Tensor,
    targets: &Tensor,
    entropy_weight: f64,
    distill: Option<Distill<'_>>,
) -> Result<Objective> {
    if model.config().loops() > 1 {
        return loop_objective(model, tokens, targets, entropy_weight, distill.is_some());
    }
    let logits = model.forward_prechecked(tokens);
    let vocab = model.config().vocab_size as i64;
    // bf16 CPU logits (the int8 BitLinear path's head): CE fused in one pass,
    // the entropy (only reported) from the rows it samples anyway.
    if logits.kind() == Kind::BFloat16 && logits.device() == Device::Cpu && entropy_weight == 0.0 {
        let flat = logits.reshape([-1, vocab]);
        let ce = crate::cpu_bitlinear::cross_entropy(&flat, &targets.reshape([-1]))?;
        let (rows, stride) = (flat.size()[0], entropy_sample_stride(flat.size()[0]));
        let sampled = tch::no_grad(|| flat.slice(0, 0, rows, stride).log_softmax(-1, Kind::Float));
        let entropy = mean_entropy_for_metrics(&sampled);
        return Ok(match distill {
            None => Objective { value: ce.shallow_clone(), ce, entropy, kl: None },
            Some(d) => {
                let kl = distill::soft_kl(&logits, &d.teacher.logits(tokens), d.temperature)?;
                let value = distill::combine(&ce, &kl, d.alpha, d.temperature);
                Objective { value, ce: ce.detach(), entropy, kl: Some(kl.detach()) }
            }
        });
    }
    // Log-softmax in f32 at least: bf16 logits lose too much.
    let log_probs = logits.reshape([-1, vocab]).log_softmax(-1, Kind::Float);
    let ce = log_probs.g_nll_loss::<Tensor>(&targets.reshape([-1]), None, Reduction::Mean, -100);
    let (base, kl) = match distill {
        None => (ce.shallow_clone(), None),
        Some(d) => {
            let teacher_logits = d.teacher.logits(tokens);
            let kl = distill::soft_kl(&logits, &teacher_logits, d.temperature)?;
            (distill::combine(&ce, &kl, d.alpha, d.temperature), Some(kl.detach()))
        }
    };
    if entropy_weight == 0.0 {
        let entropy = mean_entropy_for_metrics(&log_probs.detach());
        let ce = if kl.is_some() { ce.detach() } else { ce };
        Ok(Objective { value: base, ce, entropy, kl })
    } else {
        let entropy = -(log_probs.exp() * &log_probs)
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
            .mean(Kind::Float);
        Ok(Objective {
            value: &base - &entropy * entropy_weight,
            ce: ce.detach(),
            entropy: entropy.detach(),
            kl,
        })
    }
}

/// A LoopLM model's objective ([`Transformer::loop_objective`]): `ce` is the last loop's (the
/// full-depth model's) cross-entropy; the token-entropy bonus applies to the last loop.
fn loop_objective(
    model: &Transformer,
    tokens: &Tensor,
    targets: &Tensor,
    entropy_weight: f64,
    distilling: bool,
) -> Result<Objective> {
    if distilling {
        return Err(TrainError::BadInput(
            "distillation into a LoopLM (loop) model is not supported; train it without a teacher".into(),
        ));
    }
    let out = model.loop_objective(tokens, targets);
    let ce = out.ce_last.detach();
    if entropy_weight == 0.0 {
        let entropy = mean_entropy_for_metrics(&out.last_log_probs.detach());
        return Ok(Objective { value: out.value, ce, entropy, kl: None });
    }
    let lp = &out.last_log_probs;
    let entropy = -(lp.exp() * lp).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float).mean(Kind::Float);
    Ok(Objective { value: &out.value - &entropy * entropy_weight, ce, entropy: entropy.detach(), kl: None })
}

/// Token positions per micro-batch whose entropy is reported when it is not
/// part of the objective.
pub const ENTROPY_SAMPLE_ROWS: i64 = 512;

/// Every how many rows [`mean_entropy_for_metrics`] samples one.
fn entropy_sample_stride(rows: i64) -> i64 {
    (rows + ENTROPY_SAMPLE_ROWS - 1) / ENTROPY_SAMPLE_ROWS
}

/// Mean entropy of (rows, vocab) log-probabilities when it is only reported:
/// no autograd, over at most [`ENTROPY_SAMPLE_ROWS`] evenly spaced positions
/// (all of them for small batches), in row chunks so the p·log p temporary
/// stays small. Over every position it cost as much as the log-softmax
/// itself (~4% of a tiny-model CPU step) for a number that is only logged.
fn mean_entropy_for_metrics(log_probs: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let all_rows = log_probs.size()[0];
        let stride = entropy_sample_stride(all_rows);
        let log_probs = if stride > 1 {
            log_probs.slice(0, 0, all_rows, stride)
        } else {
            log_probs.shallow_clone()
        };
        let (rows, vocab) = (log_probs.size()[0], log_probs.size()[1].max(1));
        let budget: i64 = if log_probs.device().is_cuda() { 1 << 26 } else { 1 << 20 };
        let chunk = (budget / vocab).max(1);
        let mut total = Tensor::zeros([], (Kind::Float, log_probs.device()));
        let mut start = 0;
        while start < rows {
            let lp = log_probs.narrow(0, start, chunk.min(rows - start));
            let mut plogp = lp.exp();
            let _ = plogp.g_mul_(&lp);
            let _ = total.g_sub_(&plogp.sum(Kind::Float));
            start += chunk;
        }
        total / rows.max(1) as f64
    })
}

impl Trainer {
    /// A freshly initialized model (seeded by `hyper.seed`) on `device`.
    pub fn new(config: &ModelConfig, hyper: TrainHyper, device: Device) -> Result<Self> {
        hyper.validate()?;
        let schedule = hyper.schedule()?;
        tch::manual_seed(hyper.seed);
        let (vs, model) = Transformer::with_var_store(config, device)?;
        // Name every variable by its storage, to tell which are projections.
        let names: HashMap<usize, String> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (t.data_ptr() as usize, name))
            .collect();
        let hidden = model.projection_weights();
        let muon_names = hidden
            .iter()
            .map(|t| {
                names
                    .get(&(t.data_ptr() as usize))
                    .cloned()
                    .ok_or_else(|| TrainError::BadInput("a projection weight is not in the VarStore".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rest: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| !muon_names.contains(name))
            .collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        let lion_names = rest.iter().map(|(n, _)| n.clone()).collect();
        let muon = Muon::new(hidden, hyper.lr_muon, hyper.weight_decay)?;
        let lion = Lion::new(rest.into_iter().map(|(_, t)| t).collect(), hyper.lr_lion, 0.0);
        Ok(Self {
            hyper,
            device,
            vs,
            model,
            muon,
            lion,
            muon_names,
            lion_names,
            schedule,
            step: 0,
            teacher: None,
        })
    }

    /// Distills from `teacher` from now on with the loss
    /// α·CE + (1 − α)·T²·KL; its vocabulary must be the student's. (The
    /// teacher is not part of a checkpoint: the caller records it.)
    pub fn set_teacher(&mut self, teacher: Teacher, alpha: f64, temperature: f64) -> Result<()> {
        distill::validate(alpha, temperature)?;
        if self.config().loops() > 1 {
            return Err(TrainError::BadInput(
                "distillation into a LoopLM (loop) model is not supported; train it without a teacher".into(),
            ));
        }
        let (mine, theirs) = (self.config().vocab_size, teacher.model().config().vocab_size);
        if mine != theirs {
            return Err(TrainError::BadInput(format!(
                "the teacher's vocab_size is {theirs}, the student's {mine}: distillation needs the same \
                 tokenizer and vocabulary"
            )));
        }
        if teacher.device() != self.device {
            return Err(TrainError::BadInput(format!(
                "the teacher is on {:?}, the student on {:?}",
                teacher.device(),
                self.device
            )));
        }
        self.teacher = Some((teacher, alpha, temperature));
        Ok(())
    }

    /// The attached teacher and its (α, T), if any.
    pub fn teacher(&self) -> Option<(&Teacher, f64, f64)> {
        self.teacher.as_ref().map(|(t, a, temp)| (t, *a, *temp))
    }

    fn distill(&self) -> Option<Distill<'_>> {
        self.teacher.as_ref().map(|(teacher, alpha, temperature)| Distill {
            teacher,
            alpha: *alpha,
            temperature: *temperature,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
    pub fn hyper(&self) -> &TrainHyper {
        &self.hyper
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn model(&self) -> &Transformer {
        &self.model
    }
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }
    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters updated by Muon and by Lion.
    pub fn param_groups(&self) -> (&[String], &[String]) {
        (&self.muon_names, &self.lion_names)
    }

    /// Learning rates (Muon, Lion) of the next step.
    pub fn learning_rates(&self) -> (f64, f64) {
        let factor = self.schedule.lr(self.step);
        (self.hyper.lr_muon * factor, self.hyper.lr_lion * factor)
    }

    /// Warmup-stable-decay branching: from a step in the stable phase, ends the
    /// schedule `decay_steps` steps from now with a decay to the floor starting
    /// at the next step. The rate of every step already taken is unchanged, so a
    /// branch continues the run exactly and only its tail differs. Errors while
    /// still warming up or already decaying, and for `decay_steps` = 0.
    pub fn decay_now(&mut self, decay_steps: u64) -> Result<()> {
        if decay_steps == 0 {
            return Err(invalid("decay_steps", 0, "must be at least 1"));
        }
        let stable_end = self.schedule.total - self.schedule.decay;
        if self.step < self.schedule.warmup || self.step >= stable_end {
            return Err(TrainError::BadInput(format!(
                "can only branch a decay from the stable phase (steps {}..{}); this run is at step {}",
                self.schedule.warmup, stable_end, self.step
            )));
        }
        let total = self.step + decay_steps;
        let mut hyper = self.hyper.clone();
        hyper.total_steps = total;
        hyper.decay_frac = decay_steps as f64 / total as f64;
        hyper.validate()?;
        let schedule = hyper.schedule()?;
        if schedule.total - schedule.decay != self.step {
            return Err(TrainError::BadInput(format!(
                "decay of {decay_steps} steps from step {} does not round to an exact schedule",
                self.step
            )));
        }
        self.hyper = hyper;
        self.schedule = schedule;
        Ok(())
    }

    /// One optimizer step over `micro_batches` of (tokens, targets), each
    /// (B, T) int64. Gradients of the micro-batches are weighted by their
    /// token counts, so 2 micro-batches of B/2 rows equal one batch of B.
    pub fn step(&mut self, micro_batches: &[(Tensor, Tensor)]) -> Result<StepMetrics> {
        let gradients = self.gradients(micro_batches)?;
        self.apply_gradients(gradients)
    }

    /// The update half of [`Self::step`]: clips `gradients` (one per
    /// parameter in [`Self::param_groups`] order, e.g. all-reduced across
    /// data-parallel ranks) and applies Muon and Lion at this step's rates.
    pub fn apply_gradients(&mut self, gradients: Gradients) -> Result<StepMetrics> {
        let (lr_muon, lr_lion) = self.learning_rates();
        let Gradients {
            mut grads,
            loss,
            ce,
            entropy,
            tokens,
            kl,
        } = gradients;
        let expected = self.muon_names.len() + self.lion_names.len();
        if grads.len() != expected {
            return Err(TrainError::BadInput(format!(
                "got {} gradients, the model has {expected} parameters",
                grads.len()
            )));
        }
        let grad_norm = clip_grad_norm(&mut grads, self.hyper.clip)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::BadInput(format!(
                "step {}: the gradient norm is {grad_norm}; lower the learning rates or enable clipping",
                self.step + 1
            )));
        }
        let lion_grads = grads.split_off(self.muon_names.len());
        self.muon.lr = lr_muon;
        self.lion.lr = lr_lion;
        self.muon.step_with(&grads)?;
        self.lion.step_with(&lion_grads)?;
        self.step += 1;
        Ok(StepMetrics {
            step: self.step,
            loss,
            ce,
            entropy,
            lr_muon,
            lr_lion,
            grad_norm,
            tokens,
            kl,
        })
    }

    /// Accumulated gradients of the objective over `micro_batches`, one per
    /// parameter in [`Self::param_groups`] order (Muon group, then Lion
    /// group), without updating anything.
    pub fn gradients(&self, micro_batches: &[(Tensor, Tensor)]) -> Result<Gradients> {
        if micro_batches.is_empty() {
            return Err(TrainError::BadInput("a step needs at least one micro-batch".into()));
        }
        let batches = micro_batches
            .iter()
            .map(|(x, y)| {
                if let Some((teacher, _, _)) = &self.teacher {
                    teacher.model().check_tokens(x, "tokens (for the teacher)")?;
                }
                checked_pair(&self.model, x, y, self.device)
            })
            .collect::<Result<Vec<_>>>()?;
        let total_tokens: i64 = batches.iter().map(|(x, _)| x.numel() as i64).sum();
        // Ternarize once per step; the leaves collect the projections' STE gradients.
        let quantized: Vec<Tensor> =
            self.model.step_weights().into_iter().map(|w| w.set_requires_grad(true)).collect();
        let inputs: Vec<Tensor> = quantized
            .iter()
            .map(Tensor::shallow_clone)
            .chain(self.lion_params())
            .collect();
        let (model, weight, cuda) = (&self.model, self.hyper.entropy_weight, self.device.is_cuda());
        let distill = self.distill();
        let mut grads: Vec<Tensor> = Vec::new();
        // Sums stay on the device so a step synchronizes once, not per micro-batch.
        let mut sums: Vec<Tensor> = (0..4).map(|_| Tensor::zeros([], (Kind::Double, self.device))).collect();
        model.with_prequantized(&quantized, || -> Result<()> {
            for (tokens, targets) in &batches {
                let share = tokens.numel() as f64 / total_tokens as f64;
                let Objective { value: obj, ce, entropy, kl } =
                    tch::autocast(cuda, || objective(model, tokens, targets, weight, distill))?;
                let kl = kl.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, tokens.device())));
                let micro_grads = Tensor::f_run_backward(&[&obj * share], &inputs, false, false)?;
                if grads.is_empty() {
                    grads = micro_grads;
                } else {
                    for (acc, g) in grads.iter_mut().zip(&micro_grads) {
                        let _ = acc.f_add_(g)?;
                    }
                }
                for (sum, value) in sums.iter_mut().zip([&obj, &ce, &entropy, &kl]) {
                    let _ = sum.f_add_(&(value.detach().to_kind(Kind::Double) * share))?;
                }
            }
            Ok(())
        })??;
        let value = |t: &Tensor| t.f_double_value(&[]);
        Ok(Gradients {
            grads,
            loss: value(&sums[0])?,
            ce: value(&sums[1])?,
            entropy: value(&sums[2])?,
            tokens: total_tokens as u64,
            kl: if distill.is_some() { Some(value(&sums[3])?) } else { None },
        })
    }

    fn lion_params(&self) -> Vec<Tensor> {
        let vars = self.vs.variables();
        self.lion_names.iter().filter_map(|n| vars.get(n).map(Tensor::shallow_clone)).collect()
    }

    /// Mean cross-entropy of `targets` given `tokens` without autograd, each
    /// projection ternarized once.
    pub fn eval_loss(&self, tokens: &Tensor, targets: &Tensor) -> Result<f64> {
        let (tokens, targets) = checked_pair(&self.model, tokens, targets, self.device)?;
        tch::no_grad(|| {
            let quantized = self.model.step_weights();
            let cuda = self.device.is_cuda();
            let out = self.model.with_prequantized(&quantized, || {
                tch::autocast(cuda, || objective(&self.model, &tokens, &targets, 0.0, None))
            })??;
            Ok(out.ce.f_double_value(&[])?)
        })
    }

    /// Everything needed to resume: weights (`model.*`), optimizer moments
    /// (`muon.*`, `lion.*`), step, hyper-parameters, model config and the
    /// caller's `data_state`. Written atomically with a CRC.
    pub fn save(&self, path: &Path, data_state: &str) -> Result<()> {
        let state = TrainerState {
            format: STATE_FORMAT.into(),
            model: self.config().clone(),
            hyper: self.hyper.clone(),
            step: self.step,
            data_state: data_state.into(),
        };
        let mut checkpoint = Checkpoint::default();
        checkpoint
            .metadata
            .insert(STATE_KEY.into(), serde_json::to_string(&state)?);
        for (name, t) in self.vs.variables() {
            checkpoint.tensors.insert(format!("model.{name}"), dense_f32(&t)?);
        }
        for (names, moments, prefix) in [
            (&self.muon_names, self.muon.moments(), "muon"),
            (&self.lion_names, self.lion.moments(), "lion"),
        ] {
            for (name, m) in names.iter().zip(moments) {
                checkpoint.tensors.insert(format!("{prefix}.{name}"), dense_f32(m)?);
            }
        }
        ckpt::save(path, &checkpoint)?;
        Ok(())
    }

    /// Restores a trainer saved by [`Self::save`] on `device`; returns it and
    /// the saved `data_state`.
    pub fn load(path: &Path, device: Device) -> Result<(Self, String)> {
        let (state, mut tensors) = read_checkpoint(path)?;
        let mut trainer = Self::new(&state.model, state.hyper, device)?;
        let mut targets: Vec<(String, Tensor)> = trainer
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("model.{n}"), t))
            .collect();
        for (names, moments, prefix) in [
            (&trainer.muon_names, trainer.muon.moments(), "muon"),
            (&trainer.lion_names, trainer.lion.moments(), "lion"),
        ] {
            for (name, m) in names.iter().zip(moments) {
                targets.push((format!("{prefix}.{name}"), m.shallow_clone()));
            }
        }
        let label = path.display().to_string();
        for (name, target) in &targets {
            let saved = take_tensor(&mut tensors, name, &target.size(), &label)?;
            tch::no_grad(|| target.shallow_clone().f_copy_(&saved))?;
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(TrainError::BadInput(format!(
                "{label}: unexpected tensor {extra:?} (not a checkpoint of this model)"
            )));
        }
        trainer.step = state.step;
        Ok((trainer, state.data_state))
    }
}

/// The trainer state and the tensors of a checkpoint (CRC verified).
pub fn read_checkpoint(path: &Path) -> Result<(TrainerState, BTreeMap<String, Tensor>)> {
    let label = path.display().to_string();
    let checkpoint = ckpt::load(path)?;
    let json = checkpoint.metadata.get(STATE_KEY).ok_or_else(|| {
        TrainError::BadInput(format!("{label}: no {STATE_KEY:?} metadata; not a trainer checkpoint"))
    })?;
    let state: TrainerState = serde_json::from_str(json)?;
    if state.format != STATE_FORMAT {
        return Err(TrainError::BadInput(format!(
            "{label}: format {:?}, expected {STATE_FORMAT:?}",
            state.format
        )));
    }
    state.model.validate()?;
    state.hyper.validate()?;
    let mut tensors = BTreeMap::new();
    for (name, t) in checkpoint.tensors {
        let ckpt::Tensor::Dense { dtype, shape, data } = t else {
            return Err(TrainError::BadInput(format!("{label}: {name:?} is not a dense tensor")));
        };
        if dtype != SafetensorsDtype::F32 {
            return Err(TrainError::BadInput(format!("{label}: {name:?} has dtype {dtype:?}, expected F32")));
        }
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        tensors.insert(name, Tensor::from_slice(&values).f_reshape(dims)?);
    }
    Ok((state, tensors))
}

/// The model config and weights (names without the `model.` prefix) of a
/// trainer checkpoint, for export or inference.
pub fn read_checkpoint_weights(path: &Path) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let (state, tensors) = read_checkpoint(path)?;
    let weights = tensors
        .into_iter()
        .filter_map(|(name, t)| name.strip_prefix("model.").map(|n| (n.to_string(), t)))
        .collect();
    Ok((state.model, weights))
}

/// Copies `weights` (as from [`read_checkpoint_weights`]) into a model's
/// variables; every variable must be present with its shape.
pub fn load_weights(vs: &VarStore, mut weights: BTreeMap<String, Tensor>, label: &str) -> Result<()> {
    for (name, target) in vs.variables() {
        let saved = take_tensor(&mut weights, &name, &target.size(), label)?;
        tch::no_grad(|| target.shallow_clone().f_copy_(&saved))?;
    }
    if let Some(extra) = weights.keys().next() {
        return Err(TrainError::BadInput(format!("{label}: unexpected weight {extra:?}")));
    }
    Ok(())
}

fn take_tensor(tensors: &mut BTreeMap<String, Tensor>, name: &str, shape: &[i64], label: &str) -> Result<Tensor> {
    let saved = tensors
        .remove(name)
        .ok_or_else(|| TrainError::BadInput(format!("{label}: missing tensor {name:?}")))?;
    if saved.size() != shape {
        return Err(TrainError::BadInput(format!(
            "{label}: {name:?} has shape {:?}, the model expects {shape:?}",
            saved.size()
        )));
    }
    Ok(saved)
}

fn dense_f32(t: &Tensor) -> Result<ckpt::Tensor> {
    let cpu = t.detach().f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let values = Vec::<f32>::try_from(cpu.flatten(0, -1))?;
    Ok(ckpt::Tensor::Dense {
        dtype: SafetensorsDtype::F32,
        shape: cpu.size().iter().map(|&d| d as usize).collect(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}
