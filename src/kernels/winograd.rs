//! The 3×3 convolution of [`super::conv3x3`] in Winograd's minimal-filtering form F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), for maps of at
//! least 4×4 pixels and 24 channels ([`suits`]).
//!
//! Why: the products are what a conditioner costs, and this form needs 16 multiply-adds per
//! input channel, output channel and 2×2 outputs where the im2col product needs 36: 2.25× fewer
//! on even maps (1.7× on 7×7). On smaller maps or fewer channels the products are too small for
//! that to pay for the transforms, so those stay with im2col.
//!
//! The 2×2 outputs at `(2i, 2j)` are `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, summed over input channels,
//! for the 4×4 input tile `d` at `(2i − 1, 2j − 1)` (zeros outside the image) and the 3×3 kernel
//! `g`. The sum over channels is, for each of the 16 entries ("frequencies") `f` of the 4×4
//! products, one product `V_f · U_f` of the transformed tiles `V_f: [tiles, C]` and the
//! transformed kernel `U_f: [C, O]`. The gradients are its adjoints:
//! - input: the same convolution of `∂out` with the kernel flipped in space and transposed in
//!   channels;
//! - kernel: `Gᵀ (Σ_tiles V_fᵀ · (A ∂y Aᵀ)_f) G`, one product of depth `tiles` per frequency.
//!
//! Tiles are processed in blocks of whole tile rows (two pixel rows of one image), so a block's
//! outputs are one contiguous run of rows, and its transformed tiles stay in cache between the
//! transform and the products.

use std::ops::{Add, Neg, Range, Sub};

use pulp::{Arch, Simd, WithSimd};

use super::lanes::{Lanes, LANES};
use super::{balanced_block, in_pieces, per_thread_runs, product, sum_parts};

/// Whether the convolution of a `height × width` map from `c_in` to `c_out` channels (or back,
/// for its input gradient) takes this form rather than im2col. Measured per op (batch 128,
/// forward / backward ms, Winograd against im2col): it wins from 4×4 pixels on between 32
/// channels or more (112 → 112 on 4×4: 3.3 / 7.4 against 4.9 / 11.2; 80 → 80: 1.7 / 3.8 against
/// 2.3 / 5.5); on 2×2 maps, a single tile mostly of zeros, im2col wins (160 → 160: 3.2 / 7.2
/// against 2.7 / 6.7), as it does with a handful of channels on either side (2 → 32 on 14×14:
/// 3.7 / 12.3 against 2.4 / 9.8). Between, since the blocked transforms (8d059a3), it wins
/// from 24 channels: in `conv2_nsf` steps (two halves of 64 at once, so per op on about one
/// core) 32 → 28 on 14×14 took 4.3 / 7.1 ms (forward / backward) against 5.9 / 9.7.
pub(super) fn suits(height: usize, width: usize, [c_in, c_out]: [usize; 2]) -> bool {
    height >= 4 && width >= 4 && c_in.min(c_out) >= 24
}

/// The tiling of a batch of `height × width` maps into 2×2 output tiles.
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
            rows: height.div_ceil(2),
            columns: width.div_ceil(2),
        }
    }

    /// The first pixel (row of `[batch·H·W, C]`) of tile row `r` of the whole batch.
    fn first_pixel(&self, r: usize) -> usize {
        let (image, row) = (r / self.rows, r % self.rows);
        (image * self.height + 2 * row) * self.width
    }

    /// The tiles of tile rows `block`, as (tile row, column), row by row.
    fn of(&self, block: Range<usize>) -> impl Iterator<Item = (usize, usize)> {
        let columns = self.columns;
        block.flat_map(move |r| (0..columns).map(move |tx| (r, tx)))
    }

    /// Blocks of whole tile rows for `channels` input plus output channels: a block's
    /// transformed tiles and products take at most about 512 KiB (16 frequencies × 8192 values;
    /// 256 KiB and 1 MiB measured no better), and the blocks come in a multiple of the thread
    /// count.
    fn blocks(&self, batch: usize, channels: usize) -> Vec<Range<usize>> {
        let tile_rows = batch * self.rows;
        let largest = (8192 / (channels * self.columns)).max(1);
        let block = balanced_block(tile_rows, largest);
        (0..tile_rows)
            .step_by(block)
            .map(|r| r..(r + block).min(tile_rows))
            .collect()
    }
}

// The tile transforms are written out entry by entry, without closures or `array::from_fn`:
// they run once per channel of every tile, on `Lanes` inside pulp's AVX2 trampoline, and only
// code inlined there is vectorized.

/// `Bᵀ d B` of a 4×4 tile, row-major.
#[inline(always)]
fn input_tile<T: Value>(d: &[T; 16]) -> [T; 16] {
    let mut t = *d;
    for s in 0..4 {
        t[s] = d[s] - d[8 + s];
        t[4 + s] = d[4 + s] + d[8 + s];
        t[8 + s] = d[8 + s] - d[4 + s];
        t[12 + s] = d[4 + s] - d[12 + s];
    }
    let mut v = t;
    for r in (0..16).step_by(4) {
        v[r] = t[r] - t[r + 2];
        v[r + 1] = t[r + 1] + t[r + 2];
        v[r + 2] = t[r + 2] - t[r + 1];
        v[r + 3] = t[r + 1] - t[r + 3];
    }
    v
}

/// `Aᵀ m A` of a 4×4 product, the 2×2 outputs row-major.
#[inline(always)]
fn output_tile<T: Value>(m: &[T; 16]) -> [T; 4] {
    let mut u = [m[0]; 8];
    for j in 0..4 {
        u[j] = m[j] + m[4 + j] + m[8 + j];
        u[4 + j] = m[4 + j] - m[8 + j] - m[12 + j];
    }
    let mut y = [m[0]; 4];
    for p in 0..2 {
        let r = 4 * p;
        y[2 * p] = u[r] + u[r + 1] + u[r + 2];
        y[2 * p + 1] = u[r + 1] - u[r + 2] - u[r + 3];
    }
    y
}

/// `A ∂y Aᵀ`, the adjoint of [`output_tile`]: 2×2 output gradients to a 4×4 one.
#[inline(always)]
fn output_tile_adjoint<T: Value>(dy: &[T; 4]) -> [T; 16] {
    // Rows first: the 4×2 `A ∂y`, then each of its rows spread over four columns.
    let mut a = [dy[0]; 8];
    for q in 0..2 {
        a[q] = dy[q];
        a[2 + q] = dy[q] + dy[2 + q];
        a[4 + q] = dy[q] - dy[2 + q];
        a[6 + q] = -dy[2 + q];
    }
    let mut m = [dy[0]; 16];
    for i in 0..4 {
        let (y0, y1) = (a[2 * i], a[2 * i + 1]);
        m[4 * i] = y0;
        m[4 * i + 1] = y0 + y1;
        m[4 * i + 2] = y0 - y1;
        m[4 * i + 3] = -y1;
    }
    m
}

/// `G g Gᵀ` of a 3×3 kernel, row-major.
fn kernel_tile(g: [f32; 9]) -> [f32; 16] {
    let spread = |g0: f32, g1: f32, g2: f32| [g0, (g0 + g1 + g2) / 2.0, (g0 - g1 + g2) / 2.0, g2];
    let rows = [0, 1, 2].map(|v| spread(g[v], g[3 + v], g[6 + v]));
    std::array::from_fn(|f| {
        let i = f / 4;
        spread(rows[0][i], rows[1][i], rows[2][i])[f % 4]
    })
}

/// `Gᵀ u G`, the adjoint of [`kernel_tile`]: a 4×4 gradient to the 3×3 kernel's.
fn kernel_tile_adjoint(u: &[f32; 16]) -> [f32; 9] {
    let gather = |a0: f32, a1: f32, a2: f32, a3: f32| {
        [a0 + (a1 + a2) / 2.0, (a1 - a2) / 2.0, (a1 + a2) / 2.0 + a3]
    };
    let columns: [[f32; 3]; 4] =
        std::array::from_fn(|j| gather(u[j], u[4 + j], u[8 + j], u[12 + j]));
    std::array::from_fn(|t| {
        let (ky, kx) = (t / 3, t % 3);
        gather(
            columns[0][ky],
            columns[1][ky],
            columns[2][ky],
            columns[3][ky],
        )[kx]
    })
}

/// The transformed kernel `U: [16, C, O]` of `w: [O, C, 3, 3]` (`[c_out, c_in]`), or, if
/// `flipped`, `[16, O, C]` of the input gradient's kernel: `w` flipped in space and transposed in
/// channels.
pub(super) fn kernel(w: &[f32], [c_out, c_in]: [usize; 2], flipped: bool) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * c_in * c_out];
    for o in 0..c_out {
        for c in 0..c_in {
            let taps = &w[(o * c_in + c) * 9..][..9];
            let g = std::array::from_fn(|t| if flipped { taps[8 - t] } else { taps[t] });
            let at = if flipped { o * c_in + c } else { c * c_out + o };
            for (f, v) in kernel_tile(g).into_iter().enumerate() {
                u[f * c_in * c_out + at] = v;
            }
        }
    }
    u
}

/// What the tile transforms compute on: one channel (`f32`) or eight ([`Lanes`]).
trait Value: Copy + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> {}

impl Value for f32 {}

impl Value for Lanes {}

/// A transform of `N` values of one channel into its 16 frequencies.
trait ToFrequencies<const N: usize> {
    fn apply<T: Value>(d: &[T; N]) -> [T; 16];
}

/// [`input_tile`].
struct InputTile;

impl ToFrequencies<16> for InputTile {
    #[inline(always)]
    fn apply<T: Value>(d: &[T; 16]) -> [T; 16] {
        input_tile(d)
    }
}

/// [`output_tile_adjoint`].
struct OutputAdjoint;

impl ToFrequencies<4> for OutputAdjoint {
    #[inline(always)]
    fn apply<T: Value>(d: &[T; 4]) -> [T; 16] {
        output_tile_adjoint(d)
    }
}

/// `K` applied channel by channel to tile `i` of a block of `count`, given as `N` rows `d` of
/// `channels` values, into that tile's rows of `out: [16, count, channels]`: eight channels at a
/// time, then one by one.
#[inline(always)]
fn to_frequencies<const N: usize, K: ToFrequencies<N>>(
    d: &[&[f32]; N],
    channels: usize,
    [i, count]: [usize; 2],
    out: &mut [f32],
) {
    let at = |f: usize, c: usize| (f * count + i) * channels + c;
    let whole = channels - channels % LANES;
    for c in (0..whole).step_by(LANES) {
        let mut tile = [Lanes::ZERO; N];
        for k in 0..N {
            tile[k] = Lanes::load(&d[k][c..]);
        }
        let t = K::apply(&tile);
        for f in 0..16 {
            t[f].store(&mut out[at(f, c)..]);
        }
    }
    for c in whole..channels {
        let mut tile = [0.0; N];
        for k in 0..N {
            tile[k] = d[k][c];
        }
        let t = K::apply(&tile);
        for f in 0..16 {
            out[at(f, c)] = t[f];
        }
    }
}

/// The transformed tiles `V: [16, tiles, C]` of tile rows `block` of `x: [batch·H·W, C]`.
#[inline(always)]
fn transform_input(
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
        let d: [&[f32]; 16] = std::array::from_fn(|k| {
            let (y, x0) = (
                (2 * ty + k / 4).wrapping_sub(1),
                (2 * tx + k % 4).wrapping_sub(1),
            );
            if y < tiles.height && x0 < tiles.width {
                let pixel = (image * tiles.height + y) * tiles.width + x0;
                &x[pixel * channels..][..channels]
            } else {
                zeros
            }
        });
        to_frequencies::<16, InputTile>(&d, channels, [i, count], v);
    }
}

/// The outputs of tile rows `block` into `out` (their rows of `[batch·H·W, O]`) from the
/// products `m: [16, tiles, O]`.
#[inline(always)]
fn transform_output(m: &[f32], c_out: usize, tiles: &Tiles, block: Range<usize>, out: &mut [f32]) {
    let count = block.len() * tiles.columns;
    let first = tiles.first_pixel(block.start);
    for (i, (r, tx)) in tiles.of(block).enumerate() {
        // The tile's outputs inside the image: (output index, offset of its row in `out`).
        let mut inside = [(0, 0); 4];
        let mut n = 0;
        for o in 0..4 {
            let (y, x0) = (2 * (r % tiles.rows) + o / 2, 2 * tx + o % 2);
            if y < tiles.height && x0 < tiles.width {
                let row = tiles.first_pixel(r) - first + (o / 2) * tiles.width + x0;
                inside[n] = (o, row * c_out);
                n += 1;
            }
        }
        let inside = &inside[..n];
        let at = |f: usize, k: usize| (f * count + i) * c_out + k;
        let whole = c_out - c_out % LANES;
        for k in (0..whole).step_by(LANES) {
            let mut tile = [Lanes::ZERO; 16];
            for f in 0..16 {
                tile[f] = Lanes::load(&m[at(f, k)..]);
            }
            let y = output_tile(&tile);
            for &(o, row) in inside {
                y[o].store(&mut out[row + k..]);
            }
        }
        for k in whole..c_out {
            let mut tile = [0.0; 16];
            for f in 0..16 {
                tile[f] = m[at(f, k)];
            }
            let y = output_tile(&tile);
            for &(o, row) in inside {
                out[row + k] = y[o];
            }
        }
    }
}

/// The 4×4 output gradients `A ∂y Aᵀ: [16, tiles, O]` of tile rows `block` into `dm`, from
/// `g = ∂out: [batch·H·W, O]`.
#[inline(always)]
fn transform_output_adjoint(
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
        let dy: [&[f32]; 4] = std::array::from_fn(|o| {
            let (y, x0) = (2 * ty + o / 2, 2 * tx + o % 2);
            if y < tiles.height && x0 < tiles.width {
                let pixel = tiles.first_pixel(r) + (o / 2) * tiles.width + x0;
                &g[pixel * c_out..][..c_out]
            } else {
                zeros
            }
        });
        to_frequencies::<4, OutputAdjoint>(&dy, c_out, [i, count], dm);
    }
}

/// One block's pass over its tiles, run through pulp's dispatch so that it is compiled for AVX2
/// where the CPU has it (a closure handed to the dispatch is not inlined into it).
enum Pass<'a> {
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
        out: &'a mut [f32],
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
        match self {
            Pass::Input {
                x,
                channels,
                tiles,
                block,
                zeros,
                v,
            } => transform_input(x, channels, tiles, block, zeros, v),
            Pass::Output {
                m,
                c_out,
                tiles,
                block,
                affine,
                out,
            } => {
                transform_output(m, c_out, tiles, block, out);
                if let Some((bias, relu)) = affine {
                    for row in out.chunks_mut(c_out) {
                        row.iter_mut().zip(bias).for_each(|(o, &b)| {
                            *o = if relu { (*o + b).max(0.0) } else { *o + b };
                        })
                    }
                }
            }
            Pass::OutputAdjoint {
                g,
                c_out,
                tiles,
                block,
                zeros,
                dm,
            } => transform_output_adjoint(g, c_out, tiles, block, zeros, dm),
        }
    }
}

/// The transformed tiles of tile rows `block` of `x` (`[batch·H·W, C]`, `C` given) into `v`,
/// sized to them (`[16, tiles, C]`); the block's number of tiles.
fn input_of(
    arch: Arch,
    (x, channels): (&[f32], usize),
    tiles: &Tiles,
    block: &Range<usize>,
    zeros: &[f32],
    v: &mut Vec<f32>,
) -> usize {
    let count = block.len() * tiles.columns;
    v.resize(16 * count * channels, 0.0);
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

/// The 16 products `M_f = V_f · U_f: [tiles, O]` of a block of `count` tiles, into `m`.
fn products(v: &[f32], u: &[f32], [count, c_in, c_out]: [usize; 3], m: &mut [f32]) {
    for f in 0..16 {
        product(
            [count, c_out, c_in],
            &mut m[f * count * c_out..][..count * c_out],
            (&v[f * count * c_in..], [c_in, 1]),
            (&u[f * c_in * c_out..], [c_out, 1]),
            (1.0, false),
        );
    }
}

/// The convolution of `x: [batch·H·W, C]` (`dims = [C, H, W]`) with the transformed kernel
/// `u: [16, C, O]` of [`kernel`], plus `bias` and rectified if `relu` when `affine` is given:
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
    in_pieces(
        batch * height * width * c_out,
        pieces,
        || (Vec::new(), Vec::new()),
        |(v, m), block, out| {
            let count = input_of(arch, (x, c_in), &tiles, &block, &zeros, v);
            m.resize(16 * count * c_out, 0.0);
            products(v, u, [count, c_in, c_out], m);
            arch.dispatch(Pass::Output {
                m,
                c_out,
                tiles: &tiles,
                block,
                affine,
                out,
            });
        },
    )
}

/// The kernel's and the bias's gradients `(∂w: [O, C, 3, 3], ∂bias: [O])` of [`convolve`] on
/// `x: [batch·H·W, C]` (`dims = [C, H, W]`), from `g = ∂out: [batch·H·W, O]`: per frequency,
/// `Σ_blocks V_fᵀ · (A ∂y Aᵀ)_f`, one partial sum per task, then back through `G`.
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
    // adding up one `[16, C, O]` sum per block.
    let partials = per_thread_runs(blocks.len(), |run| {
        let (mut du, mut db) = (vec![0.0f32; 16 * c_in * c_out], vec![0.0f32; c_out]);
        let (mut v, mut dm) = (Vec::new(), Vec::new());
        for block in &blocks[run] {
            let count = input_of(arch, (x, c_in), &tiles, block, &zeros_in, &mut v);
            dm.resize(16 * count * c_out, 0.0);
            arch.dispatch(Pass::OutputAdjoint {
                g,
                c_out,
                tiles: &tiles,
                block: block.clone(),
                zeros: &zeros_out,
                dm: &mut dm,
            });
            for f in 0..16 {
                product(
                    [c_in, c_out, count],
                    &mut du[f * c_in * c_out..][..c_in * c_out],
                    (&v[f * count * c_in..], [1, c_in]),
                    (&dm[f * count * c_out..], [c_out, 1]),
                    (1.0, true),
                );
            }
            let rows = tiles.first_pixel(block.start)..tiles.first_pixel(block.end);
            for row in g[rows.start * c_out..rows.end * c_out].chunks(c_out) {
                db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
        }
        (du, db)
    });
    let (du, db) = sum_parts(partials);
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    for o in 0..c_out {
        for c in 0..c_in {
            let u = std::array::from_fn(|f| du[(f * c_in + c) * c_out + o]);
            dw[(o * c_in + c) * 9..][..9].copy_from_slice(&kernel_tile_adjoint(&u));
        }
    }
    (dw, db)
}
