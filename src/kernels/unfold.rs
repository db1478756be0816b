//! Cutting an image into `k × k` patches at stride `t` (no padding, no dilation), and its
//! adjoint, folding patches back by summing the values that land on the same pixel: the tile
//! step of a flowified convolution (docs/method.md §2.5) and its inverse.
//!
//! Why a kernel of its own: burn-flex unfolds through a convolution with a one-hot kernel and
//! folds through a transposed one, both on the calling thread, and the tile's noise folds and
//! unfolds four times per forward pass. In `conv1` that was a tenth of the main thread's time.
//! Here each `(image, channel)` plane is cut or folded on its own, planes in parallel. The two
//! maps are linear and adjoint, so each one's backward pass is the other.
//!
//! The same two maps on channels-last rows ([`unfold_rows`], [`fold_rows`]) serve the context
//! networks, which work on rows: taken through planes, or through reshapes and axis swaps of
//! the rows, each cost two layout copies forward and two backward.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::module::{fold4d, unfold4d};
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{fast_path, flex_tensor, from_rows, host, record_adjoint_op, to_rows, zeroed};

/// Where patches sit in an image: `k × k` at stride `t`, over an `[H, W]` plane, and how the
/// images are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patches {
    pub kernel: usize,
    pub stride: usize,
    pub size: [usize; 2],
    pub layout: Layout,
}

/// The layout of images and of their patches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layout {
    /// Images `[batch, C, H, W]`, patches `[batch, C·k·k, H_out·W_out]`.
    Planes,
    /// Images as rows `[batch·H·W, C]`, patches as rows `[batch·H_out·W_out, C·k·k]`: one row
    /// per pixel or position, in `(b, y, x)` order.
    Rows,
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

    /// Each `(position, tap, pixel)` of one image: the patch at `position` (`y·W_out + x`) reads
    /// `pixel` (`Y·W + X`) at `tap` (`i·k + j`).
    fn taps(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let (k, t, width) = (self.kernel, self.stride, self.size[1]);
        let [ho, wo] = self.positions();
        (0..ho * wo).flat_map(move |position| {
            let (y, x) = (position / wo, position % wo);
            (0..k * k).map(move |tap| {
                let pixel = (y * t + tap / k) * width + x * t + tap % k;
                (position, tap, pixel)
            })
        })
    }

    /// Rows `image: [H·W, C]` of one image → `out: [H_out·W_out, C·k·k]`, each position's row
    /// channel-major as [`Patches::cut`] orders a plane's taps.
    fn cut_rows(&self, image: &[f32], channels: usize, out: &mut [f32]) {
        let kk = self.kernel * self.kernel;
        for (position, tap, pixel) in self.taps() {
            let row = &mut out[position * channels * kk..][..channels * kk];
            for (c, &v) in image[pixel * channels..][..channels].iter().enumerate() {
                row[c * kk + tap] = v;
            }
        }
    }

    /// The adjoint of [`Patches::cut_rows`]: `patches: [H_out·W_out, C·k·k]` summed into
    /// `image: [H·W, C]`, which must start at zero.
    fn fold_rows(&self, patches: &[f32], channels: usize, image: &mut [f32]) {
        let kk = self.kernel * self.kernel;
        for (position, tap, pixel) in self.taps() {
            let row = &patches[position * channels * kk..][..channels * kk];
            for (c, v) in image[pixel * channels..][..channels].iter_mut().enumerate() {
                *v += row[c * kk + tap];
            }
        }
    }
}

/// Backends that run [`unfold`], [`fold`] and their row forms.
#[backend_extension(Flex, Autodiff)]
pub trait UnfoldBackend: Backend {
    /// Images → patches in `patches.layout` if `!adjoint`; if `adjoint`, patches → images,
    /// overlapping values summed.
    fn patches(x: FloatTensor<Self>, patches: Patches, adjoint: bool) -> FloatTensor<Self>;
}

/// `x: [batch, C, H, W]` → `[batch, C·k·k, H_out·W_out]`, channel-major (`c·k·k + i·k + j`), as
/// burn's `unfold4d` without padding or dilation (the portable body).
pub fn unfold(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<3> {
    let [_, _, h, w] = x.dims();
    if !fast_path(&x.device()) {
        return unfold4d(x, [kernel; 2], options(stride));
    }
    apply(x, (kernel, stride, [h, w]), Layout::Planes, false)
}

/// The adjoint of [`unfold`]: `[batch, C·k·k, H_out·W_out]` → `[batch, C, H, W]`, overlapping
/// values summed, as burn's `fold4d` (the portable body).
pub fn fold(patches: Tensor<3>, size: [usize; 2], kernel: usize, stride: usize) -> Tensor<4> {
    if !fast_path(&patches.device()) {
        return fold4d(patches, size, [kernel; 2], options(stride));
    }
    apply(patches, (kernel, stride, size), Layout::Planes, true)
}

/// [`unfold`] on rows: `x: [batch·H·W, C]` (`size = [H, W]`) → `[batch·H_out·W_out, C·k·k]`,
/// one row per position, channel-major.
pub fn unfold_rows(x: Tensor<2>, size: [usize; 2], kernel: usize, stride: usize) -> Tensor<2> {
    if !fast_path(&x.device()) {
        let [h, w] = size;
        let batch = x.dims()[0] / (h * w);
        let patches = unfold(from_rows(x, [batch, h, w]), kernel, stride);
        let [_, width, positions] = patches.dims();
        return patches.swap_dims(1, 2).reshape([batch * positions, width]);
    }
    apply(x, (kernel, stride, size), Layout::Rows, false)
}

/// [`fold`] on rows, the adjoint of [`unfold_rows`]: `[batch·H_out·W_out, C·k·k]` →
/// `[batch·H·W, C]` (`size = [H, W]`), overlapping values summed.
pub fn fold_rows(patches: Tensor<2>, size: [usize; 2], kernel: usize, stride: usize) -> Tensor<2> {
    if !fast_path(&patches.device()) {
        let [rows, width] = patches.dims();
        let [ho, wo] = size.map(|s| (s - kernel) / stride + 1);
        let batch = rows / (ho * wo);
        let planes = patches.reshape([batch, ho * wo, width]).swap_dims(1, 2);
        return to_rows(fold(planes, size, kernel, stride));
    }
    apply(patches, (kernel, stride, size), Layout::Rows, true)
}

/// Stride `t`, no padding, no dilation.
fn options(stride: usize) -> UnfoldOptions {
    UnfoldOptions::new([stride; 2], [0, 0], [1, 1])
}

fn apply<const D: usize, const E: usize>(
    x: Tensor<D>,
    (kernel, stride, size): (usize, usize, [usize; 2]),
    layout: Layout,
    adjoint: bool,
) -> Tensor<E> {
    let at = Patches {
        kernel,
        stride,
        size,
        layout,
    };
    Tensor::from_dispatch(<Dispatch as UnfoldBackend>::patches(
        x.into_dispatch(),
        at,
        adjoint,
    ))
}

impl UnfoldBackend for Flex {
    fn patches(x: FlexTensor, at: Patches, adjoint: bool) -> FlexTensor {
        let (x, dims) = host(&x);
        let [h, w] = at.size;
        let [ho, wo] = at.positions();
        let kk = at.kernel * at.kernel;
        // Each task cuts or folds one `(image, channel)` plane, or one image's rows.
        let (piece_in, piece_out, channels, out_dims) = match (at.layout, adjoint) {
            (Layout::Planes, false) => {
                assert_eq!(dims[2..], [h, w], "unfold: image shape");
                (h * w, kk * ho * wo, 1, vec![dims[0], dims[1] * kk, ho * wo])
            }
            (Layout::Planes, true) => {
                let c = dims[1] / kk;
                assert_eq!(dims[1..], [c * kk, ho * wo], "fold: patches shape");
                (kk * ho * wo, h * w, 1, vec![dims[0], c, h, w])
            }
            (Layout::Rows, false) => {
                let (rows, c) = (dims[0], dims[1]);
                assert_eq!(rows % (h * w), 0, "unfold_rows: rows per image");
                let images = rows / (h * w);
                (
                    h * w * c,
                    ho * wo * c * kk,
                    c,
                    vec![images * ho * wo, c * kk],
                )
            }
            (Layout::Rows, true) => {
                let (rows, c) = (dims[0], dims[1] / kk);
                assert_eq!(dims[1], c * kk, "fold_rows: patch width");
                assert_eq!(rows % (ho * wo), 0, "fold_rows: rows per image");
                let images = rows / (ho * wo);
                (ho * wo * c * kk, h * w * c, c, vec![images * h * w, c])
            }
        };
        let x: &[f32] = x.storage();
        let pieces = x.len() / piece_in.max(1);
        let mut out = zeroed(pieces * piece_out);
        out.par_chunks_mut(piece_out.max(1))
            .zip(x.par_chunks(piece_in.max(1)))
            .for_each(|(out, x)| match (at.layout, adjoint) {
                (Layout::Planes, false) => at.cut(x, out),
                (Layout::Planes, true) => at.fold(x, out),
                (Layout::Rows, false) => at.cut_rows(x, channels, out),
                (Layout::Rows, true) => at.fold_rows(x, channels, out),
            });
        flex_tensor(out, out_dims)
    }
}

impl<B: UnfoldBackend, C: CheckpointStrategy> UnfoldBackend for Autodiff<B, C> {
    fn patches(x: FloatTensor<Self>, at: Patches, adjoint: bool) -> FloatTensor<Self> {
        record_adjoint_op::<B, C, _>(x, at, adjoint, B::patches)
    }
}
