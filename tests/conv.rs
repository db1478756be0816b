//! Spec §5 checks for the convolution (§3.5: pad, tile, kernel) and coupling (§3.6) layers, and a
//! smoke run of every preset of §4: `V` against independent host computations and autodiff
//! Jacobians, exact inverses, and mean mode as an ordinary strided convolution (the tiny
//! convolution whose density integrates to one is in `tests/integrate.rs`).

mod common;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use common::*;
use flowify::data::Dataset;
use flowify::flow::{Mode, Transform, HALF_LN_2PI};
use flowify::layers::conv::FlowConv2dConfig;
use flowify::layers::coupling::CouplingStackConfig;
use flowify::layers::dense::FlowLinear;
use flowify::layers::pad::{pad_amount, PadConfig};
use flowify::layers::tile::TileConfig;
use flowify::presets::{spec, NAMES};

// ---------------------------------------------------------------------------------------------
// 1. Pad
// ---------------------------------------------------------------------------------------------

#[test]
fn pad_v_is_the_gaussian_score_of_the_added_values_and_inverse_crops() {
    let dev = device(20);
    // (k, t, H, W) → (rows, cols) added: (3,2,6,8) → (1,1); (3,3,5,4) → (1,2); (2,2,3,4) → (1,0).
    for (k, t, h, w, rows, cols) in [(3, 2, 6, 8, 1, 1), (3, 3, 5, 4, 1, 2), (2, 2, 3, 4, 1, 0)] {
        assert_eq!(
            (pad_amount(h, k, t), pad_amount(w, k, t)),
            (rows, cols),
            "pad amount"
        );
        let mut pad = PadConfig::new(k, t, h, w).init(&dev);
        assert!(pad.adds_values());
        assert_eq!(pad.padded_size(), [h + rows, w + cols]);
        for log_a in [None, Some(-0.7)] {
            if let Some(v) = log_a {
                pad.log_scale = scalar_param(pad.log_scale.clone(), v);
            }
            let log_a = values(pad.log_scale.val())[0] as f64;
            let a = log_a.exp();
            let (batch, c) = (3, 2);
            let (hp, wp) = (h + rows, w + cols);
            let x = random([batch, c, h, w], 1.0, &dev);
            let (z, v) = pad.forward(x.clone(), Mode::Sample);
            assert_eq!(z.dims(), [batch, c, hp, wp]);
            let (xs, zs, v) = (values(x.clone()), values(z.clone()), values(v));
            // The added values, straight from the output, scored on the host.
            let mut expected = vec![0f64; batch];
            let mut added = 0usize;
            for b in 0..batch {
                for ch in 0..c {
                    for r in 0..hp {
                        for s in 0..wp {
                            let zv = zs[((b * c + ch) * hp + r) * wp + s] as f64;
                            if r < h && s < w {
                                let xv = xs[((b * c + ch) * h + r) * w + s] as f64;
                                assert_eq!(zv, xv, "the input is copied unchanged");
                            } else {
                                added += 1;
                                // −log N(p; 0, a²)
                                expected[b] += 0.5 * (zv / a).powi(2) + log_a + HALF_LN_2PI;
                            }
                        }
                    }
                }
            }
            assert_eq!(added, batch * c * (hp * wp - h * w));
            let pads: Vec<f32> = zs
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    let (r, s) = ((i / wp) % hp, i % wp);
                    r >= h || s >= w
                })
                .map(|(_, v)| *v)
                .collect();
            assert!(
                pads.iter().all(|p| *p != 0.0),
                "sample mode draws the pad values"
            );
            for b in 0..batch {
                assert!(
                    (v[b] as f64 - expected[b]).abs() < 1e-4 * (1.0 + expected[b].abs()),
                    "pad ({k},{t},{h},{w}) a = {a}: V = {}, host −Σ log N = {}",
                    v[b],
                    expected[b]
                );
            }
            assert_eq!(
                values(pad.inverse(z, Mode::Sample)),
                xs,
                "inverse(forward(x)) = x exactly"
            );

            // Mean mode pads zeros; V is then the constant part alone.
            let (z, v) = pad.forward(x, Mode::Mean);
            let zs = values(z);
            for (i, zv) in zs.iter().enumerate() {
                let (r, s) = ((i / wp) % hp, i % wp);
                if r >= h || s >= w {
                    assert_eq!(*zv, 0.0, "mean mode pads zeros");
                }
            }
            let constant = (c * (hp * wp - h * w)) as f64 * (log_a + HALF_LN_2PI);
            assert_close(
                &values(v),
                &vec![constant as f32; batch],
                1e-5,
                "mean-mode V",
            );
        }
    }
}

#[test]
fn pad_without_padding_is_the_identity() {
    let dev = device(21);
    for (k, t, h, w) in [(3, 2, 5, 5), (2, 2, 4, 6), (2, 1, 3, 3), (3, 3, 6, 3)] {
        let pad = PadConfig::new(k, t, h, w).init(&dev);
        assert!(!pad.adds_values(), "({k},{t},{h},{w})");
        assert_eq!(pad.padded_size(), [h, w]);
        let x = random([2, 3, h, w], 1.0, &dev);
        for mode in [Mode::Sample, Mode::Mean] {
            let (z, v) = pad.forward(x.clone(), mode);
            assert_eq!(values(z.clone()), values(x.clone()));
            assert_eq!(values(v), vec![0.0; 2]);
            assert_eq!(values(pad.inverse(z, mode)), values(x.clone()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Tile
// ---------------------------------------------------------------------------------------------

/// The copies of every pixel in a tile output, gathered on the host with the layout the layer
/// documents (`out[b, c·k·k + i·k + j, p, q]` = pixel `(p·t + i, q·t + j)` of channel `c`):
/// `copies[((b·C + c)·H + r)·W + s]` lists that pixel's copies.
fn gather_copies(out: &[f32], [batch, c, h, w]: [usize; 4], k: usize, t: usize) -> Vec<Vec<f64>> {
    let (ho, wo) = ((h - k) / t + 1, (w - k) / t + 1);
    let ckk = c * k * k;
    assert_eq!(out.len(), batch * ckk * ho * wo);
    let mut copies = vec![vec![]; batch * c * h * w];
    for b in 0..batch {
        for ch in 0..c {
            for i in 0..k {
                for j in 0..k {
                    for p in 0..ho {
                        for q in 0..wo {
                            let f = ch * k * k + i * k + j;
                            let value = out[((b * ckk + f) * ho + p) * wo + q];
                            let (r, s) = (p * t + i, q * t + j);
                            copies[((b * c + ch) * h + r) * w + s].push(value as f64);
                        }
                    }
                }
            }
        }
    }
    copies
}

#[test]
fn overlapping_tile_v_matches_the_host_and_inverse_removes_the_noise() {
    let dev = device(22);
    // (k, t, H, W): coverage counts n ∈ {1, 2, 4}, {1, 2, 4} and up to 9.
    for (k, t, h, w) in [(3, 2, 5, 7), (2, 1, 3, 4), (3, 1, 4, 5)] {
        for noise in [0.1, 0.7] {
            let mut tile = TileConfig::new(k, t).init(&dev);
            assert!(tile.overlaps());
            if noise != 0.1 {
                tile.log_scale = scalar_param(tile.log_scale.clone(), f64::ln(noise));
            }
            let a = values(tile.log_scale.val().exp())[0] as f64;
            assert!((a - noise).abs() < 1e-6);
            let (batch, c) = (2, 2);
            let shape = [batch, c, h, w];
            let x = random(shape, 1.0, &dev);
            let xs = values(x.clone());
            let (ho, wo) = ((h - k) / t + 1, (w - k) / t + 1);

            let (z, v) = tile.forward(x.clone(), Mode::Sample);
            assert_eq!(z.dims(), [batch, c * k * k, ho, wo]);
            let copies = gather_copies(&values(z.clone()), shape, k, t);
            let mut expected = vec![0f64; batch];
            let mut max_n = 0;
            let mut noise_seen = 0f64;
            for (idx, cs) in copies.iter().enumerate() {
                let n = cs.len();
                max_n = max_n.max(n);
                assert!(n >= 1, "every pixel is covered");
                let xv = xs[idx] as f64;
                // copies = x·1 + √n·η
                let eta: Vec<f64> = cs.iter().map(|c| (c - xv) / (n as f64).sqrt()).collect();
                let sum: f64 = eta.iter().sum();
                assert!(sum.abs() < 1e-4, "η ⟂ 1: Σ η = {sum} for n = {n}");
                let norm2: f64 = eta.iter().map(|e| e * e).sum();
                if n > 1 {
                    noise_seen += norm2;
                }
                let nf = n as f64;
                let log_density = -(nf - 1.0) * (a.ln() + HALF_LN_2PI) - norm2 / (2.0 * a * a);
                expected[idx / (c * h * w)] += 0.5 * nf * nf.ln() - log_density;
            }
            assert!(max_n > 1 && noise_seen > 0.0, "the test sees copy noise");
            let v = values(v);
            for b in 0..batch {
                assert!(
                    (v[b] as f64 - expected[b]).abs() < 2e-4 * (1.0 + expected[b].abs()),
                    "tile k={k} t={t} {h}×{w} a={a}: V = {}, host = {}",
                    v[b],
                    expected[b]
                );
            }
            assert_close(
                &values(tile.inverse(z, Mode::Sample)),
                &xs,
                1e-5,
                "tile inverse(forward(x))",
            );

            // Mean mode: plain copies, V = Σ (n/2) ln n + (n − 1)(log a + ½ ln 2π).
            let (z, v) = tile.forward(x, Mode::Mean);
            let copies = gather_copies(&values(z), shape, k, t);
            let mut constant = 0f64;
            for (idx, cs) in copies.iter().enumerate() {
                assert!(cs.iter().all(|c| *c == xs[idx] as f64), "exact copies");
                let n = cs.len() as f64;
                if idx < c * h * w {
                    constant += 0.5 * n * n.ln() + (n - 1.0) * (a.ln() + HALF_LN_2PI);
                }
            }
            assert_close(
                &values(v),
                &vec![constant as f32; batch],
                1e-5,
                "mean-mode tile V",
            );
        }
    }
}

#[test]
fn non_overlapping_tile_is_a_pure_rearrangement() {
    let dev = device(23);
    for (k, h, w) in [(2, 4, 6), (3, 3, 6)] {
        let tile = TileConfig::new(k, k).init(&dev);
        assert!(!tile.overlaps());
        let shape = [2, 3, h, w];
        let x = random(shape, 1.0, &dev);
        let xs = values(x.clone());
        for mode in [Mode::Sample, Mode::Mean] {
            let (z, v) = tile.forward(x.clone(), mode);
            assert_eq!(values(v), vec![0.0; 2]);
            let copies = gather_copies(&values(z.clone()), shape, k, k);
            for (idx, cs) in copies.iter().enumerate() {
                assert_eq!(cs, &vec![xs[idx] as f64], "one exact copy per pixel");
            }
            assert_eq!(values(tile.inverse(z, mode)), xs);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The whole convolution: mean mode, Jacobian, inverse
// ---------------------------------------------------------------------------------------------

/// Random non-zero log-scales and bias, so the kernel is not a pure rotation.
fn perturb_kernel(kernel: &mut FlowLinear) {
    kernel.log_scale = kernel
        .log_scale
        .clone()
        .map(|s| s.random_like(Distribution::Normal(0.0, 0.5)).require_grad());
    kernel.bias = kernel
        .bias
        .clone()
        .map(|b| b.random_like(Distribution::Normal(0.0, 1.0)).require_grad());
}

#[test]
fn conv_mean_mode_is_an_ordinary_strided_convolution() {
    let dev = device(24);
    // (c_in, c_out, k, t, H, W): funnel 8→3; bijection 4→4; augmentation 4→6; and an
    // overlapping, padded funnel 18→5 (mean mode pads zeros and copies without noise, so it is
    // the convolution of the zero-padded input).
    for (c_in, c_out, k, t, h, w) in [
        (2, 3, 2, 2, 4, 4),
        (1, 4, 2, 2, 4, 4),
        (1, 6, 2, 2, 4, 6),
        (2, 5, 3, 2, 6, 6),
    ] {
        let config = FlowConv2dConfig::new(c_in, c_out, k, t, h, w);
        let mut conv = config.init(&dev);
        perturb_kernel(&mut conv.kernel);
        let [_, ho, wo] = config.output_shape().unwrap();
        let batch = 3;
        let x = random([batch, c_in, h, w], 1.0, &dev);
        let (z, _) = conv.forward(x.clone(), Mode::Mean);
        assert_eq!(z.dims(), [batch, c_out, ho, wo]);

        let ckk = c_in * k * k;
        let weight = dense_matrix(&conv.kernel)
            .transpose()
            .reshape([c_out, c_in, k, k]);
        let (rows, cols) = (pad_amount(h, k, t), pad_amount(w, k, t));
        let padded = Tensor::cat(vec![x, Tensor::zeros([batch, c_in, rows, w], &dev)], 2);
        let padded = Tensor::cat(
            vec![padded, Tensor::zeros([batch, c_in, h + rows, cols], &dev)],
            3,
        );
        let expected = conv2d(
            padded,
            weight,
            Some(conv.kernel.bias.val()),
            ConvOptions::new([t, t], [0, 0], [1, 1], 1),
        );
        assert_eq!(expected.dims(), [batch, c_out, ho, wo]);
        assert_close(
            &values(z),
            &values(expected),
            1e-4,
            &format!("Conv({c_in}→{c_out},{k},{t}) on {h}×{w} ({ckk}-value patches), mean mode"),
        );
    }
}

#[test]
fn bijective_conv_v_is_log_det_and_non_dropping_convs_invert_exactly() {
    let dev = device(25);
    // Non-overlapping 4→4 kernel on 4×4: a 16 → 16 bijection with V = (positions)·Σ s.
    let config = FlowConv2dConfig::new(1, 4, 2, 2, 4, 4);
    let mut conv = config.init(&dev);
    perturb_kernel(&mut conv.kernel);
    conv.kernel.log_scale = conv
        .kernel
        .log_scale
        .clone()
        .map(|s| tensor(vec![0.3, -0.2, 0.5, 0.1], [4], &s.device()).require_grad());
    assert_eq!(
        flowify::layers::LayerSpec::from(flowify::layers::conv::ConvSpec::new(1, 4, 2, 2))
            .kind([1, 4, 4]),
        flowify::flow::Kind::Bijection
    );
    let f = |x: Tensor<2>| {
        conv.forward(x.reshape([1, 1, 4, 4]), Mode::Sample)
            .0
            .reshape([1, 16])
    };
    for _ in 0..2 {
        let x = values(random([1, 16], 1.0, &dev));
        let expected = log_abs_det(jacobian(f, &x, &dev));
        let (_, v) = conv.forward(tensor(x.clone(), [1, 1, 4, 4], &dev), Mode::Sample);
        let v = values(v)[0] as f64;
        let sum_s: f64 = values(conv.kernel.log_scale.val())
            .iter()
            .map(|&s| s as f64)
            .sum();
        assert!(
            (v - expected).abs() < 1e-3 * (1.0 + expected.abs()),
            "V = {v}, log|det J| = {expected}"
        );
        assert!((sum_s - 0.7).abs() < 1e-6);
        assert!((v - 4.0 * sum_s).abs() < 1e-4 * (1.0 + v.abs()));
    }
    // Bijective and augmenting kernels, with overlap and padding: the inverse is exact in
    // both modes, whatever noise the forward pass drew.
    for (c_in, c_out, k, t, h, w) in [
        (1, 4, 2, 2, 4, 4),
        (1, 4, 2, 1, 3, 4),
        (2, 8, 2, 2, 3, 5),
        (1, 12, 3, 2, 4, 5),
    ] {
        let mut conv = FlowConv2dConfig::new(c_in, c_out, k, t, h, w).init(&dev);
        perturb_kernel(&mut conv.kernel);
        assert!(conv.context.is_none());
        let x = random([2, c_in, h, w], 1.0, &dev);
        for fwd in [Mode::Sample, Mode::Mean] {
            let (z, v) = conv.forward(x.clone(), fwd);
            assert!(values(v).iter().all(|v| v.is_finite()));
            for inv in [Mode::Sample, Mode::Mean] {
                assert_close(
                    &values(conv.inverse(z.clone(), inv)),
                    &values(x.clone()),
                    1e-4,
                    &format!("Conv({c_in}→{c_out},{k},{t}) on {h}×{w}: inverse(forward(x))"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Coupling stacks
// ---------------------------------------------------------------------------------------------

/// Multiplies every float parameter by a constant.
struct Scale(f64);

impl ModuleMapper for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let factor = self.0;
        param.map(|t| t.mul_scalar(factor).detach().require_grad())
    }
}

/// `n` draws from `N(0, std²)` made on the host (xorshift and Box–Muller), independent of the
/// backend's global generator, which tests running in parallel share.
fn host_normal(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

fn check_coupling(convolutional: bool, shape: [usize; 4], seed: u64) {
    let dev = device(seed);
    let [_, c, h, w] = shape;
    let n = c * h * w;
    // At init the conditioners' outputs are small and the splines close to the identity; scaled
    // parameters make the knots vary with the conditioning features.
    let stack = CouplingStackConfig::new(c, 2, convolutional)
        .init(&dev)
        .map(&mut Scale(2.0));
    let f = |x: Tensor<2>| {
        stack
            .forward(x.reshape(shape), Mode::Sample)
            .0
            .reshape([1, n])
    };
    let mut largest_v = 0f64;
    for trial in 0..3 {
        // Scale 2.5 spreads values over the bins; the first and last values lie past the tail
        // bound 3 and are transformed by the second and the first coupling respectively (the
        // first channel conditions, and the reversal moves it last).
        let mut x = host_normal(n, 2.5, 100 * seed + trial);
        x[0] = -3.6;
        x[n - 1] = 3.8;
        let (z, v) = stack.forward(tensor(x.clone(), shape, &dev), Mode::Sample);
        let v = values(v)[0] as f64;
        largest_v = largest_v.max(v.abs());
        let expected = log_abs_det(jacobian(f, &x, &dev));
        assert!(
            (v - expected).abs() < 1e-3 * (1.0 + expected.abs()),
            "trial {trial}: V = {v}, log|det J| = {expected}"
        );
        let zs = values(z.clone());
        assert!(
            zs.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-2),
            "the stack moves its input"
        );
        assert_close(
            &values(stack.inverse(z, Mode::Sample)),
            &x,
            1e-4,
            "coupling inverse(forward(x))",
        );
    }
    assert!(
        largest_v > 0.1,
        "V is not trivially zero (the splines are not the identity): max |V| = {largest_v}"
    );
}

#[test]
fn dense_coupling_stack_v_is_log_det_and_inverse_is_exact() {
    check_coupling(false, [1, 5, 1, 1], 27);
}

#[test]
fn conv_coupling_stack_v_is_log_det_and_inverse_is_exact() {
    check_coupling(true, [1, 3, 2, 2], 28);
}

// ---------------------------------------------------------------------------------------------
// 5. Every preset runs
// ---------------------------------------------------------------------------------------------

/// Sums `|gradient|` over every parameter that has one; fails on a non-finite gradient.
struct GradCheck<'a> {
    grads: &'a burn::tensor::Gradients,
    with_grad: usize,
    bad: Vec<String>,
    path: Vec<String>,
}

impl ModuleVisitor for GradCheck<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let total = values(g.abs().sum())[0];
            if !total.is_finite() {
                self.bad.push(self.path.join("."));
            }
            if total > 0.0 {
                self.with_grad += 1;
            }
        }
    }
}

fn run_preset(dataset: Dataset, arch: &str, seed: u64) {
    let dev = device(seed);
    let spec = spec(&dataset, arch).unwrap();
    let what = format!("{}/{}", dataset.name(), arch);
    let shapes = spec.shapes().unwrap_or_else(|e| panic!("{what}: {e}"));
    let latent = *shapes.last().unwrap();
    let model = spec.init(&dev).unwrap();
    assert_eq!(model.latent_shape(), latent, "{what}");
    let [c, h, w] = spec.input;
    let batch = 2;
    let x = Tensor::<4>::random([batch, c, h, w], Distribution::Uniform(0.0, 256.0), &dev).floor();

    for mode in [Mode::Sample, Mode::Mean] {
        let (z, v) = model.forward(x.clone(), mode);
        assert_eq!(z.dims(), [batch, latent[0], latent[1], latent[2]], "{what}");
        assert!(values(v).iter().all(|v| v.is_finite()), "{what}: V");
        let ll = values(model.log_likelihood(x.clone(), mode));
        assert!(
            ll.iter().all(|l| l.is_finite()),
            "{what} {mode:?}: L = {ll:?}"
        );
        for inv in [Mode::Sample, Mode::Mean] {
            let back = model.inverse(z.clone(), inv);
            assert_eq!(back.dims(), [batch, c, h, w], "{what}: inverse shape");
            let back = values(back);
            assert!(
                back.iter().all(|v| v.is_finite()),
                "{what}: inverse {inv:?} after forward {mode:?} is finite"
            );
        }
    }
    let samples = values(model.sample(batch, Mode::Sample, 1.0, &dev));
    assert_eq!(samples.len(), batch * c * h * w);
    assert!(samples.iter().all(|v| v.is_finite()), "{what}: samples");

    let loss = model.log_likelihood(x, Mode::Sample).mean().neg();
    let grads = loss.backward();
    let mut check = GradCheck {
        grads: &grads,
        with_grad: 0,
        bad: vec![],
        path: vec![],
    };
    model.visit(&mut check);
    assert!(
        check.bad.is_empty(),
        "{what}: non-finite gradients in {:?}",
        check.bad
    );
    assert!(
        check.with_grad > 10,
        "{what}: only {} parameters got a gradient",
        check.with_grad
    );
}

#[test]
fn every_mnist_preset_runs_both_ways() {
    for (i, arch) in NAMES.into_iter().enumerate() {
        run_preset(Dataset::Mnist, arch, 30 + i as u64);
    }
}

#[test]
fn every_cifar10_preset_runs_both_ways() {
    for (i, arch) in NAMES.into_iter().enumerate() {
        run_preset(Dataset::Cifar10, arch, 40 + i as u64);
    }
}
