//! Next-token selection: repetition penalty, then greedy (temperature 0) or temperature →
//! top-k → top-p → min-p → a seeded draw. The order and rules follow HF `transformers`' logits
//! processors (and llama.cpp's samplers, which agree on these).

use crate::error::{invalid_arg, Result};

/// Sampling settings of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// 0 = off; else no n-gram of this many tokens occurs twice in prompt + output (HF's
    /// `no_repeat_ngram_size`): a token that would complete an n-gram already in the history is
    /// never chosen. Small models loop on one line of code; a ban of line-sized n-grams stops it.
    pub no_repeat_ngram_size: usize,
    pub seed: u64,
    /// Generation ends on any of these ids (not included in the output).
    pub stop_ids: Vec<u32>,
    /// Generation ends when the generated text contains one of these (stripped from the output).
    pub stop_strings: Vec<String>,
    /// Keep going past the model's EOS token (benchmarks).
    pub ignore_eos: bool,
    /// When not empty, the first new token is one of these (every other logit is set to −∞
    /// before sampling). Token healing uses it: the caller drops the prompt's last token and
    /// allows only the tokens whose text starts with that token's text, so the model is not
    /// stuck with a token boundary the training text rarely had (a prompt ending in `"{\n"`
    /// where training always saw `"{"` + `"\n    "`).
    pub first_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 16,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            seed: 0,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            first_token_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens < 1 {
            return Err(invalid_arg("max_new_tokens must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid_arg(format!("temperature must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid_arg(format!("top_p must lie in (0, 1], got {}", self.top_p)));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return Err(invalid_arg(format!("min_p must lie in [0, 1), got {}", self.min_p)));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(invalid_arg(format!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty)));
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(invalid_arg("stop strings must not be empty"));
        }
        Ok(())
    }
}

/// SplitMix64: a tiny, well-mixed seeded generator (the only randomness the engine needs).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sets every logit whose id is not in `allowed` to −∞ (nothing when `allowed` is empty; ids
/// outside the vocabulary are ignored, `check_request` rejects them first).
pub fn restrict_to(logits: &mut [f32], allowed: &[u32]) {
    if allowed.is_empty() {
        return;
    }
    let mut keep = vec![false; logits.len()];
    for &id in allowed {
        if let Some(k) = keep.get_mut(id as usize) {
            *k = true;
        }
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Sets to −∞ the logit of every token that would complete an n-gram (`n` tokens) already in
/// `history` (HF's `no_repeat_ngram_size`); nothing when `n` is 0 or the history is shorter
/// than `n − 1`. With `n` = 1 every token seen is banned.
pub fn ban_repeated_ngrams(logits: &mut [f32], history: &[u32], n: usize) {
    if n == 0 || history.len() + 1 < n {
        return;
    }
    let key = &history[history.len() + 1 - n..];
    for start in 0..history.len() + 1 - n {
        if history[start..start + n - 1] == *key {
            if let Some(l) = logits.get_mut(history[start + n - 1] as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// HF / llama.cpp rule: for every id already seen, a positive logit is divided by the penalty
/// and a negative one multiplied, so the penalty always makes the token less likely (for p > 1).
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        if let Some(l) = logits.get_mut(id as usize) {
            if !std::mem::replace(&mut seen[id as usize], true) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Index of the largest logit (lowest id on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    crate::simd::argmax(logits) as u32
}

/// The candidates that survive top-k, top-p and min-p with their renormalized probabilities, in
/// descending probability order when top-p sorted them (else unspecified order).
pub fn filtered_distribution(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)).collect();
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, desc);
        cand.truncate(p.top_k);
    }
    let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1)) as f64;
    let mut probs: Vec<(u32, f64)> = cand.iter().map(|&(i, l)| (i, (l as f64 - max).exp())).collect();
    let total: f64 = probs.iter().map(|c| c.1).sum();
    probs.iter_mut().for_each(|c| c.1 /= total);
    if p.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Smallest prefix whose mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, c) in probs.iter().enumerate() {
            mass += c.1;
            if mass >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    if p.min_p > 0.0 {
        let top = probs.iter().fold(0f64, |m, c| m.max(c.1));
        let threshold = p.min_p as f64 * top;
        probs.retain(|c| c.1 >= threshold);
    }
    let total: f64 = probs.iter().map(|c| c.1).sum();
    probs.iter_mut().for_each(|c| c.1 /= total);
    probs
}

/// Picks the next token from raw logits (modified in place by the repetition penalty).
pub fn sample(logits: &mut [f32], history: &[u32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    ban_repeated_ngrams(logits, history, p.no_repeat_ngram_size);
    apply_repetition_penalty(logits, history, p.repetition_penalty);
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    if p.top_k == 0 && p.top_p >= 1.0 && p.min_p == 0.0 {
        return sample_full(logits, p.temperature, rng);
    }
    let probs = filtered_distribution(logits, p);
    let u = rng.next_f64();
    let mut acc = 0.0;
    for &(id, prob) in &probs {
        acc += prob;
        if u < acc {
            return id;
        }
    }
    probs.last().map_or(0, |c| c.0)
}

/// Temperature sampling over the whole vocabulary (no top-k, top-p or min-p): the weights
/// exp((l − max) / T) in one vectorized pass, their sums per block of 1024, then the draw walks
/// the blocks and one block's entries. The same distribution as [`filtered_distribution`]
/// (which renormalizes the same weights), about ten times cheaper on a 50k vocabulary: the
/// server's default settings pay this for every sequence on every step.
fn sample_full(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    const BLOCK: usize = 1024;
    let max = logits[argmax(logits) as usize];
    let mut weights = vec![0f32; logits.len()];
    crate::simd::exp_shifted(logits, max, 1.0 / temperature, &mut weights);
    let sums: Vec<f64> = weights.chunks(BLOCK).map(|c| c.iter().map(|&w| w as f64).sum()).collect();
    let target = rng.next_f64() * sums.iter().sum::<f64>();
    let mut before = 0.0;
    for (b, &sum) in sums.iter().enumerate() {
        if target < before + sum {
            let mut acc = before;
            for (i, &w) in weights[b * BLOCK..].iter().take(BLOCK).enumerate() {
                acc += w as f64;
                if target < acc {
                    return (b * BLOCK + i) as u32;
                }
            }
            // Rounding between the block's sum and the running sum: its last token with weight.
            let last = weights[b * BLOCK..].iter().take(BLOCK).rposition(|&w| w > 0.0).unwrap_or(0);
            return (b * BLOCK + last) as u32;
        }
        before += sum;
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        let mut l = vec![0.1, 2.0, -1.0, 2.0];
        assert_eq!(sample(&mut l, &[], &params(0.0), &mut Rng::new(1)), 1);
    }

    #[test]
    fn repeated_ngrams_are_banned() {
        // History 1 2 3 1 2: the 3-grams ending next would be (1 2 ?): 3 is banned, nothing else.
        let history = [1u32, 2, 3, 1, 2];
        let mut l = vec![0.5f32; 6];
        ban_repeated_ngrams(&mut l, &history, 3);
        assert_eq!(l, [0.5, 0.5, 0.5, f32::NEG_INFINITY, 0.5, 0.5]);
        // 2-grams after (2 ?): 3 (from 2 3); 1-grams: everything seen.
        let mut l = vec![0.5f32; 6];
        ban_repeated_ngrams(&mut l, &history, 2);
        assert_eq!(l, [0.5, 0.5, 0.5, f32::NEG_INFINITY, 0.5, 0.5]);
        let mut l = vec![0.5f32; 6];
        ban_repeated_ngrams(&mut l, &history, 1);
        assert_eq!(l, [0.5, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.5, 0.5]);
        // Off, or a history too short for one n-gram: untouched.
        for n in [0, 7] {
            let mut l = vec![0.5f32; 6];
            ban_repeated_ngrams(&mut l, &history, n);
            assert_eq!(l, [0.5; 6]);
        }
        // Greedy decoding takes the best token that is not banned.
        let p = SamplingParams { no_repeat_ngram_size: 3, ..params(0.0) };
        let mut l = vec![0.0, 0.1, 0.2, 0.9, 0.3, 0.0];
        assert_eq!(sample(&mut l, &history, &p, &mut Rng::new(0)), 4);
        // Sampling never draws a banned token.
        for seed in 0..50 {
            let p = SamplingParams { no_repeat_ngram_size: 3, ..params(1.0) };
            let mut l = vec![0.0, 0.1, 0.2, 3.0, 0.3, 0.0];
            assert_ne!(sample(&mut l, &history, &p, &mut Rng::new(seed)), 3);
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        // With penalty, greedy moves from token 0 to token 2.
        let mut l = vec![2.0, -2.0, 1.5];
        let p = SamplingParams { repetition_penalty: 2.0, ..params(0.0) };
        assert_eq!(sample(&mut l, &[0], &p, &mut Rng::new(0)), 2);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let l = vec![1.0, 4.0, 3.0, 2.0];
        let mut d = filtered_distribution(&l, &SamplingParams { top_k: 2, ..params(1.0) });
        d.sort_by_key(|c| c.0);
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2]);
        let e = (1f64).exp();
        assert!((d[0].1 - e / (e + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs).
        let l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let d = filtered_distribution(&l, &SamplingParams { top_p: 0.75, ..params(1.0) });
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((d[0].1 - 0.625).abs() < 1e-6);
        let d = filtered_distribution(&l, &SamplingParams { top_p: 0.5, ..params(1.0) });
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top() {
        let l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let mut d = filtered_distribution(&l, &SamplingParams { min_p: 0.5, ..params(1.0) });
        d.sort_by_key(|c| c.0);
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = vec![1.0, 0.0];
        let p = |t: f32| filtered_distribution(&l, &params(t)).iter().find(|c| c.0 == 0).unwrap().1;
        assert!(p(0.5) > p(1.0) && p(1.0) > p(2.0));
        assert!((p(1.0) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-6);
    }

    #[test]
    fn draws_follow_the_distribution_and_repeat_with_the_seed() {
        let l: Vec<f32> = [0.7f32, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000).map(|_| sample(&mut l.clone(), &[], &params(1.0), &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let frac0 = a.iter().filter(|&&t| t == 0).count() as f64 / a.len() as f64;
        assert!((frac0 - 0.7).abs() < 0.03, "{frac0}");
    }

    #[test]
    fn full_vocabulary_draws_follow_the_filtered_distribution() {
        // 3000 logits (blocks of 1024 plus a tail); the fast path against the exact probabilities.
        let l: Vec<f32> = (0..3000).map(|i| if i % 997 == 5 { 4.0 + (i / 997) as f32 } else { ((i * 13) % 17) as f32 * 0.1 }).collect();
        let p = params(0.7);
        let exact = filtered_distribution(&l, &p);
        let mut rng = Rng::new(3);
        let draws = 20_000;
        let mut counts = vec![0usize; l.len()];
        for _ in 0..draws {
            counts[sample(&mut l.clone(), &[], &p, &mut rng) as usize] += 1;
        }
        for &(id, prob) in exact.iter().filter(|c| c.1 > 0.02) {
            let freq = counts[id as usize] as f64 / draws as f64;
            assert!((freq - prob).abs() < 0.015, "token {id}: {freq} vs {prob}");
        }
        let rare: f64 = exact.iter().filter(|c| c.1 <= 0.02).map(|c| c.1).sum();
        let rare_freq = exact.iter().filter(|c| c.1 <= 0.02).map(|c| counts[c.0 as usize]).sum::<usize>() as f64 / draws as f64;
        assert!((rare - rare_freq).abs() < 0.02, "{rare} vs {rare_freq}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplingParams { max_new_tokens: 0, ..ok.clone() },
            SamplingParams { temperature: -1.0, ..ok.clone() },
            SamplingParams { temperature: f32::NAN, ..ok.clone() },
            SamplingParams { top_p: 0.0, ..ok.clone() },
            SamplingParams { top_p: 1.5, ..ok.clone() },
            SamplingParams { min_p: 1.0, ..ok.clone() },
            SamplingParams { repetition_penalty: 0.0, ..ok.clone() },
            SamplingParams { stop_strings: vec![String::new()], ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
