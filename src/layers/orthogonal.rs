//! Orthogonal matrices for the flowified linear layer (spec §3.3).
//!
//! The reference builds `U = exp(A − Aᵀ)` at every forward pass and differentiates through the
//! matrix exponential, which is most of the cost of a training step. Here the rotation is
//! `U = B · exp(A − Aᵀ)` with a base point `B ∈ O(d)` that moves ("dynamic trivialization",
//! Lezcano-Casado 2019): the trainable tangent `A` is zero between optimizer steps, so the
//! forward pass needs `U = B` only, and the gradient of `exp` at `0` is the identity, so the
//! gradient with respect to `A` costs one small matrix product. After each optimizer step,
//! [`Orthogonal::retract`] moves the base to `B · exp(A − Aᵀ)` and resets `A` to zero. This is
//! exact (`U` is orthogonal to float precision at every step), covers all of `O(d)`, and stores
//! the same trainable numbers as the reference (`d²` entries of `A`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

/// Configuration of an [`Orthogonal`] matrix.
#[derive(Config, Debug)]
pub struct OrthogonalConfig {
    /// Size `d` of the `d × d` matrix.
    pub dim: usize,
}

/// A `d × d` orthogonal matrix `U = B · exp(A − Aᵀ)` with a moving base point `B`.
#[derive(Module, Debug)]
pub struct Orthogonal {
    /// The base point `B`, orthogonal; moved by [`Orthogonal::retract`], never by gradients.
    pub base: Param<Tensor<2>>,
    /// The trainable tangent coordinates `A` at `B`; zero outside an optimizer step.
    pub tangent: Param<Tensor<2>>,
}

impl OrthogonalConfig {
    /// A random rotation distributed as the reference's initial `exp(A − Aᵀ)`, `A_ij ~ N(0, 1)`.
    pub fn init(&self, device: &Device) -> Orthogonal {
        let d = self.dim;
        let plain = device.clone().inner();
        let a = Tensor::<2>::random([d, d], Distribution::Normal(0.0, 1.0), &plain);
        let base = expm_times(Tensor::eye(d, &plain), a.clone() - a.transpose());
        Orthogonal::from_base(polish(polish(polish(base))), device)
    }
}

impl Orthogonal {
    /// Wraps an orthogonal base `B` (shape `[d, d]`) with a zero tangent, on `device`.
    pub fn from_base(base: Tensor<2>, device: &Device) -> Self {
        let dims = base.dims();
        let tangent = Tensor::zeros(dims, &device.clone().inner());
        Self {
            base: Param::from_tensor(on_device(base, device)).set_require_grad(false),
            tangent: Param::from_tensor(on_device(tangent, device)),
        }
    }

    /// Size `d`.
    pub fn dim(&self) -> usize {
        self.base.dims()[0]
    }

    /// The matrix `U` itself, shape `[d, d]` (mean-mode checks and pictures; not a hot path).
    pub fn matrix(&self) -> Tensor<2> {
        let d = self.dim();
        self.apply(Tensor::eye(d, &self.base.device()))
    }

    /// `x · U` for `x: [batch, d]`.
    ///
    /// Evaluated as `x·B + (x·B)·Ω` with `Ω = A − Aᵀ`: exact to first order in `A`, which is all
    /// the value (`A = 0`) and its gradient need; the second product is skipped when `A` is not
    /// being trained.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        let y = x.matmul(self.base.val());
        if self.is_trained() {
            let omega = self.omega();
            y.clone() + y.matmul(omega)
        } else {
            y
        }
    }

    /// `z · Uᵀ` for `z: [batch, d]`, the inverse of [`Orthogonal::apply`].
    pub fn apply_transpose(&self, z: Tensor<2>) -> Tensor<2> {
        let z = if self.is_trained() {
            z.clone() - z.matmul(self.omega())
        } else {
            z
        };
        z.matmul(self.base.val().transpose())
    }

    /// Folds the tangent into the base, `B ← B · exp(A − Aᵀ)`, `A ← 0` (parameter ids kept so the
    /// optimizer's state follows). `polish` also applies a Newton–Schulz step that pulls `B` back
    /// onto the group, undoing round-off that builds up over many steps.
    pub fn retract(self, polish_base: bool) -> Self {
        let (base_id, base, _) = self.base.consume();
        let (tangent_id, tangent, _) = self.tangent.consume();
        let device = base.device();
        let trained = tangent.is_require_grad();
        let a = tangent.inner();
        let moved = expm_times(base.inner(), a.clone() - a.clone().transpose());
        let moved = if polish_base { polish(moved) } else { moved };
        let zero = on_device(a.zeros_like(), &device);
        Self {
            base: Param::initialized(base_id, on_device(moved, &device)),
            tangent: Param::initialized(
                tangent_id,
                if trained { zero.require_grad() } else { zero },
            ),
        }
    }

    fn omega(&self) -> Tensor<2> {
        let a = self.tangent.val();
        a.clone() - a.transpose()
    }

    fn is_trained(&self) -> bool {
        self.tangent.val().is_require_grad()
    }
}

/// `M · exp(Ω)` for a skew-symmetric `Ω`, without autodiff.
///
/// Taylor series summed term by term on `M` (`T_j = T_{j−1}·Ω / j`) until a term is below f32
/// round-off; when `‖Ω‖_F > 1` the exponential is scaled and squared first. In training `Ω` is one
/// optimizer step, so a handful of products suffice.
pub fn expm_times(m: Tensor<2>, omega: Tensor<2>) -> Tensor<2> {
    let m = m.inner();
    let omega = omega.inner();
    let norm = frobenius(omega.clone());
    if norm > 1.0 {
        let squarings = norm.log2().ceil() as i32;
        let d = omega.dims()[0];
        let mut e = expm_times(
            Tensor::eye(d, &omega.device()),
            omega.div_scalar(2f64.powi(squarings)),
        );
        for _ in 0..squarings {
            e = e.clone().matmul(e);
        }
        return m.matmul(e);
    }
    let scale = frobenius(m.clone()).max(1.0);
    let mut sum = m.clone();
    let mut term = m;
    for j in 1..=30 {
        term = term.matmul(omega.clone()).div_scalar(j as f64);
        let size = frobenius(term.clone());
        sum = sum + term.clone();
        if size <= 1e-9 * scale {
            break;
        }
    }
    sum
}

/// One Newton–Schulz step towards the nearest orthogonal matrix: `X ← X (3I − XᵀX) / 2`.
pub fn polish(x: Tensor<2>) -> Tensor<2> {
    let gram = x.clone().transpose().matmul(x.clone());
    x.clone().mul_scalar(1.5) - x.matmul(gram).mul_scalar(0.5)
}

/// `t` on `device`, with autodiff enabled when `device` has it.
fn on_device(t: Tensor<2>, device: &Device) -> Tensor<2> {
    let t = t.to_device(&device.clone().inner());
    if device.is_autodiff() {
        t.autodiff()
    } else {
        t
    }
}

fn frobenius(x: Tensor<2>) -> f64 {
    x.square().sum().sqrt().into_scalar::<f32>() as f64
}
