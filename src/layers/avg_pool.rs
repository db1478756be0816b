//! Average pooling over non-overlapping `k × k` patches (docs/method.md §2.10): each channel's
//! patch of `n = k²` values keeps only its mean. As a flow: pad to an exact tiling where the
//! input does not tile (§2.5), cut into patches, and rotate each channel's patch by a fixed
//! orthogonal `Q` whose first row is `1/√n` (Helmert's); the first rotated coordinate is
//! `√n·mean`, the other `n − 1` are dropped and scored by a context network on the whole output
//! map, as the convolution's (§2.7). A surjection with `V = V_pad − ½ ln n` per kept value `+ log q(dropped | output)`. Mean mode is
//! plain average pooling.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::context::ContextNet;
use super::pad::{pad_amount, Pad, PadConfig};
use super::pool::PoolSpec;
use super::LayerConfig;
use crate::flow::{DroppedDensity, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::unfold::{fold_rows, unfold_rows};
use crate::kernels::{from_rows, to_rows};

/// `layer = "avg_pool"`: `[C, H, W] → [C, ⌈H/k⌉, ⌈W/k⌉]`.
pub type AvgPoolSpec = PoolSpec<Average>;

/// Marks a [`PoolSpec`] as average pooling.
#[derive(Debug, Clone, PartialEq)]
pub struct Average;

impl LayerConfig for AvgPoolSpec {
    type Layer = AvgPool;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        self.check(input)?;
        let [c, h, w] = input;
        let k = self.kernel;
        let out = |s: usize| (s + pad_amount(s, k, k)) / k;
        Ok([c, out(h), out(w)])
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Surjection
    }

    fn name(&self) -> String {
        format!("AvgPool(k{})", self.kernel)
    }

    fn params(&self, [c, h, w]: [usize; 3]) -> usize {
        let k = self.kernel;
        let pads = pad_amount(h, k, k) + pad_amount(w, k, k) > 0;
        usize::from(pads) + self.context(c).params()
    }

    fn resolved(&self, [c, _, _]: [usize; 3]) -> Self {
        self.with_width(c)
    }

    fn init(&self, [c, h, w]: [usize; 3], device: &Device) -> AvgPool {
        let k = self.kernel;
        let pads = pad_amount(h, k, k) + pad_amount(w, k, k) > 0;
        AvgPool {
            pad: pads.then(|| PadConfig::new(k, k, h, w).init(device)),
            context: self.context(c).init(device),
            kernel: k,
        }
    }
}

/// Average pooling as a surjection: `[batch, C, H, W] → [batch, C, H', W']`.
#[derive(Module, Debug)]
pub struct AvgPool {
    /// Pads to an exact tiling, where the input does not tile.
    pub pad: Option<Pad>,
    /// Density of the dropped coordinates, from the output map.
    pub context: ContextNet,
    kernel: usize,
}

/// Helmert's orthogonal `n × n` matrix: row 0 is `1/√n`; row `j` compares element `j` with
/// the mean of those before it.
fn helmert(n: usize, device: &Device) -> Tensor<2> {
    let mut q = vec![0.0f32; n * n];
    q[..n].fill(1.0 / (n as f32).sqrt());
    for j in 1..n {
        let norm = ((j * (j + 1)) as f32).sqrt();
        q[j * n..j * n + j].fill(1.0 / norm);
        q[j * n + j] = -(j as f32) / norm;
    }
    Tensor::from_data(TensorData::new(q, [n, n]), device)
}

impl AvgPool {
    fn patch(&self) -> usize {
        self.kernel * self.kernel
    }

    /// The density of each channel's dropped coordinates, `[rows·C, n − 1]`, from the output rows
    /// `z: [rows, C]` of an `[H', W']` map (`rows = batch·H'·W'`).
    fn dropped_density(&self, z: Tensor<2>, size: [usize; 2]) -> DroppedDensity<2> {
        let [rows, c] = z.dims();
        let (n, k) = (self.patch(), self.kernel);
        let (image, size) = self.context.forward(z, size);
        // Each row: the mean's patch (C·n, channel-major), then the log-std's.
        let patches = unfold_rows(image, size, k, k);
        let q_t = helmert(n, &patches.device()).transpose();
        let rotated = |offset| {
            let rotated = columns(patches.clone(), offset, c * n)
                .reshape([rows * c, n])
                .matmul(q_t.clone());
            columns(rotated, 1, n - 1)
        };
        DroppedDensity {
            mean: rotated(0),
            log_std: rotated(c * n),
        }
    }
}

impl Transform<4> for AvgPool {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, ..] = x.dims();
        let device = x.device();
        let (padded, v_pad) = match &self.pad {
            Some(pad) => pad.forward(x, mode),
            None => (x, Tensor::zeros([batch], &device)),
        };
        let [_, _, height, width] = padded.dims();
        let (n, k) = (self.patch(), self.kernel);
        let [h, w] = [height / k, width / k];
        let y = unfold_rows(to_rows(padded), [height, width], k, k)
            .reshape([batch * h * w * c, n])
            .matmul(helmert(n, &device).transpose());
        let z = columns(y.clone(), 0, 1)
            .div_scalar((n as f64).sqrt())
            .reshape([batch * h * w, c]);
        let per_row = self
            .dropped_density(z.clone(), [h, w])
            .log_prob(columns(y, 1, n - 1));
        let scaling = -0.5 * (n as f64).ln() * (c * h * w) as f64;
        let v = v_pad
            + per_row
                .reshape([batch, h * w * c])
                .sum_dim(1)
                .reshape([batch]);
        (from_rows(z, [batch, h, w]), v.add_scalar(scaling))
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        let [batch, c, h, w] = z.dims();
        let (n, device) = (self.patch(), z.device());
        let rows = to_rows(z);
        let dropped = self.dropped_density(rows.clone(), [h, w]).draw(mode);
        let kept = rows
            .reshape([batch * h * w * c, 1])
            .mul_scalar((n as f64).sqrt());
        let patches = Tensor::cat(vec![kept, dropped], 1)
            .matmul(helmert(n, &device))
            .reshape([batch * h * w, c * n]);
        let k = self.kernel;
        let size = [h * k, w * k];
        let padded = from_rows(fold_rows(patches, size, k, k), [batch, size[0], size[1]]);
        match &self.pad {
            Some(pad) => pad.inverse(padded, mode),
            None => padded,
        }
    }
}
