//! Max pooling over non-overlapping `k × k` patches (docs/method.md §2.11), as SurVAE's max-pool
//! surjection: each channel's patch of `n = k²` values keeps only its maximum `z`. Given `z`,
//! the patch is fixed by which position held the maximum, `i`, and by how far below `z` each
//! other value lies, `s_j = z − x_j ≥ 0`; `x ↦ (z, i, s)` moves no volume, so
//!
//! `V = Σ_patches [ log π_i + Σ_{j ≠ i} log HalfNormal(s_j; σ_j) ]`,
//!
//! with the position's probabilities `π = softmax(ℓ)` and the scales `σ` predicted per position
//! by a context network on the whole output map (§2.7). The inverse draws the position and the
//! gaps; its mean mode takes the most probable position and each gap's mean `σ·√(2/π)`. The
//! forward pass is plain max pooling in both modes.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Tensor};

use super::context::ContextNet;
use super::pool::PoolSpec;
use super::LayerConfig;
use crate::flow::{Kind, Mode, Transform, HALF_LN_2PI};
use crate::kernels::columns::columns;
use crate::kernels::noise::random;
use crate::kernels::unfold::{fold_rows, unfold_rows};
use crate::kernels::{from_rows, to_rows};

/// `layer = "max_pool"`: `[C, H, W] → [C, H/k, W/k]`, for `k` dividing `H` and `W`.
pub type MaxPoolSpec = PoolSpec<Maximum>;

/// Marks a [`PoolSpec`] as max pooling.
#[derive(Debug, Clone, PartialEq)]
pub struct Maximum;

impl LayerConfig for MaxPoolSpec {
    type Layer = MaxPool;

    /// Refuses inputs that do not tile: an ordinary max pool drops the rows and columns left
    /// over, which no surjection can, and padding would change what the maximum is.
    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        self.check(input)?;
        let [c, h, w] = input;
        let k = self.kernel;
        if h % k != 0 || w % k != 0 {
            return Err(format!(
                "kernel: expected to divide the input's height and width, got {k} for {c}×{h}×{w}"
            ));
        }
        Ok([c, h / k, w / k])
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Surjection
    }

    fn name(&self) -> String {
        format!("MaxPool(k{})", self.kernel)
    }

    fn params(&self, [c, _, _]: [usize; 3]) -> usize {
        self.context(c).params()
    }

    fn resolved(&self, [c, _, _]: [usize; 3]) -> Self {
        self.with_width(c)
    }

    fn init(&self, [c, _, _]: [usize; 3], device: &Device) -> MaxPool {
        MaxPool {
            context: self.context(c).init(device),
            kernel: self.kernel,
        }
    }
}

/// Max pooling as a surjection: `[batch, C, H, W] → [batch, C, H/k, W/k]`.
#[derive(Module, Debug)]
pub struct MaxPool {
    /// Predicts each patch's position logits and gap scales from the output map.
    pub context: ContextNet,
    kernel: usize,
}

/// What the context network says about every patch, `[rows·C, n]` each.
struct PatchLaw {
    /// `log π`: which position holds the maximum.
    log_position: Tensor<2>,
    /// `log σ` of each position's gap below the maximum.
    log_scale: Tensor<2>,
}

/// `√(2/π)`: the mean of a half-normal of unit scale.
const HALF_NORMAL_MEAN: f64 = 0.797_884_560_802_865_4;

impl MaxPool {
    /// The law of the patches under the output rows `z: [rows, C]` of an `[h, w]` map.
    fn patch_law(&self, z: Tensor<2>, size: [usize; 2]) -> PatchLaw {
        let [rows, c] = z.dims();
        let (k, n) = (self.kernel, self.kernel * self.kernel);
        let (image, size) = self.context.forward(z, size);
        // Each row: the logits' patch (C·n, channel-major), then the log-scales'.
        let patches = unfold_rows(image, size, k, k);
        let part = |offset| columns(patches.clone(), offset, c * n).reshape([rows * c, n]);
        PatchLaw {
            log_position: log_softmax(part(0), 1),
            log_scale: part(c * n),
        }
    }
}

impl Transform<4> for MaxPool {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, height, width] = x.dims();
        let (k, n) = (self.kernel, self.kernel * self.kernel);
        let [h, w] = [height / k, width / k];
        let patches =
            unfold_rows(to_rows(x), [height, width], k, k).reshape([batch * h * w * c, n]);
        let top = patches.clone().max_dim(1);
        let at_top = patches
            .clone()
            .equal(top.clone().expand([batch * h * w * c, n]))
            .float();
        let gaps = top.clone() - patches;
        let z = top.reshape([batch * h * w, c]);
        let law = self.patch_law(z.clone(), [h, w]);
        let standardized = gaps * law.log_scale.clone().neg().exp();
        let half_normal = (standardized.square().mul_scalar(-0.5) - law.log_scale)
            .add_scalar(std::f64::consts::LN_2 - HALF_LN_2PI);
        let per_value =
            at_top.clone() * law.log_position + (at_top.neg().add_scalar(1.0)) * half_normal;
        let v = per_value
            .reshape([batch, h * w * c * n])
            .sum_dim(1)
            .reshape([batch]);
        (from_rows(z, [batch, h, w]), v)
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        let [batch, c, h, w] = z.dims();
        let (k, n) = (self.kernel, self.kernel * self.kernel);
        let rows = to_rows(z);
        let law = self.patch_law(rows.clone(), [h, w]);
        let shape = [batch * h * w * c, n];
        let device = rows.device();
        let (score, gaps) = match mode {
            Mode::Mean => (
                law.log_position,
                law.log_scale.exp().mul_scalar(HALF_NORMAL_MEAN),
            ),
            Mode::Sample => {
                // The Gumbel-max trick draws the position; `σ·|ε|` draws a half-normal gap.
                let u = random(shape, Distribution::Uniform(0.0, 1.0), &device).clamp(1e-12, 1.0);
                let gumbel = u.log().neg().log().neg();
                let eps = random(shape, Distribution::Normal(0.0, 1.0), &device);
                (law.log_position + gumbel, law.log_scale.exp() * eps.abs())
            }
        };
        let best = score.clone().max_dim(1).expand(shape);
        let below = score.equal(best).float().neg().add_scalar(1.0);
        let top = rows.reshape([batch * h * w * c, 1]).expand(shape);
        let patches = (top - gaps * below).reshape([batch * h * w, c * n]);
        let size = [h * k, w * k];
        from_rows(fold_rows(patches, size, k, k), [batch, size[0], size[1]])
    }
}
