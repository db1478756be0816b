//! Monotone rational-quadratic splines (Durkan et al. 2019), the math shared by the spline
//! activation (§3.4, one spline for every element) and the coupling layers (§3.6, one spline per
//! element).
//!
//! A spline maps `[−B, B]` onto itself through `K` bins and is the identity outside (the
//! derivatives at `±B` are fixed to 1 so the tails join smoothly). The forward map, the one
//! training differentiates, runs as a fused kernel ([`crate::kernels::spline`]); the inverse is
//! written here with tensor ops. Its bin look-ups index the flattened knot table
//! (`row·(K+1) + bin`) instead of gathering from an expanded tensor, several times faster on the
//! CPU backend.

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Int, Tensor};

use crate::kernels::spline::rq_spline;

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

/// `M` splines with `K` bins each, as their raw parameters `[M, 3K − 1]`: unnormalized bin
/// widths and heights (`K` each, softmax), then the derivatives at the `K − 1` interior knots
/// (`min + softplus`).
#[derive(Debug, Clone)]
pub struct Knots {
    params: Tensor<2>,
}

/// The knot table of [`Knots`]: positions, values and derivatives, each `[M, K + 1]`.
struct Table {
    xs: Tensor<2>,
    ys: Tensor<2>,
    slopes: Tensor<2>,
}

impl Knots {
    /// Splines from raw parameters `[M, 3K − 1]` (layout above).
    pub fn new(params: Tensor<2>) -> Self {
        Self { params }
    }

    /// Applies the splines to `x: [N]`, returning `(y, log dy/dx)`, both `[N]`.
    /// With one spline (`M = 1`) every element uses it; otherwise element `i` uses spline `i`.
    ///
    /// Runs as one fused kernel with its own backward pass ([`crate::kernels::spline`]).
    pub fn forward(&self, x: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        rq_spline(x, self.params.clone(), limits)
    }

    /// The inverse of [`Knots::forward`]: `(x, log dx/dy)` from `y: [N]`.
    pub fn inverse(&self, y: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        let table = self.table(limits);
        let b = limits.bound;
        let outside = y.clone().lower_elem(-b).bool_or(y.clone().greater_elem(b));
        let inside = y.clone().clamp(-b, b);
        let index = flat_index(inside.clone(), &table.ys);
        let next = index.clone().add_scalar(1);
        let pick = |table: &Tensor<2>, idx: &Tensor<1, Int>| {
            table.clone().flatten::<1>(0, 1).select(0, idx.clone())
        };
        let (x0, x1) = (pick(&table.xs, &index), pick(&table.xs, &next));
        let (y0, y1) = (pick(&table.ys, &index), pick(&table.ys, &next));
        let (d0, d1) = (pick(&table.slopes, &index), pick(&table.slopes, &next));
        let width = x1 - x0.clone();
        let height = y1 - y0.clone();
        let slope = height.clone() / width.clone();
        let curvature = d1.clone() + d0.clone() - slope.clone().mul_scalar(2.0);

        // θ solves the forward map's quadratic; this root form is stable (Durkan et al. eq. 29).
        let dy = inside - y0;
        let a = height.clone() * (slope.clone() - d0.clone()) + dy.clone() * curvature.clone();
        let bq = height * d0.clone() - dy.clone() * curvature.clone();
        let c = slope.clone().neg() * dy;
        let disc = (bq.clone().square() - a * c.clone().mul_scalar(4.0)).clamp_min(0.0);
        let theta = c.mul_scalar(2.0) / (bq.neg() - disc.sqrt());

        let mix = theta.clone() * theta.clone().neg().add_scalar(1.0);
        let denominator = slope.clone() + curvature * mix.clone();
        let slope_num = slope.clone().square()
            * (d1 * theta.clone().square()
                + slope.mul_scalar(2.0) * mix
                + d0 * theta.clone().neg().add_scalar(1.0).square());
        let log_derivative = slope_num.log() - denominator.log().mul_scalar(2.0);
        let x = (theta * width + x0).mask_where(outside.clone(), y);
        (x, log_derivative.neg().mask_fill(outside, 0.0))
    }

    /// The knot table, with tensor ops.
    fn table(&self, limits: SplineLimits) -> Table {
        let [rows, width] = self.params.dims();
        let k = (width + 1) / 3;
        let device = self.params.device();
        let edge = Tensor::ones([rows, 1], &device);
        let interior = softplus(self.params.clone().narrow(1, 2 * k, k - 1), 1.0)
            .add_scalar(limits.min_derivative);
        Table {
            xs: cumulative_knots(
                self.params
                    .clone()
                    .narrow(1, 0, k)
                    .mul_scalar(limits.raw_scale),
                limits.min_width,
                limits.bound,
            ),
            ys: cumulative_knots(
                self.params
                    .clone()
                    .narrow(1, k, k)
                    .mul_scalar(limits.raw_scale),
                limits.min_height,
                limits.bound,
            ),
            slopes: Tensor::cat(vec![edge.clone(), interior, edge], 1),
        }
    }
}

/// Flat index `row·(K+1) + bin` of the bin holding each value of `v: [N]` in `knots`.
fn flat_index(v: Tensor<1>, knots: &Tensor<2>) -> Tensor<1, Int> {
    let [rows, cols] = knots.dims();
    let n = v.dims()[0];
    let interior = knots.clone().narrow(1, 1, cols - 2);
    let bin = v
        .unsqueeze_dim::<2>(1)
        .greater_equal(interior)
        .int()
        .sum_dim(1)
        .reshape([n]);
    if rows == 1 {
        bin
    } else {
        bin + Tensor::<1, Int>::arange(0..n as i64, &knots.device()).mul_scalar(cols as i64)
    }
}

/// Knot positions on `[−bound, bound]` from unnormalized bin sizes `[M, K]`: `[M, K + 1]`.
fn cumulative_knots(raw: Tensor<2>, min_size: f64, bound: f64) -> Tensor<2> {
    let [rows, bins] = raw.dims();
    let device = raw.device();
    let sizes = softmax(raw, 1)
        .mul_scalar(1.0 - min_size * bins as f64)
        .add_scalar(min_size);
    let inner = sizes
        .narrow(1, 0, bins - 1)
        .cumsum(1)
        .mul_scalar(2.0 * bound)
        .sub_scalar(bound);
    let first = Tensor::full([rows, 1], -bound, &device);
    let last = Tensor::full([rows, 1], bound, &device);
    Tensor::cat(vec![first, inner, last], 1)
}
