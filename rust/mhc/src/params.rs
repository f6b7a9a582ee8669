//! Learned parameters of one mHC-lite sub-layer connection, and the official
//! initialization from the mHC-lite reference code.
use crate::error::{check_finite, check_len, checked_size, MhcError, Result};
use crate::permutations::{check_stream_count, permutation_count};

/// α at init: the input-dependent part starts small so the maps start static.
pub const INIT_ALPHA: f64 = 0.01;
/// H_res bias of every non-identity permutation at init (identity gets 0), so
/// H_res starts near I and the residual path starts as a plain residual.
pub const INIT_RES_OTHER_BIAS: f64 = -8.0;
/// Pre/post gate bias on the layer's home stream (layer index mod n) at init.
pub const INIT_GATE_HOME_BIAS: f64 = 1.0;
/// Pre/post gate bias on every other stream at init. The home/other asymmetry
/// is what makes copies of one input diverge into distinct streams.
pub const INIT_GATE_OTHER_BIAS: f64 = -1.0;

/// One map `α · x̂W + b` from the flattened normalized streams (length n·C) to
/// `outputs` logits. `weight` is (n·C) x outputs, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct MapParams {
    pub weight: Vec<f64>,
    pub alpha: f64,
    pub bias: Vec<f64>,
}

impl MapParams {
    fn validate(&self, what: [&'static str; 3], inputs: usize, outputs: usize) -> Result<()> {
        check_len(what[0], &self.weight, checked_size(what[0], &[inputs, outputs])?)?;
        check_finite(what[0], &self.weight)?;
        check_finite(what[1], &[self.alpha])?;
        check_len(what[2], &self.bias, outputs)?;
        check_finite(what[2], &self.bias)
    }

    /// `alpha * (x̂ · W) + b`; `x_hat.len()` equals the weight's row count.
    pub(crate) fn project(&self, x_hat: &[f64]) -> Vec<f64> {
        let acc = match self.bias.len() {
            // The common widths (n = 2, 3, 4 streams: n gates, n! permutations) get a loop the
            // compiler unrolls; a decode step runs 6 maps per layer over n·C inputs each.
            2 => project_fixed::<2>(&self.weight, x_hat).to_vec(),
            3 => project_fixed::<3>(&self.weight, x_hat).to_vec(),
            4 => project_fixed::<4>(&self.weight, x_hat).to_vec(),
            6 => project_fixed::<6>(&self.weight, x_hat).to_vec(),
            24 => project_fixed::<24>(&self.weight, x_hat).to_vec(),
            outputs => {
                let mut acc = vec![0.0; outputs];
                for (row, &x) in self.weight.chunks_exact(outputs).zip(x_hat) {
                    for (a, &w) in acc.iter_mut().zip(row) {
                        *a += x * w;
                    }
                }
                acc
            }
        };
        acc.iter().zip(&self.bias).map(|(a, b)| self.alpha * a + b).collect()
    }
}

/// `x̂ · W` for a `len(x̂) × K` row-major `W`, rows taken four at a time into four partial sums
/// (independent add chains; the sum order differs from a plain loop only in f64 rounding).
fn project_fixed<const K: usize>(weight: &[f64], x_hat: &[f64]) -> [f64; K] {
    let mut acc = [[0f64; K]; 4];
    let (rows, xs) = (weight.chunks_exact(4 * K), x_hat.chunks_exact(4));
    let (rest_w, rest_x) = (rows.remainder(), xs.remainder());
    for (w4, x4) in rows.zip(xs) {
        for (r, a) in acc.iter_mut().enumerate() {
            for j in 0..K {
                a[j] += x4[r] * w4[r * K + j];
            }
        }
    }
    for (row, &x) in rest_w.chunks_exact(K).zip(rest_x) {
        for j in 0..K {
            acc[0][j] += x * row[j];
        }
    }
    std::array::from_fn(|j| (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]))
}

/// Parameters of one sub-layer's connection: H_res (n! logits), H_pre and
/// H_post (n gates each), all functions of the flattened n x C streams.
#[derive(Clone, Debug, PartialEq)]
pub struct MhcParams {
    n: usize,
    dim: usize,
    res: MapParams,
    pre: MapParams,
    post: MapParams,
}

impl MhcParams {
    /// Validates every shape (W_res: n·C x n!, W_pre/W_post: n·C x n, biases
    /// n! / n / n) and that every value is finite.
    pub fn new(n: usize, dim: usize, res: MapParams, pre: MapParams, post: MapParams) -> Result<Self> {
        let k = permutation_count(n)?;
        if dim == 0 {
            return Err(MhcError::ZeroDimension {
                what: "stream dimension C",
            });
        }
        let inputs = checked_size("n * C", &[n, dim])?;
        res.validate(["W_res", "alpha_res", "b_res"], inputs, k)?;
        pre.validate(["W_pre", "alpha_pre", "b_pre"], inputs, n)?;
        post.validate(["W_post", "alpha_post", "b_post"], inputs, n)?;
        Ok(Self { n, dim, res, pre, post })
    }

    /// Official init: W = 0, α = 0.01, H_res bias 0 on the identity and −8
    /// elsewhere, gate biases +1 on stream `layer_index % n` and −1 elsewhere.
    pub fn official_init(n: usize, dim: usize, layer_index: usize) -> Result<Self> {
        check_stream_count(n)?;
        let k = permutation_count(n)?;
        let inputs = checked_size("n * C", &[n, dim])?;
        let home = layer_index % n;
        let mut res_bias = vec![INIT_RES_OTHER_BIAS; k];
        res_bias[0] = 0.0; // index 0 is the identity permutation
        let gate_bias: Vec<f64> = (0..n)
            .map(|i| {
                if i == home {
                    INIT_GATE_HOME_BIAS
                } else {
                    INIT_GATE_OTHER_BIAS
                }
            })
            .collect();
        let zeros = |outputs: usize| checked_size("W", &[inputs, outputs]).map(|len| vec![0.0; len]);
        Self::new(
            n,
            dim,
            MapParams {
                weight: zeros(k)?,
                alpha: INIT_ALPHA,
                bias: res_bias,
            },
            MapParams {
                weight: zeros(n)?,
                alpha: INIT_ALPHA,
                bias: gate_bias.clone(),
            },
            MapParams {
                weight: zeros(n)?,
                alpha: INIT_ALPHA,
                bias: gate_bias,
            },
        )
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn res(&self) -> &MapParams {
        &self.res
    }

    pub fn pre(&self) -> &MapParams {
        &self.pre
    }

    pub fn post(&self) -> &MapParams {
        &self.post
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrolled_projections_match_the_plain_loop() {
        // Row counts that leave 0..3 rows after the four-row steps, every unrolled width and one that is not.
        for k in [2, 3, 4, 6, 24, 5] {
            for rows in [1, 4, 7, 10, 33] {
                let weight: Vec<f64> = (0..rows * k).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
                let x: Vec<f64> = (0..rows).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
                let map = MapParams { weight: weight.clone(), alpha: 0.5, bias: vec![0.25; k] };
                let got = map.project(&x);
                for (j, g) in got.iter().enumerate() {
                    let plain: f64 = (0..rows).map(|r| x[r] * weight[r * k + j]).sum();
                    let want = 0.5 * plain + 0.25;
                    assert!((g - want).abs() <= 1e-12 * want.abs().max(1.0), "k {k} rows {rows}: {g} vs {want}");
                }
            }
        }
    }


    #[test]
    fn official_init_has_documented_values() {
        let p = MhcParams::official_init(4, 3, 6).unwrap();
        assert_eq!(p.res().weight.len(), 12 * 24);
        assert!(p.res().weight.iter().all(|&w| w == 0.0));
        assert_eq!(p.res().bias[0], 0.0);
        assert!(p.res().bias[1..].iter().all(|&b| b == -8.0));
        // layer 6 -> home stream 6 mod 4 = 2
        assert_eq!(p.pre().bias, vec![-1.0, -1.0, 1.0, -1.0]);
        assert_eq!(p.post().bias, vec![-1.0, -1.0, 1.0, -1.0]);
        assert_eq!(p.post().alpha, 0.01);
    }

    #[test]
    fn new_rejects_wrong_shapes_and_values() {
        let good = MhcParams::official_init(2, 2, 0).unwrap();
        let (res, pre, post) = (good.res().clone(), good.pre().clone(), good.post().clone());
        let mut short = res.clone();
        short.weight.pop();
        assert!(matches!(
            MhcParams::new(2, 2, short, pre.clone(), post.clone()),
            Err(MhcError::LengthMismatch { what: "W_res", .. })
        ));
        let mut nan_alpha = pre.clone();
        nan_alpha.alpha = f64::NAN;
        assert!(matches!(
            MhcParams::new(2, 2, res.clone(), nan_alpha, post.clone()),
            Err(MhcError::NonFinite { what: "alpha_pre", .. })
        ));
        assert!(matches!(
            MhcParams::new(2, 0, res.clone(), pre.clone(), post.clone()),
            Err(MhcError::ZeroDimension { .. })
        ));
        assert!(matches!(
            MhcParams::official_init(3, 2, 0),
            Err(MhcError::UnsupportedStreamCount { n: 3 })
        ));
        assert!(matches!(
            MhcParams::official_init(2, 0, 0),
            Err(MhcError::ZeroDimension { .. })
        ));
    }
}
