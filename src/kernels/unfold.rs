//! Cutting an image into `k × k` patches at stride `t` (no padding, no dilation), and its
//! adjoint, folding patches back by summing the values that land on the same pixel: the tile
//! step of a flowified convolution (spec §3.5) and its inverse.
//!
//! Why a kernel of its own: burn-flex unfolds through a convolution with a one-hot kernel and
//! folds through a transposed one, both on the calling thread, and the tile's noise folds and
//! unfolds four times per forward pass. In `conv1` that was a tenth of the main thread's time.
//! Here each `(image, channel)` plane is cut or folded on its own, planes in parallel. The two
//! maps are linear and adjoint, so each one's backward pass is the other.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{flex_tensor, host, record_adjoint_op, zeroed};

/// Where patches sit in an image: `k × k` at stride `t`, over an `[H, W]` plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patches {
    pub kernel: usize,
    pub stride: usize,
    pub size: [usize; 2],
}

impl Patches {
    /// Patch positions `[H_out, W_out]`.
    pub fn positions(&self) -> [usize; 2] {
        self.size.map(|s| (s - self.kernel) / self.stride + 1)
    }

    /// `plane: [H, W]` → `out: [k, k, H_out, W_out]`, `out[i, j, y, x] = plane[y·t + i, x·t + j]`.
    fn cut(&self, plane: &[f32], out: &mut [f32]) {
        let (k, t, width) = (self.kernel, self.stride, self.size[1]);
        let [ho, wo] = self.positions();
        for (tap, map) in out.chunks_mut(ho * wo).enumerate() {
            let (i, j) = (tap / k, tap % k);
            for (y, line) in map.chunks_mut(wo).enumerate() {
                let source = &plane[(y * t + i) * width + j..];
                line.iter_mut()
                    .enumerate()
                    .for_each(|(x, v)| *v = source[x * t]);
            }
        }
    }

    /// The adjoint of [`Patches::cut`]: `patches: [k, k, H_out, W_out]` summed into
    /// `plane: [H, W]`, which must start at zero.
    fn fold(&self, patches: &[f32], plane: &mut [f32]) {
        let (k, t, width) = (self.kernel, self.stride, self.size[1]);
        let [ho, wo] = self.positions();
        for (tap, map) in patches.chunks(ho * wo).enumerate() {
            let (i, j) = (tap / k, tap % k);
            for (y, line) in map.chunks(wo).enumerate() {
                let target = &mut plane[(y * t + i) * width + j..];
                line.iter()
                    .enumerate()
                    .for_each(|(x, &v)| target[x * t] += v);
            }
        }
    }
}

/// Backends that run [`unfold`] and [`fold`].
#[backend_extension(Flex, Autodiff)]
pub trait UnfoldBackend: Backend {
    /// `x: [batch, C, H, W]` → `[batch, C·k·k, H_out·W_out]` if `!adjoint`; if `adjoint`,
    /// `[batch, C·k·k, H_out·W_out]` → `[batch, C, H, W]`.
    fn patches(x: FloatTensor<Self>, patches: Patches, adjoint: bool) -> FloatTensor<Self>;
}

/// `x: [batch, C, H, W]` → `[batch, C·k·k, H_out·W_out]`, channel-major (`c·k·k + i·k + j`), as
/// burn's `unfold4d` without padding or dilation.
pub fn unfold(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<3> {
    let [_, _, h, w] = x.dims();
    let patches = Patches {
        kernel,
        stride,
        size: [h, w],
    };
    Tensor::from_dispatch(<Dispatch as UnfoldBackend>::patches(
        x.into_dispatch(),
        patches,
        false,
    ))
}

/// The adjoint of [`unfold`]: `[batch, C·k·k, H_out·W_out]` → `[batch, C, H, W]`, overlapping
/// values summed, as burn's `fold4d`.
pub fn fold(patches: Tensor<3>, size: [usize; 2], kernel: usize, stride: usize) -> Tensor<4> {
    let patches_at = Patches {
        kernel,
        stride,
        size,
    };
    Tensor::from_dispatch(<Dispatch as UnfoldBackend>::patches(
        patches.into_dispatch(),
        patches_at,
        true,
    ))
}

impl UnfoldBackend for Flex {
    fn patches(x: FlexTensor, at: Patches, adjoint: bool) -> FlexTensor {
        let (x, dims) = host(&x);
        let [h, w] = at.size;
        let [ho, wo] = at.positions();
        let kk = at.kernel * at.kernel;
        let (plane_in, plane_out, out_dims) = if adjoint {
            let c = dims[1] / kk;
            assert_eq!(dims[1..], [c * kk, ho * wo], "fold: patches shape");
            (kk * ho * wo, h * w, vec![dims[0], c, h, w])
        } else {
            assert_eq!(dims[2..], [h, w], "unfold: image shape");
            (h * w, kk * ho * wo, vec![dims[0], dims[1] * kk, ho * wo])
        };
        let x: &[f32] = x.storage();
        let planes = x.len() / plane_in.max(1);
        let mut out = zeroed(planes * plane_out);
        out.par_chunks_mut(plane_out.max(1))
            .zip(x.par_chunks(plane_in.max(1)))
            .for_each(|(out, x)| {
                if adjoint {
                    at.fold(x, out)
                } else {
                    at.cut(x, out)
                }
            });
        flex_tensor(out, out_dims)
    }
}

impl<B: UnfoldBackend, C: CheckpointStrategy> UnfoldBackend for Autodiff<B, C> {
    fn patches(x: FloatTensor<Self>, at: Patches, adjoint: bool) -> FloatTensor<Self> {
        record_adjoint_op::<B, C, _>(x, at, adjoint, B::patches)
    }
}
