//! The forward rational-quadratic spline (docs/method.md §2.4, §2.6) as one fused kernel: knots
//! from raw parameters, bin search, value and log-derivative, and a hand-written backward pass.
//!
//! Why: written with tensor ops, a spline is some fifty element-wise ops over `[N]` and `[N, K]`
//! tensors, plus gathers whose backward is a scatter; each allocates and walks memory, so the
//! spline layers cost more than the convolutions around them. Here each element is computed
//! once, from its own knots, in `f32` (as the reference computes), one element per SIMD lane
//! ([`super::lanes`]: 16 with AVX-512, 8 with AVX2), the bin look-up done by comparisons and
//! selects.
//!
//! The formulas are those of [`crate::layers::spline`], whose tensor-op version is the portable
//! body and the inverse (used for sampling, never differentiated).

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch};
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::lanes::Lanes;
use super::{flex_tensor, host, zeroed};

/// Smallest bin width, bin height and knot derivative, as fractions of the range, and how raw
/// widths and heights are read.
#[derive(Debug, Clone, Copy)]
pub struct SplineLimits {
    /// Tails start at `±bound`.
    pub bound: f64,
    /// Minimum bin width (fraction of `2·bound`).
    pub min_width: f64,
    /// Minimum bin height (fraction of `2·bound`).
    pub min_height: f64,
    /// Minimum derivative at an interior knot.
    pub min_derivative: f64,
    /// Factor on the raw widths and heights before their softmax (an inverse temperature; the
    /// couplings' `1/√hidden`). Applied inside the spline, not as an op of its own, so a
    /// coupling's parameters are not copied and scaled on the way in and out.
    pub raw_scale: f64,
}

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

/// The knots of `L` splines, one per lane, with what their backward pass needs, for at
/// most `N` knots (`N − 1` bins). The capacity is a type parameter so that a coupling's
/// per-element splines (6 knots) do not fill and copy arrays sized for the largest spline.
struct Splines<const N: usize, const L: usize> {
    bins: usize,
    xs: [Lanes<L>; N],
    ys: [Lanes<L>; N],
    slopes: [Lanes<L>; N],
    /// Softmax of the raw widths and heights, and the sigmoid of the raw derivatives.
    width_probs: [Lanes<L>; N],
    height_probs: [Lanes<L>; N],
    slope_sigmoids: [Lanes<L>; N],
}

/// Gradients with respect to the knots of [`Splines`].
struct KnotGrads<const N: usize, const L: usize> {
    xs: [Lanes<L>; N],
    ys: [Lanes<L>; N],
    slopes: [Lanes<L>; N],
}

impl<const N: usize, const L: usize> KnotGrads<N, L> {
    const ZERO: Self = Self {
        xs: [Lanes::ZERO; N],
        ys: [Lanes::ZERO; N],
        slopes: [Lanes::ZERO; N],
    };
}

#[inline(always)]
fn softmax<const L: usize>(raw: &[Lanes<L>], probs: &mut [Lanes<L>]) {
    let max = raw[1..].iter().fold(raw[0], |m, &r| m.max(r));
    let mut total = Lanes::ZERO;
    for (p, &r) in probs.iter_mut().zip(raw) {
        *p = (r - max).exp();
        total += *p;
    }
    let inverse = 1.0 / total;
    probs.iter_mut().for_each(|p| *p = *p * inverse);
}

/// Knot positions `[−B, …, B]` from bin-size probabilities, each bin at least `min_size·2B`.
#[inline(always)]
fn cumulative<const L: usize>(
    probs: &[Lanes<L>],
    min_size: f32,
    bound: f32,
    knots: &mut [Lanes<L>],
) {
    let bins = probs.len();
    let spread = 1.0 - min_size * bins as f32;
    let mut total = Lanes::ZERO;
    knots[0] = Lanes::splat(-bound);
    for j in 1..bins {
        total += probs[j - 1] * spread + min_size;
        knots[j] = total * (2.0 * bound) - bound;
    }
    knots[bins] = Lanes::splat(bound);
}

/// The backward pass of [`cumulative`] then softmax: knot gradients → raw-parameter gradients.
#[inline(always)]
fn cumulative_backward<const L: usize>(
    probs: &[Lanes<L>],
    grads: &[Lanes<L>],
    min_size: f32,
    bound: f32,
    out: &mut [Lanes<L>],
) {
    let bins = probs.len();
    let scale = 2.0 * bound * (1.0 - min_size * bins as f32);
    // Size i moves knots i+1 … K−1 (the last knot is fixed at B); out holds ∂/∂size first.
    let mut suffix = Lanes::ZERO;
    out[bins - 1] = Lanes::ZERO;
    for i in (0..bins - 1).rev() {
        suffix += grads[i + 1];
        out[i] = suffix * scale;
    }
    let mut dot = Lanes::ZERO;
    for (p, g) in probs.iter().zip(out.iter()) {
        dot += *p * *g;
    }
    for (p, g) in probs.iter().zip(out.iter_mut()) {
        *g = *p * (*g - dot);
    }
}

/// `(softplus(v), sigmoid(v))` from one exponential.
#[inline(always)]
fn softplus_sigmoid<const L: usize>(v: Lanes<L>) -> (Lanes<L>, Lanes<L>) {
    let e = (-v.abs()).exp();
    let softplus = v.max(Lanes::ZERO) + ln_1p(e);
    let sigmoid = v.ge(Lanes::ZERO).select(Lanes::splat(1.0), e) / (1.0 + e);
    (softplus, sigmoid)
}

/// `ln(1 + e)` to within a few ulps through `ln`, with Goldberg's correction for the rounding of
/// `u = 1 + e` (cheaper than `log1p`); `e` itself where `u` rounds to 1. Both sides are computed
/// and one selected, so that the lanes stay in step.
#[inline(always)]
fn ln_1p<const L: usize>(e: Lanes<L>) -> Lanes<L> {
    let u = 1.0 + e;
    let d = u - 1.0;
    d.eq(Lanes::ZERO).select(e, u.ln() * e / d)
}

impl<const N: usize, const L: usize> Splines<N, L> {
    /// Splines with `bins` bins whose raw parameter `m` (layout of [`SplineBackend::rq_spline`])
    /// is `param(m)` in every lane.
    #[inline(always)]
    fn new(bins: usize, param: impl Fn(usize) -> Lanes<L>, limits: &Limits) -> Self {
        debug_assert!(bins < N, "a {bins}-bin spline in a {N}-knot spline");
        let mut s = Splines {
            bins,
            xs: [Lanes::ZERO; N],
            ys: [Lanes::ZERO; N],
            slopes: [Lanes::splat(1.0); N],
            width_probs: [Lanes::ZERO; N],
            height_probs: [Lanes::ZERO; N],
            slope_sigmoids: [Lanes::ZERO; N],
        };
        let mut raw = [Lanes::ZERO; N];
        let b = limits.bound;
        (0..bins).for_each(|j| raw[j] = param(j) * limits.raw_scale);
        softmax(&raw[..bins], &mut s.width_probs[..bins]);
        (0..bins).for_each(|j| raw[j] = param(bins + j) * limits.raw_scale);
        softmax(&raw[..bins], &mut s.height_probs[..bins]);
        cumulative(&s.width_probs[..bins], limits.min_width, b, &mut s.xs);
        cumulative(&s.height_probs[..bins], limits.min_height, b, &mut s.ys);
        for j in 0..bins - 1 {
            let (softplus, sigmoid) = softplus_sigmoid(param(2 * bins + j));
            s.slopes[j + 1] = softplus + limits.min_derivative;
            s.slope_sigmoids[j] = sigmoid;
        }
        s
    }

    /// `(y, log dy/dx)` at `x`, and, when `grad = Some((g_y, g_log))`, the gradient with respect
    /// to `x` and the knots it touched (added to `knot_grads`).
    #[inline(always)]
    fn eval(
        &self,
        x: Lanes<L>,
        grad: Option<(Lanes<L>, Lanes<L>)>,
        knot_grads: &mut KnotGrads<N, L>,
    ) -> [Lanes<L>; 3] {
        let bound = self.xs[self.bins].0[0];
        let inside = x.ge(Lanes::splat(-bound)).and(Lanes::splat(bound).ge(x));
        // Outside lanes compute on a clamped copy and are replaced by the identity at the end.
        let xc = x.clamp(-bound, bound);
        // The bin: the number of interior knots at or below x, then its knots picked lane-wise.
        let mut k = Lanes::ZERO;
        for j in 1..self.bins {
            k += xc.ge(self.xs[j]).select(Lanes::splat(1.0), Lanes::ZERO);
        }
        let mut at = [Lanes::ZERO; 6];
        let tables = [&self.xs, &self.ys, &self.slopes];
        for (t, table) in tables.iter().enumerate() {
            at[2 * t] = table[0];
            at[2 * t + 1] = table[1];
        }
        for j in 1..self.bins {
            let here = k.eq(Lanes::splat(j as f32));
            for (t, table) in tables.iter().enumerate() {
                at[2 * t] = here.select(table[j], at[2 * t]);
                at[2 * t + 1] = here.select(table[j + 1], at[2 * t + 1]);
            }
        }
        let [x0, x1, y0, y1, d0, d1] = at;
        let (w, h) = (x1 - x0, y1 - y0);
        let s = h / w;
        let theta = (xc - x0) / w;
        let mix = theta * (1.0 - theta);
        let curvature = d0 + d1 - 2.0 * s;
        let den = s + curvature * mix;
        let num = h * (s * theta * theta + d0 * mix);
        let p = d1 * theta * theta + 2.0 * s * mix + d0 * (1.0 - theta) * (1.0 - theta);
        let y = inside.select(y0 + num / den, x);
        let log_derivative = inside.select((s * s * p / (den * den)).ln(), Lanes::ZERO);
        let Some((g_y_all, g_log)) = grad else {
            return [y, log_derivative, Lanes::ZERO];
        };
        // Reverse mode through the lines above, last to first; outside lanes touch no knot.
        let g_y = inside.select(g_y_all, Lanes::ZERO);
        let g_log = inside.select(g_log, Lanes::ZERO);
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
        let g_x = inside.select(g_theta / w, g_y_all);
        let touched = [(-g_theta / w - g_w, g_y - g_h, g_d0), (g_w, g_h, g_d1)];
        for j in 0..=self.bins {
            for (offset, &(g_xs, g_ys, g_slopes)) in touched.iter().enumerate() {
                let here = (k + offset as f32).eq(Lanes::splat(j as f32));
                knot_grads.xs[j] += here.select(g_xs, Lanes::ZERO);
                knot_grads.ys[j] += here.select(g_ys, Lanes::ZERO);
                knot_grads.slopes[j] += here.select(g_slopes, Lanes::ZERO);
            }
        }
        [y, log_derivative, g_x]
    }

    /// Knot gradients → gradients of the raw parameters, `out[m]` for parameter `m`.
    #[inline(always)]
    fn backward(&self, grads: &KnotGrads<N, L>, limits: &Limits, out: &mut [Lanes<L>]) {
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
        for g in w_out.iter_mut().chain(h_out.iter_mut()) {
            *g = *g * limits.raw_scale;
        }
        for (j, d) in d_out.iter_mut().enumerate() {
            *d = grads.slopes[j + 1] * self.slope_sigmoids[j];
        }
    }
}

/// [`SplineLimits`] in `f32`, the kernel's arithmetic.
struct Limits {
    bound: f32,
    min_width: f32,
    min_height: f32,
    min_derivative: f32,
    raw_scale: f32,
}

impl From<SplineLimits> for Limits {
    fn from(l: SplineLimits) -> Self {
        Limits {
            bound: l.bound as f32,
            min_width: l.min_width as f32,
            min_height: l.min_height as f32,
            min_derivative: l.min_derivative as f32,
            raw_scale: l.raw_scale as f32,
        }
    }
}

/// Elements per parallel task, a multiple of every lane count.
const CHUNK: usize = 4096;

/// What every task reads: the inputs as host slices (`gradients` empty in the forward pass).
struct Inputs<'a> {
    xs: &'a [f32],
    params: &'a [f32],
    /// `[2, N]`: the gradients of `y`, then of `log dy/dx`.
    gradients: &'a [f32],
    width: usize,
    /// One spline for all elements.
    shared: bool,
    limits: Limits,
}

/// One parallel task: the elements of `[start, start + CHUNK)`.
struct Chunk<'a, const N: usize> {
    inputs: &'a Inputs<'a>,
    start: usize,
    work: Work<'a>,
}

enum Work<'a> {
    /// `y` and `log dy/dx` of the chunk's elements.
    Forward {
        ys: &'a mut [f32],
        log_ds: &'a mut [f32],
    },
    /// The input gradients of the chunk's elements and, for per-element splines, their
    /// parameter gradients `[CHUNK, 3K − 1]`.
    Backward {
        g_x: &'a mut [f32],
        g_params: &'a mut [f32],
    },
}

impl<const N: usize> WithSimd for Chunk<'_, N> {
    /// For a shared spline's backward pass, the chunk's parameter gradients; otherwise empty.
    type Output = Vec<f64>;

    // Inlined into pulp's AVX2 or AVX-512 trampoline, so that the Lanes arithmetic is
    // vectorized, as wide as the registers: on AVX-512, 16 lanes ran the spline presets' steps
    // 5–10% faster than 8, and on AVX2 (16 registers, against 32) they ran up to 14% slower.
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> Vec<f64> {
        if S::F32_LANES >= 16 {
            self.run::<16>()
        } else {
            self.run::<8>()
        }
    }
}

impl<const N: usize> Chunk<'_, N> {
    /// The chunk's work, `L` elements at a time.
    #[inline(always)]
    fn run<const L: usize>(self) -> Vec<f64> {
        let inputs = self.inputs;
        let limits = &inputs.limits;
        let n = inputs.xs.len();
        let shared = inputs.shared.then(|| inputs.splines::<N, L>(0));
        match self.work {
            Work::Forward { ys, log_ds } => {
                let mut unused = KnotGrads::<N, L>::ZERO;
                for (g, (ys, log_ds)) in ys.chunks_mut(L).zip(log_ds.chunks_mut(L)).enumerate() {
                    let start = self.start + g * L;
                    let own;
                    let splines = match &shared {
                        Some(s) => s,
                        None => {
                            own = inputs.splines(start);
                            &own
                        }
                    };
                    let [y, log_d, _] = splines.eval(load(inputs.xs, start), None, &mut unused);
                    store(y, ys);
                    store(log_d, log_ds);
                }
                Vec::new()
            }
            Work::Backward { g_x, g_params } => {
                let (g_ys, g_logs) = inputs.gradients.split_at(n);
                let width = inputs.width;
                let mut knots = KnotGrads::<N, L>::ZERO;
                let mut out = [Lanes::<L>::ZERO; 3 * MAX_BINS];
                let out = &mut out[..width];
                for (g, g_x) in g_x.chunks_mut(L).enumerate() {
                    let start = self.start + g * L;
                    let seed = (load(g_ys, start), load(g_logs, start));
                    let x = load(inputs.xs, start);
                    let Some(splines) = &shared else {
                        let splines = inputs.splines::<N, L>(start);
                        knots = KnotGrads::ZERO;
                        store(splines.eval(x, Some(seed), &mut knots)[2], g_x);
                        splines.backward(&knots, limits, out);
                        let rows = g_params[g * L * width..].chunks_mut(width);
                        for (l, row) in rows.take(L).enumerate() {
                            row.iter_mut()
                                .zip(out.iter())
                                .for_each(|(r, v)| *r = v.0[l]);
                        }
                        continue;
                    };
                    // A shared spline sums its knot gradients lane by lane over the chunk; its
                    // backward pass is linear in them, so it runs once, at the end.
                    store(splines.eval(x, Some(seed), &mut knots)[2], g_x);
                }
                match &shared {
                    Some(splines) => {
                        splines.backward(&knots, limits, out);
                        out.iter().map(|v| v.sum()).collect()
                    }
                    None => Vec::new(),
                }
            }
        }
    }
}

impl Inputs<'_> {
    /// The splines of elements `start … start + L` (zero parameters past the end: a valid
    /// spline whose results are dropped), or the shared one in every lane.
    #[inline(always)]
    fn splines<const N: usize, const L: usize>(&self, start: usize) -> Splines<N, L> {
        let (ps, w, n, limits) = (self.params, self.width, self.xs.len(), &self.limits);
        let bins = (w + 1) / 3;
        if self.shared {
            Splines::new(bins, |m| Lanes::splat(ps[m]), limits)
        } else if start + L <= n {
            // The group's rows are one contiguous block, transposed here into a parameter per
            // `Lanes`. Read lane by lane through a closure, one parameter at a time, the
            // forward pass of 50 176 five-bin splines took 3.0 ms (one thread), against 1.9.
            let mut raw = [[Lanes::<L>::ZERO; N]; 3];
            let flat = raw.as_flattened_mut();
            for (l, row) in ps[start * w..][..L * w].chunks_exact(w).enumerate() {
                for (m, &v) in row.iter().enumerate() {
                    flat[m].0[l] = v;
                }
            }
            let flat = &*flat;
            Splines::new(bins, |m| flat[m], limits)
        } else {
            let row = |l: usize| (start + l < n).then(|| (start + l) * w);
            Splines::new(
                bins,
                |m| Lanes::from_fn(|l| row(l).map_or(0.0, |r| ps[r + m])),
                limits,
            )
        }
    }
}

/// Lane `l` holds `values[start + l]`, or zero past the end.
#[inline(always)]
fn load<const L: usize>(values: &[f32], start: usize) -> Lanes<L> {
    if start + L <= values.len() {
        Lanes::from_fn(|l| values[start + l])
    } else {
        Lanes::from_fn(|l| values.get(start + l).copied().unwrap_or(0.0))
    }
}

/// The first `out.len()` (at most `L`) lanes of `v` into `out`.
#[inline(always)]
fn store<const L: usize>(v: Lanes<L>, out: &mut [f32]) {
    let n = out.len().min(L);
    out[..n].copy_from_slice(&v.0[..n]);
}

/// Inputs as host slices, checked.
fn operands(x: &FlexTensor, params: &FlexTensor) -> (FlexTensor, FlexTensor, usize) {
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
    (x, params, width)
}

/// The knots of the splines that `params: [M, 3K − 1]` describe, `K + 1`.
fn knots(params: &FlexTensor) -> usize {
    (params.layout().shape()[1] + 1) / 3 + 1
}

impl SplineBackend for Flex {
    fn rq_spline(x: FlexTensor, params: FlexTensor, limits: SplineLimits) -> FlexTensor {
        match knots(&params) {
            ..=8 => forward::<8>(x, params, limits.into()),
            9..=16 => forward::<16>(x, params, limits.into()),
            _ => forward::<{ MAX_BINS + 1 }>(x, params, limits.into()),
        }
    }

    fn rq_spline_backward(
        x: FlexTensor,
        params: FlexTensor,
        grad: FlexTensor,
        limits: SplineLimits,
    ) -> (FlexTensor, FlexTensor) {
        match knots(&params) {
            ..=8 => backward::<8>(x, params, grad, limits.into()),
            9..=16 => backward::<16>(x, params, grad, limits.into()),
            _ => backward::<{ MAX_BINS + 1 }>(x, params, grad, limits.into()),
        }
    }
}

/// [`SplineBackend::rq_spline`] with at most `N` knots per spline.
fn forward<const N: usize>(x: FlexTensor, params: FlexTensor, limits: Limits) -> FlexTensor {
    let (x, params, width) = operands(&x, &params);
    let inputs = Inputs {
        xs: x.storage(),
        params: params.storage(),
        gradients: &[],
        width,
        shared: params.storage::<f32>().len() == width,
        limits,
    };
    let n = inputs.xs.len();
    let mut out = zeroed(2 * n);
    let (ys, log_ds) = out.split_at_mut(n);
    let arch = Arch::new();
    ys.par_chunks_mut(CHUNK)
        .zip(log_ds.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, (ys, log_ds))| {
            arch.dispatch(Chunk::<N> {
                inputs: &inputs,
                start: c * CHUNK,
                work: Work::Forward { ys, log_ds },
            });
        });
    flex_tensor(out, vec![2, n])
}

/// [`SplineBackend::rq_spline_backward`] with at most `N` knots per spline.
fn backward<const N: usize>(
    x: FlexTensor,
    params: FlexTensor,
    grad: FlexTensor,
    limits: Limits,
) -> (FlexTensor, FlexTensor) {
    let (x, params, width) = operands(&x, &params);
    let (grad, _) = host(&grad);
    let inputs = Inputs {
        xs: x.storage(),
        params: params.storage(),
        gradients: grad.storage(),
        width,
        shared: params.storage::<f32>().len() == width,
        limits,
    };
    let n = inputs.xs.len();
    let mut g_x = zeroed(n);
    let mut g_params = vec![0.0f32; if inputs.shared { width } else { n * width }];
    let arch = Arch::new();
    let task = |c: usize, g_x, g_params| {
        arch.dispatch(Chunk::<N> {
            inputs: &inputs,
            start: c * CHUNK,
            work: Work::Backward { g_x, g_params },
        })
    };
    if inputs.shared {
        // Each chunk's sums, added in chunk order (not by `reduce`, whose pairing follows the
        // threads' timing), so that a seed trains to the same weights every time.
        let chunk_sums: Vec<Vec<f64>> = g_x
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, g_x)| task(c, g_x, &mut []))
            .collect();
        let mut total = vec![0.0f64; width];
        for sums in &chunk_sums {
            total.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
        }
        g_params
            .iter_mut()
            .zip(total)
            .for_each(|(g, t)| *g = t as f32);
    } else {
        g_x.par_chunks_mut(CHUNK)
            .zip(g_params.par_chunks_mut(CHUNK * width))
            .enumerate()
            .for_each(|(c, (g_x, g_params))| {
                task(c, g_x, g_params);
            });
    }
    let p_rows = if inputs.shared { 1 } else { n };
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
    use super::{ln_1p, Chunk, Inputs, Lanes, Limits, Work};

    /// The kernel's 8- and 16-lane forms (AVX2's and AVX-512's) give every element the same
    /// values and gradients, whichever of them this CPU runs for the other tests; a shared
    /// spline's parameter gradients, summed lane by lane in `f32`, agree to its rounding. 1000
    /// elements end in a partial group of lanes; some lie outside the spline's interval.
    #[test]
    fn eight_and_sixteen_lanes_agree() {
        let (n, bins) = (1000, 4);
        let width = 3 * bins - 1;
        let mut state = 12345u64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let xs: Vec<f32> = (0..n).map(|_| 8.0 * uniform() - 4.0).collect();
        let params: Vec<f32> = (0..n * width).map(|_| 4.0 * uniform() - 2.0).collect();
        let gradients: Vec<f32> = (0..2 * n).map(|_| 2.0 * uniform() - 1.0).collect();
        for shared in [false, true] {
            let inputs = Inputs {
                xs: &xs,
                params: if shared { &params[..width] } else { &params },
                gradients: &gradients,
                width,
                shared,
                limits: Limits {
                    bound: 3.0,
                    min_width: 1e-3,
                    min_height: 1e-3,
                    min_derivative: 1e-3,
                    raw_scale: 0.25,
                },
            };
            let run = |lanes: usize| {
                let (mut ys, mut log_ds, mut g_x) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                let mut g_params = vec![0.0; if shared { 0 } else { n * width }];
                let forward = Work::Forward {
                    ys: &mut ys,
                    log_ds: &mut log_ds,
                };
                let backward = Work::Backward {
                    g_x: &mut g_x,
                    g_params: &mut g_params,
                };
                let mut sums = Vec::new();
                for work in [forward, backward] {
                    let chunk = Chunk::<8> {
                        inputs: &inputs,
                        start: 0,
                        work,
                    };
                    sums = match lanes {
                        8 => chunk.run::<8>(),
                        _ => chunk.run::<16>(),
                    };
                }
                (ys, log_ds, g_x, g_params, sums)
            };
            let (eight, sixteen) = (run(8), run(16));
            assert!(eight.0.iter().any(|&y| y != 0.0), "no values computed");
            assert_eq!(eight.0, sixteen.0, "values, shared = {shared}");
            assert_eq!(eight.1, sixteen.1, "log-derivatives, shared = {shared}");
            assert_eq!(eight.2, sixteen.2, "input gradients, shared = {shared}");
            assert_eq!(eight.3, sixteen.3, "parameter gradients, shared = {shared}");
            assert_eq!(eight.4.len(), sixteen.4.len());
            for (a, b) in eight.4.iter().zip(&sixteen.4) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "shared sums: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn ln_1p_is_accurate_from_tiny_to_one() {
        let mut e = 1.0f32;
        while e > 1e-30 {
            for x in [e, e * 0.7731, e * 0.3117] {
                let exact = (x as f64).ln_1p();
                let ours = ln_1p(Lanes::<8>::splat(x)).0[0];
                let relative = ((ours as f64 - exact) / exact).abs();
                assert!(
                    relative < 4.0 * f32::EPSILON as f64,
                    "ln_1p({x}): {relative:e}"
                );
            }
            e *= 0.5;
        }
    }
}
