//! The 3×3, stride-1, zero-padded convolution of the conditioners (coupling layers, context
//! networks), optionally followed by a ReLU, on channels-last rows: `x: [batch·H·W, C]`, one row
//! per pixel in `(b, y, x)` order.
//!
//! Why a kernel of its own: the maps these networks convolve are small (2×2 to 14×14) and wide
//! (32–160 channels), and burn-flex's `conv2d` works image by image, so its products are thin, and
//! it differentiates the input through a transposed convolution that scatters element by element.
//! Its backward pass costs four times its forward one. Here every product covers the whole batch:
//!
//! - forward: `out = im2col(x) · W + b`, with `im2col(x): [rows, 9·C]`, rectified per block;
//! - input gradient: the same convolution of `∂out` (masked by the ReLU's output) with the
//!   kernel flipped in space and transposed in channels (a product of depth `9·O`, not the
//!   depth-`O` product and scatter that differentiating the forward formula would give), except
//!   into fewer channels than the output's, where that scatter (`col2im`) is the cheaper;
//! - weight and bias gradients: `im2col(x)ᵀ · ∂out` and `Σ ∂out`.
//!
//! On maps of 4×4 pixels or more with 24 channels or more the same three products run in
//! Winograd's form (`winograd`), which needs up to 4× fewer multiply-adds. On maps of
//! fewer than 9 pixels (the last context networks' 2×2) they run pixel pair by pixel pair
//! (`whole_image`), which needs up to 9× fewer.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::taps::{columns, kernel_from_columns};
use super::{
    add_rows, balanced_block, fast_path, flex_tensor, from_rows, host, in_pieces, per_thread_runs,
    product, record_weighted_op, rows_gram, rows_times, shift_and_rectify, sum_parts, through_relu,
    to_rows, weighted_op_backward, winograd, zeroed, Matrix, Rows, WeightedState,
};

/// Backends that run [`conv3x3_rows`].
#[backend_extension(Flex, Autodiff)]
pub trait Conv3x3Backend: Backend {
    /// `x: [batch·H·W, C]`, `weight: [O, C, 3, 3]`, `bias: [O]` → `[batch·H·W, O]`, rectified if
    /// `relu`.
    fn conv3x3_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        height: usize,
        width: usize,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// The backward step of [`Conv3x3Backend::conv3x3_rows`], run by the autodiff backend on its inner
/// backend (not dispatched).
pub trait Conv3x3Backward: Backend {
    /// The gradients of `x`, `weight` and `bias` from `grad: [batch·H·W, O]`, through the ReLU
    /// whose `output` is given; the first is empty unless `need_input`.
    #[allow(clippy::too_many_arguments)]
    fn conv3x3_rows_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
        need_input: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `rows: [batch·H·W, C_in] → [batch·H·W, C_out]` through `conv`, rectified if `relu`; `conv`
/// must be a 3×3 convolution with stride 1 and padding 1 (checked by the caller's configuration).
pub fn conv3x3_rows(
    conv: &Conv2d,
    rows: Tensor<2>,
    [height, width]: [usize; 2],
    relu: bool,
) -> Tensor<2> {
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    let bias = match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([c_out], &rows.device()),
    };
    if !fast_path(&rows.device()) {
        // The portable body: burn's own convolution on the images the rows hold.
        let batch = rows.dims()[0] / (height * width);
        let images = conv2d(
            from_rows(rows, [batch, height, width]),
            weight,
            Some(bias),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        return to_rows(if relu {
            activation::relu(images)
        } else {
            images
        });
    }
    Tensor::from_dispatch(<Dispatch as Conv3x3Backend>::conv3x3_rows(
        rows.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        height,
        width,
        relu,
    ))
}

/// Rows `first..first + count` of `im2col(x)` into `cols` (`[count, 9·C]`): each row holds its
/// pixel's 3×3 neighbourhood, tap-major (`(ky·3 + kx)·C + c`), zeros outside the image.
///
/// A neighbourhood row (`kx = 0, 1, 2`) is `3·C` consecutive values of `x` in this layout, so it
/// is copied at once; only the taps that fall outside the image are zeroed one by one.
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
        // Taps `kx` in `first_kx..=last_kx` read columns `x0 + kx − 1` inside the image.
        let first_kx = usize::from(x0 == 0);
        let last_kx = if x0 + 1 < width { 2 } else { 1 };
        for (ky, span) in row.chunks_mut(3 * channels).enumerate() {
            if y + ky == 0 || y + ky > height {
                span.fill(0.0);
                continue;
            }
            let line = base + (y + ky - 1) * width + x0;
            let (inside_from, inside_to) = (first_kx * channels, (last_kx + 1) * channels);
            span[..inside_from].fill(0.0);
            span[inside_from..inside_to]
                .copy_from_slice(&x[(line + first_kx - 1) * channels..(line + last_kx) * channels]);
            span[inside_to..].fill(0.0);
        }
    }
}

/// The adjoint of [`im2col`]: `cols: [rows, 9·C]` summed back onto the pixels each of its taps
/// was read from, `[rows, C]`, image by image in parallel.
///
/// Why: the input gradient of a convolution to fewer channels than it reads (2 → 32 in the
/// first layer of `conv2_nsf`'s conditioners) is then `col2im(∂out · Wᵀ)`, a product `9·C`
/// wide, where the convolution of `∂out` with the flipped kernel is one `C` wide after a
/// `9·O`-wide im2col. The multiply-adds are the same, but the 2-wide product ran at 7 GFLOP/s:
/// per call in `conv2_nsf` steps, 2.0 → 0.9 ms (2 → 32 on 14×14) and 0.7 → 0.4 ms (8 → 32 on
/// 7×7).
fn col2im(cols: &[f32], [channels, height, width]: [usize; 3]) -> Vec<f32> {
    let image = height * width;
    let mut out = zeroed(cols.len() / 9);
    out.par_chunks_mut(image * channels)
        .enumerate()
        .for_each(|(b, pixels)| {
            for (q, pixel) in pixels.chunks_mut(channels).enumerate() {
                let (y, x) = (q / width, q % width);
                // Output pixel `p` reads `q` through tap `(ky, kx)` when `p = q − (ky − 1, kx − 1)`.
                for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                    let (py, px) = ((y + 1).wrapping_sub(ky), (x + 1).wrapping_sub(kx));
                    if py < height && px < width {
                        let p = b * image + py * width + px;
                        let taps = &cols[(9 * p + 3 * ky + kx) * channels..][..channels];
                        pixel.iter_mut().zip(taps).for_each(|(d, v)| *d += v);
                    }
                }
            }
        });
    out
}

/// Whether a `height × width` map is convolved as whole images: every output pixel `p` of an
/// image is `Σ_q x_q · W_tap(q, p)` over the input pixels `q` within its 3×3 reach
/// ([`pixel_pairs`]), one product per pixel pair over a block of images. That is `P²` blocks of
/// `C × O` multiply-adds per image (`P = H·W` pixels, fewer pairs where some are out of reach)
/// where im2col needs `9·P`, most of them on zero taps outside the image: 2.25× fewer on 2×2
/// maps, 9× fewer on 1×1. The gradients are the adjoints, pair by pair.
///
/// The pairs were first one product of each image's pixels side by side with the kernel spread
/// over all pairs, `[P·C] × [P·C, P·O]`; building that spread kernel (1.6 MB for 160 channels
/// on 2×2) and summing its gradient back onto the taps took a third of the op's time.
fn whole_image(height: usize, width: usize) -> bool {
    height * width < 9
}

/// The pixel pairs `(q, p)` of a `height × width` map whose offset `q − p` is a tap of the 3×3
/// kernel, with that tap: input pixel `q` feeds output pixel `p` through `w[.., .., tap]`.
fn pixel_pairs(height: usize, width: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let pixels = height * width;
    (0..pixels).flat_map(move |q| {
        (0..pixels).filter_map(move |p| {
            let dy = (q / width + 1).checked_sub(p / width)?;
            let dx = (q % width + 1).checked_sub(p % width)?;
            (dy < 3 && dx < 3).then_some((q, p, 3 * dy + dx))
        })
    })
}

impl Conv3x3Backend for Flex {
    fn conv3x3_rows(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        height: usize,
        width: usize,
        relu: bool,
    ) -> FlexTensor {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let (bias, _) = host(&bias);
        let (rows, c_in, c_out) = (x_dims[0], x_dims[1], w_dims[0]);
        assert_eq!(w_dims, [c_out, c_in, 3, 3], "conv3x3_rows: weight shape");
        assert_eq!(rows % (height * width), 0, "conv3x3_rows: rows per image");
        let dims = [c_in, height, width];
        let affine = Some((bias.storage(), relu));
        let out = if whole_image(height, width) {
            let cols = columns(weight.storage(), [c_out, c_in], false);
            pair_products(
                x.storage(),
                &cols,
                [c_in, c_out],
                [height, width],
                false,
                affine,
            )
        } else if winograd::suits(height, width, [c_in, c_out]) {
            let u = winograd::kernel(weight.storage(), [c_out, c_in], false);
            winograd::convolve(x.storage(), dims, &u, c_out, affine)
        } else {
            let w = Matrix {
                values: &columns(weight.storage(), [c_out, c_in], false),
                n: c_out,
                transposed: false,
            };
            let source = Rows::Im2col3x3 {
                x: x.storage(),
                dims,
            };
            rows_times(&source, rows, &w, affine)
        };
        flex_tensor(out, vec![rows, c_out])
    }
}

impl Conv3x3Backward for Flex {
    fn conv3x3_rows_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: Option<FlexTensor>,
        grad: FlexTensor,
        height: usize,
        width: usize,
        need_input: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, x_dims) = host(&x);
        let (weight, w_dims) = host(&weight);
        let (rows, c_in, c_out) = (x_dims[0], x_dims[1], w_dims[0]);
        let grad = through_relu(grad, output);
        let grad = grad.storage();
        let (x, weight) = (x.storage(), weight.storage());
        let [dims, grad_dims] = [[c_in, height, width], [c_out, height, width]];
        if whole_image(height, width) {
            return whole_image_backward(
                x,
                weight,
                grad,
                [c_out, c_in],
                [height, width],
                need_input,
            );
        }
        let winograd = winograd::suits(height, width, [c_in, c_out]);
        let (dw, db) = if winograd {
            winograd::kernel_gradient(x, dims, grad, c_out)
        } else {
            let (dw, db) = rows_gram(&Rows::Im2col3x3 { x, dims }, rows, grad, c_out);
            (kernel_from_columns(&dw, [c_out, c_in]), db)
        };
        let dx = match (need_input, winograd) {
            (false, _) => vec![],
            (true, true) => {
                let u = winograd::kernel(weight, [c_out, c_in], true);
                winograd::convolve(grad, grad_dims, &u, c_in, None)
            }
            (true, false) if c_in < c_out => {
                let w = Matrix {
                    values: &columns(weight, [c_out, c_in], false),
                    n: 9 * c_in,
                    transposed: true,
                };
                let source = Rows::Plain {
                    x: grad,
                    width: c_out,
                };
                col2im(&rows_times(&source, rows, &w, None), dims)
            }
            (true, false) => {
                let w = Matrix {
                    values: &columns(weight, [c_out, c_in], true),
                    n: c_in,
                    transposed: false,
                };
                let source = Rows::Im2col3x3 {
                    x: grad,
                    dims: grad_dims,
                };
                rows_times(&source, rows, &w, None)
            }
        };
        let dx = flex_tensor(dx, vec![if need_input { rows } else { 0 }, c_in]);
        (
            dx,
            flex_tensor(dw, vec![c_out, c_in, 3, 3]),
            flex_tensor(db, vec![c_out]),
        )
    }
}

/// The images of `x` in blocks, one per thread: `(pieces of an output with `width` values per
/// image, first image of each)`.
fn image_blocks(images: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    let block = balanced_block(images, images);
    (0..images)
        .step_by(block.max(1))
        .map(move |first| (block.min(images - first) * width, first))
}

/// `out_to += src_from · W_tap` for every pixel pair `(q, p)` of [`whole_image`], over blocks of
/// images of `src: [images·P, C_src]`, into `[images·P, C_out]`, then `bias` and the ReLU of
/// `affine`. With the kernel as `cols: [(tap, C), O]` ([`columns`]), the forward pass reads `x`
/// at `q` into `p` through `W_tap`; the input gradient (`adjoint`) reads `∂out` at `p` into `q`
/// through `W_tapᵀ`.
fn pair_products(
    src: &[f32],
    cols: &[f32],
    [c_src, c_out]: [usize; 2],
    [height, width]: [usize; 2],
    adjoint: bool,
    affine: Option<(&[f32], bool)>,
) -> Vec<f32> {
    let pixels = height * width;
    let images = src.len() / (pixels * c_src);
    let strides = if adjoint { [1, c_src] } else { [c_out, 1] };
    let pieces = image_blocks(images, pixels * c_out);
    in_pieces(
        images * pixels * c_out,
        pieces,
        || (),
        |(), first, out| {
            let count = out.len() / (pixels * c_out);
            let src = &src[first * pixels * c_src..];
            for (q, p, tap) in pixel_pairs(height, width) {
                let (from, to) = if adjoint { (p, q) } else { (q, p) };
                product(
                    [count, c_out, c_src],
                    (&mut out[to * c_out..], pixels * c_out),
                    (&src[from * c_src..], [pixels * c_src, 1]),
                    (&cols[tap * c_src * c_out..], strides),
                    (1.0, true),
                );
            }
            if let Some(affine) = affine {
                shift_and_rectify(out, affine);
            }
        },
    )
}

/// The gradients of the [`whole_image`] form, as [`Conv3x3Backward::conv3x3_rows_backward`]
/// returns them, from `grad` already masked by the ReLU: per pixel pair, `x_qᵀ · ∂out_p` onto
/// its tap (one partial sum per thread) and `∂out_p · W_tapᵀ` onto `∂x_q`.
fn whole_image_backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    [c_out, c_in]: [usize; 2],
    [height, width]: [usize; 2],
    need_input: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let pixels = height * width;
    let images = x.len() / (pixels * c_in);
    let blocks: Vec<_> = image_blocks(images, 1).collect();
    let partials = per_thread_runs(blocks.len(), |run| {
        let (mut dcols, mut db) = (vec![0.0f32; 9 * c_in * c_out], vec![0.0f32; c_out]);
        for &(count, first) in &blocks[run] {
            let x = &x[first * pixels * c_in..];
            let g = &grad[first * pixels * c_out..][..count * pixels * c_out];
            for (q, p, tap) in pixel_pairs(height, width) {
                product(
                    [c_in, c_out, count],
                    (&mut dcols[tap * c_in * c_out..], c_out),
                    (&x[q * c_in..], [1, pixels * c_in]),
                    (&g[p * c_out..], [pixels * c_out, 1]),
                    (1.0, true),
                );
            }
            add_rows(&mut db, g);
        }
        (dcols, db)
    });
    let (dcols, db) = sum_parts(partials);
    let dx = if need_input {
        let cols = columns(weight, [c_out, c_in], false);
        pair_products(grad, &cols, [c_out, c_in], [height, width], true, None)
    } else {
        vec![]
    };
    let rows = if need_input { images * pixels } else { 0 };
    (
        flex_tensor(dx, vec![rows, c_in]),
        flex_tensor(
            kernel_from_columns(&dcols, [c_out, c_in]),
            vec![c_out, c_in, 3, 3],
        ),
        flex_tensor(db, vec![c_out]),
    )
}

#[derive(Debug)]
struct Conv3x3Grad;

impl<B: Conv3x3Backward> Backward<B, 3> for Conv3x3Grad {
    type State = WeightedState<B, [usize; 2]>;

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
            |x, weight, output, grad, need_input, &[height, width]| {
                B::conv3x3_rows_backward(x, weight, output, grad, height, width, need_input)
            },
        );
    }
}

impl<B: Conv3x3Backend + Conv3x3Backward, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn conv3x3_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        height: usize,
        width: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        record_weighted_op::<B, C, _, _>(
            Conv3x3Grad,
            [x, weight, bias],
            relu,
            [height, width],
            |x, weight, bias| B::conv3x3_rows(x, weight, bias, height, width, relu),
        )
    }
}
