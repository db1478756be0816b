//! Rational-quadratic neural spline couplings (docs/method.md §2.6, Durkan et al. 2019), dense
//! (`RQ_NSF(d, n)`) and convolutional (`RQ_NSF_Conv(c, n)`).
//!
//! The first half of the features (channels) conditions a per-element spline of the second
//! half: by default `K = 5` bins on `[−3, 3]`, identity tails. A stack alternates couplings with a reversal
//! of the feature axis (none after the last). Both kinds act on `[batch, C, H, W]`; a feature
//! vector is `[batch, D, 1, 1]`, so the two differ only in their conditioner.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::convnet::ConvNet;
use super::mlp::{mlp_params, Mlp, MlpConfig};
use super::spline::{Knots, SplineLimits};
use super::{at_least, expect_flat, positive, shape_text, LayerConfig};
use crate::flow::{sum_per_example, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::{from_rows, to_rows};

/// `layer = "nsf"`: `RQ_NSF(features, couplings)` on a flat input, MLP conditioners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsfSpec {
    /// Features `D ≥ 2` of the flat input.
    pub features: usize,
    /// Number of couplings `n ≥ 1`.
    pub couplings: usize,
    /// Width of each conditioner's hidden layers.
    #[serde(default = "default_dense_hidden")]
    pub hidden: usize,
    /// Hidden layers per conditioner.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Spline bins `K ≥ 2`.
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// The splines act on `[−bound, bound]`, identity outside.
    #[serde(default = "default_bound")]
    pub bound: f64,
    /// In a class-conditional model, the number of classes: the conditioners are given each
    /// example's class, one-hot. 0 (the default): they are not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub classes: usize,
}

/// `layer = "nsf_conv"`: `RQ_NSF_Conv(channels, couplings)` on an image, conditioners of 3×3
/// convolutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsfConvSpec {
    /// Channels `C ≥ 2` of the input.
    pub channels: usize,
    /// Number of couplings `n ≥ 1`.
    pub couplings: usize,
    /// Channels of each conditioner's hidden convolutions.
    #[serde(default = "default_conv_hidden")]
    pub hidden: usize,
    /// Hidden convolutions per conditioner.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Spline bins `K ≥ 2`.
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// The splines act on `[−bound, bound]`, identity outside.
    #[serde(default = "default_bound")]
    pub bound: f64,
    /// In a class-conditional model, the number of classes: the conditioners are given each
    /// example's class, one-hot. 0 (the default): they are not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub classes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_dense_hidden() -> usize {
    default_hidden(false)
}

fn default_conv_hidden() -> usize {
    default_hidden(true)
}

/// The paper's conditioner width: 32 channels for convolutional couplings, 256 units for dense.
fn default_hidden(convolutional: bool) -> usize {
    if convolutional {
        32
    } else {
        256
    }
}

fn default_depth() -> usize {
    3
}

fn default_bins() -> usize {
    5
}

fn default_bound() -> f64 {
    3.0
}

impl NsfSpec {
    /// `RQ_NSF(features, couplings)` with the paper's conditioners and splines.
    pub fn new(features: usize, couplings: usize) -> Self {
        Self {
            features,
            couplings,
            hidden: default_dense_hidden(),
            depth: default_depth(),
            bins: default_bins(),
            bound: default_bound(),
            classes: 0,
        }
    }

    fn config(&self) -> CouplingStackConfig {
        CouplingStackConfig {
            features: self.features,
            couplings: self.couplings,
            convolutional: false,
            hidden: Some(self.hidden),
            depth: self.depth,
            bins: self.bins,
            bound: self.bound,
            classes: self.classes,
        }
    }
}

impl NsfConvSpec {
    /// `RQ_NSF_Conv(channels, couplings)` with the paper's conditioners and splines.
    pub fn new(channels: usize, couplings: usize) -> Self {
        Self {
            channels,
            couplings,
            hidden: default_conv_hidden(),
            depth: default_depth(),
            bins: default_bins(),
            bound: default_bound(),
            classes: 0,
        }
    }

    fn config(&self) -> CouplingStackConfig {
        CouplingStackConfig {
            features: self.channels,
            couplings: self.couplings,
            convolutional: true,
            hidden: Some(self.hidden),
            depth: self.depth,
            bins: self.bins,
            bound: self.bound,
            classes: self.classes,
        }
    }
}

/// Both entries are a [`CouplingStackConfig`] under the paper's two names: every fact comes
/// from it.
macro_rules! coupling_entry {
    ($spec:ty) => {
        impl LayerConfig for $spec {
            type Layer = CouplingStack;

            fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
                self.config().output_shape(input)
            }

            fn kind(&self, _input: [usize; 3]) -> Kind {
                Kind::Bijection
            }

            fn name(&self) -> String {
                self.config().name()
            }

            fn params(&self, _input: [usize; 3]) -> usize {
                self.config().params()
            }

            fn classes(&self) -> usize {
                self.classes
            }

            fn init(&self, _input: [usize; 3], device: &Device) -> CouplingStack {
                self.config().init(device)
            }
        }
    };
}

coupling_entry!(NsfSpec);
coupling_entry!(NsfConvSpec);

/// Configuration of a [`CouplingStack`].
#[derive(Config, Debug)]
pub struct CouplingStackConfig {
    /// Features (dense) or channels (convolutional), at least 2.
    pub features: usize,
    /// Number of couplings `n`.
    pub couplings: usize,
    /// Convolutional conditioners (3×3) instead of dense ones.
    pub convolutional: bool,
    /// Width (units or channels) of the conditioners' hidden layers; `None`: the paper's, 32
    /// channels or 256 units.
    #[config(default = "None")]
    pub hidden: Option<usize>,
    /// Hidden layers per conditioner.
    #[config(default = 3)]
    pub depth: usize,
    /// Spline bins `K`.
    #[config(default = 5)]
    pub bins: usize,
    /// The splines act on `[−bound, bound]`.
    #[config(default = 3.0)]
    pub bound: f64,
    /// Classes whose one-hot code the conditioners are given besides `x₁`; 0: none.
    #[config(default = 0)]
    pub classes: usize,
}

/// `n` spline couplings with feature reversals between them.
#[derive(Module, Debug)]
pub struct CouplingStack {
    couplings: Vec<Coupling>,
}

/// One coupling: `z = [x₁, spline_{θ(x₁)}(x₂)]`.
#[derive(Module, Debug)]
pub struct Coupling {
    conditioner: Conditioner,
    identity: usize,
    /// Classes given to the conditioner (one-hot, beside `x₁`); 0 in an unconditional stack.
    classes: usize,
    bins: usize,
    /// The conditioner's width, whose root divides the raw widths and heights.
    hidden: usize,
    /// The splines act on `[−bound, bound]`.
    bound: f64,
}

/// What maps `x₁: [batch, C₁, H, W]` (with the class one-hot beside it in every pixel, in a
/// conditional stack) to spline parameters `[batch, C₂·(3K − 1), H, W]`.
#[derive(Module, Debug)]
pub enum Conditioner {
    /// An MLP on a feature vector (by default three hidden layers of 256 units).
    Dense(Mlp),
    /// 3×3 convolutions, padding 1 (by default four, with 32 channels between them).
    Conv(ConvNet),
}

impl CouplingStackConfig {
    /// The stack keeps the shape of its input; or why it cannot take `input` or its fields,
    /// naming the field as the spec entries do (`features`, or `channels` for images).
    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        let width = if self.convolutional {
            "channels"
        } else {
            "features"
        };
        at_least(width, self.features, 2)?;
        at_least("couplings", self.couplings, 1)?;
        at_least("hidden", self.hidden(), 1)?;
        at_least("bins", self.bins, 2)?;
        positive("bound", self.bound)?;
        if !self.convolutional {
            expect_flat(input, self.features, width)?;
        } else if input[0] != self.features {
            return Err(format!(
                "expects {} channels, got {}",
                self.features,
                shape_text(input)
            ));
        }
        Ok(input)
    }

    /// `RQ_NSF(d, n)` or `RQ_NSF_Conv(c, n)`.
    fn name(&self) -> String {
        let conv = if self.convolutional { "_Conv" } else { "" };
        format!("RQ_NSF{conv}({},{})", self.features, self.couplings)
    }

    fn hidden(&self) -> usize {
        self.hidden
            .unwrap_or_else(|| default_hidden(self.convolutional))
    }

    /// The conditioner's widths `[C₁ + classes, hidden…, C₂·(3K − 1)]`.
    fn widths(&self) -> Vec<usize> {
        let identity = self.features / 2;
        let transformed = self.features - identity;
        [
            vec![identity + self.classes],
            vec![self.hidden(); self.depth],
            vec![transformed * (3 * self.bins - 1)],
        ]
        .concat()
    }

    /// Trainable numbers of all the conditioners.
    pub fn params(&self) -> usize {
        let widths = self.widths();
        let per_coupling = if self.convolutional {
            ConvNet::params(&widths)
        } else {
            mlp_params(&widths)
        };
        self.couplings * per_coupling
    }

    /// Builds the stack.
    pub fn init(&self, device: &Device) -> CouplingStack {
        let widths = self.widths();
        let last = widths.len() - 1;
        let couplings = (0..self.couplings)
            .map(|_| {
                let conditioner = if self.convolutional {
                    Conditioner::Conv(ConvNet::new(&widths, device))
                } else {
                    Conditioner::Dense(
                        MlpConfig::new(widths[0], widths[1..last].to_vec(), widths[last])
                            .init(device),
                    )
                };
                Coupling {
                    conditioner,
                    identity: widths[0] - self.classes,
                    classes: self.classes,
                    bins: self.bins,
                    hidden: self.hidden(),
                    bound: self.bound,
                }
            })
            .collect();
        CouplingStack { couplings }
    }
}

impl Conditioner {
    /// `x₁: [batch·H·W, C₁]` rows → `[batch·H·W, C₂·(3K − 1)]`.
    fn forward(&self, x: Tensor<2>, hw: [usize; 2]) -> Tensor<2> {
        match self {
            Conditioner::Dense(mlp) => mlp.forward(x),
            Conditioner::Conv(net) => net.forward(x, hw),
        }
    }
}

impl Coupling {
    /// Spline knots for every element of `x₂`, rows `[batch·H·W, C₂]` flattened.
    fn knots(&self, conditioning: Tensor<2>, hw: [usize; 2]) -> Knots {
        let raw = self.conditioner.forward(conditioning, hw);
        Knots::new(raw.reshape([-1, 3 * self.bins as i32 - 1]))
    }

    /// `K` bins on `[−bound, bound]`, identity tails; raw widths and heights divided by
    /// `√hidden` before the softmax, as nflows does.
    fn limits(&self) -> SplineLimits {
        SplineLimits {
            bound: self.bound,
            min_width: 1e-3,
            min_height: 1e-3,
            min_derivative: 1e-3,
            raw_scale: f64::from(1.0 / (self.hidden as f32).sqrt()),
        }
    }

    /// Works on rows (`[batch·H·W, C]`), the conditioner's layout, so `x₂` and its spline
    /// parameters line up without a transpose.
    ///
    /// # Panics
    /// If the coupling reads the class and `classes` is `None`.
    fn apply(
        &self,
        x: Tensor<4>,
        classes: Option<&Tensor<2>>,
        inverse: bool,
    ) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let transformed = c - self.identity;
        let rows = to_rows(x);
        let kept = columns(rows.clone(), 0, self.identity);
        let moved = columns(rows, self.identity, transformed);
        let conditioning = if self.classes == 0 {
            kept.clone()
        } else {
            let classes = classes.expect("a coupling with `classes` is given each example's class");
            // The class of each example, repeated in each of its pixels' rows.
            let per_pixel = classes
                .clone()
                .reshape([batch, 1, self.classes])
                .repeat_dim(1, h * w)
                .reshape([batch * h * w, self.classes]);
            Tensor::cat(vec![kept.clone(), per_pixel], 1)
        };
        let knots = self.knots(conditioning, [h, w]);
        let flat = moved.reshape([batch * h * w * transformed]);
        let (out, log_det) = if inverse {
            knots.inverse(flat, self.limits())
        } else {
            knots.forward(flat, self.limits())
        };
        let v = sum_per_example(log_det.reshape([batch, h * w * transformed]));
        let out = out.reshape([batch * h * w, transformed]);
        let rows = Tensor::cat(vec![kept, out], 1);
        (from_rows(rows, [batch, h, w]), v)
    }
}

impl CouplingStack {
    fn forward_with(&self, x: Tensor<4>, classes: Option<&Tensor<2>>) -> (Tensor<4>, Tensor<1>) {
        let batch = x.dims()[0];
        let last = self.couplings.len().saturating_sub(1);
        let mut v = Tensor::zeros([batch], &x.device());
        let mut h = x;
        for (i, coupling) in self.couplings.iter().enumerate() {
            let (out, v_i) = coupling.apply(h, classes, false);
            v = v + v_i;
            h = if i < last { out.flip([1]) } else { out };
        }
        (h, v)
    }

    fn inverse_with(&self, z: Tensor<4>, classes: Option<&Tensor<2>>) -> Tensor<4> {
        let last = self.couplings.len().saturating_sub(1);
        self.couplings
            .iter()
            .enumerate()
            .rev()
            .fold(z, |h, (i, coupling)| {
                let h = if i < last { h.flip([1]) } else { h };
                coupling.apply(h, classes, true).0
            })
    }
}

impl Transform<4> for CouplingStack {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        self.forward_with(x, None)
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        self.inverse_with(z, None)
    }

    fn forward_given(
        &self,
        x: Tensor<4>,
        classes: &Tensor<2>,
        _mode: Mode,
    ) -> (Tensor<4>, Tensor<1>) {
        self.forward_with(x, Some(classes))
    }

    fn inverse_given(&self, z: Tensor<4>, classes: &Tensor<2>, _mode: Mode) -> Tensor<4> {
        self.inverse_with(z, Some(classes))
    }
}
