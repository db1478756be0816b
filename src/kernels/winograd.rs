//! The 3×3 convolution of [`super::conv3x3`] in Winograd's minimal-filtering form F(4×4, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), for maps of at
//! least 4×4 pixels and 24 channels ([`suits`]).
//!
//! Why: the products are what a conditioner costs, and this form needs 36 multiply-adds per
//! input channel, output channel and 4×4 outputs where the im2col product needs 144: 4× fewer
//! on maps that are a multiple of 4 (3.1× on 14×14). F(2×2, 3×3), 16 per 2×2 outputs, spent 4–10%
//! more time in these convolutions in `conv1`, `conv2` and `conv2_nsf` steps (summed per op over
//! 10 steps, 2–4 runs each); on 4×4 maps alone the two tie. On smaller maps or fewer
//! channels the products are too small for that to pay for the transforms, so those stay with
//! im2col.
//!
//! The price is rounding: the transforms' coefficients (up to 8 and 1/24) cost about 2·10⁻⁵ of
//! the output's scale in f32 against 10⁻⁷ for im2col, far below the noise of a training step.
//!
//! The 4×4 outputs at `(4i, 4j)` are `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, summed over input channels,
//! for the 6×6 input tile `d` at `(4i − 1, 4j − 1)` (zeros outside the image) and the 3×3 kernel
//! `g`. The sum over channels is, for each of the 36 entries ("frequencies") `f` of the 6×6
//! products, one product `V_f · U_f` of the transformed tiles `V_f: [tiles, C]` and the
//! transformed kernel `U_f: [C, O]`. The gradients are its adjoints:
//! - input: the same convolution of `∂out` with the kernel flipped in space and transposed in
//!   channels;
//! - kernel: `Gᵀ (Σ_tiles V_fᵀ · (A ∂y Aᵀ)_f) G`, one product of depth `tiles` per frequency.
//!
//! Tiles are processed in blocks of whole tile rows (four pixel rows of one image), so a block's
//! outputs are one contiguous run of rows, and its transformed tiles stay in cache between the
//! transform and the products.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Neg, Range, Sub};

use pulp::{Arch, Simd, WithSimd};

use super::lanes::Lanes;
use super::taps::{columns, kernel_from_columns};
use super::{
    add_rows, assume_init, balanced_block, in_uninit_pieces, per_thread_runs, product,
    shift_and_rectify, sum_parts, writable,
};

/// Whether the convolution of a `height × width` map from `c_in` to `c_out` channels (or back,
/// for its input gradient) takes this form rather than im2col. Measured per op with F(2×2, 3×3)
/// (batch 128, forward / backward ms, Winograd against im2col): it wins from 4×4 pixels on
/// between 32 channels or more (112 → 112 on 4×4: 3.3 / 7.4 against 4.9 / 11.2; 80 → 80: 1.7 /
/// 3.8 against 2.3 / 5.5); on 2×2 maps, a single tile mostly of zeros, im2col wins (160 → 160:
/// 3.2 / 7.2 against 2.7 / 6.7), as it does with a handful of channels on either side (2 → 32 on
/// 14×14: 3.7 / 12.3 against 2.4 / 9.8); and from 24 channels: in `conv2_nsf` steps (two halves
/// of 64 at once, so per op on about one core) 32 → 28 on 14×14 took 4.3 / 7.1 ms against 5.9 /
/// 9.7. With F(4×4, 3×3), im2col on the 4×4 maps of `conv2` and `conv2_nsf` took 25–35% longer.
pub(super) fn suits(height: usize, width: usize, [c_in, c_out]: [usize; 2]) -> bool {
    height >= 4 && width >= 4 && c_in.min(c_out) >= 24
}

/// The tiling of a batch of `height × width` maps into `M × M` output tiles.
#[derive(Clone, Copy)]
struct Tiles {
    height: usize,
    width: usize,
    /// Tile rows per image and tiles per tile row.
    rows: usize,
    columns: usize,
}

impl Tiles {
    fn new(height: usize, width: usize) -> Tiles {
        Tiles {
            height,
            width,
            rows: height.div_ceil(M),
            columns: width.div_ceil(M),
        }
    }

    /// The first pixel (row of `[batch·H·W, C]`) of tile row `r` of the whole batch.
    fn first_pixel(&self, r: usize) -> usize {
        let (image, row) = (r / self.rows, r % self.rows);
        (image * self.height + M * row) * self.width
    }

    /// The tiles of tile rows `block`, as (tile row, column), row by row.
    fn of(&self, block: Range<usize>) -> impl Iterator<Item = (usize, usize)> {
        let columns = self.columns;
        block.flat_map(move |r| (0..columns).map(move |tx| (r, tx)))
    }

    /// Blocks of whole tile rows for `channels` input plus output channels: a block's
    /// transformed tiles and products take at most about `BLOCK_VALUES` floats, and the
    /// blocks come in a multiple of the thread count.
    fn blocks(&self, batch: usize, channels: usize) -> Vec<Range<usize>> {
        let tile_rows = batch * self.rows;
        let largest = (BLOCK_VALUES / (F * channels * self.columns)).max(1);
        let block = balanced_block(tile_rows, largest);
        (0..tile_rows)
            .step_by(block)
            .map(|r| r..(r + block).min(tile_rows))
            .collect()
    }
}

thread_local! {
    /// A thread's buffers for one block's transformed tiles and products, kept from block to
    /// block and call to call: made per task, they were allocated and zero-filled again for
    /// most blocks. In `perf` samples of a 32 → 32 convolution on 14×14 (64 images, forward and
    /// backward), memset went from 4.2% to 2.8%. Nothing that holds them calls into the thread
    /// pool, so no task can ask for them twice.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The values a block's transformed tiles and products take at most: 512 KiB (256 KiB, 1 MiB
/// and 2 MiB measured slower).
const BLOCK_VALUES: usize = 131_072;

/// Output tile side `m`, input tile side `m + 2`, and frequencies `(m + 2)²`.
const M: usize = 4;
const T: usize = M + 2;
const F: usize = T * T;

// The tile transforms are written out line by line, without `array::from_fn`: they run once per
// channel of every tile, on `Lanes` inside pulp's AVX2 or AVX-512 trampoline, and only code
// inlined there is vectorized. Each 2-D transform is its 1-D one down the columns, then along
// the rows ([`separable`]).

/// `Bᵀ d` of one line of an input tile.
#[inline(always)]
fn input_line<V: Value>(d: [V; T]) -> [V; T] {
    [
        d[0] * 4.0 - d[2] * 5.0 + d[4],
        d[3] + d[4] - (d[1] + d[2]) * 4.0,
        (d[1] - d[2]) * 4.0 + d[4] - d[3],
        (d[3] - d[1]) * 2.0 + d[4] - d[2],
        (d[1] - d[3]) * 2.0 + d[4] - d[2],
        d[1] * 4.0 - d[3] * 5.0 + d[5],
    ]
}

/// `Aᵀ m` of one line of a product tile: its `M` outputs.
#[inline(always)]
fn output_line<V: Value>(m: [V; T]) -> [V; M] {
    let (sum12, diff12) = (m[1] + m[2], m[1] - m[2]);
    let (sum34, diff34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + sum12 + sum34,
        diff12 + diff34 * 2.0,
        sum12 + sum34 * 4.0,
        diff12 + diff34 * 8.0 + m[5],
    ]
}

/// `A ∂y`, the adjoint of [`output_line`].
#[inline(always)]
fn output_line_adjoint<V: Value>(dy: [V; M]) -> [V; T] {
    let (even, odd) = (dy[0] + dy[2], dy[1] + dy[3]);
    let (even4, odd2) = (dy[0] + dy[2] * 4.0, dy[1] * 2.0 + dy[3] * 8.0);
    [
        dy[0],
        even + odd,
        even - odd,
        even4 + odd2,
        even4 - odd2,
        dy[3],
    ]
}

/// `G g` of one line of a 3×3 kernel.
#[inline(always)]
fn kernel_line<V: Value>(g: [V; 3]) -> [V; T] {
    let (outer, middle) = (g[0] + g[2], g[1]);
    let (quarter, twelfth) = (
        g[0] * (1.0 / 24.0) + g[2] * (1.0 / 6.0),
        g[1] * (1.0 / 12.0),
    );
    [
        g[0] * 0.25,
        (outer + middle) * (-1.0 / 6.0),
        (outer - middle) * (-1.0 / 6.0),
        quarter + twelfth,
        quarter - twelfth,
        g[2],
    ]
}

/// `Gᵀ u`, the adjoint of [`kernel_line`].
#[inline(always)]
fn kernel_line_adjoint<V: Value>(u: [V; T]) -> [V; 3] {
    let (sum12, diff12) = (u[1] + u[2], u[2] - u[1]);
    let (sum34, diff34) = (u[3] + u[4], u[3] - u[4]);
    [
        u[0] * 0.25 - sum12 * (1.0 / 6.0) + sum34 * (1.0 / 24.0),
        diff12 * (1.0 / 6.0) + diff34 * (1.0 / 12.0),
        (sum34 - sum12) * (1.0 / 6.0) + u[5],
    ]
}

/// The 2-D form `L x Lᵀ` of a 1-D transform `line` (`L`, `N` values to `K`) of an `N × N` tile
/// `x`: `line` down each column as it is loaded, then along each row of the result as it is
/// stored. Entries are row-major: `load(r·N + s)` gives `x[r][s]` and `store(r·K + k, v)` takes
/// the result's `[r][k]`.
///
/// Why loads and stores inside the passes: with whole tiles passed in and out as arrays the
/// compiler kept their copies and initializations, and the transforms of a 32-channel
/// convolution took as long as its products.
///
/// A macro, not a function taking `line`: a function passed as an argument was called, not
/// inlined, in every use.
macro_rules! separable {
    ($line:ident, $n:expr => $k:expr, $load:expr, $store:expr) => {{
        let (load, mut store) = ($load, $store);
        let mut half = [[V::ZERO; $n]; $k];
        for s in 0..$n {
            let mut column = [V::ZERO; $n];
            for (r, v) in column.iter_mut().enumerate() {
                *v = load(r * $n + s);
            }
            for (r, v) in $line(column).into_iter().enumerate() {
                half[r][s] = v;
            }
        }
        for (r, row) in half.into_iter().enumerate() {
            for (k, v) in $line(row).into_iter().enumerate() {
                store(r * $k + k, v);
            }
        }
    }};
}

/// One of the 2-D transforms of a tile, as a type, so the loops that run them over channels
/// are written once: entries read by `load` and written by `store`, row-major, as in
/// [`separable`].
trait TileTransform {
    /// Entries read and written.
    const INPUTS: usize;
    const OUTPUTS: usize;
    fn apply<V: Value>(load: impl Fn(usize) -> V, store: impl FnMut(usize, V));
}

/// Declares a [`TileTransform`] as the [`separable`] form of a line transform.
macro_rules! tile_transform {
    ($(#[$doc:meta])* $name:ident = $line:ident, $n:expr => $k:expr) => {
        $(#[$doc])*
        struct $name;

        impl TileTransform for $name {
            const INPUTS: usize = $n * $n;
            const OUTPUTS: usize = $k * $k;
            #[inline(always)]
            fn apply<V: Value>(load: impl Fn(usize) -> V, store: impl FnMut(usize, V)) {
                separable!($line, $n => $k, load, store)
            }
        }
    };
}

tile_transform!(
    /// `Bᵀ d B` of a `T × T` input tile.
    InputTile = input_line, T => T
);
tile_transform!(
    /// `Aᵀ m A` of a `T × T` product tile: its `M × M` outputs.
    OutputTile = output_line, T => M
);
tile_transform!(
    /// `A ∂y Aᵀ`, the adjoint of [`OutputTile`]: `M × M` output gradients to a `T × T` one.
    OutputAdjoint = output_line_adjoint, M => T
);
tile_transform!(
    /// `G g Gᵀ` of a 3×3 kernel.
    KernelTile = kernel_line, 3 => T
);
tile_transform!(
    /// `Gᵀ u G`, the adjoint of [`KernelTile`]: a `T × T` gradient to the 3×3 kernel's.
    KernelAdjoint = kernel_line_adjoint, T => 3
);

/// `P` applied to every pair `(i, j)` of `x: [N, A, B]` into `out: [K, A, B]` (`N`, `K` its
/// tile sizes), `L` `j` at a time: planes in and out are read and written in sequential streams.
#[inline(always)]
fn transform_pairs<P: TileTransform, const L: usize>(
    x: &[f32],
    [a, b]: [usize; 2],
    out: &mut [f32],
) {
    let plane = a * b;
    let mut rows = Vec::new();
    // SAFETY: the transform writes only values.
    let out = unsafe { writable(out) };
    for row in (0..plane).step_by(b.max(1)) {
        rows.clear();
        rows.extend(x.chunks(plane).map(|x| &x[row..row + b]));
        transform_channels::<P, L>(&rows, b, (out, plane, row));
    }
}

/// The transformed kernel `U: [F, C, O]` of `w: [O, C, 3, 3]` (`[c_out, c_in]`), or, if
/// `flipped`, `[F, O, C]` of the input gradient's kernel: `w` flipped in space and transposed in
/// channels. Through the im2col layout `[9, C, O]` (or `[9, O, C]` flipped) of [`columns`], so
/// that eight channels' taps are one load: entry by entry from `w`, this took 3.6–4.9% of a
/// `conv2` or `conv2_nsf` step's CPU samples.
pub(super) fn kernel(w: &[f32], [c_out, c_in]: [usize; 2], flipped: bool) -> Vec<f32> {
    let cols = columns(w, [c_out, c_in], flipped);
    let sizes = if flipped {
        [c_out, c_in]
    } else {
        [c_in, c_out]
    };
    let mut u = vec![0.0f32; F * c_in * c_out];
    Arch::new().dispatch(Pass::Kernel {
        cols: &cols,
        sizes,
        u: &mut u,
    });
    u
}

/// What the tile transforms compute on: one channel (`f32`) or several ([`Lanes`]), read from
/// and written to as many consecutive values as it holds (its width: 1 or `L`).
///
/// Unchecked: a transform makes some 70 loads and stores per channel group and tile, and
/// checked through slices (two or three bounds checks each) they took most of the transforms'
/// time. The callers check their slices once per tile instead.
trait Value:
    Copy + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> + Mul<f32, Output = Self>
{
    const ZERO: Self;
    /// The values from `values[at]`.
    ///
    /// # Safety
    /// `at` plus the width is at most `values.len()`.
    unsafe fn load(values: &[f32], at: usize) -> Self;
    /// Into the values from `values[at]`, which need not be initialised.
    ///
    /// # Safety
    /// `at` plus the width is at most `values.len()`.
    unsafe fn store(self, values: &mut [MaybeUninit<f32>], at: usize);
}

impl Value for f32 {
    const ZERO: f32 = 0.0;
    #[inline(always)]
    unsafe fn load(values: &[f32], at: usize) -> f32 {
        // SAFETY: `at < values.len()` (the caller's contract).
        unsafe { *values.get_unchecked(at) }
    }
    #[inline(always)]
    unsafe fn store(self, values: &mut [MaybeUninit<f32>], at: usize) {
        // SAFETY: as in `load`.
        unsafe { values.get_unchecked_mut(at).write(self) };
    }
}

impl<const L: usize> Value for Lanes<L> {
    const ZERO: Lanes<L> = Lanes::ZERO;
    #[inline(always)]
    unsafe fn load(values: &[f32], at: usize) -> Lanes<L> {
        // SAFETY: the `L` values from `at` are inside `values` (the caller's contract).
        Lanes(unsafe { values.as_ptr().add(at).cast::<[f32; L]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, values: &mut [MaybeUninit<f32>], at: usize) {
        // SAFETY: as in `load`.
        unsafe {
            values
                .as_mut_ptr()
                .add(at)
                .cast::<[f32; L]>()
                .write_unaligned(self.0)
        }
    }
}

/// A transform's work on the channels from `c` that one `V` holds, in every tile it visits.
trait ChannelRun {
    /// # Safety
    /// `c` plus `V`'s width is at most the channel count the runner was checked for.
    unsafe fn run<V: Value>(&mut self, c: usize);
}

/// `work` over channels `0..channels`: `L` at a time (as wide as the vector registers), then
/// eight, then one by one.
#[inline(always)]
fn by_channels<const L: usize>(channels: usize, work: &mut impl ChannelRun) {
    let mut c = 0;
    // SAFETY (all three): each loop's condition is `run`'s bound.
    while c + L <= channels {
        unsafe { work.run::<Lanes<L>>(c) };
        c += L;
    }
    while c + 8 <= channels {
        unsafe { work.run::<Lanes<8>>(c) };
        c += 8;
    }
    while c < channels {
        unsafe { work.run::<f32>(c) };
        c += 1;
    }
}

/// `P` applied channel by channel to tile `i` of a block of `count`, given as its rows `d` of
/// `channels` values each, into that tile's rows of `out: [F, count, channels]`.
#[inline(always)]
fn to_frequencies<P: TileTransform, const L: usize>(
    d: &[&[f32]],
    channels: usize,
    [i, count]: [usize; 2],
    out: &mut [f32],
) {
    // SAFETY: the transform writes only values.
    let out = unsafe { writable(out) };
    transform_channels::<P, L>(d, channels, (out, count * channels, i * channels));
}

/// `P` applied channel by channel to the tile whose entries are the rows `d` of `channels`
/// values each, entry `k` of the result written at `out[k · plane + first ..]`, `L` channels at a
/// time ([`by_channels`]).
#[inline(always)]
fn transform_channels<P: TileTransform, const L: usize>(
    d: &[&[f32]],
    channels: usize,
    (out, plane, first): (&mut [MaybeUninit<f32>], usize, usize),
) {
    struct Tile<'a, P> {
        d: &'a [&'a [f32]],
        out: &'a mut [MaybeUninit<f32>],
        plane: usize,
        first: usize,
        transform: PhantomData<P>,
    }
    impl<P: TileTransform> ChannelRun for Tile<'_, P> {
        #[inline(always)]
        unsafe fn run<V: Value>(&mut self, c: usize) {
            let (d, out) = (self.d, &mut *self.out);
            let (plane, at) = (self.plane, self.first + c);
            // SAFETY: checked below for `channels` values per entry; `c` plus `V`'s width is at
            // most `channels`.
            P::apply(
                |k| unsafe { V::load(d.get_unchecked(k), c) },
                |f, v: V| unsafe { v.store(out, f * plane + at) },
            );
        }
    }
    assert!(
        d.len() >= P::INPUTS
            && d.iter().all(|row| row.len() >= channels)
            && (channels == 0 || out.len() >= (P::OUTPUTS - 1) * plane + first + channels),
        "winograd: a tile's entries or outputs are smaller than its {channels} channels"
    );
    let mut tile = Tile::<P> {
        d,
        out,
        plane,
        first,
        transform: PhantomData,
    };
    by_channels::<L>(channels, &mut tile);
}

/// The transformed tiles `V: [F, tiles, C]` of tile rows `block` of `x: [batch·H·W, C]`.
#[inline(always)]
fn transform_input<const L: usize>(
    x: &[f32],
    channels: usize,
    tiles: &Tiles,
    block: Range<usize>,
    zeros: &[f32],
    v: &mut [f32],
) {
    let count = block.len() * tiles.columns;
    for (i, (r, tx)) in tiles.of(block).enumerate() {
        let (image, ty) = (r / tiles.rows, r % tiles.rows);
        let d: [&[f32]; F] = std::array::from_fn(|k| {
            let (y, x0) = (
                (M * ty + k / T).wrapping_sub(1),
                (M * tx + k % T).wrapping_sub(1),
            );
            if y < tiles.height && x0 < tiles.width {
                let pixel = (image * tiles.height + y) * tiles.width + x0;
                &x[pixel * channels..][..channels]
            } else {
                zeros
            }
        });
        to_frequencies::<InputTile, L>(&d, channels, [i, count], v);
    }
}

/// The outputs of tile rows `block` into `out` (their rows of `[batch·H·W, O]`) from the
/// products `m: [F, tiles, O]`. Every value of `out` is written: the tiles of whole tile rows
/// cover each of their pixels once.
#[inline(always)]
fn transform_output<'a, const L: usize>(
    m: &[f32],
    c_out: usize,
    tiles: &Tiles,
    block: Range<usize>,
    out: &'a mut [MaybeUninit<f32>],
) -> &'a mut [f32] {
    let count = block.len() * tiles.columns;
    let first = tiles.first_pixel(block.start);
    let plane = count * c_out;
    for (i, (r, tx)) in tiles.of(block).enumerate() {
        // The offset in `out` of each of the tile's outputs inside the image.
        let mut rows = [None; M * M];
        for (o, row) in rows.iter_mut().enumerate() {
            let (y, x0) = (M * (r % tiles.rows) + o / M, M * tx + o % M);
            if y < tiles.height && x0 < tiles.width {
                let pixel = tiles.first_pixel(r) - first + (o / M) * tiles.width + x0;
                assert!((pixel + 1) * c_out <= out.len(), "winograd: output row");
                *row = Some(pixel * c_out);
            }
        }
        assert!(
            m.len() >= (F - 1) * plane + (i + 1) * c_out,
            "winograd: products"
        );
        let mut tile = Outputs {
            m,
            out: &mut *out,
            plane,
            first: i * c_out,
            rows,
        };
        by_channels::<L>(c_out, &mut tile);
    }
    // SAFETY: every pixel of the block's tile rows lies in one of its tiles, inside the image,
    // and each of its `c_out` channels was written above.
    unsafe { assume_init(out) }
}

/// One product tile's outputs, [`OutputTile`] of `m` (at offset `first` of each of its `F`
/// planes) into the rows of `out` it covers inside the image.
struct Outputs<'a> {
    m: &'a [f32],
    out: &'a mut [MaybeUninit<f32>],
    plane: usize,
    first: usize,
    rows: [Option<usize>; M * M],
}

impl ChannelRun for Outputs<'_> {
    #[inline(always)]
    unsafe fn run<V: Value>(&mut self, k: usize) {
        let (m, out, rows) = (self.m, &mut *self.out, &self.rows);
        let (plane, at) = (self.plane, self.first + k);
        // SAFETY: `transform_output` checked the products' planes and the rows for all `c_out`
        // channels; `k` plus `V`'s width is at most `c_out`.
        OutputTile::apply(
            |f| unsafe { V::load(m, f * plane + at) },
            |o, y: V| {
                if let Some(row) = rows[o] {
                    unsafe { y.store(out, row + k) };
                }
            },
        );
    }
}

/// The `T × T` output gradients `A ∂y Aᵀ: [F, tiles, O]` of tile rows `block` into `dm`, from
/// `g = ∂out: [batch·H·W, O]`.
#[inline(always)]
fn transform_output_adjoint<const L: usize>(
    g: &[f32],
    c_out: usize,
    tiles: &Tiles,
    block: Range<usize>,
    zeros: &[f32],
    dm: &mut [f32],
) {
    let count = block.len() * tiles.columns;
    for (i, (r, tx)) in tiles.of(block).enumerate() {
        let ty = r % tiles.rows;
        let dy: [&[f32]; M * M] = std::array::from_fn(|o| {
            let (y, x0) = (M * ty + o / M, M * tx + o % M);
            if y < tiles.height && x0 < tiles.width {
                let pixel = tiles.first_pixel(r) + (o / M) * tiles.width + x0;
                &g[pixel * c_out..][..c_out]
            } else {
                zeros
            }
        });
        to_frequencies::<OutputAdjoint, L>(&dy, c_out, [i, count], dm);
    }
}

/// One block's pass over its tiles, run through pulp's dispatch so that it is compiled for AVX2
/// or AVX-512 where the CPU has it (a closure handed to the dispatch is not inlined into it).
enum Pass<'a> {
    /// [`transform_pairs`] of a kernel's taps `[9, A, B]` to its frequencies `[F, A, B]`.
    Kernel {
        cols: &'a [f32],
        sizes: [usize; 2],
        u: &'a mut [f32],
    },
    /// [`transform_pairs`] of a kernel gradient's frequencies `[F, C, O]` to its taps.
    KernelAdjoint {
        du: &'a [f32],
        sizes: [usize; 2],
        cols: &'a mut [f32],
    },
    /// [`transform_input`].
    Input {
        x: &'a [f32],
        channels: usize,
        tiles: &'a Tiles,
        block: Range<usize>,
        zeros: &'a [f32],
        v: &'a mut [f32],
    },
    /// [`transform_output`], then `bias` and the ReLU of `affine`.
    Output {
        m: &'a [f32],
        c_out: usize,
        tiles: &'a Tiles,
        block: Range<usize>,
        affine: Option<(&'a [f32], bool)>,
        out: &'a mut [MaybeUninit<f32>],
    },
    /// [`transform_output_adjoint`].
    OutputAdjoint {
        g: &'a [f32],
        c_out: usize,
        tiles: &'a Tiles,
        block: Range<usize>,
        zeros: &'a [f32],
        dm: &'a mut [f32],
    },
}

impl WithSimd for Pass<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        if S::F32_LANES >= 16 {
            self.run::<16>()
        } else {
            self.run::<8>()
        }
    }
}

impl Pass<'_> {
    /// The pass, `L` channels at a time.
    #[inline(always)]
    fn run<const L: usize>(self) {
        match self {
            Pass::Kernel { cols, sizes, u } => transform_pairs::<KernelTile, L>(cols, sizes, u),
            Pass::KernelAdjoint { du, sizes, cols } => {
                transform_pairs::<KernelAdjoint, L>(du, sizes, cols)
            }
            Pass::Input {
                x,
                channels,
                tiles,
                block,
                zeros,
                v,
            } => transform_input::<L>(x, channels, tiles, block, zeros, v),
            Pass::Output {
                m,
                c_out,
                tiles,
                block,
                affine,
                out,
            } => {
                let out = transform_output::<L>(m, c_out, tiles, block, out);
                if let Some(affine) = affine {
                    shift_and_rectify(out, affine);
                }
            }
            Pass::OutputAdjoint {
                g,
                c_out,
                tiles,
                block,
                zeros,
                dm,
            } => transform_output_adjoint::<L>(g, c_out, tiles, block, zeros, dm),
        }
    }
}

/// The transformed tiles of tile rows `block` of `x` (`[batch·H·W, C]`, `C` given) into `v`,
/// sized to them (`[F, tiles, C]`); the block's number of tiles.
fn input_of(
    arch: Arch,
    (x, channels): (&[f32], usize),
    tiles: &Tiles,
    block: &Range<usize>,
    zeros: &[f32],
    v: &mut Vec<f32>,
) -> usize {
    let count = block.len() * tiles.columns;
    v.resize(F * count * channels, 0.0);
    arch.dispatch(Pass::Input {
        x,
        channels,
        tiles,
        block: block.clone(),
        zeros,
        v,
    });
    count
}

/// The `F` products `M_f = V_f · U_f: [tiles, O]` of a block of `count` tiles, into `m`.
fn products(v: &[f32], u: &[f32], [count, c_in, c_out]: [usize; 3], m: &mut [f32]) {
    for f in 0..F {
        product(
            [count, c_out, c_in],
            (&mut m[f * count * c_out..][..count * c_out], c_out),
            (&v[f * count * c_in..], [c_in, 1]),
            (&u[f * c_in * c_out..], [c_out, 1]),
            (1.0, false),
        );
    }
}

/// The convolution of `x: [batch·H·W, C]` (`dims = [C, H, W]`) with the transformed kernel
/// `u: [F, C, O]` of [`kernel`], plus `bias` and rectified if `relu` when `affine` is given:
/// `[batch·H·W, O]`.
pub(super) fn convolve(
    x: &[f32],
    [c_in, height, width]: [usize; 3],
    u: &[f32],
    c_out: usize,
    affine: Option<(&[f32], bool)>,
) -> Vec<f32> {
    let tiles = Tiles::new(height, width);
    let batch = x.len() / (c_in * height * width);
    let pieces = tiles.blocks(batch, c_in + c_out).into_iter().map(|block| {
        let pixels = tiles.first_pixel(block.end) - tiles.first_pixel(block.start);
        (pixels * c_out, block)
    });
    let zeros = vec![0.0f32; c_in];
    let arch = Arch::new();
    let fill = |(): &mut (), block: Range<usize>, out: &mut [MaybeUninit<f32>]| {
        SCRATCH.with_borrow_mut(|(v, m)| {
            let count = input_of(arch, (x, c_in), &tiles, &block, &zeros, v);
            m.resize(F * count * c_out, 0.0);
            products(v, u, [count, c_in, c_out], m);
            arch.dispatch(Pass::Output {
                m,
                c_out,
                tiles: &tiles,
                block,
                affine,
                out,
            });
        })
    };
    // SAFETY: a piece holds the pixels of its block's tile rows, and `transform_output` writes
    // all of them.
    unsafe { in_uninit_pieces(batch * height * width * c_out, pieces, || (), fill) }
}

/// The kernel's and the bias's gradients `(∂w: [O, C, 3, 3], ∂bias: [O])` of [`convolve`] on
/// `x: [batch·H·W, C]` (`dims = [C, H, W]`), from `g = ∂out: [batch·H·W, O]`: per frequency,
/// `Σ_blocks V_fᵀ · (A ∂y Aᵀ)_f`, one partial sum per thread, then back through `G`.
pub(super) fn kernel_gradient(
    x: &[f32],
    [c_in, height, width]: [usize; 3],
    g: &[f32],
    c_out: usize,
) -> (Vec<f32>, Vec<f32>) {
    let tiles = Tiles::new(height, width);
    let batch = x.len() / (c_in * height * width);
    let (zeros_in, zeros_out) = (vec![0.0f32; c_in], vec![0.0f32; c_out]);
    let arch = Arch::new();
    let blocks = tiles.blocks(batch, c_in + c_out);
    // One partial sum per thread: a sum over a small map's few tiles costs less than zeroing and
    // adding up one `[F, C, O]` sum per block.
    let partials = per_thread_runs(blocks.len(), |run| {
        let (mut du, mut db) = (vec![0.0f32; F * c_in * c_out], vec![0.0f32; c_out]);
        SCRATCH.with_borrow_mut(|(v, dm)| {
            for block in &blocks[run] {
                let count = input_of(arch, (x, c_in), &tiles, block, &zeros_in, v);
                dm.resize(F * count * c_out, 0.0);
                arch.dispatch(Pass::OutputAdjoint {
                    g,
                    c_out,
                    tiles: &tiles,
                    block: block.clone(),
                    zeros: &zeros_out,
                    dm,
                });
                for f in 0..F {
                    product(
                        [c_in, c_out, count],
                        (&mut du[f * c_in * c_out..][..c_in * c_out], c_out),
                        (&v[f * count * c_in..], [1, c_in]),
                        (&dm[f * count * c_out..], [c_out, 1]),
                        (1.0, true),
                    );
                }
                let rows = tiles.first_pixel(block.start)..tiles.first_pixel(block.end);
                add_rows(&mut db, &g[rows.start * c_out..rows.end * c_out]);
            }
        });
        (du, db)
    });
    let (du, db) = sum_parts(partials);
    let mut cols = vec![0.0f32; 9 * c_in * c_out];
    arch.dispatch(Pass::KernelAdjoint {
        du: &du,
        sizes: [c_in, c_out],
        cols: &mut cols,
    });
    (kernel_from_columns(&cols, [c_out, c_in]), db)
}

#[cfg(test)]
mod tests {
    use super::{to_frequencies, transform_pairs, InputTile, KernelTile, F, T};

    /// The transforms' 16-lane form (AVX-512's) gives every channel the same values as the
    /// 8-lane one (AVX2's), whichever of them this CPU runs for the convolution tests: 41
    /// channels take two groups of 16, one of 8 and one alone, or five of 8 and one alone.
    #[test]
    fn eight_and_sixteen_lanes_agree() {
        let channels = 41;
        let values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
                .collect()
        };
        let taps = values(9 * 3 * channels);
        let (mut eight, mut sixteen) = (vec![0.0; F * 3 * channels], vec![0.0; F * 3 * channels]);
        transform_pairs::<KernelTile, 8>(&taps, [3, channels], &mut eight);
        transform_pairs::<KernelTile, 16>(&taps, [3, channels], &mut sixteen);
        assert!(eight.iter().any(|&v| v != 0.0));
        assert_eq!(eight, sixteen, "kernel transform");

        let pixels = values(T * T * channels);
        let rows: Vec<&[f32]> = pixels.chunks(channels).collect();
        let (mut eight, mut sixteen) = (vec![0.0; F * 2 * channels], vec![0.0; F * 2 * channels]);
        to_frequencies::<InputTile, 8>(&rows, channels, [1, 2], &mut eight);
        to_frequencies::<InputTile, 16>(&rows, channels, [1, 2], &mut sixteen);
        assert!(eight.iter().any(|&v| v != 0.0));
        assert_eq!(eight, sixteen, "input transform");
    }
}
