//! A rotation's trainable tangent at zero (see [`crate::layers::orthogonal`]): the rotated rows
//! `y = x·B` become `y·(I + Ω)`, `Ω = A − Aᵀ`, at `A = 0`. The value is `y` itself and the
//! tangent's gradient is `yᵀ·∂out − ∂outᵀ·y`; `y` passes its gradient through unchanged.
//!
//! Why an op of its own: written as burn ops, `y + y·Ω` costs a `[batch, d]·[d, d]` product of
//! zeros in the forward pass and another, `∂out·Ωᵀ`, in the backward one, 40% of a flowified
//! dense layer's products; here one product, `yᵀ·∂out`, remains.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::{Flex, FlexTensor};

/// Backends that run [`at_zero_tangent`].
#[backend_extension(Flex, Autodiff)]
pub trait TangentBackend: Backend {
    /// `y: [batch, d]`, `tangent: [d, d]` → `y`.
    fn at_zero_tangent(y: FloatTensor<Self>, tangent: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `y · (I + A − Aᵀ)` for `y: [batch, d]` and a tangent `A: [d, d]` that is zero, exact in value
/// and in both gradients.
///
/// Portable body: the formula itself, `y + y·(A − Aᵀ)`, with its two products of zeros.
pub fn at_zero_tangent(y: Tensor<2>, tangent: Tensor<2>) -> Tensor<2> {
    if !super::fast_path(&y.device()) {
        let omega = tangent.clone() - tangent.transpose();
        return y.clone() + y.matmul(omega);
    }
    Tensor::from_dispatch(<Dispatch as TangentBackend>::at_zero_tangent(
        y.into_dispatch(),
        tangent.into_dispatch(),
    ))
}

impl TangentBackend for Flex {
    fn at_zero_tangent(y: FlexTensor, _tangent: FlexTensor) -> FlexTensor {
        y
    }
}

#[derive(Debug)]
struct TangentGrad;

impl<B: Backend> Backward<B, 2> for TangentGrad {
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_y, node_tangent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_tangent {
            let y = checkpointer.retrieve_node_output::<FloatTensor<B>>(ops.state);
            let d_omega = B::float_matmul(B::float_transpose(y), grad.clone());
            let d_tangent = B::float_sub(d_omega.clone(), B::float_transpose(d_omega));
            grads.register::<B>(node.id, d_tangent);
        }
        if let Some(node) = node_y {
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: TangentBackend, C: CheckpointStrategy> TangentBackend for Autodiff<B, C> {
    fn at_zero_tangent(y: FloatTensor<Self>, tangent: FloatTensor<Self>) -> FloatTensor<Self> {
        match TangentGrad
            .prepare::<C>([y.node(), tangent.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&y);
                prep.finish(state, y.into_primitive())
            }
            OpsKind::UnTracked(prep) => prep.finish(y.into_primitive()),
        }
    }
}
