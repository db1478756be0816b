//! `y = x·W + b` on rows, the layer of every multilayer perceptron here (conditioners, context
//! networks). Their products are thin: tens of thousands of rows (one per pixel and image)
//! through 32–256 units. burn-flex splits each such product across threads and, for some widths,
//! runs it at a quarter of the rate of one product per block of rows, which is what this does
//! (see [`super::rows_times`]), forward and backward:
//!
//! - input gradient: `∂y · Wᵀ`, the same kernel;
//! - weight gradient: `xᵀ · ∂y`, summed over blocks of rows.

use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, AutodiffBackend, Backend, Dispatch, FloatDType, TensorMetadata,
};
use burn::nn::Linear;
use burn::tensor::module::linear;
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

/// Backends that run [`linear_rows`].
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: Backend {
    /// `x: [rows, K]`, `weight: [K, N]`, `bias: [N]` → `[rows, N]`.
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `xᵀ · grad`: `x: [rows, K]`, `grad: [rows, N]` → `[K, N]`.
    fn transposed_product(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Fewer rows than this go through burn's own product: there the weight, not the rows, is the
/// bulk (e.g. the CIFAR-10 `mlp` conditioners, 128 rows by 3072×4096 weights), and splitting the
/// weight's columns across threads, as burn-flex does, beats packing all of it once per block
/// (measured: 8.4 s against 17.2 s per CIFAR-10 `mlp` step).
const MIN_ROWS: usize = 1024;

/// `x: [rows, d_input] → [rows, d_output]` through `layer`.
pub fn linear_rows(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    let weight = layer.weight.val();
    let bias = match &layer.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([weight.dims()[1]], &x.device()),
    };
    affine_rows(x, weight, bias)
}

/// `x · weight + bias` for `x: [rows, K]`, `weight: [K, N]`, `bias: [N]` → `[rows, N]`.
pub fn affine_rows(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    if x.dims()[0] < MIN_ROWS {
        return linear(x, weight, Some(bias));
    }
    Tensor::from_dispatch(<Dispatch as LinearBackend>::linear_rows(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

impl LinearBackend for Flex {
    fn linear_rows(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let (bias, _) = host(&bias);
        assert_eq!(x_dims[1], w_dims[0], "linear_rows: input width");
        let source = Rows::Plain {
            x: x.storage(),
            width: x_dims[1],
        };
        let out = rows_times(&source, x_dims[0], weight.storage(), bias.storage());
        flex_tensor(out, vec![x_dims[0], w_dims[1]])
    }

    fn transposed_product(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (grad, g_dims) = host(&grad);
        let source = Rows::Plain {
            x: x.storage(),
            width: x_dims[1],
        };
        let out = rows_gram(&source, x_dims[0], grad.storage(), g_dims[1]);
        flex_tensor(out, vec![x_dims[1], g_dims[1]])
    }
}

#[derive(Debug)]
struct LinearGrad;

impl<B: LinearBackend> Backward<B, 3> for LinearGrad {
    type State = (NodeId, NodeId, ());

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
            |weight, grad, ()| {
                let d_input = weight.shape()[0];
                let zeros = B::float_zeros(Shape::new([d_input]), &grad.device(), FloatDType::F32);
                B::linear_rows(grad, B::float_transpose(weight), zeros)
            },
            |x, grad, ()| B::transposed_product(x, grad),
        );
    }
}

impl<B: LinearBackend, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_weighted_op::<B, C, _, _>(LinearGrad, [x, weight, bias], (), B::linear_rows)
    }

    fn transposed_product(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::transposed_product(
            x.into_primitive(),
            grad.into_primitive(),
        ))
    }
}
