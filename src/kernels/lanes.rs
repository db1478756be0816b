//! `L` `f32` values computed side by side (each kernel picks `L` for the CPU: 16 with AVX-512, 8
//! with AVX2), for element-wise kernels that run the same straight-line math on every element
//! (the splines, the Winograd transforms).
//!
//! Why: the compiler turns each operation on [`Lanes`] into one or two vector instructions when
//! it is inlined into code compiled for AVX2 or AVX-512, which `pulp::Arch::dispatch` picks at
//! run time (the default target is baseline x86-64, without either). `exp` and `ln` are
//! polynomials written here for the same reason: libm's are calls, one element at a time.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// One `f32` per lane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lanes<const L: usize>(pub [f32; L]);

/// One flag per lane.
#[derive(Clone, Copy, Debug)]
pub struct Mask<const L: usize>([bool; L]);

impl<const L: usize> Lanes<L> {
    /// Zero in every lane.
    pub const ZERO: Lanes<L> = Lanes([0.0; L]);

    /// `v` in every lane.
    #[inline(always)]
    pub fn splat(v: f32) -> Lanes<L> {
        Lanes([v; L])
    }

    /// Lane `l` is `f(l)`.
    #[inline(always)]
    pub fn from_fn(mut f: impl FnMut(usize) -> f32) -> Lanes<L> {
        let mut out = [0.0; L];
        for (l, v) in out.iter_mut().enumerate() {
            *v = f(l);
        }
        Lanes(out)
    }

    /// `f` applied to every lane.
    #[inline(always)]
    pub fn map(self, f: impl Fn(f32) -> f32) -> Lanes<L> {
        Lanes::from_fn(|l| f(self.0[l]))
    }

    #[inline(always)]
    fn zip(self, other: Lanes<L>, f: impl Fn(f32, f32) -> f32) -> Lanes<L> {
        Lanes::from_fn(|l| f(self.0[l], other.0[l]))
    }

    #[inline(always)]
    fn compare(self, other: Lanes<L>, f: impl Fn(f32, f32) -> bool) -> Mask<L> {
        let mut out = [false; L];
        for (l, m) in out.iter_mut().enumerate() {
            *m = f(self.0[l], other.0[l]);
        }
        Mask(out)
    }

    /// Lane-wise `self ≥ other`.
    #[inline(always)]
    pub fn ge(self, other: Lanes<L>) -> Mask<L> {
        self.compare(other, |a, b| a >= b)
    }

    /// Lane-wise `self = other`.
    #[inline(always)]
    pub fn eq(self, other: Lanes<L>) -> Mask<L> {
        self.compare(other, |a, b| a == b)
    }

    /// Lane-wise maximum.
    #[inline(always)]
    pub fn max(self, other: Lanes<L>) -> Lanes<L> {
        self.zip(other, f32::max)
    }

    /// Lane-wise `min(max(self, low), high)`.
    #[inline(always)]
    pub fn clamp(self, low: f32, high: f32) -> Lanes<L> {
        self.map(|v| v.max(low).min(high))
    }

    /// Lane-wise `|self|`.
    #[inline(always)]
    pub fn abs(self) -> Lanes<L> {
        self.map(f32::abs)
    }

    /// Lane-wise `eᵛ` ([`exp`]).
    #[inline(always)]
    pub fn exp(self) -> Lanes<L> {
        self.map(exp)
    }

    /// Lane-wise `ln v` ([`ln`]).
    #[inline(always)]
    pub fn ln(self) -> Lanes<L> {
        self.map(ln)
    }

    /// The sum of the lanes, in `f64`.
    pub fn sum(self) -> f64 {
        self.0.iter().map(|&v| v as f64).sum()
    }
}

impl<const L: usize> Mask<L> {
    /// `yes` where set, `no` elsewhere.
    #[inline(always)]
    pub fn select(self, yes: Lanes<L>, no: Lanes<L>) -> Lanes<L> {
        Lanes::from_fn(|l| if self.0[l] { yes.0[l] } else { no.0[l] })
    }

    /// Set where both are.
    #[inline(always)]
    pub fn and(self, other: Mask<L>) -> Mask<L> {
        let mut out = self.0;
        for (l, m) in out.iter_mut().enumerate() {
            *m &= other.0[l];
        }
        Mask(out)
    }
}

macro_rules! lane_op {
    ($trait:ident, $method:ident, $op:tt) => {
        impl<const L: usize> $trait for Lanes<L> {
            type Output = Lanes<L>;
            #[inline(always)]
            fn $method(self, other: Lanes<L>) -> Lanes<L> {
                self.zip(other, |a, b| a $op b)
            }
        }
        impl<const L: usize> $trait<f32> for Lanes<L> {
            type Output = Lanes<L>;
            #[inline(always)]
            fn $method(self, other: f32) -> Lanes<L> {
                self.map(|a| a $op other)
            }
        }
        impl<const L: usize> $trait<Lanes<L>> for f32 {
            type Output = Lanes<L>;
            #[inline(always)]
            fn $method(self, other: Lanes<L>) -> Lanes<L> {
                other.map(|b| self $op b)
            }
        }
    };
}

lane_op!(Add, add, +);
lane_op!(Sub, sub, -);
lane_op!(Mul, mul, *);
lane_op!(Div, div, /);

impl<const L: usize> Neg for Lanes<L> {
    type Output = Lanes<L>;
    #[inline(always)]
    fn neg(self) -> Lanes<L> {
        self.map(|v| -v)
    }
}

impl<const L: usize> AddAssign for Lanes<L> {
    #[inline(always)]
    fn add_assign(&mut self, other: Lanes<L>) {
        *self = *self + other;
    }
}

/// `eˣ` within 2 ulps for `x ∈ [−87, 88]` (clamped to it; Cephes' `expf`): `x = n·ln 2 + r`,
/// a degree-7 polynomial for `eʳ`, and `2ⁿ` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so that n·LN2_HI is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // n + 127 lands in the low mantissa bits of 2²³ + n + 127; shifting them up makes 2ⁿ.
    e * f32::from_bits((n + (8_388_608.0 + 127.0)).to_bits() << 23)
}

/// `ln x` within 2 ulps for positive normal `x` (Cephes' `logf`): `x = m·2ᵉ` with
/// `m ∈ [√½, √2)`, and a degree-9 polynomial for `ln m`.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    // m ∈ [½, 1) and its exponent, then moved to [√½, √2).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let e = ((bits >> 23) & 0xff) as i32 as f32 - 126.0;
    let low = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = if low { e - 1.0 } else { e };
    let m = if low { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let p = (((((((7.037_683_6e-2 * m - 0.115_146_1) * m + 0.116_769_98) * m - 0.124_201_41)
        * m
        + 0.142_493_23)
        * m
        - 0.166_680_57)
        * m
        + 0.200_007_15)
        * m
        - 0.249_999_94)
        * m
        + 0.333_333_3;
    let y = p * m * z - 2.121_944_4e-4 * e - 0.5 * z;
    m + y + 0.693_359_4 * e
}

#[cfg(test)]
mod tests {
    use super::{exp, ln};

    /// Relative error against `f64`'s functions, in units of `f32::EPSILON`.
    fn ulps(ours: f32, exact: f64) -> f64 {
        ((ours as f64 - exact) / exact).abs() / f32::EPSILON as f64
    }

    #[test]
    fn exp_and_ln_are_within_two_ulps() {
        let mut worst = (0.0f64, 0.0f64);
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            worst.0 = worst.0.max(ulps(exp(x), (x as f64).exp()));
        }
        // Every binade of the normal range, and the neighbourhood of 1 (ln near 0).
        let near_one =
            (1..2000).flat_map(|k| [1.0 + k as f32 * f32::EPSILON, 1.0 - k as f32 * 1e-7]);
        let mut spread = vec![];
        let mut x = 1.2e-38f32;
        while x < 3e38 {
            spread.extend([x, x * 1.000_123, x * 1.414, x * 1.7321]);
            x *= 1.37;
        }
        for v in near_one.chain(spread) {
            worst.1 = worst.1.max(ulps(ln(v), (v as f64).ln()));
        }
        assert!(worst.0 <= 2.0 && worst.1 <= 2.0, "exp, ln: {worst:?} ulps");
    }
}
