//! The sampling mode's noise (dequantization, pads, tile copies, augmented coordinates), drawn
//! on all threads.
//!
//! Why a kernel of its own: burn-flex draws every value from one generator on the calling
//! thread; in `conv1` the tile noise alone was a fifth of the main thread's time. Here one seed
//! is taken from the device's generator, so `Device::seed` still fixes every draw, and fixed
//! blocks of values come from their own ChaCha8 stream of that seed, so the values do not
//! depend on the thread count.
//!
//! Work that runs on several threads at once (the halves of a training batch) would take seeds
//! from the one device generator in no fixed order; [`with_stream`] gives a thread its own
//! sequence of seeds instead.

use std::cell::Cell;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::host_values;
use super::zeroed;

/// Values per stream (even, so normal pairs never straddle two streams).
const BLOCK: usize = 8192;

/// Fills a block with draws from its own stream, given the distribution's two parameters.
type Sampler = fn(&mut ChaCha8Rng, &mut [f32], f64, f64);

/// The sampler and its parameters for the distributions this kernel draws.
fn sampler(distribution: Distribution) -> Option<(Sampler, f64, f64)> {
    match distribution {
        Distribution::Normal(mean, std) => Some((normals, mean, std)),
        Distribution::Uniform(low, high) => Some((uniforms, low, high)),
        _ => None,
    }
}

thread_local! {
    /// The seed and the number of draws so far of the stream set by [`with_stream`].
    static STREAM: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Runs `f` with every [`random`] draw made on this thread seeded by `(seed, n)`, `n` counting
/// the draws, rather than by the device's generator. A thread-pool task that this thread picks
/// up while `f` waits runs inside `f` and sets and restores its own stream around itself.
pub fn with_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    /// Restores the outer stream even when `f` unwinds.
    struct Restore(Option<(u64, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.set(self.0);
        }
    }
    let _restore = Restore(STREAM.replace(Some((seed, 0))));
    f()
}

/// A seed taken from the device's generator.
pub fn device_seed(device: &Device) -> u64 {
    let seed = host_values(Tensor::<1>::random(
        [2],
        Distribution::Uniform(0.0, 1.0),
        device,
    ));
    (u64::from(seed[0].to_bits()) << 32) | u64::from(seed[1].to_bits())
}

/// Seed number `index` derived from `seed` (splitmix64 of both): neighbouring indices give
/// unrelated seeds.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the next draw: from this thread's stream when one is set, else from the device.
pub(crate) fn next_seed(device: &Device) -> u64 {
    match STREAM.get() {
        Some((seed, n)) => {
            STREAM.set(Some((seed, n + 1)));
            mix(seed, n)
        }
        None => device_seed(device),
    }
}

/// A `shape` tensor of independent draws from `distribution`, `Normal` or `Uniform`, seeded
/// from this thread's stream ([`with_stream`]) or else the device's generator; other
/// distributions go through burn's own sampler.
pub fn random<const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &Device,
) -> Tensor<D> {
    let Some(sampler) = sampler(distribution) else {
        return Tensor::random(shape, distribution, device);
    };
    draw(shape, sampler, next_seed(device), device)
}

/// As [`random`], with the draws fixed by `seed` alone: the same for any thread count.
///
/// # Panics
/// If `distribution` is neither `Normal` nor `Uniform`.
pub fn random_seeded<const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    seed: u64,
    device: &Device,
) -> Tensor<D> {
    let sampler = sampler(distribution).unwrap_or_else(|| {
        panic!("random_seeded draws normals and uniforms, not {distribution:?}")
    });
    draw(shape, sampler, seed, device)
}

/// Block `i` of `BLOCK` values comes from stream `i` of `seed`.
fn draw<const D: usize>(
    shape: [usize; D],
    (sample, a, b): (Sampler, f64, f64),
    seed: u64,
    device: &Device,
) -> Tensor<D> {
    let mut values = zeroed(shape.iter().product());
    values
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(i, block)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            sample(&mut rng, block, a, b);
        });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `mean + std·N(0, 1)` by Marsaglia's polar method, two values per accepted point of the unit
/// disc: 12.0 ns a value on one thread, against 26.7 for Box–Muller, whose sine and cosine made
/// the draws 2.6% of a `conv1_nsf` step's CPU samples.
fn normals(rng: &mut ChaCha8Rng, out: &mut [f32], mean: f64, std: f64) {
    for pair in out.chunks_mut(2) {
        let (u, v, s) = loop {
            let (u, v) = (
                2.0 * rng.random::<f64>() - 1.0,
                2.0 * rng.random::<f64>() - 1.0,
            );
            let s = u * u + v * v;
            // s > 0 keeps the logarithm finite.
            if s < 1.0 && s > 0.0 {
                break (u, v, s);
            }
        };
        let scale = (-2.0 * s.ln() / s).sqrt() * std;
        pair[0] = (mean + u * scale) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (mean + v * scale) as f32;
        }
    }
}

/// `U[low, high)`; a value that rounds up to `high` in f32 is moved just below it.
fn uniforms(rng: &mut ChaCha8Rng, out: &mut [f32], low: f64, high: f64) {
    let below_high = (high as f32).next_down();
    for v in out {
        *v = ((low + (high - low) * rng.random::<f64>()) as f32).min(below_high);
    }
}
