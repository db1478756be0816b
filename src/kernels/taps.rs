//! A 3×3 kernel's weight `[O, C, 3, 3]` laid out per tap, as the products of the 3×3
//! convolution ([`super::conv3x3`]) and of its Winograd form ([`super::winograd`]) read it, and
//! the gradient back.

use super::zeroed;

/// The kernel `w: [O, C, 3, 3]` as the `[(tap, C), O]` right operand of `im2col(x)`, or, if
/// `flipped`, the `[(tap, O), C]` operand of `im2col(∂out)` for the input gradient: the kernel
/// flipped in space (tap `8 − t`) and transposed in channels.
pub(super) fn columns(w: &[f32], [c_out, c_in]: [usize; 2], flipped: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    // In blocks of 16 along the index that runs fastest in `out` (`o`, or `c` if flipped): each
    // tap's 16 values then fill one cache line, and the 16 rows of `w` read alongside stay in
    // cache. Entry by entry in either order, this reordering took 1–3% of a step's CPU samples,
    // its reads or its writes a row apart.
    let (outer, inner) = if flipped {
        (c_out, c_in)
    } else {
        (c_in, c_out)
    };
    for block in (0..inner).step_by(16) {
        for a in 0..outer {
            for b in block..(block + 16).min(inner) {
                let (o, c) = if flipped { (a, b) } else { (b, a) };
                for (tap, &v) in w[(o * c_in + c) * 9..][..9].iter().enumerate() {
                    let at = if flipped {
                        ((8 - tap) * c_out + o) * c_in + c
                    } else {
                        (tap * c_in + c) * c_out + o
                    };
                    out[at] = v;
                }
            }
        }
    }
    out
}

/// The weight gradient `[(tap, C), O]` back to the kernel's `[O, C, 3, 3]`.
pub(super) fn kernel_from_columns(g: &[f32], [c_out, c_in]: [usize; 2]) -> Vec<f32> {
    let mut out = zeroed(g.len());
    for o in 0..c_out {
        for c in 0..c_in {
            for (tap, v) in out[(o * c_in + c) * 9..][..9].iter_mut().enumerate() {
                *v = g[(tap * c_in + c) * c_out + o];
            }
        }
    }
    out
}
