//! Knowledge distillation from a frozen teacher.
//!
//! The objective of a micro-batch becomes
//! `α·CE + (1 − α)·T²·KL(softmax(z_teacher/T) ‖ softmax(z_student/T))`, the KL
//! averaged over token positions; the teacher's logits come from its forward
//! pass on the same tokens without autograd. The T² factor keeps the soft
//! term's gradient scale independent of T (Hinton et al., 2015). The teacher
//! is any model of the same vocabulary: the full-precision twin of a ternary
//! student, or another ternary model.
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::error::{Result, TrainError};
use crate::model::Transformer;
use crate::trainer::{load_weights, read_checkpoint, TrainerState};

/// A frozen model whose logits a student learns to match.
#[derive(Debug)]
pub struct Teacher {
    // Owns the teacher's parameters; `model` holds handles into it.
    _vs: VarStore,
    model: Transformer,
}

impl Teacher {
    /// A teacher from a model and the var store holding its weights.
    pub fn new(vs: VarStore, model: Transformer) -> Self {
        Self { _vs: vs, model }
    }

    /// The weights of a trainer checkpoint (CRC verified) on `device`, and the
    /// checkpoint's trainer state (its config, and the data state the caller
    /// saved, which names the tokenizer the teacher was trained with).
    pub fn from_checkpoint(path: &Path, device: Device) -> Result<(Self, TrainerState)> {
        let (state, tensors) = read_checkpoint(path)?;
        let weights = tensors
            .into_iter()
            .filter_map(|(name, t)| name.strip_prefix("model.").map(|n| (n.to_string(), t)))
            .collect();
        let (vs, model) = Transformer::with_var_store(&state.model, device)?;
        load_weights(&vs, weights, &path.display().to_string())?;
        Ok((Self::new(vs, model), state))
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn device(&self) -> Device {
        self._vs.device()
    }

    /// Logits (B, T, vocab) of already checked tokens, without autograd.
    pub fn logits(&self, tokens: &Tensor) -> Tensor {
        tch::no_grad(|| self.model.forward_prechecked(tokens))
    }
}

/// Checks the distillation weights: α in [0, 1], T finite and > 0.
pub fn validate(alpha: f64, temperature: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(TrainError::InvalidConfig {
            field: "distill_alpha",
            value: alpha.to_string(),
            reason: "must lie in [0, 1] (the weight of the hard-label CE)".into(),
        });
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(TrainError::InvalidConfig {
            field: "distill_temperature",
            value: temperature.to_string(),
            reason: "must be a finite number > 0".into(),
        });
    }
    Ok(())
}

/// Mean over positions of KL(softmax(teacher/T) ‖ softmax(student/T)), in f32
/// at least; `student` carries the gradient, `teacher` is treated as a constant.
/// Both are (..., vocab) logits of the same shape.
pub fn soft_kl(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    if student.size() != teacher.size() {
        return Err(TrainError::BadInput(format!(
            "teacher logits {:?} and student logits {:?} differ in shape (a teacher needs the student's vocabulary)",
            teacher.size(),
            student.size()
        )));
    }
    let vocab = *student.size().last().unwrap_or(&1);
    let log_s = (student.reshape([-1, vocab]) / temperature).log_softmax(-1, Kind::Float);
    let log_t = (teacher.detach().reshape([-1, vocab]) / temperature).log_softmax(-1, Kind::Float);
    Ok((log_t.exp() * (&log_t - log_s))
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float))
}

/// (objective, CE, KL) of the distillation loss
/// `α·CE(student, targets) + (1 − α)·T²·KL` on (B, T, vocab) logits and (B, T)
/// targets; the reference implementation the trainer's objective uses.
pub fn distill_loss(
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    alpha: f64,
    temperature: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    validate(alpha, temperature)?;
    let vocab = *student.size().last().unwrap_or(&1);
    let log_probs = student.reshape([-1, vocab]).log_softmax(-1, Kind::Float);
    let ce = log_probs.g_nll_loss::<Tensor>(&targets.reshape([-1]), None, Reduction::Mean, -100);
    let kl = soft_kl(student, teacher, temperature)?;
    let objective = combine(&ce, &kl, alpha, temperature);
    Ok((objective, ce, kl))
}

/// α·ce + (1 − α)·T²·kl. With α = 1 the result (and its gradient) equals `ce`
/// bit for bit: ce·1 is exact and the KL term is exactly zero.
pub(crate) fn combine(ce: &Tensor, kl: &Tensor, alpha: f64, temperature: f64) -> Tensor {
    ce * alpha + kl * ((1.0 - alpha) * temperature * temperature)
}
