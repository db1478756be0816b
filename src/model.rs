//! A flowified model: a list of [`Layer`]s and the standard-normal base (docs/method.md §1.3).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::flow::{standard_normal_log_prob, Mode, Transform};
use crate::kernels::noise::random;
use crate::layers::orthogonal::retract_all;
use crate::layers::Layer;

/// Draws every parameter's initial value now, in layer order.
///
/// Why: burn's layers draw their initial weights lazily, on first use. Left so, the context
/// networks' and conditioners' weights came from the device's generator in the middle of the
/// first forward pass, between the noise draws of the layers around them, and a step's noise
/// depended on whether it was the first step of the process.
pub(crate) struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        param.val();
    }
}

/// A stack of flow layers with a standard-normal base: `L(x) = Σ V + log N(z; 0, I)`.
/// Built by [`crate::spec::ModelSpec::init`].
#[derive(Module, Debug)]
pub struct FlowModel {
    /// The layers, first applied first.
    pub layers: Vec<Layer>,
    pub(crate) input: Vec<usize>,
    pub(crate) latent: Vec<usize>,
}

impl FlowModel {
    /// Number of values `D = C·H·W` of one input, the denominator of bits/dim.
    pub fn dim(&self) -> usize {
        self.input.iter().product()
    }

    /// Shape `[C, H, W]` of the final latent.
    pub fn latent_shape(&self) -> [usize; 3] {
        [self.latent[0], self.latent[1], self.latent[2]]
    }

    /// Shape `[C, H, W]` of an input image.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.input[0], self.input[1], self.input[2]]
    }

    /// Runs every layer: `x: [batch, C, H, W]` (pixel values `0..=255`) → `(z, Σ V)`.
    pub fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let batch = x.dims()[0];
        let v = Tensor::zeros([batch], &x.device());
        self.layers.iter().fold((x, v), |(h, v), layer| {
            let (h, v_layer) = layer.forward(h, mode);
            (h, v + v_layer)
        })
    }

    /// Per-example log-likelihood `L(x)` in nats, shape `[batch]`: a one-sample lower bound when
    /// the model has augmentations (always: dequantization is one).
    pub fn log_likelihood(&self, x: Tensor<4>, mode: Mode) -> Tensor<1> {
        let (z, v) = self.forward(x, mode);
        v + standard_normal_log_prob(z)
    }

    /// Bits per dimension of a log-likelihood `L` in nats: `−L / (D ln 2)`.
    pub fn bits_per_dim(&self, log_likelihood: f64) -> f64 {
        log_likelihood * (-1.0 / (self.dim() as f64 * std::f64::consts::LN_2))
    }

    /// Runs every layer's inverse, last first: latent `[batch, ...]` → images in `[0, 1]`
    /// (unclamped).
    pub fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        self.layers
            .iter()
            .rev()
            .fold(z, |h, layer| layer.inverse(h, mode))
    }

    /// `n` samples: `z ~ N(0, T² I)` through the inverse.
    pub fn sample(&self, n: usize, mode: Mode, temperature: f64, device: &Device) -> Tensor<4> {
        let [c, h, w] = self.latent_shape();
        let z = random([n, c, h, w], Distribution::Normal(0.0, temperature), device);
        self.inverse(z, mode)
    }

    /// Forward in mean mode, then back in `mode`.
    pub fn reconstruct(&self, x: Tensor<4>, mode: Mode) -> Tensor<4> {
        let (z, _) = self.forward(x, Mode::Mean);
        self.inverse(z, mode)
    }

    /// Lets every layer initialize what it takes from data ([`Transform::initialize`]) on the
    /// batch `x`, pushed through the layers before it in mean mode (which draws no noise).
    pub fn initialize(self, x: Tensor<4>) -> Self {
        let mut h = x;
        let layers = self
            .layers
            .into_iter()
            .map(|layer| {
                let layer = layer.initialize(&h);
                h = layer.forward(h.clone(), Mode::Mean).0.detach();
                layer
            })
            .collect();
        Self { layers, ..self }
    }

    /// Folds every rotation's tangent into its base point; call after each optimizer step.
    pub fn retract(self, polish: bool) -> Self {
        retract_all(self, polish)
    }

    /// Number of trainable numbers (the orthogonal base points are state, not parameters).
    pub fn trainable_params(&self) -> usize {
        trainable_params(self)
    }
}

/// Counts the numbers of `module`'s parameters, leaving out orthogonal base points.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    let mut counter = Trainable {
        path: vec![],
        count: 0,
    };
    module.visit(&mut counter);
    counter.count
}

struct Trainable {
    path: Vec<String>,
    count: usize,
}

impl ModuleVisitor for Trainable {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.last().map(String::as_str) != Some("base") {
            self.count += param.shape().num_elements();
        }
    }
}
