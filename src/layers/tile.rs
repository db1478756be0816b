//! Step 2 of a flowified convolution (docs/method.md §2.5): cut the padded image into `k × k` patches at
//! stride `t`. A pixel covered by `n` patches is copied `n` times; the copies are flowified as
//! `x·1 + √n·η` with `η` Gaussian noise orthogonal to `1`, so the map is `√n` times an orthogonal
//! embedding and, per pixel and channel, `V = (n/2) ln n − log N_{n−1}(η; 0, a_t² I)`. Without
//! overlap (`t = k`) it is a reshape with `V = 0`. The inverse averages each pixel's copies,
//! which removes `η` exactly.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::flow::{sum_per_example, Mode, Transform, HALF_LN_2PI};
use crate::kernels::noise::random;
use crate::kernels::unfold::{fold, unfold};

/// Configuration of a [`Tile`].
#[derive(Config, Debug)]
pub struct TileConfig {
    /// Patch size `k`.
    pub kernel: usize,
    /// Patch stride `t ≤ k` (a larger stride would skip pixels).
    pub stride: usize,
    /// Initial scale `a_t` of the copy noise.
    #[config(default = 0.1)]
    pub noise_scale: f64,
}

/// `[batch, C, H', W'] → [batch, C·k·k, H_out, W_out]`: every output position holds one patch,
/// channel-major (`c·k·k + i·k + j`).
#[derive(Module, Debug)]
pub struct Tile {
    /// `log a_t`, shape `[1]`.
    pub log_scale: Param<Tensor<1>>,
    kernel: usize,
    stride: usize,
}

impl TileConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Tile {
        Tile {
            log_scale: Param::from_tensor(Tensor::full([1], self.noise_scale.ln(), device)),
            kernel: self.kernel,
            stride: self.stride,
        }
    }
}

impl Tile {
    /// The patch size `k`.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// The stride `t` between patches.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Whether patches overlap, i.e. whether the layer adds noise.
    pub fn overlaps(&self) -> bool {
        self.kernel > self.stride
    }

    fn unfold(&self, x: Tensor<4>) -> Tensor<3> {
        unfold(x, self.kernel, self.stride)
    }

    fn fold(&self, patches: Tensor<3>, size: [usize; 2]) -> Tensor<4> {
        fold(patches, size, self.kernel, self.stride)
    }

    /// How many patches cover each pixel of an `[H', W']` image: `[1, 1, H', W']`.
    fn coverage(&self, size: [usize; 2], device: &Device) -> Tensor<4> {
        let ones = Tensor::<4>::ones([1, 1, size[0], size[1]], device);
        self.fold(self.unfold(ones), size)
    }

    /// Output positions `[H_out, W_out]` for a padded input `[H', W']`.
    pub fn positions(&self, size: [usize; 2]) -> [usize; 2] {
        size.map(|s| (s - self.kernel) / self.stride + 1)
    }
}

impl Transform<4> for Tile {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let device = x.device();
        let [ho, wo] = self.positions([h, w]);
        let ckk = c * self.kernel * self.kernel;
        let patches = self.unfold(x);
        if !self.overlaps() {
            return (
                patches.reshape([batch, ckk, ho, wo]),
                Tensor::zeros([batch], &device),
            );
        }
        let coverage = self.coverage([h, w], &device);
        // The constant part of V: Σ over pixels and channels of (n/2) ln n + (n − 1)(log a_t + ½ ln 2π).
        let n = coverage.clone();
        let log_n = n.clone().log();
        let per_pixel = (n.clone() * log_n).mul_scalar(0.5);
        let copies_beyond_one = n.clone().sub_scalar(1.0).sum();
        let constant = per_pixel.sum().mul_scalar(c as f64)
            + (self.log_scale.val().add_scalar(HALF_LN_2PI) * copies_beyond_one)
                .mul_scalar(c as f64);
        let (patches, quadratic) = match mode {
            Mode::Mean => (patches, Tensor::zeros([batch], &device)),
            Mode::Sample => {
                // Standard normals per copy, centred over each pixel's copies: η / a_t in the
                // (n − 1)-dimensional subspace orthogonal to 1.
                let draws = random(patches.dims(), Distribution::Normal(0.0, 1.0), &device);
                let mean = self.fold(draws.clone(), [h, w]) / coverage.clone();
                let centred = draws - self.unfold(mean);
                let root_n = self.unfold(coverage.sqrt().expand([1, c, h, w]));
                let noise =
                    centred.clone() * root_n * self.log_scale.val().exp().reshape([1, 1, 1]);
                (
                    patches + noise,
                    sum_per_example(centred.square()).mul_scalar(0.5),
                )
            }
        };
        (
            patches.reshape([batch, ckk, ho, wo]),
            quadratic + constant.expand([batch]),
        )
    }

    /// Averages each pixel's copies. The padded size follows from the positions, since the
    /// patches tile it exactly.
    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        let [batch, ckk, ho, wo] = z.dims();
        let size = [
            (ho - 1) * self.stride + self.kernel,
            (wo - 1) * self.stride + self.kernel,
        ];
        let device = z.device();
        let summed = self.fold(z.reshape([batch, ckk, ho * wo]), size);
        if self.overlaps() {
            summed / self.coverage(size, &device)
        } else {
            summed
        }
    }
}
