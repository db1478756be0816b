//! The context network of a surjection that pools patches (docs/method.md §2.5, §2.7): from the
//! output map, an image-shaped mean and log-std at the input's resolution, from which the
//! density of each patch's dropped coordinates is read. The flowified convolution and average
//! pooling use it. Not a flow layer itself.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::mlp::{mlp_params, Mlp, MlpConfig};
use crate::kernels::conv3x3::conv3x3_rows;
use crate::kernels::linear::affine_rows;
use crate::kernels::unfold::fold_rows;

/// A [`ContextNet`] from a `C_out`-channel output map back to `2·C_in` channels at the
/// resolution that patches of `kernel` at `stride` tile.
#[derive(Debug, Clone)]
pub struct ContextNetConfig {
    /// Channels of the output map it reads.
    pub c_out: usize,
    /// Channels of the input whose patches it scores (it predicts `2·c_in`).
    pub c_in: usize,
    /// Its width `N`.
    pub width: usize,
    /// Hidden layers of its two per-position MLPs.
    pub depth: usize,
    /// 3×3 convolutions after the upsampling.
    pub convs: usize,
    /// Patch size `k`.
    pub kernel: usize,
    /// Patch stride `t`.
    pub stride: usize,
}

/// The paper's hidden layers of the per-position MLPs.
pub fn default_context_depth() -> usize {
    5
}

/// The paper's 3×3 convolutions after the upsampling.
pub fn default_context_convs() -> usize {
    2
}

impl ContextNetConfig {
    /// Builds the network.
    pub fn init(&self, device: &Device) -> ContextNet {
        let (n, k, t) = (self.width, self.kernel, self.stride);
        let per_position = |from, to| MlpConfig::new(from, vec![n; self.depth], to).init(device);
        let conv3 = || {
            Conv2dConfig::new([n, n], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        ContextNet {
            embed: per_position(self.c_out, n),
            upsample: ConvTranspose2dConfig::new([n, n], [k, k])
                .with_stride([t, t])
                .init(device),
            convs: (0..self.convs).map(|_| conv3()).collect(),
            head: per_position(n, 2 * self.c_in),
        }
    }

    /// Trainable numbers.
    pub fn params(&self) -> usize {
        let (n, k) = (self.width, self.kernel);
        let hidden = vec![n; self.depth];
        mlp_params(&[vec![self.c_out], hidden.clone(), vec![n]].concat())
            + (n * n * k * k + n)
            + self.convs * (n * n * 9 + n)
            + mlp_params(&[vec![n], hidden, vec![2 * self.c_in]].concat())
    }
}

/// Predicts, from the output map, an image-shaped mean and log-std at the padded input
/// resolution: per-position MLP `C_out → N`, transposed convolution back to the input size, two
/// 3×3 convolutions, per-position MLP `N → 2·C_in` (`N = 2·C_in + C_out`).
///
/// It works on channels-last rows throughout: the transposed convolution is a product that gives
/// each position's patch of contributions, folded onto the pixels ([`fold_rows`]), instead of
/// burn's image-by-image transposed convolution with its NCHW round trips.
#[derive(Module, Debug)]
pub struct ContextNet {
    embed: Mlp,
    upsample: ConvTranspose2d,
    convs: Vec<Conv2d>,
    head: Mlp,
}

impl ContextNet {
    /// `z: [batch·H_out·W_out, C_out]` rows (`size = [H_out, W_out]`) →
    /// `[batch·H'·W', 2·C_in]` rows, with `[H', W']`.
    pub fn forward(&self, z: Tensor<2>, size: [usize; 2]) -> (Tensor<2>, [usize; 2]) {
        let (h, [height, width]) = self.upsample(self.embed.forward(z), size);
        let h = self
            .convs
            .iter()
            .fold(h, |h, conv| conv3x3_rows(conv, h, [height, width], true));
        (self.head.forward(h), [height, width])
    }

    /// The transposed convolution of `rows: [batch·h·w, N]` (no padding, as [`ContextNetConfig`]
    /// builds it), rectified: each position's `N·k·k` contributions are one row of `rows · W`
    /// (the weight `[N, N, k, k]` read as `[N, N·k·k]`, the channel-major patch order of
    /// [`fold_rows`]), and folding the patches sums the overlapping ones.
    ///
    /// When patches do not overlap (stride = kernel, the `conv2` presets), each pixel receives one
    /// contribution, so the bias and the ReLU are applied in the product, on the patches.
    fn upsample(&self, rows: Tensor<2>, [h, w]: [usize; 2]) -> (Tensor<2>, [usize; 2]) {
        let [n_in, n_out, k, _] = self.upsample.weight.dims();
        let t = self.upsample.stride[0];
        let weight = self.upsample.weight.val().reshape([n_in, n_out * k * k]);
        let bias = match &self.upsample.bias {
            Some(bias) => bias.val(),
            None => Tensor::zeros([n_out], &rows.device()),
        };
        let size = [(h - 1) * t + k, (w - 1) * t + k];
        let image = if t == k {
            let bias = bias
                .unsqueeze_dim::<2>(1)
                .expand([n_out, k * k])
                .reshape([n_out * k * k]);
            fold_rows(affine_rows(rows, weight, bias, true), size, k, t)
        } else {
            let zero = Tensor::zeros([n_out * k * k], &rows.device());
            let image = fold_rows(affine_rows(rows, weight, zero, false), size, k, t);
            relu(image + bias.unsqueeze_dim(0))
        };
        (image, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::host_values;
    use crate::kernels::{from_rows, to_rows};
    use crate::layers::conv::FlowConv2dConfig;
    use burn::tensor::Distribution;

    fn assert_same(a: Tensor<2>, b: Tensor<2>, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        for (i, (a, b)) in host_values(a).iter().zip(host_values(b)).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}: element {i}: {a} vs {b}"
            );
        }
    }

    /// The context network's upsampling, both where patches overlap and where they do not,
    /// against burn's transposed convolution, in values and in gradients.
    #[test]
    fn upsampling_matches_burns_transposed_convolution() {
        let device = Device::flex();
        device.seed(3);
        let device = device.autodiff();
        // 6×10 input, 3 → 5 channels: output maps of 3×5 (k = t = 2) and 2×4 (k = 3, t = 2), so
        // rows and columns differ and the second's patches overlap.
        for (k, t) in [(2, 2), (3, 2)] {
            let layer = FlowConv2dConfig::new(3, 5, k, t, 6, 10).init(&device);
            let context = layer
                .context
                .as_ref()
                .expect("the kernel drops coordinates");
            let [_, h, w] = FlowConv2dConfig::new(3, 5, k, t, 6, 10)
                .output_shape()
                .unwrap();
            let batch = 2;
            let n = 2 * 3 + 5;
            let rows =
                Tensor::<2>::random([batch * h * w, n], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
            let image = relu(
                context
                    .upsample
                    .forward(from_rows(rows.clone(), [batch, h, w])),
            );
            let [_, _, height, width] = image.dims();
            let reference = to_rows(image);
            let weights =
                Tensor::<2>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
            let grads_ref = (reference.clone() * weights.clone()).sum().backward();
            let (ours, size) = context.upsample(rows.clone(), [h, w]);
            assert_eq!(size, [height, width]);
            let grads_ours = (ours.clone() * weights.clone()).sum().backward();
            assert_same(ours, reference.clone(), "upsampled rows");
            assert_same(
                rows.grad(&grads_ours).unwrap(),
                rows.grad(&grads_ref).unwrap(),
                "input gradient",
            );
            let weight = context.upsample.weight.val();
            let flat = |t: Tensor<4>| t.reshape([n, n * k * k]);
            assert_same(
                flat(weight.grad(&grads_ours).unwrap()),
                flat(weight.grad(&grads_ref).unwrap()),
                "weight gradient",
            );
            let bias = context.upsample.bias.as_ref().unwrap().val();
            assert_same(
                bias.grad(&grads_ours).unwrap().unsqueeze(),
                bias.grad(&grads_ref).unwrap().unsqueeze(),
                "bias gradient",
            );
        }
    }
}
