//! The ops the layers are built from where burn's general ops are slow on this workload's
//! shapes, and the channels-last "rows" layout they share with the per-position networks.
//!
//! Each op has one differentiable `Tensor` entry point with two bodies: a portable one written in
//! burn's tensor ops, which runs on every backend with burn's autodiff, and a CPU kernel with a
//! hand-written backward pass, the fast path on the `flex` backend. [`fast_path`] alone decides
//! which one runs, so a layer never names a backend.

pub mod adam;
pub mod columns;
pub mod conv3x3;
pub mod lanes;
pub mod linear;
pub mod noise;
pub mod spline;
pub mod tangent;
mod taps;
pub mod unfold;
mod winograd;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice};
use burn::tensor::{Device, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);

/// Whether the ops run their CPU kernels on `device`: on the `flex` backend (with or without
/// autodiff), unless [`force_portable`] turned them off. Everywhere else they run their portable
/// bodies.
pub fn fast_path(device: &Device) -> bool {
    fn is_flex(device: &DispatchDevice) -> bool {
        #[allow(unreachable_patterns)] // Flex and autodiff may be the only backends built in.
        match device {
            DispatchDevice::Flex(_) => true,
            DispatchDevice::Autodiff(inner) => is_flex(inner),
            _ => false,
        }
    }
    !FORCE_PORTABLE.load(Ordering::Relaxed) && is_flex(device.as_dispatch())
}

/// Runs every op through its portable body from now on (`true`), or lets [`fast_path`] pick the
/// CPU kernels again (`false`): for the tests and benchmarks that hold the two paths against
/// each other. It holds for the whole process.
pub fn force_portable(on: bool) {
    FORCE_PORTABLE.store(on, Ordering::Relaxed);
}

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

/// What the backward step of a weighted op keeps: the checkpointed input and weight, the
/// output when a ReLU was fused into the op (its mask), and the op's sizes.
pub(crate) type WeightedState<B, E> = (NodeId, NodeId, Option<FloatTensor<B>>, E);

/// Records `run(x, weight, bias)` on the autodiff graph with `grad` as its backward step, which
/// receives the checkpointed `x` and `weight`, the output if `relu` (the op applied a ReLU), and
/// `extra` (the op's sizes).
pub(crate) fn record_weighted_op<B, C, G, E>(
    grad: G,
    [x, weight, bias]: [FloatTensor<Autodiff<B, C>>; 3],
    relu: bool,
    extra: E,
    run: impl FnOnce(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    G: Backward<B, 3, State = WeightedState<B, E>>,
    E: Clone + Send + core::fmt::Debug + 'static,
{
    let prep = grad
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful();
    match prep {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            let out = run(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            );
            let mask = relu.then(|| out.clone());
            prep.finish((x_state, weight_state, mask, extra), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        )),
    }
}

/// The backward step of an op recorded by [`record_weighted_op`]: `backward(x, weight, output,
/// ∂out, whether x needs its gradient, extra)` returns the gradients of `x`, the weight and the
/// bias.
pub(crate) fn weighted_op_backward<B: Backend, E>(
    ops: Ops<WeightedState<B, E>, 3>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
    backward: impl FnOnce(
        FloatTensor<B>,
        FloatTensor<B>,
        Option<FloatTensor<B>>,
        FloatTensor<B>,
        bool,
        &E,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
) {
    let [node_x, node_weight, node_bias] = ops.parents;
    let grad = grads.consume::<B>(&ops.node);
    let (x_state, weight_state, mask, extra) = ops.state;
    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
    let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
    let (dx, dw, db) = backward(x, weight, mask, grad, node_x.is_some(), &extra);
    for (node, g) in [(node_x, dx), (node_weight, dw), (node_bias, db)] {
        if let Some(node) = node {
            grads.register::<B>(node.id, g);
        }
    }
}

/// A linear op `apply(x, params, adjoint)` whose two directions are each other's adjoint (cut
/// patches / fold them, take columns / place them), so each is the other's backward pass.
pub(crate) type AdjointOp<B, P> = fn(FloatTensor<B>, P, bool) -> FloatTensor<B>;

/// Records `apply(x, params, adjoint)` on the autodiff graph, with `apply(∂out, params,
/// !adjoint)` as its backward step.
pub(crate) fn record_adjoint_op<B, C, P>(
    x: FloatTensor<Autodiff<B, C>>,
    params: P,
    adjoint: bool,
    apply: AdjointOp<B, P>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    P: Copy + Send + core::fmt::Debug + 'static,
{
    (AdjointGrad {
        params,
        adjoint,
        apply,
    })
    .prepare::<C>([x.node()])
    .compute_bound()
    .stateless(apply(x.into_primitive(), params, adjoint))
}

#[derive(Debug)]
struct AdjointGrad<B: Backend, P> {
    params: P,
    adjoint: bool,
    apply: AdjointOp<B, P>,
}

impl<B: Backend, P: Copy + Send + core::fmt::Debug + 'static> Backward<B, 1> for AdjointGrad<B, P> {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, (self.apply)(grad, self.params, !self.adjoint));
        }
    }
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

/// The left operand of a row-blocked product: rows read in place, or built block by block.
pub(crate) enum Rows<'a> {
    /// `[rows, width]`, row-major.
    Plain { x: &'a [f32], width: usize },
    /// The 3×3 neighbourhoods of `x: [batch·H·W, C]` (`dims = [C, H, W]`), `[rows, 9·C]`.
    Im2col3x3 { x: &'a [f32], dims: [usize; 3] },
}

impl Rows<'_> {
    fn width(&self) -> usize {
        match self {
            Rows::Plain { width, .. } => *width,
            Rows::Im2col3x3 { dims, .. } => 9 * dims[0],
        }
    }

    /// Rows per task: a block of at most about 1 MiB stays in cache between being built and
    /// being multiplied, and the blocks come in a multiple of the thread count, so no thread
    /// finishes a block behind the others.
    fn block(&self, rows: usize) -> usize {
        balanced_block(rows, (262_144 / self.width()).max(8))
    }

    /// Rows `first..first + count`, built in `buf` when they are not stored.
    fn block_at<'b>(&'b self, first: usize, count: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let width = self.width();
        match self {
            Rows::Plain { x, .. } => &x[first * width..(first + count) * width],
            Rows::Im2col3x3 { x, dims } => {
                buf.resize(count * width, 0.0);
                conv3x3::im2col(x, *dims, first, buf);
                buf
            }
        }
    }
}

/// The right operand `W: [K, N]` of a row-blocked product, row-major, or stored transposed
/// (`[N, K]` row-major, as a layer's weight is for its input gradient).
pub(crate) struct Matrix<'a> {
    pub values: &'a [f32],
    pub n: usize,
    pub transposed: bool,
}

impl Matrix<'_> {
    fn strides(&self) -> [usize; 2] {
        if self.transposed {
            [1, self.values.len() / self.n]
        } else {
            [self.n, 1]
        }
    }
}

/// `A · W`, or with `affine = Some((bias, relu))` `A · W + bias` and then a ReLU if `relu`, for
/// `A: [rows, K]` given by `source`, `W: [K, N]`, `bias: [N]`: one single-threaded product per
/// block of rows, blocks in parallel, each block multiplied, shifted and rectified while it is
/// in cache. On the thin
/// products of the per-position networks (K, N up to a few hundred, tens of thousands of rows)
/// this measured 1.2–3.5× faster than burn-flex's matmul, which splits each product across
/// threads.
pub(crate) fn rows_times(
    source: &Rows,
    rows: usize,
    w: &Matrix,
    affine: Option<(&[f32], bool)>,
) -> Vec<f32> {
    let (k, n) = (source.width(), w.n);
    let block = source.block(rows);
    let pieces = (0..rows.div_ceil(block)).map(|i| (block.min(rows - i * block) * n, i));
    // SAFETY: `product_over` writes every value of each piece.
    unsafe {
        in_uninit_pieces(rows * n, pieces, Vec::new, |buf, i, out| {
            let count = out.len() / n;
            let a = source.block_at(i * block, count, buf);
            let out = product_over([count, n, k], out, (a, [k, 1]), (w.values, w.strides()));
            if let Some(affine) = affine {
                shift_and_rectify(out, affine);
            }
        })
    }
}

/// Rows `out: [.., N]` plus `bias: [N]`, rectified if `relu`, in place.
pub(crate) fn shift_and_rectify(out: &mut [f32], (bias, relu): (&[f32], bool)) {
    for row in out.chunks_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(o, &b)| {
            *o = if relu { (*o + b).max(0.0) } else { *o + b };
        })
    }
}

/// `∂out`, contiguous, and if the op ended in a ReLU whose `output` is given, masked by it:
/// `∂out ⊙ [out > 0]`, in place when `∂out` is not shared (as the gradient a backward step
/// receives is not): a fresh buffer costs its allocation and page faults on top of the pass.
fn through_relu(incoming: FlexTensor, output: Option<FlexTensor>) -> FlexTensor {
    // The copy `host` makes shares the values unless they had to be reordered; with the
    // original dropped it owns them alone.
    let (mut grad, dims) = host(&incoming);
    drop(incoming);
    let Some(output) = output else {
        return grad;
    };
    let (output, _) = host(&output);
    let output: &[f32] = output.storage();
    // A select, not a branch: half the outputs are zero in no order a predictor can follow, and
    // the branch kept the loop scalar. In `perf` samples of `conv2_nsf` steps this pass took
    // 6.2% of the CPU time with the branch and 1.8% with the select.
    const PIECE: usize = 1 << 14;
    let mask = |values: &mut [f32]| {
        values
            .par_chunks_mut(PIECE)
            .zip(output.par_chunks(PIECE))
            .for_each(|(g, o)| {
                g.iter_mut()
                    .zip(o)
                    .for_each(|(g, &o)| *g = if o <= 0.0 { 0.0 } else { *g })
            })
    };
    match grad.try_storage_mut::<f32>() {
        Some(values) => mask(values),
        None => {
            let mut values = grad.storage::<f32>().to_vec();
            mask(&mut values);
            grad = flex_tensor(values, dims);
        }
    }
    grad
}

/// `(Aᵀ · G: [K, N], Σ_rows G: [N])` for `A: [rows, K]` given by `source` and `G: [rows, N]`:
/// a weight's and a bias's gradients, summed over blocks of rows, one partial sum per thread.
pub(crate) fn rows_gram(source: &Rows, rows: usize, g: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let k = source.width();
    let block = source.block(rows);
    let partials = per_thread_runs(rows.div_ceil(block), |blocks| {
        let (mut gram, mut sums, mut buf) = (vec![0.0f32; k * n], vec![0.0f32; n], Vec::new());
        for i in blocks {
            let first = i * block;
            let count = block.min(rows - first);
            let a = source.block_at(first, count, &mut buf);
            let g = &g[first * n..(first + count) * n];
            product(
                [k, n, count],
                (&mut gram, n),
                (a, [1, k]),
                (g, [n, 1]),
                (1.0, true),
            );
            add_rows(&mut sums, g);
        }
        (gram, sums)
    });
    sum_parts(partials)
}

/// `run` on `0..items` cut into one contiguous run per thread, the results in run order.
///
/// Why not rayon's `fold` and `reduce`: they pair partial sums in whatever order the threads
/// happen to steal work, and floating-point addition is not associative, so nothing would fix
/// the rounding of a gradient from one run to the next. A fixed cut and an in-order sum keep a
/// step reproducible for a given thread count.
pub(crate) fn per_thread_runs<S: Send>(
    items: usize,
    run: impl Fn(Range<usize>) -> S + Sync,
) -> Vec<S> {
    let per_thread = items.div_ceil(rayon::current_num_threads()).max(1);
    (0..items.div_ceil(per_thread).max(1))
        .into_par_iter()
        .map(|t| run(t * per_thread..((t + 1) * per_thread).min(items)))
        .collect()
}

/// The element-wise sums of pairs of vectors `(a, b)`, added in order.
pub(crate) fn sum_parts<T: Copy + std::ops::AddAssign>(
    parts: Vec<(Vec<T>, Vec<T>)>,
) -> (Vec<T>, Vec<T>) {
    let mut parts = parts.into_iter();
    let (mut a, mut b) = parts.next().unwrap_or_default();
    for (a_part, b_part) in parts {
        a.iter_mut().zip(&a_part).for_each(|(s, &v)| *s += v);
        b.iter_mut().zip(&b_part).for_each(|(s, &v)| *s += v);
    }
    (a, b)
}

/// Adds each row of `rows: [.., N]` to `sums: [N]`, in order: a bias's gradient.
pub(crate) fn add_rows(sums: &mut [f32], rows: &[f32]) {
    for row in rows.chunks(sums.len()) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

/// The values of `t` on the host, as `f32` in row-major order.
pub fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// `vec![0.0; len]`, zeroed by all threads: `vec!` asks the allocator for zeroed memory, which
/// it zeroes, or faults in, on the calling thread while the others wait.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.par_extend(rayon::iter::repeat_n(0.0f32, len).with_min_len(1 << 14));
    out
}

/// A buffer of `len` values cut into consecutive pieces of the given lengths, each zeroed and
/// then written by `fill(state, task, piece)` on the thread pool (`state` from `init`, one per
/// worker).
///
/// Why not [`zeroed`] and then the pieces: the zeros then go out to memory in a pass of their
/// own, 3% of a `conv1` step for the products' outputs; here each piece is zeroed in cache
/// just before it is written.
pub(crate) fn in_pieces<T: Send, S>(
    len: usize,
    pieces: impl IntoIterator<Item = (usize, T)>,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, T, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let zero_then_fill = |state: &mut S, task: T, piece: &mut [MaybeUninit<f32>]| {
        piece.iter_mut().for_each(|v| {
            v.write(0.0);
        });
        // SAFETY: every value of the piece was initialised just above.
        fill(state, task, unsafe { assume_init(piece) })
    };
    // SAFETY: `zero_then_fill` initialises each piece.
    unsafe { in_uninit_pieces(len, pieces, init, zero_then_fill) }
}

/// [`in_pieces`] without the zeros, for fills that write every value (a product written over
/// its destination): zeroing pieces that are then overwritten took 1–2.5% of the CPU samples
/// of a `conv2` or `conv1_nsf` step.
///
/// # Safety
/// `fill` must initialise every value of the piece it is given.
pub(crate) unsafe fn in_uninit_pieces<T: Send, S>(
    len: usize,
    pieces: impl IntoIterator<Item = (usize, T)>,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, T, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    let mut rest = &mut out.spare_capacity_mut()[..len];
    let mut tasks = Vec::new();
    for (size, task) in pieces {
        let (piece, after) = std::mem::take(&mut rest).split_at_mut(size);
        rest = after;
        tasks.push((piece, task));
    }
    assert!(
        rest.is_empty(),
        "in_pieces: the pieces do not cover the buffer"
    );
    tasks
        .into_par_iter()
        .for_each_init(init, |state, (piece, task)| fill(state, task, piece));
    // SAFETY: the pieces cover the first `len` values, and `fill` initialised each (the
    // caller's contract; a panic in a task unwinds out of the loop above before this line).
    unsafe { out.set_len(len) };
    out
}

/// The values of `piece` as initialised.
///
/// # Safety
/// Every value of `piece` must have been written.
unsafe fn assume_init(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the values are initialised (the
    // caller's contract).
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The size of blocks of at most `largest` of `rows` rows such that the number of blocks is a
/// multiple of the thread count (the last block may be shorter).
fn balanced_block(rows: usize, largest: usize) -> usize {
    let threads = rayon::current_num_threads();
    let blocks = rows.div_ceil(largest.max(1)).div_ceil(threads) * threads;
    rows.div_ceil(blocks).max(1)
}

/// `scale · A · B` for row-major `a: [m, k]` (`transpose_a`: `a` holds `Aᵀ`, `[k, m]`) and
/// `b: [k, n]`, the rows of the result split evenly across threads: the square products of the
/// rotations' retraction, where this measured 121 GFLOP/s against burn-flex's 79 (784×784).
pub fn matmul(
    a: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
    transpose_a: bool,
    scale: f32,
) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: left operand size");
    assert_eq!(b.len(), k * n, "matmul: right operand size");
    let mut out = zeroed(m * n);
    if n == 0 {
        return out;
    }
    let block = balanced_block(m, m);
    let strides = if transpose_a { [1, m] } else { [k, 1] };
    out.par_chunks_mut(block * n)
        .enumerate()
        .for_each(|(i, out)| {
            let first = i * block;
            let offset = if transpose_a { first } else { first * k };
            product(
                [out.len() / n, n, k],
                (out, n),
                (&a[offset..], strides),
                (b, [n, 1]),
                (scale, true),
            );
        });
    out
}

/// `dst[m, n] (+)= scale · Σ_k lhs[m, k]·rhs[k, n]` on one thread, with explicit (row, column)
/// strides for the operands and a row stride for `dst`: added to `dst` if `accumulate`, else
/// written over it.
fn product(
    shape: [usize; 3],
    (dst, dst_rs): (&mut [f32], usize),
    lhs: (&[f32], [usize; 2]),
    rhs: (&[f32], [usize; 2]),
    (scale, accumulate): (f32, bool),
) {
    // SAFETY: `gemm` reads the destination only when told to accumulate, and writes only
    // initialised values.
    let dst = unsafe { writable(dst) };
    product_raw(shape, (dst, dst_rs), lhs, rhs, (scale, accumulate));
}

/// `values` as a destination that is written, never read uninitialised.
///
/// # Safety
/// Nothing uninitialised may be written through the view.
pub(crate) unsafe fn writable(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; what is written is initialised (the
    // caller's contract).
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `lhs · rhs` written over `dst: [m, n]` (contiguous rows), whose values need not be
/// initialised; the product's values, as initialised.
fn product_over<'a>(
    [m, n, k]: [usize; 3],
    dst: &'a mut [MaybeUninit<f32>],
    lhs: (&[f32], [usize; 2]),
    rhs: (&[f32], [usize; 2]),
) -> &'a mut [f32] {
    assert_eq!(dst.len(), m * n, "product_over: destination size");
    if k == 0 {
        dst.iter_mut().for_each(|v| {
            v.write(0.0);
        });
    }
    product_raw([m, n, k], (dst, n), lhs, rhs, (1.0, false));
    // SAFETY: with `accumulate` false, `gemm` writes every value of the `m × n` destination
    // (zeros when `k = 0`, written above since `product_raw` then returns early).
    unsafe { assume_init(dst) }
}

/// [`product`] on a destination that is read only if `accumulate`.
fn product_raw(
    [m, n, k]: [usize; 3],
    (dst, dst_rs): (&mut [MaybeUninit<f32>], usize),
    (lhs, [lhs_rs, lhs_cs]): (&[f32], [usize; 2]),
    (rhs, [rhs_rs, rhs_cs]): (&[f32], [usize; 2]),
    (scale, accumulate): (f32, bool),
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        dst.len() > (m - 1) * dst_rs + (n - 1)
            && lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs
            && rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "product: operands smaller than their shapes"
    );
    // SAFETY: the assertion above keeps every strided access inside its slice; `gemm` reads
    // `dst` only if `accumulate` (then it is initialised: `product`'s contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
