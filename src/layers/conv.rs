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
use crate::kernels::conv3x3::conv3x3_rows;
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
#[derive(Module, Debug)]
pub struct ContextNet {
    embed: Mlp,
    upsample: ConvTranspose2d,
    convs: Vec<Conv2d>,
    head: Mlp,
}

impl ContextNet {
    /// `z: [batch, C_out, H_out, W_out] → [batch, 2·C_in, H', W']`.
    fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let [batch, _, h_out, w_out] = z.dims();
        let h = self.embed.forward(to_rows(z));
        let h = relu(self.upsample.forward(from_rows(h, [batch, h_out, w_out])));
        let [_, _, height, width] = h.dims();
        let h = self.convs.iter().fold(to_rows(h), |h, conv| {
            relu(conv3x3_rows(conv, h, [height, width]))
        });
        from_rows(self.head.forward(h), [batch, height, width])
    }
}

/// A flowified convolution: `[batch, C_in, H, W] → [batch, C_out, H_out, W_out]`.
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
        let image = context.forward(z);
        let c_in = image.dims()[1] / 2;
        let patches = |t: Tensor<4>| to_rows(self.tile.patches(t));
        let mean = patches(image.clone().narrow(1, 0, c_in));
        let log_std = patches(image.narrow(1, c_in, c_in));
        let rows = mean.dims()[0];
        let rotated = self.kernel.u1.apply(Tensor::cat(vec![mean, log_std], 0));
        let dropped = self.kernel.d_input() - self.kernel.d_output();
        (
            rotated.clone().narrow(0, 0, rows).narrow(1, 0, dropped),
            rotated.narrow(0, rows, rows).narrow(1, 0, dropped),
        )
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
