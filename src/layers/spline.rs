//! Monotone rational-quadratic splines (Durkan et al. 2019), the math shared by the spline
//! activation (§3.4, one table for every element) and the coupling layers (§3.6, one table per
//! element).
//!
//! A spline maps `[−B, B]` onto itself through `K` bins and is the identity outside (the
//! derivatives at `±B` are fixed to 1 so the tails join smoothly). Bin look-ups index the
//! flattened knot table (`row·(K+1) + bin`) instead of gathering from an expanded tensor, which
//! is several times faster on the CPU backend.

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Int, Tensor};

/// Smallest bin width, bin height and knot derivative, as fractions of the range.
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
}

/// The knots of `M` splines with `K` bins each: positions, values and derivatives, each
/// `[M, K + 1]`.
#[derive(Debug, Clone)]
pub struct Knots {
    xs: Tensor<2>,
    ys: Tensor<2>,
    slopes: Tensor<2>,
}

impl Knots {
    /// Builds knots from unnormalized parameters: `widths`, `heights`: `[M, K]` (softmax),
    /// `derivatives`: `[M, K − 1]` at the interior knots (`min + softplus`).
    pub fn new(
        widths: Tensor<2>,
        heights: Tensor<2>,
        derivatives: Tensor<2>,
        limits: SplineLimits,
    ) -> Self {
        let [rows, _] = derivatives.dims();
        let device = derivatives.device();
        let xs = cumulative_knots(widths, limits.min_width, limits.bound);
        let ys = cumulative_knots(heights, limits.min_height, limits.bound);
        let edge = Tensor::ones([rows, 1], &device);
        let interior = softplus(derivatives, 1.0).add_scalar(limits.min_derivative);
        let slopes = Tensor::cat(vec![edge.clone(), interior, edge], 1);
        Self { xs, ys, slopes }
    }

    /// Number of bins `K`.
    pub fn bins(&self) -> usize {
        self.xs.dims()[1] - 1
    }

    /// Applies the splines to `x: [N]`, returning `(y, log dy/dx)`, both `[N]`.
    /// With one spline (`M = 1`) every element uses it; otherwise element `i` uses spline `i`.
    pub fn forward(&self, x: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        self.transform(x, limits, false)
    }

    /// The inverse of [`Knots::forward`]: `(x, log dx/dy)` from `y: [N]`.
    pub fn inverse(&self, y: Tensor<1>, limits: SplineLimits) -> (Tensor<1>, Tensor<1>) {
        self.transform(y, limits, true)
    }

    fn transform(
        &self,
        input: Tensor<1>,
        limits: SplineLimits,
        inverse: bool,
    ) -> (Tensor<1>, Tensor<1>) {
        let b = limits.bound;
        let outside = input
            .clone()
            .lower_elem(-b)
            .bool_or(input.clone().greater_elem(b));
        let inside = input.clone().clamp(-b, b);
        let search = if inverse { &self.ys } else { &self.xs };
        let index = self.flat_index(inside.clone(), search);
        let next = index.clone().add_scalar(1);
        let pick = |table: &Tensor<2>, idx: &Tensor<1, Int>| {
            table.clone().flatten::<1>(0, 1).select(0, idx.clone())
        };
        let (x0, x1) = (pick(&self.xs, &index), pick(&self.xs, &next));
        let (y0, y1) = (pick(&self.ys, &index), pick(&self.ys, &next));
        let (d0, d1) = (pick(&self.slopes, &index), pick(&self.slopes, &next));
        let width = x1 - x0.clone();
        let height = y1 - y0.clone();
        let slope = height.clone() / width.clone();
        let curvature = d1.clone() + d0.clone() - slope.clone().mul_scalar(2.0);

        let theta = if inverse {
            let dy = inside.clone() - y0.clone();
            let a = height.clone() * (slope.clone() - d0.clone()) + dy.clone() * curvature.clone();
            let bq = height.clone() * d0.clone() - dy.clone() * curvature.clone();
            let c = slope.clone().neg() * dy;
            let disc = (bq.clone().square() - a * c.clone().mul_scalar(4.0)).clamp_min(0.0);
            c.mul_scalar(2.0) / (bq.neg() - disc.sqrt())
        } else {
            (inside.clone() - x0.clone()) / width.clone()
        };
        let mix = theta.clone() * theta.clone().neg().add_scalar(1.0);
        let denominator = slope.clone() + curvature * mix.clone();
        let slope_num = slope.clone().square()
            * (d1 * theta.clone().square()
                + slope.clone().mul_scalar(2.0) * mix.clone()
                + d0.clone() * theta.clone().neg().add_scalar(1.0).square());
        let log_derivative = slope_num.log() - denominator.clone().log().mul_scalar(2.0);

        let (out, log_det) = if inverse {
            (theta * width + x0, log_derivative.neg())
        } else {
            let num = height * (slope * theta.clone().square() + d0 * mix);
            (y0 + num / denominator, log_derivative)
        };
        let out = out.mask_where(outside.clone(), input);
        let log_det = log_det.mask_fill(outside, 0.0);
        (out, log_det)
    }

    /// Flat index `row·(K+1) + bin` of the bin holding each value of `v: [N]` in `knots`.
    fn flat_index(&self, v: Tensor<1>, knots: &Tensor<2>) -> Tensor<1, Int> {
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
