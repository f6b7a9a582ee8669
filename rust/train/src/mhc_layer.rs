//! mHC-lite residual connection of one sub-layer on tch tensors, following
//! the `mhc` crate exactly (its f64 code is the reference the tests compare
//! against):
//!
//! ```text
//! x̂      = x / sqrt(mean(x²) + 1e-6)         over the flattened n·C streams, no gain
//! H_res  = Σ_k softmax(α_res·x̂W_res + b_res)_k · P_k
//! H_pre  = σ(α_pre·x̂W_pre + b_pre),  H_post = 2σ(α_post·x̂W_post + b_post)
//! x'     = H_res·x + H_postᵀ ⊗ F(H_pre·x)
//! ```
//! Streams are (B, T, n, C). Parameters start at the official init from
//! `mhc::MhcParams::official_init` (W = 0, α = 0.01, H_res ≈ I, gate biases
//! +1 on the home stream and −1 elsewhere, so copies of one input diverge).
//!
//! [`MhcConnection::forward_fused`] (the trainer's CPU integer path, f32 CPU
//! streams): the two passes over the streams (H_pre·x, and H_res·x + H_postᵀ ⊗ F)
//! are one pass each way (`csrc/mhc.cpp`), and the three maps' logits come from
//! one product r·(x·[W_res W_pre W_post]) with r the row's inverse RMS (= x̂·W),
//! so no normalized copy of the streams exists.
use std::ffi::c_char;
use std::ptr;

use tch::nn::Path;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::cpu_bitlinear::take;
use crate::error::Result;

extern "C" {
    #[cfg(test)]
    fn nct_mhc_force_generic(on: i32);
    fn nct_mhc_reduce(s: *const C_tensor, h: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn nct_mhc_mix(
        s: *const C_tensor,
        m: *const C_tensor,
        p: *const C_tensor,
        o: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn nct_mhc_maps(x: *const C_tensor, w: *const C_tensor, eps: f64, out: *mut *mut C_tensor) -> *mut c_char;
}

/// y[r] = Σ_i h[r, i] · s[r, i, :] for f32 CPU streams `s` (rows, n, C) and `h` (rows, n), with autograd.
pub fn stream_reduce(s: &Tensor, h: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: both tensors are live.
    let error = unsafe { nct_mhc_reduce(s.as_ptr(), h.as_ptr(), &mut out) };
    take(error, out, "mHC stream reduce")
}

/// out[r, i] = Σ_j m[r, i, j] · s[r, j, :] + p[r, i] · o[r, :] for f32 CPU `s` (rows, n, C),
/// `m` (rows, n, n), `p` (rows, n), `o` (rows, C), with autograd.
pub fn stream_mix(s: &Tensor, m: &Tensor, p: &Tensor, o: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: all tensors are live.
    let error = unsafe { nct_mhc_mix(s.as_ptr(), m.as_ptr(), p.as_ptr(), o.as_ptr(), &mut out) };
    take(error, out, "mHC stream mix")
}

/// z[r, :] = ρ_r · (x[r, :] · w), ρ_r = (mean(x[r, :]²) + eps)^-½, for f32 CPU `x` (rows, k) and `w`
/// (k, m), with autograd: one pass over x each way (the maps' logits before α and b).
pub fn map_logits(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let mut out: *mut C_tensor = ptr::null_mut();
    // SAFETY: both tensors are live.
    let error = unsafe { nct_mhc_maps(x.as_ptr(), w.as_ptr(), eps, &mut out) };
    take(error, out, "mHC maps")
}

/// Whether the fused stream passes apply: f32 streams on the CPU.
fn fused(streams: &Tensor) -> bool {
    streams.device() == Device::Cpu && streams.kind() == Kind::Float
}

/// The learned map α·x̂W + b (W is (n·C, outputs), as in the `mhc` crate).
#[derive(Debug)]
pub struct StreamMap {
    pub weight: Tensor,
    pub alpha: Tensor,
    pub bias: Tensor,
}

impl StreamMap {
    fn new(p: Path, init: &mhc::MapParams, inputs: i64) -> Self {
        let outputs = init.bias.len() as i64;
        let weight = Tensor::from_slice(&init.weight)
            .reshape([inputs, outputs])
            .to_kind(Kind::Float);
        Self {
            weight: p.var_copy("weight", &weight),
            alpha: p.var_copy("alpha", &Tensor::from_slice(&[init.alpha]).to_kind(Kind::Float)),
            bias: p.var_copy("bias", &Tensor::from_slice(&init.bias).to_kind(Kind::Float)),
        }
    }

    fn logits(&self, x_hat: &Tensor) -> Tensor {
        x_hat.matmul(&self.weight) * &self.alpha + &self.bias
    }
}

/// The three maps of one sub-layer plus the constant permutation matrices.
#[derive(Debug)]
pub struct MhcConnection {
    pub res: StreamMap,
    pub pre: StreamMap,
    pub post: StreamMap,
    /// (n!, n·n): row k is P_k flattened row-major, identity first.
    permutations: Tensor,
    n: i64,
}

/// The per-token maps, exposed for tests and diagnostics.
#[derive(Debug)]
pub struct MapTensors {
    /// (B, T, n, n), doubly stochastic.
    pub h_res: Tensor,
    /// (B, T, n).
    pub h_pre: Tensor,
    /// (B, T, n).
    pub h_post: Tensor,
}

impl MhcConnection {
    /// Official init for sub-layer number `sublayer_index` (its home stream is
    /// `sublayer_index % n`).
    pub fn new(p: Path, n: usize, dim: usize, sublayer_index: usize) -> Result<Self> {
        let init = mhc::MhcParams::official_init(n, dim, sublayer_index)?;
        let inputs = (n * dim) as i64;
        let flat: Vec<f64> = mhc::permutation_matrices(n)?
            .iter()
            .flat_map(|m| m.as_slice().to_vec())
            .collect();
        let count = mhc::permutation_count(n)? as i64;
        let permutations = Tensor::from_slice(&flat)
            .reshape([count, (n * n) as i64])
            .to_kind(Kind::Float)
            .to_device(p.device());
        Ok(Self {
            res: StreamMap::new(p.sub("res"), init.res(), inputs),
            pre: StreamMap::new(p.sub("pre"), init.pre(), inputs),
            post: StreamMap::new(p.sub("post"), init.post(), inputs),
            permutations,
            n: n as i64,
        })
    }

    /// H_res, H_pre and H_post for every token of (B, T, n, C) streams.
    pub fn maps(&self, streams: &Tensor) -> MapTensors {
        let size = streams.size();
        let (b, t) = (size[0], size[1]);
        let flat = streams.flatten(2, 3);
        let mean_square = flat.square().mean_dim([-1i64].as_slice(), true, flat.kind());
        let x_hat = &flat * (mean_square + mhc::RMS_NORM_EPS).rsqrt();
        let mix = self.res.logits(&x_hat).softmax(-1, flat.kind());
        let h_res = mix
            .matmul(&self.permutations.to_kind(flat.kind()))
            .view([b, t, self.n, self.n]);
        MapTensors {
            h_res,
            h_pre: self.pre.logits(&x_hat).sigmoid(),
            h_post: self.post.logits(&x_hat).sigmoid() * 2.0,
        }
    }

    /// [`Self::maps`] for [`Self::forward_fused`]: x̂·W = r·(x·W) with r = rsqrt(mean(x²) + ε), the three
    /// maps' weights side by side, in one pass over the streams each way ([`map_logits`]).
    fn maps_fused(&self, streams: &Tensor) -> MapTensors {
        let size = streams.size();
        let (b, t) = (size[0], size[1]);
        let flat = streams.reshape([b * t, -1]);
        let weights = Tensor::cat(&[&self.res.weight, &self.pre.weight, &self.post.weight], 1);
        let z = map_logits(&flat, &weights, mhc::RMS_NORM_EPS).unwrap_or_else(|e| panic!("{e}"));
        let sizes = [self.res.bias.size()[0], self.n, self.n];
        let mut parts = z.split_with_sizes(sizes, -1).into_iter();
        let mut logits = |map: &StreamMap| parts.next().expect("three maps") * &map.alpha + &map.bias;
        let mix = logits(&self.res).softmax(-1, Kind::Float);
        let h_res = mix.matmul(&self.permutations).view([b, t, self.n, self.n]);
        let h_pre = logits(&self.pre).sigmoid().view([b, t, self.n]);
        let h_post = (logits(&self.post).sigmoid() * 2.0).view([b, t, self.n]);
        MapTensors { h_res, h_pre, h_post }
    }

    /// x' = H_res·x + H_postᵀ ⊗ F(H_pre·x), with `sublayer` mapping (B, T, C)
    /// to (B, T, C).
    pub fn forward(&self, streams: &Tensor, sublayer: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        let maps = self.maps(streams);
        let input = (maps.h_pre.unsqueeze(-1) * streams).sum_dim_intlist([2i64].as_slice(), false, streams.kind());
        let output = sublayer(&input);
        maps.h_res.matmul(streams) + maps.h_post.unsqueeze(-1) * output.unsqueeze(2)
    }

    /// [`Self::forward`] with the stream passes of `csrc/mhc.cpp` and the maps of
    /// [`Self::maps_fused`] on f32 CPU streams (the same values, summed in another order; the
    /// trainer's CPU integer path uses it), [`Self::forward`] otherwise.
    pub fn forward_fused(&self, streams: &Tensor, sublayer: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        if !fused(streams) {
            return self.forward(streams, sublayer);
        }
        let maps = self.maps_fused(streams);
        let size = streams.size();
        let (rows, n, c) = (size[0] * size[1], size[2], size[3]);
        let s = streams.reshape([rows, n, c]);
        let input = stream_reduce(&s, &maps.h_pre.reshape([rows, n])).unwrap_or_else(|e| panic!("{e}"));
        let output = sublayer(&input.view([size[0], size[1], c]));
        let (m, p) = (maps.h_res.reshape([rows, n, n]), maps.h_post.reshape([rows, n]));
        let out = stream_mix(&s, &m, &p, &output.reshape([rows, c])).unwrap_or_else(|e| panic!("{e}"));
        out.view([size[0], size[1], n, c])
    }
}

/// (B, T, C) -> (B, T, n, C): every stream a copy (the `mhc` crate's expand).
pub fn expand(hidden: &Tensor, n: i64) -> Tensor {
    let size = hidden.size();
    hidden
        .unsqueeze(2)
        .expand([size[0], size[1], n, size[2]], false)
        .contiguous()
}

/// (B, T, n, C) -> (B, T, C): the sum over streams (the `mhc` crate's collapse).
pub fn collapse(streams: &Tensor) -> Tensor {
    streams.sum_dim_intlist([2i64].as_slice(), false, streams.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// A connection with random (non-init) parameters, and the same values as
    /// an `mhc::MhcParams`.
    fn random_connection(vs: &VarStore, n: usize, dim: usize) -> (MhcConnection, mhc::MhcParams) {
        let conn = MhcConnection::new(vs.root().sub("c"), n, dim, 1).unwrap();
        tch::manual_seed(11);
        tch::no_grad(|| {
            for map in [&conn.res, &conn.pre, &conn.post] {
                let mut w = map.weight.shallow_clone();
                w.copy_(&(Tensor::randn_like(&w) * 0.5));
                let mut b = map.bias.shallow_clone();
                b.copy_(&Tensor::randn_like(&b));
                let mut a = map.alpha.shallow_clone();
                a.copy_(&(Tensor::rand_like(&a) + 0.5));
            }
        });
        let params = |m: &StreamMap| mhc::MapParams {
            weight: to_vec(&m.weight),
            alpha: to_vec(&m.alpha)[0],
            bias: to_vec(&m.bias),
        };
        let reference = mhc::MhcParams::new(n, dim, params(&conn.res), params(&conn.pre), params(&conn.post)).unwrap();
        (conn, reference)
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn maps_and_update_match_the_mhc_crate() {
        for (n, kind, tol) in [(2, Kind::Float, 1e-5), (4, Kind::Float, 1e-5), (4, Kind::Double, 1e-12)] {
            let dim = 6;
            let mut vs = VarStore::new(Device::Cpu);
            let (conn, reference) = random_connection(&vs, n, dim);
            if kind == Kind::Double {
                vs.double();
            }
            let (b, t) = (2i64, 3i64);
            let streams = Tensor::randn([b, t, n as i64, dim as i64], (kind, Device::Cpu));
            let flat = to_vec(&streams);
            let tokens = (b * t) as usize;

            let maps = conn.maps(&streams);
            let (h_res, h_pre, h_post) = mhc::flatten_maps(&reference.maps_batch(tokens, &flat).unwrap());
            assert!(max_abs_diff(&to_vec(&maps.h_res), &h_res) < tol, "H_res n={n}");
            assert!(max_abs_diff(&to_vec(&maps.h_pre), &h_pre) < tol, "H_pre n={n}");
            assert!(max_abs_diff(&to_vec(&maps.h_post), &h_post) < tol, "H_post n={n}");

            // A sub-layer that mixes channels: F(h) = tanh(h·M).
            let m = Tensor::randn([dim as i64, dim as i64], (kind, Device::Cpu));
            let ours = to_vec(&conn.forward(&streams, |h| h.matmul(&m).tanh()));
            let m_vals = to_vec(&m);
            let theirs = mhc::residual_update(&reference, tokens, &flat, |h| {
                h.chunks(dim)
                    .flat_map(|row| {
                        (0..dim)
                            .map(|j| (0..dim).map(|i| row[i] * m_vals[i * dim + j]).sum::<f64>().tanh())
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap();
            assert!(max_abs_diff(&ours, &theirs) < tol, "update n={n} {kind:?}");
        }
    }

    #[test]
    fn fused_stream_passes_have_the_gradients_of_the_unfused_graph() {
        // forward_fused on f32 CPU streams against the ATen graph in f64: same parameters, same inputs.
        // 19 channels exercise the masked tails; each case runs the AVX-512 kernels (where the CPU has
        // them) and the generic ones.
        for (n, dim, generic) in [(2usize, 40i64, false), (4, 19, false), (2, 40, true), (4, 19, true)] {
            // SAFETY: sets an atomic flag; both kernel sets compute the same values.
            unsafe { nct_mhc_force_generic(generic as i32) };
            let vs32 = VarStore::new(Device::Cpu);
            let (c32, _) = random_connection(&vs32, n, dim as usize);
            // The same values by copy (the global RNG is shared with tests running in parallel).
            let mut vs64 = VarStore::new(Device::Cpu);
            let c64 = MhcConnection::new(vs64.root().sub("c"), n, dim as usize, 1).unwrap();
            vs64.copy(&vs32).unwrap();
            vs64.double();
            tch::manual_seed(12);
            let f32_cpu = (Kind::Float, Device::Cpu);
            let streams = Tensor::randn([2, 3, n as i64, dim], f32_cpu);
            let (m, g) = (Tensor::randn([dim, dim], f32_cpu), Tensor::randn([2, 3, n as i64, dim], f32_cpu));
            let s32 = streams.copy().set_requires_grad(true);
            let s64 = streams.to_kind(Kind::Double).set_requires_grad(true);
            let y32 = c32.forward_fused(&s32, |h| h.matmul(&m).tanh());
            let m64 = m.to_kind(Kind::Double);
            let y64 = c64.forward(&s64, |h| h.matmul(&m64).tanh());
            assert!(max_abs_diff(&to_vec(&y32), &to_vec(&y64)) < 1e-5, "forward n={n}");
            (y32 * &g).sum(Kind::Float).backward();
            (y64 * g.to_kind(Kind::Double)).sum(Kind::Double).backward();
            assert!(max_abs_diff(&to_vec(&s32.grad()), &to_vec(&s64.grad())) < 1e-4, "d streams n={n}");
            let (v32, v64) = (vs32.variables(), vs64.variables());
            for (name, t) in &v32 {
                let (a, b) = (to_vec(&t.grad()), to_vec(&v64[name].grad()));
                let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                assert!(max_abs_diff(&a, &b) < 1e-4 * scale, "d{name} n={n}: {a:?} vs {b:?}");
            }
        }
        unsafe { nct_mhc_force_generic(0) };
    }

    #[test]
    fn fused_stream_passes_reject_bad_shapes() {
        let f = (Kind::Float, Device::Cpu);
        let s = Tensor::zeros([4, 2, 8], f);
        let err = stream_reduce(&s, &Tensor::zeros([4, 3], f)).unwrap_err().to_string();
        assert!(err.contains("(rows, n)"), "{err}");
        let err = stream_reduce(&s.to_kind(Kind::Double), &Tensor::zeros([4, 2], f)).unwrap_err().to_string();
        assert!(err.contains("f32"), "{err}");
        let (m, p) = (Tensor::zeros([4, 2, 2], f), Tensor::zeros([4, 2], f));
        let err = stream_mix(&s, &m, &p, &Tensor::zeros([4, 7], f)).unwrap_err().to_string();
        assert!(err.contains("output (rows, C)"), "{err}");
        assert_eq!(stream_mix(&s, &m, &p, &Tensor::zeros([4, 8], f)).unwrap().size(), [4, 2, 8]);
    }

    #[test]
    fn map_logits_match_the_aten_graph() {
        // k = 37 exercises the masked tails; m = 6 (n = 2) takes the AVX-512 kernels where the CPU has
        // them, m = 20 the generic ones; each case also runs with the generic kernels forced.
        for (rows, k, m, generic) in [(33i64, 37i64, 6i64, false), (33, 37, 6, true), (5, 64, 20, false), (1, 16, 1, true)] {
            // SAFETY: sets an atomic flag; both kernel sets compute the same values.
            unsafe { nct_mhc_force_generic(generic as i32) };
            let f = (Kind::Float, Device::Cpu);
            let x = Tensor::randn([rows, k], f).set_requires_grad(true);
            let w = (Tensor::randn([k, m], f) * 0.3).set_requires_grad(true);
            let g = Tensor::randn([rows, m], f);
            let ours = map_logits(&x, &w, 1e-6).unwrap();
            let grads = Tensor::run_backward(&[(&ours * &g).sum(Kind::Float)], &[&x, &w], false, false);
            let (x64, w64) = (x.detach().to_kind(Kind::Double).set_requires_grad(true), w.detach().to_kind(Kind::Double).set_requires_grad(true));
            let r = (x64.square().mean_dim([-1i64].as_slice(), true, Kind::Double) + 1e-6).rsqrt();
            let want = x64.mm(&w64) * r;
            let want_grads = Tensor::run_backward(&[(&want * g.to_kind(Kind::Double)).sum(Kind::Double)], &[&x64, &w64], false, false);
            let rel = |a: &Tensor, b: &Tensor| f64::try_from((a.to_kind(Kind::Double) - b).norm() / b.norm()).unwrap();
            let case = (rows, k, m, generic);
            assert!(rel(&ours, &want) < 1e-5, "{case:?} forward");
            assert!(rel(&grads[0], &want_grads[0]) < 1e-5, "{case:?} dx");
            assert!(rel(&grads[1], &want_grads[1]) < 1e-5, "{case:?} dw");
        }
        unsafe { nct_mhc_force_generic(0) };
        let f = (Kind::Float, Device::Cpu);
        for (x, w, eps) in [
            (Tensor::zeros([4, 8], f), Tensor::zeros([7, 6], f), 1e-6),
            (Tensor::zeros([4, 8], f), Tensor::zeros([8, 6], f), 0.0),
            (Tensor::zeros([4, 8], (Kind::Double, Device::Cpu)), Tensor::zeros([8, 6], f), 1e-6),
            (Tensor::zeros([8], f), Tensor::zeros([8, 6], f), 1e-6),
        ] {
            let err = map_logits(&x, &w, eps).unwrap_err().to_string();
            assert!(err.contains("mHC maps"), "{err}");
        }
    }

    #[test]
    fn expand_and_collapse_match_the_mhc_crate() {
        let hidden = Tensor::randn([1, 2, 3], (Kind::Double, Device::Cpu));
        let shape = mhc::StreamShape::new(2, 4, 3).unwrap();
        let streams = expand(&hidden, 4);
        assert_eq!(to_vec(&streams), mhc::expand(shape, &to_vec(&hidden)).unwrap());
        assert_eq!(
            to_vec(&collapse(&streams)),
            mhc::collapse(shape, &to_vec(&streams)).unwrap()
        );
    }
}
