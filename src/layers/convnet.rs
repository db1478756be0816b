//! A stack of 3×3 convolutions (padding 1) with ReLU between them, on channels-last rows: the
//! conditioner of convolutional couplings and of the split's prior. Not a flow layer itself.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor};

use super::with_value;
use crate::kernels::conv3x3::conv3x3_rows;

/// 3×3 convolutions through the channel widths `widths[0] → widths[1] → …`.
#[derive(Module, Debug)]
pub struct ConvNet {
    convs: Vec<Conv2d>,
}

impl ConvNet {
    /// The network through `widths` (at least two), with burn's default initialization.
    pub fn new(widths: &[usize], device: &Device) -> Self {
        let convs = widths
            .windows(2)
            .map(|w| {
                Conv2dConfig::new([w[0], w[1]], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        Self { convs }
    }

    /// Trainable numbers of the network through `widths`.
    pub fn params(widths: &[usize]) -> usize {
        widths.windows(2).map(|w| w[0] * w[1] * 9 + w[1]).sum()
    }

    /// The last convolution's weights and bias set to zero, so the network starts at 0.
    pub fn zero_last(mut self) -> Self {
        if let Some(last) = self.convs.last_mut() {
            let zero = last.weight.val().zeros_like();
            last.weight = with_value(last.weight.clone(), zero);
            last.bias = last.bias.take().map(|b| {
                let zero = b.val().zeros_like();
                with_value(b, zero)
            });
        }
        self
    }

    /// `x: [batch·H·W, C_in]` rows of `[H, W]` maps → `[batch·H·W, C_out]`.
    pub fn forward(&self, x: Tensor<2>, hw: [usize; 2]) -> Tensor<2> {
        let last = self.convs.len() - 1;
        self.convs
            .iter()
            .enumerate()
            .fold(x, |h, (i, conv)| conv3x3_rows(conv, h, hw, i < last))
    }
}
