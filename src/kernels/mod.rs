//! Compute kernels written for the CPU backend where burn's general ops are slow on this
//! workload's shapes, each with a differentiable `Tensor` entry point, and the channels-last
//! "rows" layout they share with the per-position networks.

pub mod conv3x3;
pub mod spline;

use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

/// `[batch, C, H, W] → [batch·H·W, C]`: one row per position, in `(b, y, x)` order.
///
/// Through a 3-D swap rather than a 4-D permute: the CPU backend then hands the products that
/// follow contiguous rows, several times faster.
pub fn to_rows(x: Tensor<4>) -> Tensor<2> {
    let [batch, c, h, w] = x.dims();
    x.reshape([batch, c, h * w])
        .swap_dims(1, 2)
        .reshape([batch * h * w, c])
}

/// The inverse of [`to_rows`].
pub fn from_rows(rows: Tensor<2>, [batch, h, w]: [usize; 3]) -> Tensor<4> {
    let c = rows.dims()[1];
    rows.reshape([batch, h * w, c])
        .swap_dims(1, 2)
        .reshape([batch, c, h, w])
}

/// A CPU tensor made contiguous, with its shape, so its storage reads as a row-major slice.
fn host(tensor: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let tensor = tensor.to_contiguous();
    let dims = tensor.layout().shape().to_vec();
    (tensor, dims)
}

/// A CPU tensor owning `values` in row-major order.
fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
