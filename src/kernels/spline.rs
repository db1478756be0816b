//! The forward rational-quadratic spline (spec §3.4, §3.6) as one fused kernel: knots from raw
//! parameters, bin search, value and log-derivative, and a hand-written backward pass.
//!
//! Why: written with tensor ops, a spline is some fifty element-wise ops over `[N]` and `[N, K]`
//! tensors, plus gathers whose backward is a scatter; each allocates and walks memory, so the
//! spline layers cost more than the convolutions around them. Here each element is computed
//! once, in `f64`, from its own knots.
//!
//! The formulas are those of [`crate::layers::spline`], which keeps the tensor-op version for
//! the inverse (used for sampling, never differentiated).

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch};
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{flex_tensor, host};

use crate::layers::spline::SplineLimits;

/// Most bins a spline may have (the knots of one element live on the stack).
pub const MAX_BINS: usize = 32;

/// Backends that run [`rq_spline`].
#[backend_extension(Flex, Autodiff)]
pub trait SplineBackend: Backend {
    /// `x: [N]`, `params: [M, 3K − 1]` (raw widths, heights, interior derivatives; `M` is 1 or
    /// `N`) → `[2, N]`: the spline's values, then `log dy/dx`, per element.
    fn rq_spline(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        limits: SplineLimits,
    ) -> FloatTensor<Self>;

    /// The gradients of `Σ grad ⊙ rq_spline(x, params)` with respect to `x` and `params`.
    fn rq_spline_backward(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        limits: SplineLimits,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `(y, log dy/dx)` of monotone rational-quadratic splines applied to `x: [N]`; spline `i`
/// (or the only one) has raw parameters `params[i]: [3K − 1]`: widths and heights (softmax),
/// then interior derivatives (`min + softplus`). Identity outside `[−bound, bound]`.
pub fn rq_spline(x: Tensor<1>, params: Tensor<2>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
    let n = x.dims()[0];
    let out = Tensor::<2>::from_dispatch(<Dispatch as SplineBackend>::rq_spline(
        x.into_dispatch(),
        params.into_dispatch(),
        limits,
    ));
    (
        out.clone().narrow(0, 0, 1).reshape([n]),
        out.narrow(0, 1, 1).reshape([n]),
    )
}

/// One spline's knots with what their backward pass needs, for at most `N` knots (`N − 1`
/// bins). The capacity is a type parameter so that a coupling's per-element splines (6 knots)
/// do not fill and copy arrays sized for the largest spline: at 33 knots that was a tenth of a
/// coupling step.
struct Spline<const N: usize> {
    bins: usize,
    xs: [f64; N],
    ys: [f64; N],
    slopes: [f64; N],
    /// Softmax of the raw widths and heights, and the sigmoid of the raw derivatives.
    width_probs: [f64; N],
    height_probs: [f64; N],
    slope_sigmoids: [f64; N],
}

/// Gradients with respect to one spline's knots.
#[derive(Clone, Copy)]
struct KnotGrads<const N: usize> {
    xs: [f64; N],
    ys: [f64; N],
    slopes: [f64; N],
}

impl<const N: usize> KnotGrads<N> {
    const ZERO: Self = Self {
        xs: [0.0; N],
        ys: [0.0; N],
        slopes: [0.0; N],
    };

    fn add(mut self, other: &Self) -> Self {
        for i in 0..N {
            self.xs[i] += other.xs[i];
            self.ys[i] += other.ys[i];
            self.slopes[i] += other.slopes[i];
        }
        self
    }
}

// Transcendentals in f32 (inputs and outputs are f32; the f64 versions were a fifth of a
// coupling step), arithmetic in f64.

fn softmax(raw: &[f32], probs: &mut [f64]) {
    let max = raw.iter().fold(f32::NEG_INFINITY, |m, &r| m.max(r));
    let mut total = 0.0;
    for (p, &r) in probs.iter_mut().zip(raw) {
        *p = (r - max).exp() as f64;
        total += *p;
    }
    probs.iter_mut().for_each(|p| *p /= total);
}

/// Knot positions `[−B, …, B]` from bin-size probabilities, each bin at least `min_size·2B`.
fn cumulative(probs: &[f64], min_size: f64, bound: f64, knots: &mut [f64]) {
    let bins = probs.len();
    let mut total = 0.0;
    knots[0] = -bound;
    for j in 1..bins {
        total += probs[j - 1] * (1.0 - min_size * bins as f64) + min_size;
        knots[j] = total * 2.0 * bound - bound;
    }
    knots[bins] = bound;
}

/// The backward pass of [`cumulative`] then softmax: knot gradients → raw-parameter gradients.
fn cumulative_backward(probs: &[f64], grads: &[f64], min_size: f64, bound: f64, out: &mut [f32]) {
    let bins = probs.len();
    let scale = 2.0 * bound * (1.0 - min_size * bins as f64);
    // Size i moves knots i+1 … K−1 (the last knot is fixed at B).
    let mut g_probs = [0.0f64; MAX_BINS + 1];
    let mut suffix = 0.0;
    for i in (0..bins - 1).rev() {
        suffix += grads[i + 1];
        g_probs[i] = suffix * scale;
    }
    let dot: f64 = probs.iter().zip(&g_probs).map(|(p, g)| p * g).sum();
    for i in 0..bins {
        out[i] = (probs[i] * (g_probs[i] - dot)) as f32;
    }
}

/// `(softplus(v), sigmoid(v))` from one exponential.
fn softplus_sigmoid(v: f32) -> (f64, f64) {
    let e = (-v.abs()).exp();
    let softplus = v.max(0.0) + ln_1p(e);
    let sigmoid = if v >= 0.0 { 1.0 } else { e } / (1.0 + e);
    (softplus as f64, sigmoid as f64)
}

/// `ln(1 + e)` to within a few ulps through `ln` (Goldberg's correction for the rounding of
/// `1 + e`): libm's `log1pf` was a tenth of a coupling step, `ln` costs a fraction of it.
fn ln_1p(e: f32) -> f32 {
    let u = 1.0 + e;
    if u == 1.0 {
        e
    } else {
        u.ln() * e / (u - 1.0)
    }
}

impl<const N: usize> Spline<N> {
    fn new(params: &[f32], limits: &SplineLimits) -> Self {
        let bins = (params.len() + 1) / 3;
        debug_assert!(bins < N, "a {bins}-bin spline in a {N}-knot spline");
        let mut s = Spline {
            bins,
            xs: [0.0; N],
            ys: [0.0; N],
            slopes: [1.0; N],
            width_probs: [0.0; N],
            height_probs: [0.0; N],
            slope_sigmoids: [0.0; N],
        };
        let b = limits.bound;
        softmax(&params[..bins], &mut s.width_probs[..bins]);
        softmax(&params[bins..2 * bins], &mut s.height_probs[..bins]);
        cumulative(&s.width_probs[..bins], limits.min_width, b, &mut s.xs);
        cumulative(&s.height_probs[..bins], limits.min_height, b, &mut s.ys);
        for (j, &raw) in params[2 * bins..].iter().enumerate() {
            let (softplus, sigmoid) = softplus_sigmoid(raw);
            s.slopes[j + 1] = softplus + limits.min_derivative;
            s.slope_sigmoids[j] = sigmoid;
        }
        s.slopes[bins] = 1.0;
        s
    }

    /// The bin of `v ∈ [−B, B]`: the number of interior knots at or below it.
    fn bin(&self, v: f64) -> usize {
        self.xs[1..self.bins].iter().filter(|&&k| v >= k).count()
    }

    /// `(y, log dy/dx)` at `x`, and, when `grad = Some((g_y, g_log))`, the gradient with respect
    /// to `x` and the knots it touched (added to `knot_grads`).
    fn eval(&self, x: f64, grad: Option<(f64, f64)>, knot_grads: &mut KnotGrads<N>) -> [f64; 3] {
        let bound = self.xs[self.bins];
        if !(-bound..=bound).contains(&x) {
            return [x, 0.0, grad.map_or(0.0, |(g_y, _)| g_y)];
        }
        let k = self.bin(x);
        let (x0, x1, y0, y1) = (self.xs[k], self.xs[k + 1], self.ys[k], self.ys[k + 1]);
        let (d0, d1) = (self.slopes[k], self.slopes[k + 1]);
        let (w, h) = (x1 - x0, y1 - y0);
        let s = h / w;
        let theta = (x - x0) / w;
        let mix = theta * (1.0 - theta);
        let curvature = d0 + d1 - 2.0 * s;
        let den = s + curvature * mix;
        let num = h * (s * theta * theta + d0 * mix);
        let p = d1 * theta * theta + 2.0 * s * mix + d0 * (1.0 - theta) * (1.0 - theta);
        let y = y0 + num / den;
        let log_derivative = ((s * s * p / (den * den)) as f32).ln() as f64;
        let Some((g_y, g_log)) = grad else {
            return [y, log_derivative, 0.0];
        };
        // Reverse mode through the lines above, last to first.
        let g_num = g_y / den;
        let g_den = -g_y * num / (den * den) - 2.0 * g_log / den;
        let g_p = g_log / p;
        let d_mix = 1.0 - 2.0 * theta;
        let g_s = g_num * h * theta * theta
            + g_den * (1.0 - 2.0 * mix)
            + 2.0 * g_log / s
            + g_p * 2.0 * mix;
        let g_theta = g_num * h * (2.0 * s * theta + d0 * d_mix)
            + g_den * curvature * d_mix
            + g_p * (2.0 * d1 * theta + 2.0 * s * d_mix - 2.0 * d0 * (1.0 - theta));
        let g_d0 = g_num * h * mix + g_den * mix + g_p * (1.0 - theta) * (1.0 - theta);
        let g_d1 = g_den * mix + g_p * theta * theta;
        // s = h/w and θ = (x − x0)/w.
        let g_h = g_num * (s * theta * theta + d0 * mix) + g_s / w;
        let g_w = -g_s * s / w - g_theta * theta / w;
        let g_x = g_theta / w;
        knot_grads.xs[k] += -g_theta / w - g_w;
        knot_grads.xs[k + 1] += g_w;
        knot_grads.ys[k] += g_y - g_h;
        knot_grads.ys[k + 1] += g_h;
        knot_grads.slopes[k] += g_d0;
        knot_grads.slopes[k + 1] += g_d1;
        [y, log_derivative, g_x]
    }

    /// Knot gradients → gradients of the raw parameters `[3K − 1]`.
    fn backward(&self, grads: &KnotGrads<N>, limits: &SplineLimits, out: &mut [f32]) {
        let k = self.bins;
        let b = limits.bound;
        let (w_out, rest) = out.split_at_mut(k);
        let (h_out, d_out) = rest.split_at_mut(k);
        cumulative_backward(
            &self.width_probs[..k],
            &grads.xs,
            limits.min_width,
            b,
            w_out,
        );
        cumulative_backward(
            &self.height_probs[..k],
            &grads.ys,
            limits.min_height,
            b,
            h_out,
        );
        for (j, d) in d_out.iter_mut().enumerate() {
            *d = (grads.slopes[j + 1] * self.slope_sigmoids[j]) as f32;
        }
    }
}

/// Elements per parallel task.
const CHUNK: usize = 4096;

/// Inputs as host slices, with the shared spline when there is one.
fn operands<const N: usize>(
    x: &FlexTensor,
    params: &FlexTensor,
    limits: &SplineLimits,
) -> (FlexTensor, FlexTensor, usize, Option<Spline<N>>) {
    let (x, x_dims) = host(x);
    let (params, p_dims) = host(params);
    let width = p_dims[1];
    assert!(
        width % 3 == 2 && (width + 1) / 3 <= MAX_BINS,
        "rq_spline: {width} parameters per spline, expected 3K − 1 with K ≤ {MAX_BINS}"
    );
    assert!(
        p_dims[0] == 1 || p_dims[0] == x_dims[0],
        "rq_spline: {} splines for {} elements",
        p_dims[0],
        x_dims[0]
    );
    let shared = (p_dims[0] == 1).then(|| Spline::new(params.storage(), limits));
    (x, params, width, shared)
}

/// The knots of the splines that `params: [M, 3K − 1]` describe, `K + 1`.
fn knots(params: &FlexTensor) -> usize {
    (params.layout().shape()[1] + 1) / 3 + 1
}

impl SplineBackend for Flex {
    fn rq_spline(x: FlexTensor, params: FlexTensor, limits: SplineLimits) -> FlexTensor {
        match knots(&params) {
            ..=8 => forward::<8>(x, params, limits),
            9..=16 => forward::<16>(x, params, limits),
            _ => forward::<{ MAX_BINS + 1 }>(x, params, limits),
        }
    }

    fn rq_spline_backward(
        x: FlexTensor,
        params: FlexTensor,
        grad: FlexTensor,
        limits: SplineLimits,
    ) -> (FlexTensor, FlexTensor) {
        match knots(&params) {
            ..=8 => backward::<8>(x, params, grad, limits),
            9..=16 => backward::<16>(x, params, grad, limits),
            _ => backward::<{ MAX_BINS + 1 }>(x, params, grad, limits),
        }
    }
}

/// [`SplineBackend::rq_spline`] with at most `N` knots per spline.
fn forward<const N: usize>(x: FlexTensor, params: FlexTensor, limits: SplineLimits) -> FlexTensor {
    let (x, params, width, shared) = operands::<N>(&x, &params, &limits);
    let (xs, ps): (&[f32], &[f32]) = (x.storage(), params.storage());
    let n = xs.len();
    let mut out = vec![0.0f32; 2 * n];
    let (ys, log_ds) = out.split_at_mut(n);
    ys.par_chunks_mut(CHUNK)
        .zip(log_ds.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, (ys, log_ds))| {
            let mut unused = KnotGrads::<N>::ZERO;
            for (j, (y_out, log_d_out)) in ys.iter_mut().zip(log_ds).enumerate() {
                let i = c * CHUNK + j;
                let own;
                let spline = match &shared {
                    Some(s) => s,
                    None => {
                        own = Spline::<N>::new(&ps[i * width..(i + 1) * width], &limits);
                        &own
                    }
                };
                let [y, log_d, _] = spline.eval(xs[i] as f64, None, &mut unused);
                *y_out = y as f32;
                *log_d_out = log_d as f32;
            }
        });
    flex_tensor(out, vec![2, n])
}

/// [`SplineBackend::rq_spline_backward`] with at most `N` knots per spline.
fn backward<const N: usize>(
    x: FlexTensor,
    params: FlexTensor,
    grad: FlexTensor,
    limits: SplineLimits,
) -> (FlexTensor, FlexTensor) {
    let (x, params, width, shared) = operands::<N>(&x, &params, &limits);
    let (grad, _) = host(&grad);
    let (xs, ps, gs): (&[f32], &[f32], &[f32]) = (x.storage(), params.storage(), grad.storage());
    let n = xs.len();
    let mut g_x = vec![0.0f32; n];
    let g_params = match shared {
        // One spline: sum the knot gradients of all elements, then one backward pass.
        Some(spline) => {
            let total = g_x
                .par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(c, g_x)| {
                    let mut knots = KnotGrads::ZERO;
                    for (j, g) in g_x.iter_mut().enumerate() {
                        let i = c * CHUNK + j;
                        let seed = Some((gs[i] as f64, gs[n + i] as f64));
                        *g = spline.eval(xs[i] as f64, seed, &mut knots)[2] as f32;
                    }
                    knots
                })
                .reduce(|| KnotGrads::ZERO, |a, b| a.add(&b));
            let mut out = vec![0.0f32; width];
            spline.backward(&total, &limits, &mut out);
            out
        }
        None => {
            let mut out = vec![0.0f32; n * width];
            g_x.par_chunks_mut(CHUNK)
                .zip(out.par_chunks_mut(CHUNK * width))
                .enumerate()
                .for_each(|(c, (g_x, g_p))| {
                    for (j, (g, g_p)) in g_x.iter_mut().zip(g_p.chunks_mut(width)).enumerate() {
                        let i = c * CHUNK + j;
                        let spline = Spline::<N>::new(&ps[i * width..(i + 1) * width], &limits);
                        let mut knots = KnotGrads::<N>::ZERO;
                        let seed = Some((gs[i] as f64, gs[n + i] as f64));
                        *g = spline.eval(xs[i] as f64, seed, &mut knots)[2] as f32;
                        spline.backward(&knots, &limits, g_p);
                    }
                });
            out
        }
    };
    let p_rows = if width == g_params.len() { 1 } else { n };
    (
        flex_tensor(g_x, vec![n]),
        flex_tensor(g_params, vec![p_rows, width]),
    )
}

#[derive(Debug)]
struct SplineGrad;

impl<B: SplineBackend> Backward<B, 2> for SplineGrad {
    type State = (NodeId, NodeId, SplineLimits);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_params] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, params_state, limits) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let params = checkpointer.retrieve_node_output::<FloatTensor<B>>(params_state);
        let (g_x, g_params) = B::rq_spline_backward(x, params, grad, limits);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g_x);
        }
        if let Some(node) = node_params {
            grads.register::<B>(node.id, g_params);
        }
    }
}

impl<B: SplineBackend, C: CheckpointStrategy> SplineBackend for Autodiff<B, C> {
    fn rq_spline(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        limits: SplineLimits,
    ) -> FloatTensor<Self> {
        let prep = SplineGrad
            .prepare::<C>([x.node(), params.node()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let params_state = prep.checkpoint(&params);
                let out = B::rq_spline(x.into_primitive(), params.into_primitive(), limits);
                prep.finish((x_state, params_state, limits), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rq_spline(
                x.into_primitive(),
                params.into_primitive(),
                limits,
            )),
        }
    }

    fn rq_spline_backward(
        x: FloatTensor<Self>,
        params: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        limits: SplineLimits,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (g_x, g_params) = B::rq_spline_backward(
            x.into_primitive(),
            params.into_primitive(),
            grad.into_primitive(),
            limits,
        );
        (Self::from_inner(g_x), Self::from_inner(g_params))
    }
}

#[cfg(test)]
mod tests {
    use super::ln_1p;

    #[test]
    fn ln_1p_is_accurate_from_tiny_to_one() {
        let mut e = 1.0f32;
        while e > 1e-30 {
            for x in [e, e * 0.7731, e * 0.3117] {
                let exact = (x as f64).ln_1p();
                let relative = ((ln_1p(x) as f64 - exact) / exact).abs();
                assert!(
                    relative < 4.0 * f32::EPSILON as f64,
                    "ln_1p({x}): {relative:e}"
                );
            }
            e *= 0.5;
        }
    }
}
