//! The 2-D toy densities of the flow literature (FFJORD's set), drawn in-process: no files.
//!
//! Each split is a fixed draw (its own seed), so every run of a set trains and is tested on the
//! same points, as with a dataset on disk. Labels name the mixture component a point came from
//! (a moon, a ring, a Gaussian, a spiral arm, a pinwheel blade, a checkerboard column pair).

use std::f64::consts::{PI, TAU};
use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Split;

/// Points in the training split.
pub const TRAIN_LEN: usize = 50_000;
/// Points in the validation and in the test split.
pub const TEST_LEN: usize = 10_000;

/// One of the toy densities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toy {
    /// Two interleaved half circles with Gaussian noise (σ = 0.1 before scaling by 2).
    Moons,
    /// Uniform on the black squares of a 4×4 board on `[−4, 4]²`.
    Checkerboard,
    /// Eight Gaussians (σ = 0.5/√2) on a circle of radius 4/√2.
    EightGaussians,
    /// Two interleaved spiral arms with Gaussian noise.
    TwoSpirals,
    /// Four concentric rings with Gaussian noise.
    Rings,
    /// Five curved blades of a pinwheel.
    Pinwheel,
}

impl Toy {
    /// Every toy set, in the order listed in messages.
    pub const ALL: [Toy; 6] = [
        Toy::Moons,
        Toy::Checkerboard,
        Toy::EightGaussians,
        Toy::TwoSpirals,
        Toy::Rings,
        Toy::Pinwheel,
    ];

    /// The name `--dataset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Toy::Moons => "moons",
            Toy::Checkerboard => "checkerboard",
            Toy::EightGaussians => "8gaussians",
            Toy::TwoSpirals => "2spirals",
            Toy::Rings => "rings",
            Toy::Pinwheel => "pinwheel",
        }
    }

    /// The number of mixture components, the classes of the labels.
    pub fn classes(self) -> usize {
        match self {
            Toy::Moons | Toy::TwoSpirals => 2,
            Toy::Checkerboard | Toy::Rings => 4,
            Toy::Pinwheel => 5,
            Toy::EightGaussians => 8,
        }
    }

    /// The points of `split`, `(x, y)` pairs in one row-major vector, and their labels.
    pub fn draw(self, split: Split) -> (Vec<f32>, Vec<u8>) {
        let (len, seed) = match split {
            Split::Train => (TRAIN_LEN, 0x70_7901),
            Split::Validation => (TEST_LEN, 0x70_7903),
            Split::Test => (TEST_LEN, 0x70_7902),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ self as u64);
        let (mut points, mut labels) = (Vec::with_capacity(2 * len), Vec::with_capacity(len));
        for _ in 0..len {
            let ([x, y], label) = self.point(&mut rng);
            points.extend([x as f32, y as f32]);
            labels.push(label);
        }
        (points, labels)
    }

    /// One point and its component.
    fn point(self, rng: &mut ChaCha8Rng) -> ([f64; 2], u8) {
        match self {
            Toy::Moons => {
                let upper = rng.random_bool(0.5);
                let t = rng.random_range(0.0..PI);
                let (x, y) = if upper {
                    (t.cos(), t.sin())
                } else {
                    (1.0 - t.cos(), 0.5 - t.sin())
                };
                let (nx, ny) = (normal(rng), normal(rng));
                (
                    [2.0 * (x + 0.1 * nx) - 1.0, 2.0 * (y + 0.1 * ny) - 0.2],
                    u8::from(!upper),
                )
            }
            Toy::Checkerboard => {
                let x = rng.random_range(-2.0..2.0_f64);
                let row = rng.random_range(0..2);
                let y =
                    rng.random_range(0.0..1.0) - 2.0 * f64::from(row) + x.floor().rem_euclid(2.0);
                ([2.0 * x, 2.0 * y], (x.floor() + 2.0) as u8)
            }
            Toy::EightGaussians => {
                let k = rng.random_range(0..8u8);
                let angle = f64::from(k) * TAU / 8.0;
                let (nx, ny) = (normal(rng), normal(rng));
                let s = std::f64::consts::SQRT_2;
                (
                    [
                        (4.0 * angle.cos() + 0.5 * nx) / s,
                        (4.0 * angle.sin() + 0.5 * ny) / s,
                    ],
                    k,
                )
            }
            Toy::TwoSpirals => {
                let n = rng.random::<f64>().sqrt() * 540.0 * TAU / 360.0;
                let arm = rng.random_bool(0.5);
                let sign = if arm { -1.0 } else { 1.0 };
                let x = sign * (-n.cos() * n + rng.random::<f64>() * 0.5);
                let y = sign * (n.sin() * n + rng.random::<f64>() * 0.5);
                let (nx, ny) = (normal(rng), normal(rng));
                ([x / 3.0 + 0.1 * nx, y / 3.0 + 0.1 * ny], u8::from(arm))
            }
            Toy::Rings => {
                let ring = rng.random_range(0..4u8);
                let radius = 3.0 * (1.0 - 0.25 * f64::from(ring));
                let angle = rng.random_range(0.0..TAU);
                let (nx, ny) = (normal(rng), normal(rng));
                (
                    [
                        radius * angle.cos() + 0.08 * nx,
                        radius * angle.sin() + 0.08 * ny,
                    ],
                    ring,
                )
            }
            Toy::Pinwheel => {
                let blade = rng.random_range(0..5u8);
                let radial = 0.3 * normal(rng) + 1.0;
                let tangential = 0.1 * normal(rng);
                let angle = f64::from(blade) * TAU / 5.0 + 0.25 * radial.exp();
                let (c, s) = (angle.cos(), angle.sin());
                (
                    [
                        2.0 * (c * radial - s * tangential),
                        2.0 * (s * radial + c * tangential),
                    ],
                    blade,
                )
            }
        }
    }
}

/// A standard normal draw (Box–Muller; the toy sets need few).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
}

impl fmt::Display for Toy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Toy {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Toy::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}
