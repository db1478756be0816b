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
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{flex_tensor, host};

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

/// How many rows one task handles: its im2col block stays about 1 MiB, so it is written and read
/// back in cache, and the whole-batch column matrix is never allocated.
fn block_rows(channels: usize) -> usize {
    (262_144 / (9 * channels)).max(8)
}

/// Rows `first..first + count` of `im2col(x)` into `cols` (`[count, 9·C]`): each row holds its
/// pixel's 3×3 neighbourhood, tap-major (`(ky·3 + kx)·C + c`), zeros outside the image.
fn im2col(x: &[f32], [channels, height, width]: [usize; 3], first: usize, cols: &mut [f32]) {
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

/// `dst[m, n] (+)= Σ_k lhs[m, k]·rhs[k, n]` on one thread, with explicit (row, column) strides.
fn product(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    (lhs, [lhs_rs, lhs_cs]): (&[f32], [usize; 2]),
    (rhs, [rhs_rs, rhs_cs]): (&[f32], [usize; 2]),
) {
    assert!(
        dst.len() >= m * n
            && lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs
            && rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "product: operands smaller than their shapes"
    );
    // SAFETY: the assertion above keeps every strided access inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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
        let (x, b): (&[f32], &[f32]) = (x.storage(), bias.storage());
        let block = block_rows(c_in);
        let mut out = vec![0.0f32; rows * c_out];
        out.par_chunks_mut(block * c_out)
            .enumerate()
            .for_each_init(Vec::new, |cols, (i, out)| {
                let count = out.len() / c_out;
                cols.resize(count * 9 * c_in, 0.0);
                im2col(x, [c_in, height, width], i * block, cols);
                for row in out.chunks_mut(c_out) {
                    row.copy_from_slice(b);
                }
                product(
                    [count, c_out, 9 * c_in],
                    out,
                    true,
                    (cols, [9 * c_in, 1]),
                    (&w_mat, [c_out, 1]),
                );
            });
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
        let (x, g): (&[f32], &[f32]) = (x.storage(), grad.storage());
        let block = block_rows(c_in);
        let zeros = || (vec![0.0f32; 9 * c_in * c_out], Vec::new());
        // colsᵀ · grad, summed over blocks of rows: one partial sum per task, added at the end.
        let (gw_mat, _) = g
            .par_chunks(block * c_out)
            .enumerate()
            .fold(zeros, |(mut gw, mut cols), (i, g)| {
                let count = g.len() / c_out;
                cols.resize(count * 9 * c_in, 0.0);
                im2col(x, [c_in, height, width], i * block, &mut cols);
                product(
                    [9 * c_in, c_out, count],
                    &mut gw,
                    true,
                    (&cols, [1, 9 * c_in]),
                    (g, [c_out, 1]),
                );
                (gw, cols)
            })
            .reduce(zeros, |(mut a, cols), (b, _)| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                (a, cols)
            });
        flex_tensor(
            tap_major(&gw_mat, [c_out, c_in], false),
            vec![c_out, c_in, 3, 3],
        )
    }
}

#[derive(Debug)]
struct Conv3x3Grad;

impl<B: Conv3x3Backend> Backward<B, 3> for Conv3x3Grad {
    type State = (NodeId, NodeId, usize, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, height, width) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
        if let Some(node) = node_x {
            let c_in = weight.shape()[1];
            let flipped = B::float_swap_dims(B::float_flip(weight, &[2, 3]), 0, 1);
            let device = grad.device();
            let zeros = B::float_zeros(Shape::new([c_in]), &device, FloatDType::F32);
            let dx = B::conv3x3_rows(grad.clone(), flipped, zeros, height, width);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            let dw = B::conv3x3_rows_weight_grad(x, grad.clone(), height, width);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_bias {
            let c_out = grad.shape()[1];
            let db = B::float_reshape(B::float_sum_dim(grad, 0), Shape::new([c_out]));
            grads.register::<B>(node.id, db);
        }
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
        let prep = Conv3x3Grad
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::conv3x3_rows(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    height,
                    width,
                );
                prep.finish((x_state, weight_state, height, width), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3_rows(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                height,
                width,
            )),
        }
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
