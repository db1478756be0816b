//! The flowified 2-D convolution `C_in → C_out`, kernel `k`, stride `t` (docs/method.md §2.5):
//! pad (augmentation) → tile (augmentation when patches overlap) → a flowified dense kernel on
//! every patch. When the kernel drops dimensions, their density is predicted from the whole
//! output map by a context network, still an exact conditional density since the output is fully
//! known when the dropped coordinates are scored.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::context::{default_context_convs, default_context_depth, ContextNet, ContextNetConfig};
use super::dense::{kind_of, FlowLinear, FlowLinearConfig};
use super::pad::{pad_amount, Pad, PadConfig};
use super::tile::{Tile, TileConfig};
use super::trained::Trained;
use super::{at_least, shape_text, LayerConfig};
use crate::flow::{DroppedDensity, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::unfold::unfold_rows;
use crate::kernels::{from_rows, to_rows};

/// `layer = "conv"`: `Conv(c_in→c_out, kernel, stride)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size `k`.
    pub kernel: usize,
    /// Stride `1 ≤ t ≤ k`.
    pub stride: usize,
    /// The context network's width `N` (when the kernel drops coordinates). Default:
    /// `2·c_in + c_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_width: Option<usize>,
    /// Hidden layers of the context network's two per-position MLPs.
    #[serde(default = "default_context_depth")]
    pub context_depth: usize,
    /// 3×3 convolutions of the context network after its upsampling.
    #[serde(default = "default_context_convs")]
    pub context_convs: usize,
    /// Where `flowify import` takes this layer's trained weights from: the tensor-name prefix
    /// (`"0"` for `0.weight` and `0.bias`). Unset: the layer keeps its initialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

impl ConvSpec {
    /// `Conv(c_in→c_out, kernel, stride)` with the paper's context network.
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            context_width: None,
            context_depth: default_context_depth(),
            context_convs: default_context_convs(),
            weights: None,
        }
    }

    fn config(&self, [_, h, w]: [usize; 3]) -> FlowConv2dConfig {
        FlowConv2dConfig::new(self.c_in, self.c_out, self.kernel, self.stride, h, w)
            .with_context_width(self.context_width)
            .with_context_depth(self.context_depth)
            .with_context_convs(self.context_convs)
    }

    fn drops(&self) -> bool {
        self.c_in * self.kernel * self.kernel > self.c_out
    }
}

impl LayerConfig for ConvSpec {
    type Layer = FlowConv2d;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        at_least("c_in", self.c_in, 1)?;
        at_least("c_out", self.c_out, 1)?;
        at_least("kernel", self.kernel, 1)?;
        at_least("stride", self.stride, 1)?;
        if self.stride > self.kernel {
            return Err(format!(
                "stride: expected at most the kernel ({}) so every pixel is covered, got {}",
                self.kernel, self.stride
            ));
        }
        if input[0] != self.c_in {
            return Err(format!(
                "expects {} channels, got {}",
                self.c_in,
                shape_text(input)
            ));
        }
        if let Some(width) = self.context_width {
            at_least("context_width", width, 1)?;
        }
        self.config(input).output_shape()
    }

    fn kind(&self, input: [usize; 3]) -> Kind {
        let [_, h, w] = input;
        let (k, t) = (self.kernel, self.stride);
        let pads = pad_amount(h, k, t) + pad_amount(w, k, t) > 0;
        match kind_of(self.c_in * k * k, self.c_out) {
            Kind::Surjection => Kind::Surjection,
            _ if k > t || pads => Kind::Augmentation,
            kind => kind,
        }
    }

    fn name(&self) -> String {
        format!(
            "Conv({}→{}, k{}, s{})",
            self.c_in, self.c_out, self.kernel, self.stride
        )
    }

    fn params(&self, input: [usize; 3]) -> usize {
        self.config(input).params()
    }

    fn resolved(&self, _input: [usize; 3]) -> Self {
        Self {
            context_width: self
                .drops()
                .then(|| self.context_width.unwrap_or(2 * self.c_in + self.c_out)),
            ..self.clone()
        }
    }

    fn init(&self, input: [usize; 3], device: &Device) -> FlowConv2d {
        self.config(input).init(device)
    }

    /// The kernel's per-patch matrix into the dense map. Only where the stride tiles the input
    /// exactly: elsewhere the flowified convolution pads, which the trained one did not.
    fn import(
        &self,
        [_, h, w]: [usize; 3],
        layer: FlowConv2d,
        trained: &Trained,
    ) -> Result<FlowConv2d, String> {
        let Some(prefix) = &self.weights else {
            return Ok(layer);
        };
        let (k, t) = (self.kernel, self.stride);
        if pad_amount(h, k, t) + pad_amount(w, k, t) > 0 {
            return Err(format!(
                "{prefix}: kernel {k} at stride {t} does not tile the {h}×{w} input exactly; an \
                 imported convolution must (its flowified form would pad)"
            ));
        }
        let (dense, kernel) = trained.conv(prefix)?;
        if kernel != k || dense.d_output != self.c_out || dense.d_input != self.c_in * k * k {
            return Err(format!(
                "{prefix}.weight: expected [{}, {}, {k}, {k}], got [{}, {}, {kernel}, {kernel}]",
                self.c_out,
                self.c_in,
                dense.d_output,
                dense.d_input / (kernel * kernel)
            ));
        }
        let kernel = layer
            .kernel
            .import(&dense)
            .map_err(|e| format!("{prefix}.{e}"))?;
        Ok(FlowConv2d { kernel, ..layer })
    }
}

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
    /// The context network's width `N`; `None`: `2·C_in + C_out`.
    #[config(default = "None")]
    pub context_width: Option<usize>,
    /// Hidden layers of the context network's per-position MLPs.
    #[config(default = 5)]
    pub context_depth: usize,
    /// 3×3 convolutions of the context network.
    #[config(default = 2)]
    pub context_convs: usize,
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
                "kernel: expected at most the input's height and width, got {k} for a {}×{} input",
                self.height, self.width
            ));
        }
        let hp = self.height + pad_amount(self.height, k, t);
        let wp = self.width + pad_amount(self.width, k, t);
        Ok([self.c_out, (hp - k) / t + 1, (wp - k) / t + 1])
    }

    fn patch(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// The context network, when the kernel drops coordinates: width `N = 2·C_in + C_out` unless
    /// set.
    fn context(&self) -> Option<ContextNetConfig> {
        (self.patch() > self.c_out).then(|| ContextNetConfig {
            c_out: self.c_out,
            c_in: self.c_in,
            width: self.context_width.unwrap_or(2 * self.c_in + self.c_out),
            depth: self.context_depth,
            convs: self.context_convs,
            kernel: self.kernel,
            stride: self.stride,
        })
    }

    /// Trainable numbers: pad and tile scales, the kernel, the context network.
    pub fn params(&self) -> usize {
        let kernel = FlowLinearConfig::new(self.patch(), self.c_out)
            .with_conditioner(false)
            .params();
        let context = self.context().map_or(0, |config| config.params());
        2 + kernel + context
    }

    /// Builds the layer.
    pub fn init(&self, device: &Device) -> FlowConv2d {
        let (k, t) = (self.kernel, self.stride);
        let patch = self.c_in * k * k;
        let context = self.context().map(|config| config.init(device));
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
    /// The density of the kernel's dropped coordinates from the kernel's output rows
    /// `z: [batch·H_out·W_out, C_out]` (`size = [H_out, W_out]`), one row per patch:
    /// `[batch·H_out·W_out, C_in·k·k − C_out]`.
    fn dropped_density(
        &self,
        context: &ContextNet,
        z: Tensor<2>,
        size: [usize; 2],
    ) -> DroppedDensity<2> {
        let (image, size) = context.forward(z, size);
        let (k, t) = (self.tile.kernel(), self.tile.stride());
        // The patches are channel-major, as the tile cuts them: each row holds the mean's patch,
        // then the log-std's, and as `[2·rows, D]` one product rotates both.
        let patches = unfold_rows(image, size, k, t);
        let [rows, width] = patches.dims();
        let d = width / 2;
        let rotated = self
            .kernel
            .u1
            .apply(patches.reshape([2 * rows, d]))
            .reshape([rows, width]);
        let dropped = self.kernel.d_input() - self.kernel.d_output();
        DroppedDensity {
            mean: columns(rotated.clone(), 0, dropped),
            log_std: columns(rotated, d, dropped),
        }
    }
}

impl Transform<4> for FlowConv2d {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let (padded, v_pad) = self.pad.forward(x, mode);
        let (patches, v_tile) = self.tile.forward(padded, mode);
        let [batch, _, h, w] = patches.dims();
        let parts = self.kernel.forward_parts(to_rows(patches), mode);
        let z = from_rows(parts.z.clone(), [batch, h, w]);
        let mut v = v_pad
            + v_tile
            + self
                .kernel
                .log_scale_sum()
                .mul_scalar((h * w) as f64)
                .expand([batch]);
        if let (Some(dropped), Some(context)) = (parts.dropped, &self.context) {
            let per_row = self
                .dropped_density(context, parts.z, [h, w])
                .log_prob(dropped);
            v = v + per_row.reshape([batch, h * w]).sum_dim(1).reshape([batch]);
        }
        (z, v)
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        let [batch, _, h, w] = z.dims();
        let z = to_rows(z);
        let rows = self.kernel.inverse_with(z.clone(), |_| {
            self.context
                .as_ref()
                .map(|context| self.dropped_density(context, z, [h, w]).draw(mode))
        });
        let padded = self.tile.inverse(from_rows(rows, [batch, h, w]), mode);
        self.pad.inverse(padded, mode)
    }
}
