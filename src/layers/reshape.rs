//! Flatten (docs/method.md §2.2): a bijection with `V = 0`.
//!
//! Inside a model every batch is `[batch, C, H, W]`; a flat vector of `D` features is carried
//! as `[batch, D, 1, 1]`, so flattening is a reshape that the inverse undoes.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::LayerConfig;
use crate::flow::{Kind, Mode, Transform};

/// `layer = "flatten"`: no fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenSpec {}

impl LayerConfig for FlattenSpec {
    type Layer = Flatten;

    fn output_shape(&self, [c, h, w]: [usize; 3]) -> Result<[usize; 3], String> {
        Ok([c * h * w, 1, 1])
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Bijection
    }

    fn name(&self) -> String {
        "Flat".into()
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        0
    }

    fn init(&self, input: [usize; 3], _device: &Device) -> Flatten {
        Flatten::new(input)
    }
}

/// `[batch, C, H, W] → [batch, C·H·W, 1, 1]`.
#[derive(Module, Debug)]
pub struct Flatten {
    /// The input's `[C, H, W]`, for the inverse.
    shape: [usize; 3],
}

impl Flatten {
    /// A flatten for inputs of shape `[C, H, W]`.
    pub fn new(shape: [usize; 3]) -> Self {
        Self { shape }
    }
}

impl Transform<4> for Flatten {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let v = Tensor::zeros([batch], &x.device());
        (x.reshape([batch, c * h * w, 1, 1]), v)
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        let [c, h, w] = self.shape;
        let batch = z.dims()[0];
        z.reshape([batch, c, h, w])
    }
}
