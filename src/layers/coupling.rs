//! Rational-quadratic neural spline couplings (spec §3.6, Durkan et al. 2019), dense
//! (`RQ_NSF(d, n)`) and convolutional (`RQ_NSF_Conv(c, n)`).
//!
//! The first half of the features (channels) conditions a per-element spline of the second
//! half: `K = 5` bins on `[−3, 3]`, identity tails. A stack alternates couplings with a reversal
//! of the feature axis (none after the last). Both kinds act on `[batch, C, H, W]`; a feature
//! vector is `[batch, D, 1, 1]`, so the two differ only in their conditioner.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor};

use super::mlp::{Mlp, MlpConfig};
use super::spline::{Knots, SplineLimits};
use crate::flow::{sum_per_example, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::conv3x3::conv3x3_rows;
use crate::kernels::{from_rows, to_rows};

/// Configuration of a [`CouplingStack`].
#[derive(Config, Debug)]
pub struct CouplingStackConfig {
    /// Features (dense) or channels (convolutional), at least 2.
    pub features: usize,
    /// Number of couplings `n`.
    pub couplings: usize,
    /// Convolutional conditioners (3×3, 32 channels) instead of dense ones (256 units).
    pub convolutional: bool,
    /// Spline bins `K`.
    #[config(default = 5)]
    pub bins: usize,
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
    bins: usize,
    /// The conditioner's width, whose root divides the raw widths and heights.
    hidden: usize,
}

/// What maps `x₁: [batch, C₁, H, W]` to spline parameters `[batch, C₂·(3K − 1), H, W]`.
#[derive(Module, Debug)]
pub enum Conditioner {
    /// MLP with three hidden layers of 256 units on a feature vector.
    Dense(Mlp),
    /// Four 3×3 convolutions (padding 1) with 32 channels.
    Conv(ConvNet),
}

/// A stack of 3×3 convolutions with ReLU between them.
#[derive(Module, Debug)]
pub struct ConvNet {
    convs: Vec<Conv2d>,
}

impl CouplingStackConfig {
    /// Builds the stack.
    pub fn init(&self, device: &Device) -> CouplingStack {
        let identity = self.features / 2;
        let transformed = self.features - identity;
        let params = transformed * (3 * self.bins - 1);
        let couplings = (0..self.couplings)
            .map(|_| {
                let (conditioner, hidden) = if self.convolutional {
                    let widths = [identity, 32, 32, 32, params];
                    let convs = widths
                        .windows(2)
                        .map(|w| {
                            Conv2dConfig::new([w[0], w[1]], [3, 3])
                                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                                .init(device)
                        })
                        .collect();
                    (Conditioner::Conv(ConvNet { convs }), 32)
                } else {
                    (
                        Conditioner::Dense(
                            MlpConfig::new(identity, vec![256; 3], params).init(device),
                        ),
                        256,
                    )
                };
                Coupling {
                    conditioner,
                    identity,
                    bins: self.bins,
                    hidden,
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
            Conditioner::Conv(net) => {
                let last = net.convs.len() - 1;
                net.convs
                    .iter()
                    .enumerate()
                    .fold(x, |h, (i, conv)| conv3x3_rows(conv, h, hw, i < last))
            }
        }
    }
}

impl Coupling {
    /// Spline knots for every element of `x₂`, rows `[batch·H·W, C₂]` flattened.
    fn knots(&self, conditioning: Tensor<2>, hw: [usize; 2]) -> Knots {
        let raw = self.conditioner.forward(conditioning, hw);
        Knots::new(raw.reshape([-1, 3 * self.bins as i32 - 1]))
    }

    /// `K` bins on `[−3, 3]`, identity tails; raw widths and heights divided by `√hidden` before
    /// the softmax, as nflows does.
    fn limits(&self) -> SplineLimits {
        SplineLimits {
            bound: 3.0,
            min_width: 1e-3,
            min_height: 1e-3,
            min_derivative: 1e-3,
            raw_scale: f64::from(1.0 / (self.hidden as f32).sqrt()),
        }
    }

    /// Works on rows (`[batch·H·W, C]`), the conditioner's layout, so `x₂` and its spline
    /// parameters line up without a transpose.
    fn apply(&self, x: Tensor<4>, inverse: bool) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let transformed = c - self.identity;
        let rows = to_rows(x);
        let kept = columns(rows.clone(), 0, self.identity);
        let moved = columns(rows, self.identity, transformed);
        let knots = self.knots(kept.clone(), [h, w]);
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

impl Transform<4> for CouplingStack {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let batch = x.dims()[0];
        let last = self.couplings.len().saturating_sub(1);
        let mut v = Tensor::zeros([batch], &x.device());
        let mut h = x;
        for (i, coupling) in self.couplings.iter().enumerate() {
            let (out, v_i) = coupling.apply(h, false);
            v = v + v_i;
            h = if i < last { out.flip([1]) } else { out };
        }
        (h, v)
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        let last = self.couplings.len().saturating_sub(1);
        self.couplings
            .iter()
            .enumerate()
            .rev()
            .fold(z, |h, (i, coupling)| {
                let h = if i < last { h.flip([1]) } else { h };
                coupling.apply(h, true).0
            })
    }
}
