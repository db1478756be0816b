//! Orthogonal matrices for the flowified linear layer (docs/method.md §2.3).
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

use std::any::Any;
use std::collections::HashMap;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::flow::host_values;
use crate::kernels;
use crate::kernels::tangent::at_zero_tangent;

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
    /// `U = B` in value, since the tangent is zero outside an optimizer step; when the tangent
    /// is trained, [`at_zero_tangent`] attaches its first-order effect, `x·B·(A − Aᵀ)`, which
    /// is all its gradient needs.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        let y = x.matmul(self.base.val());
        if self.tangent.val().is_require_grad() {
            at_zero_tangent(y, self.tangent.val())
        } else {
            y
        }
    }

    /// `z · Uᵀ = z · Bᵀ` for `z: [batch, d]`, the inverse of [`Orthogonal::apply`].
    pub fn apply_transpose(&self, z: Tensor<2>) -> Tensor<2> {
        z.matmul(self.base.val().transpose())
    }

    /// Folds the tangent into the base, `B ← B · exp(A − Aᵀ)`, `A ← 0` (parameter ids kept so the
    /// optimizer's state follows). `polish` also applies a Newton–Schulz step that pulls `B` back
    /// onto the group, undoing round-off that builds up over many steps.
    pub fn retract(self, polish_base: bool) -> Self {
        let (base_id, base, _) = self.base.consume();
        let (tangent_id, tangent, _) = self.tangent.consume();
        let device = base.device();
        let d = base.dims()[0];
        let trained = tangent.is_require_grad();
        let moved = if kernels::fast_path(&device) {
            let omega = skew_part(&host_values(tangent.inner()), d);
            let moved = host_expm_times(&host_values(base.inner()), &omega, d);
            let moved = if polish_base {
                host_polish(&moved, d)
            } else {
                moved
            };
            Tensor::from_data(TensorData::new(moved, [d, d]), &device.clone().inner())
        } else {
            // Off the CPU the products stay on the device: a GPU would otherwise wait for every
            // rotation to go to the host and back.
            let (base, tangent) = (base.inner(), tangent.inner());
            let moved = device_expm_times(base, tangent.clone() - tangent.transpose());
            if polish_base {
                polish_on_device(moved)
            } else {
                moved
            }
        };
        let zero = on_device(Tensor::zeros([d, d], &device.clone().inner()), &device);
        Self {
            base: Param::initialized(base_id, on_device(moved, &device)),
            tangent: Param::initialized(
                tangent_id,
                if trained { zero.require_grad() } else { zero },
            ),
        }
    }
}

impl Orthogonal {
    /// This rotation set to `u` (`[d, d]` row-major, orthogonal), keeping its parameters' ids.
    pub fn set(self, u: &[f64]) -> Self {
        let d = self.dim();
        let u: Vec<f32> = u.iter().map(|&v| v as f32).collect();
        let device = self.base.device();
        let base = Tensor::from_data(TensorData::new(u, [d, d]), &device.clone().inner());
        Self {
            base: super::with_value(self.base, on_device(base, &device)),
            tangent: self.tangent,
        }
    }
}

/// A `d × d` orthogonal matrix (row-major) whose first `r` columns are `a`'s (`[d, r]`
/// row-major, orthonormal columns): `a` completed by an orthonormal basis of its complement,
/// from a complete QR decomposition in f64.
pub fn complete(a: &[f64], d: usize, r: usize) -> Vec<f64> {
    let device = Device::flex();
    let (q, _) = burn::linalg::qr(
        Tensor::<2>::from_data(TensorData::new(a.to_vec(), [d, r]), &device),
        false,
    );
    let q = f64_values(q);
    (0..d * d)
        .map(|i| {
            let (row, col) = (i / d, i % d);
            if col < r {
                a[row * r + col]
            } else {
                q[i]
            }
        })
        .collect()
}

/// A tensor's values as f64.
pub fn f64_values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor converts to f64")
}

/// Retracts every [`Orthogonal`] inside `module`, wherever it sits (after each optimizer step).
///
/// Rotations are found by their type as burn's traversal reports it, so a layer holding
/// rotations cannot forget to retract them: it needs no code of its own for it.
pub fn retract_all<M: Module>(module: M, polish: bool) -> M {
    let mut found = Rotations::default();
    module.visit(&mut found);
    let retracted = found
        .pairs
        .into_iter()
        .map(|(path, (base, tangent))| {
            let pair = (base.expect("a base"), tangent.expect("a tangent"));
            let moved = Orthogonal {
                base: pair.0,
                tangent: pair.1,
            }
            .retract(polish);
            (path, (Some(moved.base), Some(moved.tangent)))
        })
        .collect();
    module.map(&mut Rotations {
        path: vec![],
        pairs: retracted,
    })
}

const CONTAINER: &str = "Struct:Orthogonal";

/// The rotations of a module: the base point and tangent of each, by the rotation's path.
/// Visiting collects them; mapping puts them back in place.
#[derive(Default)]
struct Rotations {
    path: Vec<(String, bool)>,
    pairs: HashMap<String, (Option<Param<Tensor<2>>>, Option<Param<Tensor<2>>>)>,
}

impl Rotations {
    /// The rotation's path and which of its two fields the current parameter is, when it is one.
    fn slot(&self) -> Option<(String, bool)> {
        let ((field, in_rotation), outer) = self.path.split_last()?;
        in_rotation.then(|| {
            let path: Vec<&str> = outer.iter().map(|(n, _)| n.as_str()).collect();
            (path.join("."), field == "base")
        })
    }

    fn enter(&mut self, name: &str, container: &str) {
        self.path.push((name.to_string(), container == CONTAINER));
    }
}

impl ModuleVisitor for Rotations {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some((path, is_base)) = self.slot() {
            // Cast, not reshaped: a reshape would put a node between a parameter and its leaf.
            let square = (param as &dyn Any)
                .downcast_ref::<Param<Tensor<2>>>()
                .expect("a rotation's fields are matrices")
                .clone();
            let pair = self.pairs.entry(path).or_default();
            if is_base {
                pair.0 = Some(square);
            } else {
                pair.1 = Some(square);
            }
        }
    }
}

impl ModuleMapper for Rotations {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((path, is_base)) = self.slot() else {
            return param;
        };
        let pair = self
            .pairs
            .get_mut(&path)
            .expect("every rotation was visited");
        let moved = if is_base {
            pair.0.take()
        } else {
            pair.1.take()
        };
        let moved: Box<dyn Any> = Box::new(moved.expect("each field is mapped once"));
        *moved
            .downcast::<Param<Tensor<D>>>()
            .expect("a rotation's fields are matrices")
    }
}

/// `M · exp(Ω)` for a skew-symmetric `Ω` (`m: [rows, d]`, `omega: [d, d]`), without autodiff.
pub fn expm_times(m: Tensor<2>, omega: Tensor<2>) -> Tensor<2> {
    let [rows, d] = m.dims();
    let device = m.device().inner();
    let out = host_expm_times(&host_values(m), &host_values(omega), d);
    Tensor::from_data(TensorData::new(out, [rows, d]), &device)
}

/// One Newton–Schulz step towards the nearest orthogonal matrix: `X ← X (3I − XᵀX) / 2`.
pub fn polish(x: Tensor<2>) -> Tensor<2> {
    let [d, _] = x.dims();
    let device = x.device().inner();
    let out = host_polish(&host_values(x), d);
    Tensor::from_data(TensorData::new(out, [d, d]), &device)
}

/// [`expm_times`] on row-major host values. The retraction runs it once per rotation per step,
/// so it works on plain slices with [`kernels::matmul`]: no autodiff graph, no synchronisation
/// per term.
///
/// Taylor series summed term by term on `M` (`T_j = T_{j−1}·Ω / j`), in as few products as the
/// f32 result allows: with `ν = ‖Ω‖∞ ≥ ‖Ω‖₂` (a skew matrix's largest absolute row sum bounds
/// its spectral norm), `‖T_{j+1}‖ ≤ ‖T_j‖·ν/(j+1)`, so once `ν ≤ 1` everything after `T_j` sums to at
/// most `2‖T_j‖·ν/(j+1)`, and the series stops when that is below f32 round-off of `M`. A larger
/// `Ω` (initialization) is scaled down by a power of two and the result squared back up. In
/// training `Ω` is one optimizer step: 3–4 products.
fn host_expm_times(m: &[f32], omega: &[f32], d: usize) -> Vec<f32> {
    let rows = m.len() / d;
    let nu = omega
        .chunks(d)
        .map(|row| row.iter().map(|v| v.abs() as f64).sum::<f64>())
        .fold(0.0, f64::max);
    if nu > 1.0 {
        let squarings = nu.log2().ceil() as i32;
        let factor = 0.5f32.powi(squarings);
        let scaled: Vec<f32> = omega.iter().map(|v| v * factor).collect();
        let eye: Vec<f32> = (0..d * d)
            .map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut e = host_expm_times(&eye, &scaled, d);
        for _ in 0..squarings {
            e = kernels::matmul(&e, &e, [d, d, d], false, 1.0);
        }
        return kernels::matmul(m, &e, [rows, d, d], false, 1.0);
    }
    let tolerance = f32::EPSILON as f64 / 2.0 * frobenius(m).max(1.0);
    let mut sum = m.to_vec();
    let mut term = m.to_vec();
    for j in 1..=30 {
        term = kernels::matmul(&term, omega, [rows, d, d], false, 1.0 / j as f32);
        // Added and measured in one pass, partial sums in f32 per row.
        let size_squared: f64 = sum
            .chunks_mut(d)
            .zip(term.chunks(d))
            .map(|(s, t)| {
                let mut row = 0.0f32;
                for (s, &t) in s.iter_mut().zip(t) {
                    *s += t;
                    row += t * t;
                }
                row as f64
            })
            .sum();
        if 2.0 * size_squared.sqrt() * nu / (j + 1) as f64 <= tolerance {
            break;
        }
    }
    sum
}

/// [`host_expm_times`] in tensor ops on the tensors' device: the same scaling by a power of two
/// and the same Taylor series, but the number of terms is fixed beforehand from `ν` alone (the
/// bound `‖T_j‖ ≤ ‖M‖·ν^j/j!`), so one value is read back (`ν`) and the products queue without
/// waiting for each other.
fn device_expm_times(m: Tensor<2>, omega: Tensor<2>) -> Tensor<2> {
    let d = omega.dims()[0];
    let nu = omega.clone().abs().sum_dim(1).max().into_scalar::<f32>() as f64;
    let squarings = if nu > 1.0 { nu.log2().ceil() as i32 } else { 0 };
    let omega = omega.mul_scalar(0.5f64.powi(squarings));
    let nu = nu * 0.5f64.powi(squarings);
    let series = |start: Tensor<2>| {
        let (mut sum, mut term, mut bound) = (start.clone(), start, 1.0f64);
        for j in 1..=30 {
            term = term.matmul(omega.clone()).div_scalar(j as f64);
            sum = sum + term.clone();
            bound *= nu / j as f64;
            if 2.0 * bound * nu / (j + 1) as f64 <= f32::EPSILON as f64 / 2.0 {
                break;
            }
        }
        sum
    };
    if squarings == 0 {
        return series(m);
    }
    let mut e = series(Tensor::eye(d, &omega.device()));
    for _ in 0..squarings {
        e = e.clone().matmul(e);
    }
    m.matmul(e)
}

/// [`polish`] in tensor ops on the tensor's device.
fn polish_on_device(x: Tensor<2>) -> Tensor<2> {
    let gram = x.clone().transpose().matmul(x.clone());
    x.clone().mul_scalar(1.5) - x.matmul(gram).mul_scalar(0.5)
}

/// `A − Aᵀ` for a row-major `a: [d, d]`, in tiles so the transposed reads stay in cache.
fn skew_part(a: &[f32], d: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut omega = vec![0.0f32; d * d];
    for rows in (0..d).step_by(TILE) {
        for cols in (0..d).step_by(TILE) {
            for r in rows..(rows + TILE).min(d) {
                for c in cols..(cols + TILE).min(d) {
                    omega[r * d + c] = a[r * d + c] - a[c * d + r];
                }
            }
        }
    }
    omega
}

/// [`polish`] on row-major host values.
fn host_polish(x: &[f32], d: usize) -> Vec<f32> {
    let gram = kernels::matmul(x, x, [d, d, d], true, 1.0);
    let x_gram = kernels::matmul(x, &gram, [d, d, d], false, 1.0);
    x.iter()
        .zip(&x_gram)
        .map(|(x, xg)| 1.5 * x - 0.5 * xg)
        .collect()
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

fn frobenius(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}
