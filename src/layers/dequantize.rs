//! Uniform dequantization (docs/method.md §2.1): integer pixels `k ∈ {0..255}` become `x = (k + u)/256`,
//! `u ~ U(0, 1)`, which tiles `[0, 1]^D` exactly; `V = −D ln 256`.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::LayerConfig;
use crate::flow::{Kind, Mode, Transform};
use crate::kernels::noise::random;

/// Number of grey levels of an 8-bit pixel.
pub const LEVELS: f64 = 256.0;

/// `layer = "dequantize"`: no fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DequantizeSpec {}

impl LayerConfig for DequantizeSpec {
    type Layer = Dequantize;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        Ok(input)
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Augmentation
    }

    fn name(&self) -> String {
        "Deq".into()
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        0
    }

    fn init(&self, _input: [usize; 3], _device: &Device) -> Dequantize {
        Dequantize
    }
}

/// The dequantization augmentation. Its input holds integer pixel values as floats.
#[derive(Module, Debug, Default)]
pub struct Dequantize;

impl<const D: usize> Transform<D> for Dequantize {
    /// `k: [batch, ...]` with values in `0..=255` → `x ∈ [0, 1)`; `V = −D ln 256` per example.
    /// Mean mode uses the noise's mean `u = ½`.
    fn forward(&self, k: Tensor<D>, mode: Mode) -> (Tensor<D>, Tensor<1>) {
        let dims = k.dims();
        let per_example: usize = dims[1..].iter().product();
        let u = match mode {
            Mode::Sample => random(dims, Distribution::Uniform(0.0, 1.0), &k.device()),
            Mode::Mean => k.full_like(0.5),
        };
        let v = Tensor::full([dims[0]], -(per_example as f64) * LEVELS.ln(), &k.device());
        ((k + u).div_scalar(LEVELS), v)
    }

    /// The identity: images live in `[0, 1]`; clamp them for display.
    fn inverse(&self, x: Tensor<D>, _mode: Mode) -> Tensor<D> {
        x
    }
}
