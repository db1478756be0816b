//! The flowified 2-D convolution `C_in → C_out`, kernel `k`, stride `t` (spec §3.5):
//! pad (augmentation) → tile (augmentation when patches overlap) → a flowified dense kernel on
//! every patch. When the kernel drops dimensions, their density is predicted from the whole
//! output map by a context network, still an exact conditional density since the output is fully
//! known when the dropped coordinates are scored.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::dense::{FlowLinear, FlowLinearConfig};
use super::mlp::{Mlp, MlpConfig};
use super::pad::{pad_amount, Pad, PadConfig};
use super::tile::{Tile, TileConfig};
use crate::flow::{gaussian_draw, gaussian_log_prob, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::conv3x3::conv3x3_rows;
use crate::kernels::linear::affine_rows;
use crate::kernels::unfold::fold;
use crate::kernels::{from_rows, to_rows};

/// Configuration of a [`FlowConv2d`] for inputs of a known size.
#[derive(Config, Debug)]
pub struct FlowConv2dConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size `k`.
    pub kernel: usize,
    /// Stride `t ≤ k`.
    pub stride: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
}

impl FlowConv2dConfig {
    /// The output `[C_out, H_out, W_out]`, or why the configuration is unusable.
    pub fn output_shape(&self) -> Result<[usize; 3], String> {
        let (k, t) = (self.kernel, self.stride);
        if k == 0 || t == 0 || t > k {
            return Err(format!(
                "kernel {k}, stride {t}: need 1 ≤ stride ≤ kernel so every pixel is covered"
            ));
        }
        if self.height < k || self.width < k {
            return Err(format!(
                "a {}×{} input is smaller than the kernel {k}",
                self.height, self.width
            ));
        }
        let hp = self.height + pad_amount(self.height, k, t);
        let wp = self.width + pad_amount(self.width, k, t);
        Ok([self.c_out, (hp - k) / t + 1, (wp - k) / t + 1])
    }

    /// Builds the layer.
    pub fn init(&self, device: &Device) -> FlowConv2d {
        let (k, t) = (self.kernel, self.stride);
        let patch = self.c_in * k * k;
        let context = (patch > self.c_out).then(|| {
            let n = 2 * self.c_in + self.c_out;
            let per_position = |from, to| MlpConfig::new(from, vec![n; 5], to).init(device);
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
                convs: vec![conv3(), conv3()],
                head: per_position(n, 2 * self.c_in),
            }
        });
        FlowConv2d {
            pad: PadConfig::new(k, t, self.height, self.width).init(device),
            tile: TileConfig::new(k, t).init(device),
            kernel: FlowLinearConfig::new(patch, self.c_out)
                .with_conditioner(false)
                .init(device),
            context,
        }
    }
}

/// Predicts, from the output map, an image-shaped mean and log-std at the padded input
/// resolution: per-position MLP `C_out → N`, transposed convolution back to the input size, two
/// 3×3 convolutions, per-position MLP `N → 2·C_in` (`N = 2·C_in + C_out`).
///
/// It works on channels-last rows throughout. When the kernel tiles without overlap (`k = t`, the
/// `conv2` presets), the transposed convolution is a per-position linear map to a `k × k` block,
/// and cutting the prediction into patches is a reordering of rows: both are then done as a
/// product and two axis swaps instead of burn's image-by-image transposed convolution and
/// convolution-based unfold, with their NCHW round trips.
#[derive(Module, Debug)]
pub struct ContextNet {
    embed: Mlp,
    upsample: ConvTranspose2d,
    convs: Vec<Conv2d>,
    head: Mlp,
}

impl ContextNet {
    /// `z: [batch, C_out, H_out, W_out] → [batch·H'·W', 2·C_in]` rows, with `[H', W']`.
    fn forward(&self, z: Tensor<4>) -> (Tensor<2>, [usize; 2]) {
        let [batch, _, h_out, w_out] = z.dims();
        let h = self.embed.forward(to_rows(z));
        let (h, [height, width]) = if self.blocks() {
            self.upsample_blocks(h, [batch, h_out, w_out])
        } else {
            self.upsample_general(h, [batch, h_out, w_out])
        };
        let h = self
            .convs
            .iter()
            .fold(h, |h, conv| conv3x3_rows(conv, h, [height, width], true));
        (self.head.forward(h), [height, width])
    }

    /// Whether the upsampling writes disjoint `k × k` blocks: stride = kernel, and no padding,
    /// dilation or groups.
    fn blocks(&self) -> bool {
        let up = &self.upsample;
        let [k, _] = up.kernel_size;
        up.stride == [k, k]
            && up.kernel_size == [k, k]
            && up.padding == [0, 0]
            && up.padding_out == [0, 0]
            && up.dilation == [1, 1]
            && up.groups == 1
    }

    /// The transposed convolution of `rows: [batch·h·w, N]` (no padding, as [`FlowConv2dConfig`]
    /// builds it), rectified: each position's `N·k·k` contributions are one row of `rows · W`
    /// (the weight `[N, N, k, k]` read as `[N, N·k·k]`, the channel-major patch order of
    /// [`fold`]), and folding the patches sums the overlapping ones. burn-flex's own op works
    /// image by image on the calling thread and differentiates through a convolution.
    fn upsample_general(
        &self,
        rows: Tensor<2>,
        [batch, h, w]: [usize; 3],
    ) -> (Tensor<2>, [usize; 2]) {
        let [n_in, n_out, k, _] = self.upsample.weight.dims();
        let t = self.upsample.stride[0];
        let weight = self.upsample.weight.val().reshape([n_in, n_out * k * k]);
        let zero = Tensor::zeros([n_out * k * k], &rows.device());
        let patches = affine_rows(rows, weight, zero, false)
            .reshape([batch, h * w, n_out * k * k])
            .swap_dims(1, 2);
        let size = [(h - 1) * t + k, (w - 1) * t + k];
        let mut image = to_rows(fold(patches, size, k, t));
        if let Some(bias) = &self.upsample.bias {
            image = image + bias.val().unsqueeze_dim(0);
        }
        (relu(image), size)
    }

    /// [`ContextNet::upsample_general`] with stride = kernel `k`: each position's `k·k·N` outputs
    /// are one row of `rows · W` (weight reordered to `(ky, kx, o)` columns), then the blocks are
    /// put in place by swapping the `x` and `ky` axes.
    fn upsample_blocks(
        &self,
        rows: Tensor<2>,
        [batch, h, w]: [usize; 3],
    ) -> (Tensor<2>, [usize; 2]) {
        let [n_in, n_out, k, _] = self.upsample.weight.dims();
        let weight = self
            .upsample
            .weight
            .val()
            .permute([0, 2, 3, 1])
            .reshape([n_in, k * k * n_out]);
        let bias = match &self.upsample.bias {
            Some(bias) => bias.val(),
            None => Tensor::zeros([n_out], &rows.device()),
        };
        let bias = bias
            .unsqueeze_dim::<2>(0)
            .expand([k * k, n_out])
            .reshape([k * k * n_out]);
        let out = affine_rows(rows, weight, bias, true)
            .reshape([batch * h, w, k, k * n_out])
            .swap_dims(1, 2)
            .reshape([batch * h * k * w * k, n_out]);
        (out, [h * k, w * k])
    }
}

/// A flowified convolution: `[batch, C_in, H, W]/// A flowified convolution: `[batch, C_in, H, W] → [batch, C_out, H_out, W_out]`.
#[derive(Module, Debug)]
pub struct FlowConv2d {
    /// Step 1: pad to an exact tiling.
    pub pad: Pad,
    /// Step 2: cut into patches.
    pub tile: Tile,
    /// Step 3: the flowified dense map `C_in·k·k → C_out` shared by all patches.
    pub kernel: FlowLinear,
    /// Density of the kernel's dropped coordinates, when it drops any.
    pub context: Option<ContextNet>,
}

impl FlowConv2d {
    /// The kind of the whole layer: a surjection when the kernel drops dimensions, an
    /// augmentation when it pads, tiles with overlap or adds dimensions, else a bijection.
    pub fn kind(&self) -> Kind {
        match self.kernel.kind() {
            Kind::Surjection => Kind::Surjection,
            _ if self.tile.overlaps() || self.pad.adds_values() => Kind::Augmentation,
            kind => kind,
        }
    }

    /// Folds the kernel's rotations after an optimizer step.
    pub fn retract(self, polish: bool) -> Self {
        Self {
            kernel: self.kernel.retract(polish),
            ..self
        }
    }

    /// `(μ, log σ)` of the kernel's dropped coordinates, one row per patch:
    /// `[batch·H_out·W_out, C_in·k·k − C_out]` each.
    fn dropped_density(&self, context: &ContextNet, z: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let batch = z.dims()[0];
        let (image, size) = context.forward(z);
        let patches = if context.blocks() {
            self.patches_blocks(image, batch, size)
        } else {
            self.patches_general(image, batch, size)
        };
        // Each row holds the mean's patch, then the log-std's: as `[2·rows, D]`, one product
        // rotates both.
        let [rows, width] = patches.dims();
        let d = width / 2;
        let rotated = self
            .kernel
            .u1
            .apply(patches.reshape([2 * rows, d]))
            .reshape([rows, width]);
        let dropped = self.kernel.d_input() - self.kernel.d_output();
        (
            columns(rotated.clone(), 0, dropped),
            columns(rotated, d, dropped),
        )
    }

    /// The patches of the context's prediction `image: [batch·H'·W', 2·C_in]` (rows), through
    /// [`Tile::patches`]: `[batch·H_out·W_out, 2·C_in·k·k]`, channel-major as the tile orders
    /// them, so the first half of a row is the mean's patch and the second the log-std's.
    fn patches_general(&self, image: Tensor<2>, batch: usize, [h, w]: [usize; 2]) -> Tensor<2> {
        to_rows(self.tile.patches(from_rows(image, [batch, h, w])))
    }

    /// [`FlowConv2d::patches_general`] when patches do not overlap: the rows are reordered from
    /// `(y, ky, x, kx)` to `(y, x, ky, kx)` and each patch's `(k·k, 2·C_in)` block is transposed.
    fn patches_blocks(&self, image: Tensor<2>, batch: usize, [h, w]: [usize; 2]) -> Tensor<2> {
        let two_c = image.dims()[1];
        let k = self.tile.kernel();
        let (ho, wo) = (h / k, w / k);
        image
            .reshape([batch * ho, k, wo, k * two_c])
            .swap_dims(1, 2)
            .reshape([batch * ho * wo, k * k, two_c])
            .swap_dims(1, 2)
            .reshape([batch * ho * wo, two_c * k * k])
    }
}

impl Transform<4> for FlowConv2d {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let (padded, v_pad) = self.pad.forward(x, mode);
        let (patches, v_tile) = self.tile.forward(padded, mode);
        let [batch, _, h, w] = patches.dims();
        let parts = self.kernel.forward_parts(to_rows(patches), mode);
        let z = from_rows(parts.z, [batch, h, w]);
        let mut v = v_pad
            + v_tile
            + self
                .kernel
                .log_scale_sum()
                .mul_scalar((h * w) as f64)
                .expand([batch]);
        if let (Some(dropped), Some(context)) = (parts.dropped, &self.context) {
            let (mean, log_std) = self.dropped_density(context, z.clone());
            let per_row = gaussian_log_prob(dropped, mean, log_std);
            v = v + per_row.reshape([batch, h * w]).sum_dim(1).reshape([batch]);
        }
        (z, v)
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        let [batch, _, h, w] = z.dims();
        let rows = self.kernel.inverse_with(to_rows(z.clone()), |_| {
            self.context.as_ref().map(|context| {
                let (mean, log_std) = self.dropped_density(context, z);
                gaussian_draw(mean, log_std, mode)
            })
        });
        let padded = self.tile.inverse(from_rows(rows, [batch, h, w]), mode);
        self.pad.inverse(padded, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::host_values;
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

    /// The context network's two upsampling forms against burn's transposed convolution, in
    /// values and in gradients, and the row-block patch cutting against the tile's unfold.
    #[test]
    fn upsampling_and_patch_forms_match_burns_ops() {
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
            assert_eq!(context.blocks(), k == t);
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
            let mut forms = vec![context.upsample_general(rows.clone(), [batch, h, w])];
            if context.blocks() {
                forms.push(context.upsample_blocks(rows.clone(), [batch, h, w]));
            }
            for (ours, size) in forms {
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

        let layer = FlowConv2dConfig::new(3, 5, 2, 2, 6, 10).init(&device);
        let batch = 2;
        let image =
            Tensor::<2>::random([batch * 6 * 10, 6], Distribution::Normal(0.0, 1.0), &device);
        assert_same(
            layer.patches_blocks(image.clone(), batch, [6, 10]),
            layer.patches_general(image, batch, [6, 10]),
            "patches",
        );
    }
}
