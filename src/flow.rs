//! The layer contract of docs/method.md §1.2.
//!
//! Every layer maps a batch `x` to `z` and reports, per example, its log-likelihood
//! contribution `V`. The model's log-likelihood is `Σ V + log N(z_final; 0, I)`.
//! The forward pass of an augmentation draws noise (or uses its mean, in [`Mode::Mean`]);
//! the inverse of a surjection samples the dropped coordinates (or uses their mean).

pub use crate::kernels::host_values;
use crate::kernels::noise::random;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

/// Whether the stochastic parts of a pass are drawn or replaced by their means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Draw augmentation noise (forward) and dropped coordinates (inverse).
    Sample,
    /// Use the means of those distributions: noise at its mean, dropped coordinates at `μ`.
    Mean,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sample" => Ok(Mode::Sample),
            "mean" => Ok(Mode::Mean),
            _ => Err(format!("unknown mode '{s}': expected 'sample' or 'mean'")),
        }
    }
}

/// The three kinds of generalized-flow layer (docs/method.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Invertible; `V = log |det J|`, exact.
    Bijection,
    /// Drops dimensions; `V` includes a learned density of what is dropped, exact.
    Surjection,
    /// Adds noise dimensions; `V` is a one-sample lower bound.
    Augmentation,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Bijection => "bijection",
            Kind::Surjection => "surjection",
            Kind::Augmentation => "augmentation",
        })
    }
}

/// The contract every flowified layer fulfils, for tensors of rank `D` with the batch first.
pub trait Transform<const D: usize> {
    /// Returns `(z, V)`: the output batch and the per-example likelihood term, shape `[batch]`.
    fn forward(&self, x: Tensor<D>, mode: Mode) -> (Tensor<D>, Tensor<1>);
    /// Maps an output batch back to an input batch.
    fn inverse(&self, z: Tensor<D>, mode: Mode) -> Tensor<D>;

    /// [`Transform::forward`] in a class-conditional model (docs/method.md §1.4), given each
    /// example's class one-hot, `classes: [batch, C]`. Only layers whose entry asks for the class
    /// read it (couplings with `classes` set); the others ignore it.
    fn forward_given(
        &self,
        x: Tensor<D>,
        _classes: &Tensor<2>,
        mode: Mode,
    ) -> (Tensor<D>, Tensor<1>) {
        self.forward(x, mode)
    }

    /// [`Transform::inverse`] given each example's class, as [`Transform::forward_given`].
    fn inverse_given(&self, z: Tensor<D>, _classes: &Tensor<2>, mode: Mode) -> Tensor<D> {
        self.inverse(z, mode)
    }

    /// Sets what a layer initializes from data (ActNorm's statistics) from its input on the
    /// first training batch, `x`; once, before a fresh run's first step. Most layers have none.
    fn initialize(self, _x: &Tensor<D>) -> Self
    where
        Self: Sized,
    {
        self
    }
}

/// The density of the coordinates a surjection drops (docs/method.md §2.7): a diagonal Gaussian
/// `N(μ, σ²)` whose mean and log-std a network predicts from what the layer keeps. Every
/// surjection scores what it drops with one (forward) and draws from it (inverse); only the
/// predictor differs: a funnel's MLP conditioner, a convolution's context network.
pub struct DroppedDensity<const D: usize> {
    /// `μ`, shaped as the dropped coordinates.
    pub mean: Tensor<D>,
    /// `log σ`, shaped as the dropped coordinates.
    pub log_std: Tensor<D>,
}

impl<const D: usize> DroppedDensity<D> {
    /// `Σ_j log N(x_j; μ_j, σ_j²)` over every non-batch axis. Shape `[batch]`.
    pub fn log_prob(self, x: Tensor<D>) -> Tensor<1> {
        let standardized = (x - self.mean) * self.log_std.clone().neg().exp();
        let per_value =
            (standardized.square().mul_scalar(-0.5) - self.log_std).sub_scalar(HALF_LN_2PI);
        sum_per_example(per_value)
    }

    /// A draw from `N(μ, σ²)` elementwise in [`Mode::Sample`], `μ` itself in [`Mode::Mean`].
    pub fn draw(self, mode: Mode) -> Tensor<D> {
        match mode {
            Mode::Mean => self.mean,
            Mode::Sample => {
                let eps = random(
                    self.mean.dims(),
                    Distribution::Normal(0.0, 1.0),
                    &self.mean.device(),
                );
                self.mean + self.log_std.exp() * eps
            }
        }
    }
}

/// `Σ_j log N(x_j; 0, 1)` over every non-batch axis. Shape `[batch]`.
pub fn standard_normal_log_prob<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let per_value = x.square().mul_scalar(-0.5).sub_scalar(HALF_LN_2PI);
    sum_per_example(per_value)
}

/// Sums every axis but the first: `[batch, ...] -> [batch]`.
pub fn sum_per_example<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let batch = x.dims()[0];
    x.reshape([batch as i64, -1]).sum_dim(1).reshape([batch])
}

/// `½ ln 2π`.
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;
