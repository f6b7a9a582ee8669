//! Every variant must equal the scalar reference exactly on the integer accumulators, and the
//! scalar reference must equal a naive dot product over the original trits.

use kernels::{
    gemm_i32, gemm_quantized, gemv, gemv_i32, gemv_i32_into, gemv_quantized_into, gemv_quantized_into_with, gemv_quantized_many_into_with, set_num_threads, KernelError, Residency,
    QuantizedActivations, Variant,
};
use proptest::prelude::*;
use ternary::planar::PlanarMatrix;

/// Small deterministic generator (no extra dependency needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn trits(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() % 3) as i8 - 1).collect()
    }
    fn int8(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as u8 as i8).collect()
    }
}

fn naive(trits: &[i8], rows: usize, cols: usize, x: &[i8]) -> Vec<i32> {
    (0..rows)
        .map(|r| (0..cols).map(|k| trits[r * cols + k] as i32 * x[k] as i32).sum())
        .collect()
}

fn matrix(trits: &[i8], rows: usize, cols: usize) -> PlanarMatrix {
    PlanarMatrix::from_trits_per_tensor(trits, rows, cols, 1.0).unwrap()
}

/// Checks GEMV and GEMM of every supported variant against the naive product.
fn check_all_variants(trits: &[i8], rows: usize, cols: usize, xs: &[i8], n_tokens: usize) {
    let w = matrix(trits, rows, cols);
    let q = QuantizedActivations::from_i8(xs, n_tokens, cols, &vec![1.0; n_tokens]).unwrap();
    let expected: Vec<i32> = xs.chunks(cols).flat_map(|x| naive(trits, rows, cols, x)).collect();
    for v in Variant::supported() {
        assert_eq!(gemm_i32(&w, &q, Some(v)).unwrap(), expected, "gemm {v} {rows}x{cols} n={n_tokens}");
        let q1 = QuantizedActivations::from_i8(&xs[..cols], 1, cols, &[1.0]).unwrap();
        assert_eq!(gemv_i32(&w, &q1, Some(v)).unwrap(), expected[..rows], "gemv {v} {rows}x{cols}");
    }
}

#[test]
fn odd_shapes_match_the_reference() {
    let mut rng = Lcg(7);
    let shapes = [(1, 1), (1, 300), (300, 1), (15, 17), (16, 16), (17, 33), (33, 48), (100, 257), (47, 1000)];
    for (rows, cols) in shapes {
        for n_tokens in [1, 3, 16, 31] {
            let trits = rng.trits(rows * cols);
            let xs = rng.int8(n_tokens * cols);
            check_all_variants(&trits, rows, cols, &xs, n_tokens);
        }
    }
}

#[test]
fn large_shape_matches_the_reference() {
    let mut rng = Lcg(11);
    let (rows, cols) = (129, 4111);
    check_all_variants(&rng.trits(rows * cols), rows, cols, &rng.int8(2 * cols), 2);
}

#[test]
fn constant_weights_and_int8_extremes() {
    // -128 never comes out of the quantizer but is a valid int8 input: the kernels must handle it.
    let (rows, cols) = (19, 2053);
    for trit in [-1i8, 0, 1] {
        let trits = vec![trit; rows * cols];
        for x in [-128i8, 127, -127] {
            check_all_variants(&trits, rows, cols, &vec![x; 3 * cols], 3);
        }
        let alternating: Vec<i8> = (0..cols).map(|k| if k % 2 == 0 { -128 } else { 127 }).collect();
        check_all_variants(&trits, rows, cols, &alternating, 1);
    }
    // Worst case magnitude: all +1 against all -128 gives exactly -128·cols.
    let w = matrix(&vec![1; 16 * 4096], 16, 4096);
    let q = QuantizedActivations::from_i8(&vec![-128; 4096], 1, 4096, &[1.0]).unwrap();
    for v in Variant::supported() {
        assert_eq!(gemv_i32(&w, &q, Some(v)).unwrap(), vec![-128 * 4096; 16]);
    }
}

/// Float GEMM/GEMV with group scales against an f64 reference; a GEMM token and the GEMV of that
/// token must agree bit for bit.
fn check_group_scales(rows: usize, cols: usize, group: usize, n_tokens: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let trits = rng.trits(rows * cols);
    let groups = cols.div_ceil(group);
    let scales: Vec<f32> = (0..rows * groups).map(|i| 0.01 * (i % 7 + 1) as f32).collect();
    let w = PlanarMatrix::from_trits(&trits, rows, cols, &scales, group).unwrap();
    let x: Vec<f32> = (0..n_tokens * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let q = QuantizedActivations::quantize(&x, n_tokens, cols).unwrap();
    let mut expected = vec![0f32; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            let mut y = 0f64;
            for k in 0..cols {
                let s = scales[r * groups + k / group] as f64;
                y += s * trits[r * cols + k] as f64 * q.token(t)[k] as f64;
            }
            expected[t * rows + r] = (y * q.scales()[t] as f64) as f32;
        }
    }
    for v in Variant::supported() {
        let got = gemm_quantized(&w, &q, Some(v)).unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()) * (cols as f32 / 80.0).max(1.0), "{v}: {g} vs {e}");
        }
        for t in [0, n_tokens - 1] {
            let mut one = vec![0f32; rows];
            let xt = &x[t * cols..(t + 1) * cols];
            let qt = QuantizedActivations::quantize(xt, 1, cols).unwrap();
            gemv_quantized_into(&w, &qt, &mut one, Some(v)).unwrap();
            assert_eq!(one, got[t * rows..(t + 1) * rows], "{v}: gemv vs gemm token {t}");
            assert_eq!(gemv(&w, xt, Some(v)).unwrap(), one);
            // The streamed GEMV only prefetches differently: bit-identical results.
            let mut streamed = vec![0f32; rows];
            gemv_quantized_into_with(&w, &qt, &mut streamed, Some(v), Residency::Streamed).unwrap();
            assert_eq!(streamed, one, "{v}: streamed gemv");
        }
    }
}

#[test]
fn float_path_with_one_scale_per_row() {
    // group = cols: the GEMV's per-row fast path, still bit-identical to the GEMM; 70 rows =
    // 4 + 1 row tiles with a partial last tile.
    check_group_scales(70, 300, 300, 5, 11);
    check_group_scales(3, 17, 17, 2, 12);
}

#[test]
fn float_path_applies_group_scales() {
    check_group_scales(21, 80, 32, 2, 3);
}

#[test]
fn group_scales_across_gemm_column_blocks() {
    // 1040-column groups (65 chunks) straddle the GEMM's 64-chunk column blocks; 70 rows = 4 + 1
    // row tiles; 6 and 9 tokens leave panel remainders of 2 and 1.
    check_group_scales(70, 2500, 1040, 6, 13);
    check_group_scales(70, 2500, 1040, 9, 14);
}

#[test]
fn long_rows_cross_the_gemv_accumulation_blocks() {
    // The AVX-512 GEMV folds its scaled accumulators every 2^14 chunks (262144 columns). These rows
    // span two folds plus a partial one, with the worst-case magnitude (every product ±128): without
    // the folds its shift-3 lanes (64·code·x) would pass 2^31 after 2^15 chunks and wrap.
    let cols = 16 * (1 << 15) + 40;
    let rows = 65;
    for (trit, x) in [(1i8, -128i8), (-1, -128), (1, 127)] {
        let w = matrix(&vec![trit; rows * cols], rows, cols);
        let q = QuantizedActivations::from_i8(&vec![x; cols], 1, cols, &[1.0]).unwrap();
        let expected = vec![trit as i32 * x as i32 * cols as i32; rows];
        for v in Variant::supported() {
            assert_eq!(gemv_i32(&w, &q, Some(v)).unwrap(), expected, "gemv {v} trit {trit} x {x}");
        }
    }
    let mut rng = Lcg(17);
    let rows = 20;
    check_all_variants(&rng.trits(rows * cols), rows, cols, &rng.int8(2 * cols), 2);
}

#[test]
fn threads_and_concurrent_callers_agree() {
    let mut rng = Lcg(5);
    let (rows, cols) = (200, 300);
    let trits = rng.trits(rows * cols);
    let w = matrix(&trits, rows, cols);
    let x = rng.int8(cols);
    let q = QuantizedActivations::from_i8(&x, 1, cols, &[1.0]).unwrap();
    let expected = naive(&trits, rows, cols, &x);
    set_num_threads(2).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(gemv_i32(&w, &q, None).unwrap(), expected);
                }
            });
        }
    });
    set_num_threads(1).unwrap();
    assert_eq!(gemv_i32(&w, &q, None).unwrap(), expected);
    assert_eq!(set_num_threads(0), Err(KernelError::ZeroThreads));
}

#[test]
fn many_gemvs_in_one_job_equal_one_at_a_time() {
    // Three matrices over the same 528 columns: partial last tiles (70 and 33 rows), per-row and
    // per-group scales, and enough bytes together (and alone, for the 600-row one) to split over
    // two threads, where tasks straddle the matrices.
    let mut rng = Lcg(29);
    let cols: usize = 528;
    let shapes = [(70, cols), (600, 176), (33, 48)];
    let mats: Vec<PlanarMatrix> = shapes
        .iter()
        .map(|&(rows, group)| {
            let groups = cols.div_ceil(group);
            let scales: Vec<f32> = (0..rows * groups).map(|i| 0.01 + (i % 7) as f32 * 0.003).collect();
            PlanarMatrix::from_trits(&rng.trits(rows * cols), rows, cols, &scales, group).unwrap()
        })
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.71).cos()).collect();
    let q = QuantizedActivations::quantize(&x, 1, cols).unwrap();
    for threads in [1, 2] {
        set_num_threads(threads).unwrap();
        for v in Variant::supported() {
            for residency in [Residency::Cached, Residency::Streamed] {
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![f32::NAN; m.rows()]).collect();
                let mut products: Vec<(&PlanarMatrix, &mut [f32])> = mats.iter().zip(outs.iter_mut()).map(|(m, o)| (m, &mut o[..])).collect();
                gemv_quantized_many_into_with(&mut products, &q, Some(v), residency).unwrap();
                for (m, got) in mats.iter().zip(&outs) {
                    let mut one = vec![0f32; m.rows()];
                    gemv_quantized_into_with(m, &q, &mut one, Some(v), residency).unwrap();
                    assert_eq!(got, &one, "{v} {threads} threads {residency:?}: {} rows", m.rows());
                }
            }
        }
    }
    // A wrong output length anywhere is an error before anything runs.
    let (mut a, mut b) = (vec![0f32; 70], vec![0f32; 599]);
    let err = gemv_quantized_many_into_with(&mut [(&mats[0], &mut a[..]), (&mats[1], &mut b[..])], &q, None, Residency::Cached);
    assert_eq!(err, Err(KernelError::OutputLength { expected: 600, got: 599 }));
}

#[test]
fn bad_input_is_an_error() {
    let w = matrix(&[1; 6], 2, 3);
    let q4 = QuantizedActivations::from_i8(&[1; 4], 1, 4, &[1.0]).unwrap();
    assert_eq!(gemv_i32(&w, &q4, None), Err(KernelError::ColsMismatch { expected: 3, got: 4 }));
    assert!(matches!(gemm_i32(&w, &q4, None), Err(KernelError::ColsMismatch { .. })));
    let q2 = QuantizedActivations::from_i8(&[1; 6], 2, 3, &[1.0, 1.0]).unwrap();
    assert!(matches!(gemv_i32(&w, &q2, None), Err(KernelError::ActivationLength { .. })));
    let q1 = QuantizedActivations::from_i8(&[1; 3], 1, 3, &[1.0]).unwrap();
    assert_eq!(gemv_i32_into(&w, &q1, &mut [0; 3], None), Err(KernelError::OutputLength { expected: 2, got: 3 }));
    assert!(matches!(gemv(&w, &[1.0; 2], None), Err(KernelError::ColsMismatch { .. })));
    assert!(matches!(gemv(&w, &[], None), Err(KernelError::ColsMismatch { .. })));
    assert!(matches!(Variant::parse("avx1024"), Err(KernelError::UnknownVariant(_))));
    assert_eq!(Variant::parse("AVX512").unwrap(), Some(Variant::Avx512));
    for v in Variant::ALL {
        if !v.is_supported() {
            assert_eq!(gemv_i32(&w, &q1, Some(v)), Err(KernelError::UnsupportedVariant(v.name())));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_match_the_reference(rows in 1usize..70, cols in 1usize..300, n in 1usize..20, seed: u64) {
        let mut rng = Lcg(seed);
        check_all_variants(&rng.trits(rows * cols), rows, cols, &rng.int8(n * cols), n);
    }
}

#[test]
fn amx_runs_where_the_cpu_has_it() {
    // The AMX variant must be exercised by these tests on a CPU that has it (it is Linux-only:
    // the kernel grants the tile state per process).
    let cpu_has = std::fs::read_to_string("/proc/cpuinfo").map(|s| s.contains(" amx_int8")).unwrap_or(false);
    assert_eq!(Variant::Amx.is_supported(), cpu_has && cfg!(target_arch = "x86_64"));
    if cpu_has {
        assert_eq!(Variant::best(), Variant::Amx);
    }
}

#[test]
fn many_token_groups_and_scale_groups_match_the_reference() {
    // More than one pass of four 16-token tile groups (65, 130 tokens), K not a multiple of 64
    // columns (the zero-padded last step), and the float path with group scales.
    let mut rng = Lcg(11);
    for (rows, cols, n_tokens) in [(33, 80, 65), (64, 200, 130), (17, 48, 64)] {
        let trits = rng.trits(rows * cols);
        let xs = rng.int8(n_tokens * cols);
        check_all_variants(&trits, rows, cols, &xs, n_tokens);
    }
    check_group_scales(48, 320, 64, 70, 5);
    check_group_scales(20, 200, 48, 33, 6);
}
