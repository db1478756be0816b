//! ActNorm (Kingma & Dhariwal 2018; docs/method.md §2.8): a learned scale and shift per channel,
//! `z = (x + b) · e^s`, a bijection with `V = H·W·Σ s`. Its mean mode is the plain affine
//! normalization, so a network's normalization layers (a BatchNorm with its statistics folded
//! in) flowify as it.
//!
//! Data-dependent initialization: before a fresh run's first step, `b` and `s` are set so that
//! each channel of the first training batch has zero mean and unit variance
//! ([`Transform::initialize`]). They are parameters like any other from then on, so the
//! checkpoint and the safetensors export hold them, and a reloaded or resumed model is never
//! initialized again.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::trained::Trained;
use super::{with_value, LayerConfig};
use crate::flow::{Kind, Mode, Transform};

/// `layer = "act_norm"`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActNormSpec {
    /// Where `flowify import` takes a trained normalization from: the tensor-name prefix of a
    /// BatchNorm (its running statistics folded in) or of a per-channel affine layer. Unset: the
    /// layer initializes from data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

impl LayerConfig for ActNormSpec {
    type Layer = ActNorm;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        Ok(input)
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Bijection
    }

    fn name(&self) -> String {
        "ActNorm".into()
    }

    fn params(&self, [c, _, _]: [usize; 3]) -> usize {
        2 * c
    }

    /// `a = e^s`, `c = b·e^s` of the trained `y = a·x + c`, with a BatchNorm's `ε = 10⁻⁵` (PyTorch's
    /// and burn's default). ActNorm's scale is positive: a negative one is refused.
    fn import(
        &self,
        [c, _, _]: [usize; 3],
        layer: ActNorm,
        trained: &Trained,
    ) -> Result<ActNorm, String> {
        let Some(prefix) = &self.weights else {
            return Ok(layer);
        };
        let (a, shift) = trained.affine(prefix, 1e-5)?;
        if a.len() != c {
            return Err(format!("{prefix}: expected {c} channels, got {}", a.len()));
        }
        if let Some(channel) = a.iter().position(|&a| a.is_nan() || a <= 0.0) {
            return Err(format!(
                "{prefix}: channel {channel} has scale {}; an ActNorm needs a positive one",
                a[channel]
            ));
        }
        let device = layer.bias.device();
        let vector = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [c]), &device);
        let log_scale = vector(a.iter().map(|a| a.ln() as f32).collect());
        let bias = vector(a.iter().zip(&shift).map(|(a, s)| (s / a) as f32).collect());
        Ok(ActNorm {
            log_scale: with_value(layer.log_scale, log_scale),
            bias: with_value(layer.bias, bias),
        })
    }

    /// The identity until [`Transform::initialize`] sees data.
    fn init(&self, [c, _, _]: [usize; 3], device: &Device) -> ActNorm {
        ActNorm {
            log_scale: Param::from_tensor(Tensor::zeros([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
        }
    }
}

/// `[batch, C, H, W] → [batch, C, H, W]`, `z = (x + b) · e^s` per channel.
#[derive(Module, Debug)]
pub struct ActNorm {
    /// `s`, shape `[C]`.
    pub log_scale: Param<Tensor<1>>,
    /// `b`, shape `[C]`.
    pub bias: Param<Tensor<1>>,
}

impl ActNorm {
    fn per_channel(p: &Param<Tensor<1>>) -> Tensor<4> {
        let c = p.dims()[0];
        p.val().reshape([1, c, 1, 1])
    }
}

/// Variance floor of the initialization, so a constant channel gets a finite scale.
const MIN_VARIANCE: f64 = 1e-6;

impl Transform<4> for ActNorm {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, _, h, w] = x.dims();
        let z = (x + Self::per_channel(&self.bias)) * Self::per_channel(&self.log_scale).exp();
        let v = self.log_scale.val().sum().mul_scalar((h * w) as f64);
        (z, v.expand([batch]))
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        z * Self::per_channel(&self.log_scale).neg().exp() - Self::per_channel(&self.bias)
    }

    /// `b = −mean`, `s = −½ log var` of each channel of `x` over the batch and the pixels.
    fn initialize(self, x: &Tensor<4>) -> Self {
        let [batch, c, h, w] = x.dims();
        let values = x
            .clone()
            .detach()
            .swap_dims(0, 1)
            .reshape([c, batch * h * w]);
        let mean = values.clone().mean_dim(1);
        let variance = (values - mean.clone()).square().mean_dim(1);
        let bias = mean.reshape([c]).neg();
        let log_scale = variance
            .reshape([c])
            .clamp_min(MIN_VARIANCE)
            .log()
            .mul_scalar(-0.5);
        Self {
            log_scale: with_value(self.log_scale, log_scale),
            bias: with_value(self.bias, bias),
        }
    }
}
