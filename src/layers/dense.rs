//! The flowified linear layer `D1 → D2` (docs/method.md §2.3).
//!
//! Parameterized in SVD form, `z = ((x·U1) → middle) · U2 + b`, where `middle` scales by `e^s`
//! and, depending on the shapes, is a bijection (`D1 = D2`), a funnel that drops the first
//! `D1 − D2` rotated coordinates and scores them under a learned conditional Gaussian
//! (`D1 > D2`), or an augmentation that appends uniform noise (`D1 < D2`). In mean mode the
//! layer is exactly the dense map `x·Wᵀ + b` with `W = U2ᵀ [0 | diag e^s] U1ᵀ`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{assert_shape, Device, Distribution, Tensor, TensorData};

use serde::{Deserialize, Serialize};

use super::mlp::{mlp_params, Mlp, MlpConfig};
use super::orthogonal::{complete, f64_values, Orthogonal, OrthogonalConfig};
use super::trained::{DenseWeights, Trained};
use super::{at_least, expect_flat, forward_vectors, inverse_vectors, with_value, LayerConfig};
use crate::flow::{DroppedDensity, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::noise::random;

/// `layer = "linear"`: `Lin(d_input, d_output)` on a flat input of `d_input` features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    /// Input width `D1`.
    pub d_input: usize,
    /// Output width `D2`.
    pub d_output: usize,
    /// A funnel's conditioner (`D1 > D2`): hidden widths of the MLP `y' → (μ, log σ)` of the
    /// dropped coordinates. Default: the reference's rule, [`funnel_hidden`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditioner: Option<Vec<usize>>,
    /// Where `flowify import` takes this layer's trained weights from: the tensor-name prefix
    /// (`"0"` for `0.weight` and `0.bias`). Unset: the layer keeps its initialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

impl LinearSpec {
    /// `Lin(d_input, d_output)` with the reference's funnel conditioner.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        Self {
            d_input,
            d_output,
            conditioner: None,
            weights: None,
        }
    }

    fn config(&self) -> FlowLinearConfig {
        FlowLinearConfig::new(self.d_input, self.d_output).with_hidden(self.conditioner.clone())
    }
}

impl LayerConfig for LinearSpec {
    type Layer = FlowLinear;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        at_least("d_input", self.d_input, 1)?;
        at_least("d_output", self.d_output, 1)?;
        expect_flat(input, self.d_input, "d_input")?;
        match &self.conditioner {
            Some(_) if self.d_input <= self.d_output => Err(format!(
                "conditioner: only a funnel (d_input > d_output) has one, this is {}",
                self.kind(input)
            )),
            Some(widths) if widths.contains(&0) => {
                Err(format!("conditioner: expected widths ≥ 1, got {widths:?}"))
            }
            _ => Ok([self.d_output, 1, 1]),
        }
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        kind_of(self.d_input, self.d_output)
    }

    fn name(&self) -> String {
        format!("Lin({},{})", self.d_input, self.d_output)
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        self.config().params()
    }

    fn resolved(&self, _input: [usize; 3]) -> Self {
        let (d1, d2) = (self.d_input, self.d_output);
        let conditioner = (d1 > d2).then(|| {
            self.conditioner
                .clone()
                .unwrap_or_else(|| funnel_hidden(d1, d2))
        });
        Self {
            conditioner,
            ..self.clone()
        }
    }

    fn init(&self, _input: [usize; 3], device: &Device) -> FlowLinear {
        self.config().init(device)
    }

    fn import(
        &self,
        _input: [usize; 3],
        layer: FlowLinear,
        trained: &Trained,
    ) -> Result<FlowLinear, String> {
        match &self.weights {
            Some(prefix) => layer
                .import(&trained.dense(prefix)?)
                .map_err(|e| format!("{prefix}.{e}")),
            None => Ok(layer),
        }
    }
}

/// The reference's funnel conditioner for `D1 → D2`: width `max(3·max(2·dropped, D1), 64)`, and
/// the narrower it is, the deeper (1, 3, 5 or 7 hidden layers).
pub fn funnel_hidden(d1: usize, d2: usize) -> Vec<usize> {
    let dropped = d1 - d2;
    let width = (3 * (2 * dropped).max(d1)).max(64);
    let extra = match width {
        w if w > 200 => 0,
        w if w > 100 => 2,
        w if w > 50 => 4,
        _ => 6,
    };
    vec![width; extra + 1]
}

/// Bijection, funnel (surjection) or augmentation, by `D1` against `D2`.
pub fn kind_of(d1: usize, d2: usize) -> Kind {
    match d1.cmp(&d2) {
        std::cmp::Ordering::Equal => Kind::Bijection,
        std::cmp::Ordering::Greater => Kind::Surjection,
        std::cmp::Ordering::Less => Kind::Augmentation,
    }
}

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
    /// Hidden widths of that conditioner; `None`: [`funnel_hidden`].
    #[config(default = "None")]
    pub hidden: Option<Vec<usize>>,
}

impl FlowLinearConfig {
    /// The conditioner's widths `[D2, hidden…, 2·dropped]`, when there is one.
    fn conditioner_widths(&self) -> Option<Vec<usize>> {
        let (d1, d2) = (self.d_input, self.d_output);
        (d1 > d2 && self.conditioner).then(|| {
            let hidden = self.hidden.clone().unwrap_or_else(|| funnel_hidden(d1, d2));
            [vec![d2], hidden, vec![2 * (d1 - d2)]].concat()
        })
    }

    /// Trainable numbers: the tangents of `U1` and `U2`, `s`, `b` and the conditioner.
    pub fn params(&self) -> usize {
        let (d1, d2) = (self.d_input, self.d_output);
        let conditioner = self.conditioner_widths().map_or(0, |w| mlp_params(&w));
        d1 * d1 + d2 * d2 + 2 * d2 + conditioner
    }
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
        let conditioner = self.conditioner_widths().map(|widths| {
            let last = widths.len() - 1;
            MlpConfig::new(widths[0], widths[1..last].to_vec(), widths[last]).init(device)
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

    /// The density of `y_drop` given `y'`, from the funnel's own conditioner.
    fn conditional(&self, middle: Tensor<2>) -> DroppedDensity<2> {
        let dropped = self.d_input() - self.d_output();
        let net = self
            .conditioner
            .as_ref()
            .expect("this funnel is scored by its convolution");
        let out = net.forward(middle);
        DroppedDensity {
            mean: columns(out.clone(), 0, dropped),
            log_std: columns(out, dropped, dropped),
        }
    }
}

impl FlowLinear {
    /// Sets `U1`, `s`, `U2` and `b` from a trained dense map `y = W x + b` so that the mean mode
    /// computes it (docs/method.md §2.12): from the SVD `Wᵀ = P Σ Qᵀ` (f64), the kept columns of
    /// `U1` are `P`, `s = ln Σ`, the first rows of `U2` are `Qᵀ`, and the rest of each rotation
    /// is an orthonormal completion (what a funnel drops, where an augmentation's noise goes).
    /// The conditioner is kept as it is. Needs `W` of full rank `min(D1, D2)`.
    pub fn import(self, dense: &DenseWeights) -> Result<Self, String> {
        let (d1, d2) = (self.d_input(), self.d_output());
        if (dense.d_output, dense.d_input) != (d2, d1) {
            return Err(format!(
                "weight: expected {d2}×{d1} (out × in), got {}×{}",
                dense.d_output, dense.d_input
            ));
        }
        let r = d1.min(d2);
        let transposed: Vec<f64> = (0..d1 * d2)
            .map(|i| dense.weight[(i % d2) * d1 + i / d2])
            .collect();
        let device = Device::flex();
        let (p, sigma, qt) = burn::linalg::svd::<2, 1>(
            Tensor::from_data(TensorData::new(transposed, [d1, d2]), &device),
            100,
        );
        let (p, sigma, qt) = (f64_values(p), f64_values(sigma), f64_values(qt));
        if sigma[r - 1].is_nan() || sigma[r - 1] <= sigma[0] * 1e-7 {
            return Err(format!(
                "weight: has rank below {r} (singular values {:.3e} … {:.3e}); a flowified \
                 dense layer needs full rank",
                sigma[0],
                sigma[r - 1]
            ));
        }
        let u1 = match d1.cmp(&d2) {
            // The kept coordinates are the last D2: move P behind its completion.
            std::cmp::Ordering::Greater => {
                let full = complete(&p, d1, r);
                (0..d1 * d1)
                    .map(|i| full[(i / d1) * d1 + (i % d1 + r) % d1])
                    .collect()
            }
            _ => p,
        };
        // `U2`'s first `r` rows are `Qᵀ`: the transpose of `Q` completed.
        let q: Vec<f64> = (0..d2 * r).map(|i| qt[(i % r) * d2 + i / r]).collect();
        let full = complete(&q, d2, r);
        let u2: Vec<f64> = (0..d2 * d2).map(|i| full[(i % d2) * d2 + i / d2]).collect();
        let mut log_scale = vec![0f32; d2];
        for (s, sigma) in log_scale.iter_mut().zip(&sigma) {
            *s = sigma.ln() as f32;
        }
        let bias: Vec<f32> = dense.bias.iter().map(|&b| b as f32).collect();
        let vector = |values: Vec<f32>, like: &Param<Tensor<1>>| {
            Tensor::from_data(TensorData::new(values, [d2]), &like.device())
        };
        let log_scale_value = vector(log_scale, &self.log_scale);
        let bias_value = vector(bias, &self.bias);
        Ok(Self {
            u1: self.u1.set(&u1),
            log_scale: with_value(self.log_scale, log_scale_value),
            u2: self.u2.set(&u2),
            bias: with_value(self.bias, bias_value),
            conditioner: self.conditioner,
        })
    }
}

impl Transform<2> for FlowLinear {
    /// `x: [batch, D1] → (z: [batch, D2], V: [batch])`.
    fn forward(&self, x: Tensor<2>, mode: Mode) -> (Tensor<2>, Tensor<1>) {
        let batch = x.dims()[0];
        let parts = self.forward_parts(x, mode);
        let mut v = self.log_scale_sum().expand([batch]);
        if let Some(drop) = parts.dropped {
            v = v + self.conditional(parts.middle).log_prob(drop);
        }
        (parts.z, v)
    }

    /// `z: [batch, D2] → x: [batch, D1]`; a funnel draws (or takes the mean of) `y_drop`.
    fn inverse(&self, z: Tensor<2>, mode: Mode) -> Tensor<2> {
        self.inverse_with(z, |middle| {
            (self.d_input() > self.d_output()).then(|| self.conditional(middle.clone()).draw(mode))
        })
    }
}

impl Transform<4> for FlowLinear {
    /// `x: [batch, D1, 1, 1] → z: [batch, D2, 1, 1]`, as a model carries flat vectors.
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        forward_vectors(self, x, mode)
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        inverse_vectors(self, z, mode)
    }
}
