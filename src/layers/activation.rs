//! Invertible elementwise activations (docs/method.md §2.4): LeakyReLU and the learned rational-quadratic
//! spline shared by every element of the layer.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::spline::{Knots, SplineLimits};
use super::{at_least, positive, LayerConfig};
use crate::flow::{sum_per_example, Kind, Mode, Transform};

/// `layer = "leaky_relu"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakyReluSpec {
    /// Slope `α > 0` for negative inputs.
    #[serde(default = "default_slope")]
    pub slope: f64,
}

impl Default for LeakyReluSpec {
    fn default() -> Self {
        Self {
            slope: default_slope(),
        }
    }
}

fn default_slope() -> f64 {
    LeakyReluConfig::new().slope
}

impl LayerConfig for LeakyReluSpec {
    type Layer = LeakyRelu;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        positive("slope", self.slope)?;
        Ok(input)
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Bijection
    }

    fn name(&self) -> String {
        format!("LeakyReLU({})", self.slope)
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        0
    }

    fn init(&self, _input: [usize; 3], _device: &Device) -> LeakyRelu {
        LeakyReluConfig::new().with_slope(self.slope).init()
    }
}

/// `layer = "spline"`: one learned spline shared by every element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplineSpec {
    /// Number of bins `K`, at least 2.
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// The spline acts on `[−bound, bound]`, identity outside.
    #[serde(default = "default_bound")]
    pub bound: f64,
}

fn default_bins() -> usize {
    RqSplineConfig::new().bins
}

fn default_bound() -> f64 {
    RqSplineConfig::new().bound
}

impl Default for SplineSpec {
    /// The paper's spline: 10 bins on `[−2, 2]`.
    fn default() -> Self {
        Self {
            bins: default_bins(),
            bound: default_bound(),
        }
    }
}

impl SplineSpec {
    fn config(&self) -> RqSplineConfig {
        RqSplineConfig::new()
            .with_bins(self.bins)
            .with_bound(self.bound)
    }
}

impl LayerConfig for SplineSpec {
    type Layer = RqSpline;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        at_least("bins", self.bins, 2)?;
        positive("bound", self.bound)?;
        Ok(input)
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Bijection
    }

    fn name(&self) -> String {
        if (self.bins, self.bound) == (default_bins(), default_bound()) {
            "S".into()
        } else {
            format!("S(K={}, B={})", self.bins, self.bound)
        }
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        3 * self.bins - 1
    }

    fn init(&self, _input: [usize; 3], device: &Device) -> RqSpline {
        self.config().init(device)
    }
}

/// Configuration of a [`LeakyRelu`] activation.
#[derive(Config, Debug)]
pub struct LeakyReluConfig {
    /// Slope `α > 0` for negative inputs.
    #[config(default = 0.5)]
    pub slope: f64,
}

/// `z = x` for `x ≥ 0`, `α x` otherwise; `V = Σ [x < 0] ln α`.
#[derive(Module, Debug)]
pub struct LeakyRelu {
    slope: f64,
}

impl LeakyReluConfig {
    /// Builds the activation.
    pub fn init(&self) -> LeakyRelu {
        LeakyRelu { slope: self.slope }
    }
}

impl<const D: usize> Transform<D> for LeakyRelu {
    /// Any shape `[batch, ...]`; `V: [batch]`.
    fn forward(&self, x: Tensor<D>, _mode: Mode) -> (Tensor<D>, Tensor<1>) {
        let negative = x.clone().lower_elem(0.0);
        let v = sum_per_example(negative.clone().float()).mul_scalar(self.slope.ln());
        (x.clone().mask_where(negative, x.mul_scalar(self.slope)), v)
    }

    fn inverse(&self, z: Tensor<D>, _mode: Mode) -> Tensor<D> {
        let negative = z.clone().lower_elem(0.0);
        z.clone().mask_where(negative, z.div_scalar(self.slope))
    }
}

/// Configuration of an [`RqSpline`] activation.
#[derive(Config, Debug)]
pub struct RqSplineConfig {
    /// Number of bins `K`.
    #[config(default = 10)]
    pub bins: usize,
    /// The spline acts on `[−bound, bound]`, identity outside.
    #[config(default = 2.0)]
    pub bound: f64,
    /// Minimum bin width, bin height and interior derivative.
    #[config(default = 1e-3)]
    pub min_size: f64,
}

/// One learned monotone rational-quadratic spline applied to every element;
/// `V = Σ log dz/dx`.
#[derive(Module, Debug)]
pub struct RqSpline {
    /// Unnormalized bin widths, `[1, K]`.
    pub widths: Param<Tensor<2>>,
    /// Unnormalized bin heights, `[1, K]`.
    pub heights: Param<Tensor<2>>,
    /// Unnormalized interior derivatives, `[1, K − 1]`.
    pub derivatives: Param<Tensor<2>>,
    bound: f64,
    min_size: f64,
}

impl RqSplineConfig {
    /// Builds the spline with its `3K − 1` numbers uniform in `[0, 1)`, as the reference does
    /// (so it does not start as the identity).
    pub fn init(&self, device: &Device) -> RqSpline {
        let k = self.bins;
        let uniform = |n| {
            Param::from_tensor(Tensor::random(
                [1, n],
                Distribution::Uniform(0.0, 1.0),
                device,
            ))
        };
        RqSpline {
            widths: uniform(k),
            heights: uniform(k),
            derivatives: uniform(k - 1),
            bound: self.bound,
            min_size: self.min_size,
        }
    }
}

impl RqSpline {
    fn limits(&self) -> SplineLimits {
        SplineLimits {
            bound: self.bound,
            min_width: self.min_size,
            min_height: self.min_size,
            min_derivative: self.min_size,
            raw_scale: 1.0,
        }
    }

    fn knots(&self) -> Knots {
        Knots::new(Tensor::cat(
            vec![
                self.widths.val(),
                self.heights.val(),
                self.derivatives.val(),
            ],
            1,
        ))
    }
}

impl<const D: usize> Transform<D> for RqSpline {
    /// Any shape `[batch, ...]`; `V: [batch]`.
    fn forward(&self, x: Tensor<D>, _mode: Mode) -> (Tensor<D>, Tensor<1>) {
        let shape = x.shape();
        let (z, log_det) = self
            .knots()
            .forward(x.flatten::<1>(0, D - 1), self.limits());
        let log_det: Tensor<D> = log_det.reshape(shape.clone());
        (z.reshape(shape), sum_per_example(log_det))
    }

    fn inverse(&self, z: Tensor<D>, _mode: Mode) -> Tensor<D> {
        let shape = z.shape();
        let (x, _) = self
            .knots()
            .inverse(z.flatten::<1>(0, D - 1), self.limits());
        x.reshape(shape)
    }
}
