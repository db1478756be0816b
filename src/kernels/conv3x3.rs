//! The 3×3, stride-1, zero-padded convolution of the conditioners (coupling layers, context
//! networks), on channels-last rows: `x: [batch·H·W, C]`, one row per pixel in `(b, y, x)` order.
//!
//! Why a kernel of its own: the maps these networks convolve are small (2×2 to 14×14) and wide
//! (32–160 channels), and burn-flex's `conv2d` works image by image, so its products are thin, and
//! it differentiates the input through a transposed convolution that scatters element by element.
//! Its backward pass costs four times its forward one. Here every product covers the whole batch:
//!
//! - forward: `out = im2col(x) · W + b`, with `im2col(x): [rows, 9·C]`;
//! - input gradient: the same convolution of `∂out` with the kernel flipped in space and
//!   transposed in channels (a product of depth `9·O`, not the depth-`O` product and scatter that
//!   differentiating the forward formula would give);
//! - weight gradient: `im2col(x)ᵀ · ∂out`.

use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, AutodiffBackend, Backend, Dispatch, FloatDType, TensorMetadata,
};
use burn::nn::conv::Conv2d;
use burn::tensor::{Shape, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};

use super::{
    flex_tensor, host, record_weighted_op, rows_gram, rows_times, weighted_op_backward, Rows,
};

/// Backends that run [`conv3x3_rows`].
#[backend_extension(Flex, Autodiff)]
pub trait Conv3x3Backend: Backend {
    /// `x: [batch·H·W, C]`, `weight: [O, C, 3, 3]`, `bias: [O]` → `[batch·H·W, O]`.
    fn conv3x3_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self>;

    /// The weight gradient: `x: [batch·H·W, C]`, `grad: [batch·H·W, O]` → `[O, C, 3, 3]`.
    fn conv3x3_rows_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self>;
}

/// `rows: [batch·H·W, C_in] → [batch·H·W, C_out]` through `conv`, which must be a 3×3 convolution
/// with stride 1 and padding 1 (checked by the caller's configuration).
pub fn conv3x3_rows(conv: &Conv2d, rows: Tensor<2>, [height, width]: [usize; 2]) -> Tensor<2> {
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    let bias = match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([c_out], &rows.device()),
    };
    Tensor::from_dispatch(<Dispatch as Conv3x3Backend>::conv3x3_rows(
        rows.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        height,
        width,
    ))
}

/// Rows `first..first + count` of `im2col(x)` into `cols` (`[count, 9·C]`): each row holds its
/// pixel's 3×3 neighbourhood, tap-major (`(ky·3 + kx)·C + c`), zeros outside the image.
pub(super) fn im2col(
    x: &[f32],
    [channels, height, width]: [usize; 3],
    first: usize,
    cols: &mut [f32],
) {
    let image = height * width;
    for (i, row) in cols.chunks_mut(9 * channels).enumerate() {
        let pixel = first + i;
        let (base, within) = (pixel - pixel % image, pixel % image);
        let (y, x0) = (within / width, within % width);
        for (tap, out) in row.chunks_mut(channels).enumerate() {
            let (sy, sx) = (y + tap / 3, x0 + tap % 3);
            if (1..=height).contains(&sy) && (1..=width).contains(&sx) {
                let src = (base + (sy - 1) * width + sx - 1) * channels;
                out.copy_from_slice(&x[src..src + channels]);
            } else {
                out.fill(0.0);
            }
        }
    }
}

/// `[O, C, 3, 3]` and `[(tap, C), O]`, the layout of the im2col columns, into one another.
fn tap_major(w: &[f32], [c_out, c_in]: [usize; 2], to_columns: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for o in 0..c_out {
        for c in 0..c_in {
            for tap in 0..9 {
                let (torch, column) = ((o * c_in + c) * 9 + tap, (tap * c_in + c) * c_out + o);
                if to_columns {
                    out[column] = w[torch];
                } else {
                    out[torch] = w[column];
                }
            }
        }
    }
    out
}

impl Conv3x3Backend for Flex {
    fn conv3x3_rows(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        height: usize,
        width: usize,
    ) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let (bias, _) = host(&bias);
        let (rows, c_in, c_out) = (x_dims[0], x_dims[1], w_dims[0]);
        assert_eq!(w_dims, [c_out, c_in, 3, 3], "conv3x3_rows: weight shape");
        assert_eq!(rows % (height * width), 0, "conv3x3_rows: rows per image");
        let w_mat = tap_major(weight.storage(), [c_out, c_in], true);
        let source = Rows::Im2col3x3 {
            x: x.storage(),
            dims: [c_in, height, width],
        };
        let out = rows_times(&source, rows, &w_mat, bias.storage());
        flex_tensor(out, vec![rows, c_out])
    }

    fn conv3x3_rows_weight_grad(
        x: FlexTensor,
        grad: FlexTensor,
        height: usize,
        width: usize,
    ) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (grad, g_dims) = host(&grad);
        let (c_in, c_out) = (x_dims[1], g_dims[1]);
        let source = Rows::Im2col3x3 {
            x: x.storage(),
            dims: [c_in, height, width],
        };
        let gw_mat = rows_gram(&source, x_dims[0], grad.storage(), c_out);
        flex_tensor(
            tap_major(&gw_mat, [c_out, c_in], false),
            vec![c_out, c_in, 3, 3],
        )
    }
}

#[derive(Debug)]
struct Conv3x3Grad;

impl<B: Conv3x3Backend> Backward<B, 3> for Conv3x3Grad {
    type State = (NodeId, NodeId, (usize, usize));

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        weighted_op_backward::<B, _>(
            ops,
            grads,
            checkpointer,
            |weight, grad, &(height, width)| {
                let c_in = weight.shape()[1];
                let zeros = B::float_zeros(Shape::new([c_in]), &grad.device(), FloatDType::F32);
                let flipped = B::float_swap_dims(B::float_flip(weight, &[2, 3]), 0, 1);
                B::conv3x3_rows(grad, flipped, zeros, height, width)
            },
            |x, grad, &(height, width)| B::conv3x3_rows_weight_grad(x, grad, height, width),
        );
    }
}

impl<B: Conv3x3Backend, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn conv3x3_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        record_weighted_op::<B, C, _, _>(
            Conv3x3Grad,
            [x, weight, bias],
            (height, width),
            |x, weight, bias| B::conv3x3_rows(x, weight, bias, height, width),
        )
    }

    fn conv3x3_rows_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::conv3x3_rows_weight_grad(
            x.into_primitive(),
            grad.into_primitive(),
            height,
            width,
        ))
    }
}
