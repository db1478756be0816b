//! Step 1 of a flowified convolution (docs/method.md §2.5): pad the bottom and right so that patches of
//! size `k` at stride `t` tile the image exactly. The pad values are learned-scale Gaussian noise,
//! an augmentation with `V = −Σ log N(pad; 0, a²)`; the inverse crops.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::flow::{sum_per_example, Mode, Transform, HALF_LN_2PI};
use crate::kernels::noise::random;

/// Configuration of a [`Pad`] for inputs of a known size.
#[derive(Config, Debug)]
pub struct PadConfig {
    /// Patch size `k`.
    pub kernel: usize,
    /// Patch stride `t`.
    pub stride: usize,
    /// Input height `H`.
    pub height: usize,
    /// Input width `W`.
    pub width: usize,
}

/// Rows (or columns) to add so that `(size + p − k)` is a multiple of `t`.
pub fn pad_amount(size: usize, kernel: usize, stride: usize) -> usize {
    (stride - (size - kernel) % stride) % stride
}

/// The padding augmentation: `[batch, C, H, W] → [batch, C, H + p_h, W + p_w]`.
#[derive(Module, Debug)]
pub struct Pad {
    /// `log a`, shape `[1]`: the scale of the pad noise.
    pub log_scale: Param<Tensor<1>>,
    height: usize,
    width: usize,
    pad_rows: usize,
    pad_cols: usize,
}

impl PadConfig {
    /// Builds the layer; `log a ~ N(0, 1)` as in the reference.
    pub fn init(&self, device: &Device) -> Pad {
        Pad {
            log_scale: Param::from_tensor(Tensor::random(
                [1],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            height: self.height,
            width: self.width,
            pad_rows: pad_amount(self.height, self.kernel, self.stride),
            pad_cols: pad_amount(self.width, self.kernel, self.stride),
        }
    }
}

impl Pad {
    /// Whether any rows or columns are added (otherwise the layer is the identity).
    pub fn adds_values(&self) -> bool {
        self.pad_rows + self.pad_cols > 0
    }

    /// The padded `[H', W']`.
    pub fn padded_size(&self) -> [usize; 2] {
        [self.height + self.pad_rows, self.width + self.pad_cols]
    }
}

impl Transform<4> for Pad {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let device = x.device();
        if !self.adds_values() {
            return (x, Tensor::zeros([batch], &device));
        }
        let [hp, wp] = self.padded_size();
        let standard = |shape: [usize; 4]| -> Tensor<4> {
            match mode {
                Mode::Sample => random(shape, Distribution::Normal(0.0, 1.0), &device),
                Mode::Mean => Tensor::zeros(shape, &device),
            }
        };
        let (bottom, right) = (
            standard([batch, c, self.pad_rows, w]),
            standard([batch, c, hp, self.pad_cols]),
        );
        // −log N(a·ε; 0, a²) = ½ε² + log a + ½ ln 2π for each pad value.
        let count = (c * (hp * wp - h * w)) as f64;
        let quadratic =
            sum_per_example(bottom.clone().square()) + sum_per_example(right.clone().square());
        let v = quadratic.mul_scalar(0.5)
            + self
                .log_scale
                .val()
                .mul_scalar(count)
                .add_scalar(count * HALF_LN_2PI)
                .expand([batch]);
        let scale = self.log_scale.val().exp().reshape([1, 1, 1, 1]);
        let tall = Tensor::cat(vec![x, bottom * scale.clone()], 2);
        (Tensor::cat(vec![tall, right * scale], 3), v)
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        z.narrow(2, 0, self.height).narrow(3, 0, self.width)
    }
}
