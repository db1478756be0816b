//! `y = x·W + b`, optionally followed by a ReLU, on rows: the layer of every multilayer
//! perceptron here (conditioners, context networks). Their products are thin: tens of thousands
//! of rows (one per pixel and image) through 32–256 units. burn-flex splits each such product
//! across threads and, for some widths, runs it at a quarter of the rate of one product per
//! block of rows, which is what this does (see `rows_times` in the parent module), forward and backward:
//!
//! - the ReLU is applied to each block while it is in cache, and its mask is the output;
//! - input gradient: `∂y · Wᵀ`, the same kernel;
//! - weight and bias gradients: `xᵀ · ∂y` and `Σ ∂y`, summed over blocks of rows.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::module::linear;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};

use super::{
    fast_path, flex_tensor, host, record_weighted_op, rows_gram, rows_times, through_relu,
    weighted_op_backward, Matrix, Rows, WeightedState,
};

/// Backends that run [`linear_rows`].
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: Backend {
    /// `x: [rows, K]`, `weight: [K, N]`, `bias: [N]` → `[rows, N]`, rectified if `relu`.
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// The backward step of [`LinearBackend::linear_rows`], run by the autodiff backend on its
/// inner backend (not dispatched).
pub trait LinearBackward: Backend {
    /// The gradients of `x`, `weight` and `bias` from `grad: [rows, N]`, through the ReLU whose
    /// `output` is given; the first is empty unless `need_input`.
    fn linear_rows_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        need_input: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Products with fewer rows than this and fewer rows than input features go through burn's own
/// product: there the weight, not the rows, is the bulk (e.g. the CIFAR-10 `mlp` conditioners,
/// 128 rows by 3072×4096 weights), and splitting the weight's columns across threads, as
/// burn-flex does, beats packing all of it once per block (measured: 8.4 s against 17.2 s per
/// CIFAR-10 `mlp` step). Thin weights on fewer rows (the context networks on 2×2 and 4×4 maps)
/// stay here: burn-flex runs products under 192³ multiply-adds on one thread.
const MIN_ROWS: usize = 1024;

/// `x: [rows, d_input] → [rows, d_output]` through `layer`, rectified if `relu`.
pub fn linear_rows(layer: &Linear, x: Tensor<2>, relu: bool) -> Tensor<2> {
    let weight = layer.weight.val();
    let bias = match &layer.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([weight.dims()[1]], &x.device()),
    };
    affine_rows(x, weight, bias, relu)
}

/// `x · weight + bias` for `x: [rows, K]`, `weight: [K, N]`, `bias: [N]` → `[rows, N]`,
/// rectified if `rectify`. Portable body: burn's `linear` and `relu`.
pub fn affine_rows(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, rectify: bool) -> Tensor<2> {
    let [rows, features] = x.dims();
    if !fast_path(&x.device()) || (rows < MIN_ROWS && rows < features) {
        let y = linear(x, weight, Some(bias));
        return if rectify { relu(y) } else { y };
    }
    Tensor::from_dispatch(<Dispatch as LinearBackend>::linear_rows(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        rectify,
    ))
}

impl LinearBackend for Flex {
    fn linear_rows(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, relu: bool) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let (bias, _) = host(&bias);
        assert_eq!(x_dims[1], w_dims[0], "linear_rows: input width");
        let source = Rows::Plain {
            x: x.storage(),
            width: x_dims[1],
        };
        let w = Matrix {
            values: weight.storage(),
            n: w_dims[1],
            transposed: false,
        };
        let out = rows_times(&source, x_dims[0], &w, Some((bias.storage(), relu)));
        flex_tensor(out, vec![x_dims[0], w_dims[1]])
    }
}

impl LinearBackward for Flex {
    fn linear_rows_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: Option<FlexTensor>,
        grad: FlexTensor,
        need_input: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let ([rows, k], n) = ([x_dims[0], x_dims[1]], w_dims[1]);
        let grad = through_relu(grad, output);
        let grad = grad.storage();
        let source = Rows::Plain {
            x: x.storage(),
            width: k,
        };
        let (dw, db) = rows_gram(&source, rows, grad, n);
        let dx = if need_input {
            let w_t = Matrix {
                values: weight.storage(),
                n: k,
                transposed: true,
            };
            let source = Rows::Plain { x: grad, width: n };
            flex_tensor(rows_times(&source, rows, &w_t, None), vec![rows, k])
        } else {
            flex_tensor(vec![], vec![0, k])
        };
        (dx, flex_tensor(dw, vec![k, n]), flex_tensor(db, vec![n]))
    }
}

#[derive(Debug)]
struct LinearGrad;

impl<B: LinearBackward> Backward<B, 3> for LinearGrad {
    type State = WeightedState<B, ()>;

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
            |x, weight, output, grad, need_input, ()| {
                B::linear_rows_backward(x, weight, output, grad, need_input)
            },
        );
    }
}

impl<B: LinearBackend + LinearBackward, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        record_weighted_op::<B, C, _, _>(LinearGrad, [x, weight, bias], relu, (), |x, w, b| {
            B::linear_rows(x, w, b, relu)
        })
    }
}
