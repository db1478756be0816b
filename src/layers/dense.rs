//! The flowified linear layer `D1 → D2` (spec §3.3).
//!
//! Parameterized in SVD form, `z = ((x·U1) → middle) · U2 + b`, where `middle` scales by `e^s`
//! and, depending on the shapes, is a bijection (`D1 = D2`), a funnel that drops the first
//! `D1 − D2` rotated coordinates and scores them under a learned conditional Gaussian
//! (`D1 > D2`), or an augmentation that appends uniform noise (`D1 < D2`). In mean mode the
//! layer is exactly the dense map `x·Wᵀ + b` with `W = U2ᵀ [0 | diag e^s] U1ᵀ`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{assert_shape, Device, Distribution, Tensor};

use super::mlp::{Mlp, MlpConfig};
use super::orthogonal::{Orthogonal, OrthogonalConfig};
use crate::flow::{gaussian_draw, gaussian_log_prob, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::noise::random;

/// Configuration of a [`FlowLinear`] layer.
#[derive(Config, Debug)]
pub struct FlowLinearConfig {
    /// Input width `D1`.
    pub d_input: usize,
    /// Output width `D2`.
    pub d_output: usize,
    /// Whether a funnel scores its dropped coordinates with its own conditioner `g(y')`.
    /// A flowified convolution turns this off and scores them with its context network.
    #[config(default = true)]
    pub conditioner: bool,
}

/// A flowified dense layer: bijection, funnel or augmentation depending on `D1` vs `D2`.
#[derive(Module, Debug)]
pub struct FlowLinear {
    /// `U1 ∈ O(D1)`.
    pub u1: Orthogonal,
    /// Log singular values `s`, shape `[D2]`.
    pub log_scale: Param<Tensor<1>>,
    /// `U2 ∈ O(D2)`.
    pub u2: Orthogonal,
    /// Bias `b`, shape `[D2]`.
    pub bias: Param<Tensor<1>>,
    /// Funnel only: `g(y') = (μ, log σ)` of the dropped coordinates.
    pub conditioner: Option<Mlp>,
}

impl FlowLinearConfig {
    /// Builds the layer with the reference's initialization: random rotations, `s = 0` for a
    /// bijection and `s ~ N(0, 1)/√D2` otherwise, `b = 0`.
    pub fn init(&self, device: &Device) -> FlowLinear {
        let (d1, d2) = (self.d_input, self.d_output);
        let log_scale = if d1 == d2 {
            Tensor::zeros([d2], device)
        } else {
            Tensor::random(
                [d2],
                Distribution::Normal(0.0, 1.0 / (d2 as f64).sqrt()),
                device,
            )
        };
        let conditioner = (d1 > d2 && self.conditioner).then(|| {
            let dropped = d1 - d2;
            let width = (3 * (2 * dropped).max(d1)).max(64);
            let extra = match width {
                w if w > 200 => 0,
                w if w > 100 => 2,
                w if w > 50 => 4,
                _ => 6,
            };
            MlpConfig::new(d2, vec![width; extra + 1], 2 * dropped).init(device)
        });
        FlowLinear {
            u1: OrthogonalConfig::new(d1).init(device),
            log_scale: Param::from_tensor(log_scale),
            u2: OrthogonalConfig::new(d2).init(device),
            bias: Param::from_tensor(Tensor::zeros([d2], device)),
            conditioner,
        }
    }
}

/// What the deterministic part of a forward pass produced.
pub struct LinearParts {
    /// The output `z`, `[batch, D2]`.
    pub z: Tensor<2>,
    /// The scaled middle `y'`, `[batch, D2]` (what a funnel's conditioner sees).
    pub middle: Tensor<2>,
    /// Funnel only: the dropped rotated coordinates `y_drop`, `[batch, D1 − D2]`.
    pub dropped: Option<Tensor<2>>,
}

impl FlowLinear {
    /// `D1`.
    pub fn d_input(&self) -> usize {
        self.u1.dim()
    }

    /// `D2`.
    pub fn d_output(&self) -> usize {
        self.u2.dim()
    }

    /// Bijection, funnel (surjection) or augmentation.
    pub fn kind(&self) -> Kind {
        match self.d_input().cmp(&self.d_output()) {
            std::cmp::Ordering::Equal => Kind::Bijection,
            std::cmp::Ordering::Greater => Kind::Surjection,
            std::cmp::Ordering::Less => Kind::Augmentation,
        }
    }

    /// `Σ s`, shape `[1]`: the log-determinant of the scaling, the same for every example.
    pub fn log_scale_sum(&self) -> Tensor<1> {
        self.log_scale.val().sum()
    }

    /// The forward pass without the dropped coordinates' density: `x: [batch, D1]`.
    pub fn forward_parts(&self, x: Tensor<2>, mode: Mode) -> LinearParts {
        let (d1, d2) = (self.d_input(), self.d_output());
        assert_shape!(x, [.., d1]);
        let y = self.u1.apply(x);
        let batch = y.dims()[0];
        let (kept, dropped) = if d1 > d2 {
            (
                columns(y.clone(), d1 - d2, d2),
                Some(columns(y, 0, d1 - d2)),
            )
        } else if d1 < d2 {
            let noise = match mode {
                Mode::Sample => random(
                    [batch, d2 - d1],
                    Distribution::Uniform(-0.5, 0.5),
                    &y.device(),
                ),
                Mode::Mean => Tensor::zeros([batch, d2 - d1], &y.device()),
            };
            (Tensor::cat(vec![y, noise], 1), None)
        } else {
            (y, None)
        };
        let middle = kept * self.log_scale.val().exp().unsqueeze();
        let z = self.u2.apply(middle.clone()) + self.bias.val().unsqueeze();
        LinearParts { z, middle, dropped }
    }

    /// The inverse given the dropped coordinates (funnel only), computed from `y'` by
    /// `dropped`: `z: [batch, D2] → x: [batch, D1]`.
    pub fn inverse_with(
        &self,
        z: Tensor<2>,
        dropped: impl FnOnce(&Tensor<2>) -> Option<Tensor<2>>,
    ) -> Tensor<2> {
        let (d1, d2) = (self.d_input(), self.d_output());
        assert_shape!(z, [.., d2]);
        let middle = self.u2.apply_transpose(z - self.bias.val().unsqueeze());
        let unscaled = middle.clone() * self.log_scale.val().neg().exp().unsqueeze();
        let y = if d1 > d2 {
            let drop = dropped(&middle).expect("a funnel's inverse needs its dropped coordinates");
            Tensor::cat(vec![drop, unscaled], 1)
        } else {
            unscaled.narrow(1, 0, d1)
        };
        self.u1.apply_transpose(y)
    }

    /// Folds both rotations' tangents into their base points after an optimizer step.
    pub fn retract(self, polish: bool) -> Self {
        Self {
            u1: self.u1.retract(polish),
            u2: self.u2.retract(polish),
            ..self
        }
    }

    fn conditional(&self, middle: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let dropped = self.d_input() - self.d_output();
        let net = self
            .conditioner
            .as_ref()
            .expect("this funnel is scored by its convolution");
        let out = net.forward(middle);
        (
            columns(out.clone(), 0, dropped),
            columns(out, dropped, dropped),
        )
    }
}

impl Transform<2> for FlowLinear {
    /// `x: [batch, D1] → (z: [batch, D2], V: [batch])`.
    fn forward(&self, x: Tensor<2>, mode: Mode) -> (Tensor<2>, Tensor<1>) {
        let batch = x.dims()[0];
        let parts = self.forward_parts(x, mode);
        let mut v = self.log_scale_sum().expand([batch]);
        if let Some(drop) = parts.dropped {
            let (mean, log_std) = self.conditional(parts.middle);
            v = v + gaussian_log_prob(drop, mean, log_std);
        }
        (parts.z, v)
    }

    /// `z: [batch, D2] → x: [batch, D1]`; a funnel draws (or takes the mean of) `y_drop`.
    fn inverse(&self, z: Tensor<2>, mode: Mode) -> Tensor<2> {
        self.inverse_with(z, |middle| {
            (self.d_input() > self.d_output()).then(|| {
                let (mean, log_std) = self.conditional(middle.clone());
                gaussian_draw(mean, log_std, mode)
            })
        })
    }
}
