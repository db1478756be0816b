//! Spec §5's integration check for the convolution (§3.5): a tiny convolution whose
//! importance-weighted density integrates to one.
//!
//! In a test binary of its own, so the device's generator is this test's alone and the seed
//! fixes every draw. The estimate's standard error has a heavy tail: in a sweep of seeds 26–33
//! the mass was within 0.01 of 1 every time, but one stride-2 case in the 16 had a standard
//! error of 0.013, above the 0.01 this test needs to judge; and sharing the generator with the
//! tests of `tests/conv.rs` running at once made the draws, and so the verdict, change from run
//! to run (one CI run failed that way on a 0.037).

mod common;

use burn::tensor::Device;
use common::*;
use flowify::flow::{Mode, HALF_LN_2PI};
use flowify::layers::conv::ConvSpec;
use flowify::layers::{Layer, LayerSpec};
use flowify::model::FlowModel;
use flowify::spec::ModelSpec;

/// Cholesky factor `L` (lower, `Σ = L·Lᵀ`) of a symmetric positive definite matrix.
fn cholesky(s: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let d = s.len();
    let mut l = vec![vec![0.0; d]; d];
    for i in 0..d {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|m| l[i][m] * l[j][m]).sum();
            if i == j {
                let diag = s[i][i] - dot;
                assert!(diag > 0.0, "covariance is positive definite");
                l[i][i] = diag.sqrt();
            } else {
                l[i][j] = (s[i][j] - dot) / l[j][j];
            }
        }
    }
    l
}

/// An importance-sampling proposal for `∫ p(x) dx`: a Gaussian fitted to draws through the
/// model's inverse (exact samples of `p`), widened, and mixed with a wider copy of itself so the
/// weights stay bounded: `q = 0.8·N(m, 1.2²Σ) + 0.2·N(m, 2²Σ)`.
struct Proposal {
    mean: Vec<f64>,
    /// Cholesky factor of `Σ`.
    chol: Vec<Vec<f64>>,
}

impl Proposal {
    const WEIGHTS: [f64; 2] = [0.8, 0.2];
    const SCALES: [f64; 2] = [1.2, 2.0];

    fn fit(model: &FlowModel, draws: usize, dev: &Device) -> Self {
        let [c, h, w] = model.input_shape();
        let d = c * h * w;
        let samples = values(model.sample(draws, Mode::Sample, 1.0, dev));
        let mut mean = vec![0f64; d];
        for s in samples.chunks(d) {
            for (m, v) in mean.iter_mut().zip(s) {
                *m += *v as f64 / draws as f64;
            }
        }
        let mut cov = vec![vec![0f64; d]; d];
        for s in samples.chunks(d) {
            for i in 0..d {
                for j in 0..d {
                    cov[i][j] += (s[i] as f64 - mean[i]) * (s[j] as f64 - mean[j]) / draws as f64;
                }
            }
        }
        Self {
            mean,
            chol: cholesky(&cov),
        }
    }

    /// `(estimate, standard error)` of `∫ p(x) dx` from `n` draws `x ~ q`, one forward pass in
    /// sample mode each: the mean of `exp(L(x, u)) / q(x)`. Since `E_u[exp(L(x, u))] = p(x)`,
    /// one noise draw per point keeps the estimator unbiased.
    fn mass(&self, model: &FlowModel, n: usize, dev: &Device) -> (f64, f64) {
        let [c, h, w] = model.input_shape();
        let d = self.mean.len();
        let l = &self.chol;
        let log_det_l: f64 = (0..d).map(|i| l[i][i].ln()).sum();
        // Stratified draws from the mixture: the first 80% from the first component.
        let first = (n as f64 * Self::WEIGHTS[0]) as usize;
        let eps = values(random([n, d], 1.0, dev));
        let mut xs = Vec::with_capacity(n * d);
        let mut log_q = Vec::with_capacity(n);
        for (row, e) in eps.chunks(d).enumerate() {
            let scale = Self::SCALES[if row < first { 0 } else { 1 }];
            // x = m + c·L·ε, so L⁻¹(x − m) = c·ε.
            for i in 0..d {
                let lx: f64 = (0..=i).map(|j| l[i][j] * e[j] as f64).sum();
                xs.push((self.mean[i] + scale * lx) as f32);
            }
            let r2: f64 = e.iter().map(|v| (scale * *v as f64).powi(2)).sum();
            let comps: Vec<f64> = Self::WEIGHTS
                .iter()
                .zip(Self::SCALES)
                .map(|(wt, s)| {
                    wt.ln() - r2 / (2.0 * s * s) - d as f64 * (s.ln() + HALF_LN_2PI) - log_det_l
                })
                .collect();
            let top = comps.iter().cloned().fold(f64::MIN, f64::max);
            log_q.push(top + comps.iter().map(|c| (c - top).exp()).sum::<f64>().ln());
        }
        let ll = values(model.log_likelihood(tensor(xs, [n, c, h, w], dev), Mode::Sample));
        let ratios: Vec<f64> = ll
            .iter()
            .zip(&log_q)
            .map(|(l, q)| (*l as f64 - q).exp())
            .collect();
        let mean = ratios.iter().sum::<f64>() / n as f64;
        let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mean, (var / n as f64).sqrt())
    }
}

/// Sets the scale of a convolution's pad and copy noise.
fn set_noise(model: &mut FlowModel, log_a: f64) {
    let Layer::Conv(conv) = &mut model.layers[0] else {
        unreachable!()
    };
    conv.tile.log_scale = scalar_param(conv.tile.log_scale.clone(), log_a);
    conv.pad.log_scale = scalar_param(conv.pad.log_scale.clone(), log_a);
}

/// The spec's "1×3 signal, kernel 2, stride 1" does not fit this layer: FlowConv2d is 2-D with
/// square kernels, so a 1-row input is smaller than any kernel above 1. The smallest 2-D inputs
/// that exercise each augmentation of §3.5 are 2×3 with kernel 2:
///
/// * stride 1: two 2×2 patches share the middle column, so two pixels are copied twice
///   (tile noise, 2 dims) and nothing is padded; with `C_out = 2` the kernel is a funnel 4 → 2
///   whose dropped coordinates are scored by the context network. `x` has 6 dims, the patches 8.
/// * stride 2: one column of pad noise (2 values) makes a 2×4 image of two disjoint patches; with
///   `C_out = 3` the kernel is a funnel 4 → 3.
///
/// Both noises are Gaussian (full support) and the funnel's density is exact, so
/// `E_u[exp(L(x, u))]` is exactly `p(x)` and must integrate to 1 (unlike the bounded uniform
/// noise of a dense augmentation, see tests/layers.rs). 6 dims are too many for a grid, so the
/// integral is estimated by importance sampling over `(x, u)` (8 dims). It does not depend on the
/// noise scales `a`, which only set the estimator's variance (the weights' variance is infinite
/// when `a` is narrower than the conditional spread of the noise under the model, as with the
/// reference init `a_t = 0.1`); a pilot run picks the scale with the smallest standard error, and
/// a fresh run at that scale gives the estimate.
#[test]
fn tiny_overlapping_and_padded_convolutions_integrate_to_one() {
    let dev = device(26);
    for (stride, c_out) in [(1, 2), (2, 3)] {
        let spec = ModelSpec {
            input: [1, 2, 3],
            layers: vec![LayerSpec::Conv(ConvSpec::new(1, c_out, 2, stride))],
            classes: None,
            train: Default::default(),
        };
        let mut model = spec.init(&dev).unwrap();
        let Layer::Conv(conv) = &model.layers[0] else {
            unreachable!()
        };
        assert!(conv.context.is_some(), "the kernel is a funnel");
        assert_eq!(conv.tile.overlaps(), stride == 1);
        assert_eq!(conv.pad.adds_values(), stride == 2);
        let proposal = Proposal::fit(&model, 20_000, &dev);
        let pilot = [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0].map(|log_a| {
            set_noise(&mut model, log_a);
            (log_a, proposal.mass(&model, 40_000, &dev).1)
        });
        let (log_a, _) = pilot
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        set_noise(&mut model, log_a);
        let (mass, se) = proposal.mass(&model, 400_000, &dev);
        assert!(
            se < 0.01,
            "stride {stride}: standard error {se} too large to judge (pilot {pilot:?})"
        );
        assert!(
            (mass - 1.0).abs() < 0.02,
            "stride {stride}: ∫ E_u[exp L] dx = {mass} ± {se} (noise scale e^{log_a})"
        );
    }
}
