//! A range of columns of a `[rows, width]` matrix, and its adjoint, placing `[rows, len]` into
//! those columns of zeros: how the flowified layers split their rows (kept and dropped
//! coordinates, a coupling's halves, a context prediction's mean and log-std).
//!
//! Why a kernel of its own: burn's `narrow` differentiates by filling a zero tensor of the
//! input's size and assigning the slice into it, both on the calling thread; in `conv1` that
//! was a seventh of the main thread's time. Here both directions copy blocks of rows in
//! parallel, and each one's backward pass is the other.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{fast_path, flex_tensor, host, record_adjoint_op, zeroed};

/// Columns `start..start + len` of rows `width` wide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub start: usize,
    pub len: usize,
    pub width: usize,
}

/// Rows per parallel task.
const BLOCK: usize = 1024;

/// Backends that run [`columns`].
#[backend_extension(Flex, Autodiff)]
pub trait ColumnsBackend: Backend {
    /// `[rows, width]` → `[rows, len]` if `!adjoint`; if `adjoint`, `[rows, len]` →
    /// `[rows, width]` with zeros outside the range.
    fn columns(x: FloatTensor<Self>, range: Range, adjoint: bool) -> FloatTensor<Self>;
}

/// Columns `start..start + len` of `x: [rows, width]`: `x.narrow(1, start, len)`.
pub fn columns(x: Tensor<2>, start: usize, len: usize) -> Tensor<2> {
    let width = x.dims()[1];
    assert!(
        start + len <= width,
        "columns {start}..{} of {width}",
        start + len
    );
    if !fast_path(&x.device()) {
        return x.narrow(1, start, len);
    }
    let range = Range { start, len, width };
    Tensor::from_dispatch(<Dispatch as ColumnsBackend>::columns(
        x.into_dispatch(),
        range,
        false,
    ))
}

impl ColumnsBackend for Flex {
    fn columns(x: FlexTensor, range: Range, adjoint: bool) -> FlexTensor {
        let (x, dims) = host(&x);
        let x: &[f32] = x.storage();
        let Range { start, len, width } = range;
        let (from, to) = if adjoint { (len, width) } else { (width, len) };
        assert_eq!(dims[1], from, "columns: input width");
        let rows = dims[0];
        let mut out = zeroed(rows * to);
        if len > 0 {
            out.par_chunks_mut(BLOCK * to)
                .zip(x.par_chunks(BLOCK * from))
                .for_each(|(out, x)| {
                    for (out, x) in out.chunks_mut(to).zip(x.chunks(from)) {
                        if adjoint {
                            out[start..start + len].copy_from_slice(x);
                        } else {
                            out.copy_from_slice(&x[start..start + len]);
                        }
                    }
                });
        }
        flex_tensor(out, vec![rows, to])
    }
}

impl<B: ColumnsBackend, C: CheckpointStrategy> ColumnsBackend for Autodiff<B, C> {
    fn columns(x: FloatTensor<Self>, range: Range, adjoint: bool) -> FloatTensor<Self> {
        record_adjoint_op::<B, C, _>(x, range, adjoint, B::columns)
    }
}
