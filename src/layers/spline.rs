//! Monotone rational-quadratic splines (Durkan et al. 2019), the math shared by the spline
//! activation (docs/method.md §2.4, one spline for every element) and the coupling layers (§2.6, one spline per
//! element).
//!
//! A spline maps `[−B, B]` onto itself through `K` bins and is the identity outside (the
//! derivatives at `±B` are fixed to 1 so the tails join smoothly). Both directions are written
//! here in tensor ops, which run on every backend; the forward map, the one training
//! differentiates, runs as a fused CPU kernel ([`crate::kernels::spline`]) where
//! [`fast_path`] says so. Bin look-ups index the flattened knot table (`row·(K+1) + bin`) instead
//! of gathering from an expanded tensor, several times faster on the CPU backend.

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Bool, Int, Tensor};

use crate::kernels::fast_path;
use crate::kernels::spline::rq_spline;
pub use crate::kernels::spline::SplineLimits;

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
    /// On the CPU backend this runs as one fused kernel with its own backward pass
    /// ([`crate::kernels::spline`]), elsewhere in tensor ops.
    pub fn forward(&self, x: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        if fast_path(&x.device()) {
            return rq_spline(x, self.params.clone(), limits);
        }
        let bin = self.bin_of(x.clone(), limits, |table| &table.xs);
        let theta = (bin.inside - bin.x0) / bin.width.clone();
        let mix = theta.clone() * theta.clone().neg().add_scalar(1.0);
        let denominator = bin.slope.clone() + bin.curvature * mix.clone();
        let rise = bin.slope.clone() * theta.clone().square() + bin.d0.clone() * mix.clone();
        let y = bin.y0 + bin.height * rise / denominator.clone();
        let log_derivative = self::log_derivative(&bin.slope, &bin.d0, &bin.d1, theta, mix)
            - denominator.log().mul_scalar(2.0);
        (
            y.mask_where(bin.outside.clone(), x),
            log_derivative.mask_fill(bin.outside, 0.0),
        )
    }

    /// The inverse of [`Knots::forward`]: `(x, log dx/dy)` from `y: [N]`.
    pub fn inverse(&self, y: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        let Bin {
            outside,
            inside,
            x0,
            y0,
            width,
            height,
            slope,
            curvature,
            d0,
            d1,
        } = self.bin_of(y.clone(), limits, |table| &table.ys);

        // θ solves the forward map's quadratic; this root form is stable (Durkan et al. eq. 29).
        let dy = inside - y0;
        let a = height.clone() * (slope.clone() - d0.clone()) + dy.clone() * curvature.clone();
        let bq = height * d0.clone() - dy.clone() * curvature.clone();
        let c = slope.clone().neg() * dy;
        let disc = (bq.clone().square() - a * c.clone().mul_scalar(4.0)).clamp_min(0.0);
        let theta = c.mul_scalar(2.0) / (bq.neg() - disc.sqrt());

        let mix = theta.clone() * theta.clone().neg().add_scalar(1.0);
        let denominator = slope.clone() + curvature * mix.clone();
        let log_derivative = log_derivative(&slope, &d0, &d1, theta.clone(), mix)
            - denominator.log().mul_scalar(2.0);
        let x = (theta * width + x0).mask_where(outside.clone(), y);
        (x, log_derivative.neg().mask_fill(outside, 0.0))
    }

    /// The bin of each value of `v: [N]` among the knots that `axis` picks from the table (the
    /// positions for the forward map, the values for the inverse), with the bin's knots.
    fn bin_of(&self, v: Tensor<1>, limits: SplineLimits, axis: fn(&Table) -> &Tensor<2>) -> Bin {
        let table = self.table(limits);
        let b = limits.bound;
        let outside = v.clone().lower_elem(-b).bool_or(v.clone().greater_elem(b));
        let inside = v.clamp(-b, b);
        let index = flat_index(inside.clone(), axis(&table));
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
        Bin {
            outside,
            inside,
            x0,
            y0,
            width,
            height,
            slope,
            curvature,
            d0,
            d1,
        }
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

/// The bin of each value, as [`Knots::bin_of`] finds it; every tensor `[N]`.
struct Bin {
    /// Values outside `[−B, B]`, where the spline is the identity.
    outside: Tensor<1, Bool>,
    /// The values clamped to `[−B, B]`.
    inside: Tensor<1>,
    /// The bin's left knot `(x0, y0)`, its width and height, and its mean slope `height/width`.
    x0: Tensor<1>,
    y0: Tensor<1>,
    width: Tensor<1>,
    height: Tensor<1>,
    slope: Tensor<1>,
    /// `d0 + d1 − 2·slope`.
    curvature: Tensor<1>,
    /// The derivatives at the bin's two knots.
    d0: Tensor<1>,
    d1: Tensor<1>,
}

/// `ln(s²·(d1·θ² + 2s·θ(1−θ) + d0·(1−θ)²))`, the numerator of the forward map's derivative at
/// `θ` (`mix = θ(1−θ)`) in a bin of mean slope `s`.
fn log_derivative(
    slope: &Tensor<1>,
    d0: &Tensor<1>,
    d1: &Tensor<1>,
    theta: Tensor<1>,
    mix: Tensor<1>,
) -> Tensor<1> {
    let numerator = slope.clone().square()
        * (d1.clone() * theta.clone().square()
            + slope.clone().mul_scalar(2.0) * mix
            + d0.clone() * theta.neg().add_scalar(1.0).square());
    numerator.log()
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
