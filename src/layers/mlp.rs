//! A plain ReLU multilayer perceptron, the conditioner inside funnels, couplings and context
//! networks. Not a flow layer itself.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::kernels::linear::linear_rows;

/// Configuration of an [`Mlp`]: `d_input → hidden… → d_output`, ReLU between layers.
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Input width.
    pub d_input: usize,
    /// Widths of the hidden layers, in order (may be empty: one linear map).
    pub hidden: Vec<usize>,
    /// Output width.
    pub d_output: usize,
}

/// Trainable numbers of an MLP with layer widths `[d_input, hidden…, d_output]`.
pub fn mlp_params(widths: &[usize]) -> usize {
    widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// A ReLU multilayer perceptron acting on the last axis.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl MlpConfig {
    /// Builds the network with burn's default (Kaiming-uniform) initialization.
    pub fn init(&self, device: &Device) -> Mlp {
        let mut widths = vec![self.d_input];
        widths.extend(&self.hidden);
        widths.push(self.d_output);
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Mlp { layers }
    }
}

impl Mlp {
    /// `[..., d_input] → [..., d_output]`, computed on the rows of the flattened leading axes.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut shape = x.dims();
        let width = shape[D - 1];
        let rows = x.reshape([-1, width as i32]);
        let last = self.layers.len() - 1;
        let out = self
            .layers
            .iter()
            .enumerate()
            .fold(rows, |h, (i, layer)| linear_rows(layer, h, i < last));
        shape[D - 1] = out.dims()[1];
        out.reshape(shape)
    }
}
