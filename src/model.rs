//! A flowified model: a list of [`Layer`]s and its base, the standard normal
//! (docs/method.md §1.3) or, in a class-conditional model, a normal with a learned mean per
//! class (§1.4).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::flow::{standard_normal_log_prob, Mode, Transform};
use crate::kernels::noise::{next_seed, random, with_stream};
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

/// A stack of flow layers with a standard-normal base: `L(x) = Σ V + log N(z; 0, I)`; in a
/// class-conditional model, `L(x | c) = Σ V + log N(z; μ_c, I)`.
/// Built by [`crate::spec::ModelSpec::init`].
///
/// The methods without a class work on every model: on a conditional one, `log_likelihood` is
/// the marginal `log (1/C) Σ_c p(x | c)` and `sample` draws the classes in turn. The `_given`
/// methods take each example's class one-hot, `classes: [batch, C]` (see [`one_hot`]).
#[derive(Module, Debug)]
pub struct FlowModel {
    /// The layers, first applied first.
    pub layers: Vec<Layer>,
    /// In a class-conditional model, the base's mean for each class, `[C, D_latent]`.
    pub(crate) means: Option<Param<Tensor<2>>>,
    /// Whether a layer reads the class, so that each class takes a pass of its own.
    pub(crate) layers_read_class: bool,
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

    /// Classes `C` of a class-conditional model; 0 for an unconditional one.
    pub fn classes(&self) -> usize {
        self.means.as_ref().map_or(0, |means| means.val().dims()[0])
    }

    /// The base's mean for each class, `[C, D_latent]`, in a class-conditional model.
    pub fn class_means(&self) -> Option<Tensor<2>> {
        self.means.as_ref().map(Param::val)
    }

    /// Whether a layer reads the class (a coupling whose entry sets `classes`), so that the
    /// passes of a class-conditional model need it.
    pub fn reads_class(&self) -> bool {
        self.layers_read_class
    }

    /// Runs every layer: `x: [batch, C, H, W]` (pixel values `0..=255`) → `(z, Σ V)`.
    ///
    /// # Panics
    /// If a layer reads the class: use [`FlowModel::forward_given`].
    pub fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        self.pass(x, None, mode)
    }

    /// [`FlowModel::forward`] given each example's class.
    pub fn forward_given(
        &self,
        x: Tensor<4>,
        classes: &Tensor<2>,
        mode: Mode,
    ) -> (Tensor<4>, Tensor<1>) {
        self.pass(x, Some(classes), mode)
    }

    fn pass(
        &self,
        x: Tensor<4>,
        classes: Option<&Tensor<2>>,
        mode: Mode,
    ) -> (Tensor<4>, Tensor<1>) {
        let batch = x.dims()[0];
        let v = Tensor::zeros([batch], &x.device());
        self.layers.iter().fold((x, v), |(h, v), layer| {
            let (h, v_layer) = match classes {
                Some(classes) => layer.forward_given(h, classes, mode),
                None => layer.forward(h, mode),
            };
            (h, v + v_layer)
        })
    }

    /// Per-example log-likelihood `L(x)` in nats, shape `[batch]`: a one-sample lower bound when
    /// the model has augmentations (always: dequantization is one). In a class-conditional model,
    /// the marginal over equally likely classes, `log (1/C) Σ_c exp L(x | c)`, itself a lower
    /// bound in expectation.
    pub fn log_likelihood(&self, x: Tensor<4>, mode: Mode) -> Tensor<1> {
        if self.means.is_some() {
            let per_class = self.class_log_likelihoods(x, mode);
            let [batch, classes] = per_class.dims();
            let max = per_class.clone().max_dim(1);
            let sum = (per_class - max.clone()).exp().sum_dim(1);
            return (max + sum.log())
                .sub_scalar((classes as f64).ln())
                .reshape([batch]);
        }
        let (z, v) = self.forward(x, mode);
        v + standard_normal_log_prob(z)
    }

    /// Per-example `L(x | c)` in nats, shape `[batch]`, given each example's class.
    pub fn log_likelihood_given(&self, x: Tensor<4>, classes: &Tensor<2>, mode: Mode) -> Tensor<1> {
        let (z, v) = self.forward_given(x, classes, mode);
        let batch = z.dims()[0];
        let z = z.reshape([batch as i64, -1]);
        let base = match &self.means {
            Some(means) => standard_normal_log_prob(z - classes.clone().matmul(means.val())),
            None => standard_normal_log_prob(z),
        };
        v + base
    }

    /// `L(x | c)` for every class `c`, `[batch, C]`, the classes' passes drawing the same noise:
    /// what the Bayes rule `argmax_c` classifies by.
    ///
    /// # Panics
    /// If the model is not class-conditional.
    pub fn class_log_likelihoods(&self, x: Tensor<4>, mode: Mode) -> Tensor<2> {
        let means = self
            .means
            .as_ref()
            .expect("class log-likelihoods of a class-conditional model")
            .val();
        let [classes, d] = means.dims();
        let (batch, device) = (x.dims()[0], x.device());
        if !self.reads_class() {
            // One pass serves every class: only the base depends on it.
            let (z, v) = self.forward(x, mode);
            let offsets = z.reshape([batch, 1, d]) - means.reshape([1, classes, d]);
            let base = offsets
                .square()
                .sum_dim(2)
                .reshape([batch, classes])
                .mul_scalar(-0.5)
                .sub_scalar(d as f64 * crate::flow::HALF_LN_2PI);
            return base + v.reshape([batch, 1]);
        }
        let seed = next_seed(&device);
        let per_class = (0..classes)
            .map(|c| {
                let given = one_hot(&vec![c; batch], classes, &device);
                with_stream(seed, || self.log_likelihood_given(x.clone(), &given, mode))
                    .reshape([batch, 1])
            })
            .collect();
        Tensor::cat(per_class, 1)
    }

    /// Bits per dimension of a log-likelihood `L` in nats: `−L / (D ln 2)`.
    pub fn bits_per_dim(&self, log_likelihood: f64) -> f64 {
        log_likelihood * (-1.0 / (self.dim() as f64 * std::f64::consts::LN_2))
    }

    /// Runs every layer's inverse, last first: latent `[batch, ...]` → images in `[0, 1]`
    /// (unclamped).
    ///
    /// # Panics
    /// If a layer reads the class: use [`FlowModel::inverse_given`].
    pub fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        self.pass_back(z, None, mode)
    }

    /// [`FlowModel::inverse`] given each example's class.
    pub fn inverse_given(&self, z: Tensor<4>, classes: &Tensor<2>, mode: Mode) -> Tensor<4> {
        self.pass_back(z, Some(classes), mode)
    }

    fn pass_back(&self, z: Tensor<4>, classes: Option<&Tensor<2>>, mode: Mode) -> Tensor<4> {
        self.layers.iter().rev().fold(z, |h, layer| match classes {
            Some(classes) => layer.inverse_given(h, classes, mode),
            None => layer.inverse(h, mode),
        })
    }

    /// `n` samples: `z ~ N(0, T² I)` through the inverse. A class-conditional model draws the
    /// classes in turn, sample `i` of class `i mod C`.
    pub fn sample(&self, n: usize, mode: Mode, temperature: f64, device: &Device) -> Tensor<4> {
        match self.classes() {
            0 => {
                let [c, h, w] = self.latent_shape();
                let z = random([n, c, h, w], Distribution::Normal(0.0, temperature), device);
                self.inverse(z, mode)
            }
            classes => {
                let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
                self.sample_given(&one_hot(&labels, classes, device), mode, temperature)
            }
        }
    }

    /// One sample of each row's class: `z ~ N(μ_c, T² I)` through the inverse (`μ_c = 0` in an
    /// unconditional model).
    pub fn sample_given(&self, classes: &Tensor<2>, mode: Mode, temperature: f64) -> Tensor<4> {
        let [n, _] = classes.dims();
        let [c, h, w] = self.latent_shape();
        let device = classes.device();
        let mut z = random(
            [n, c * h * w],
            Distribution::Normal(0.0, temperature),
            &device,
        );
        if let Some(means) = &self.means {
            z = z + classes.clone().matmul(means.val());
        }
        self.inverse_given(z.reshape([n, c, h, w]), classes, mode)
    }

    /// Forward in mean mode, then back in `mode`; given each example's class in a model whose
    /// layers read it.
    pub fn reconstruct(&self, x: Tensor<4>, classes: Option<&Tensor<2>>, mode: Mode) -> Tensor<4> {
        let (z, _) = self.pass(x, classes, Mode::Mean);
        self.pass_back(z, classes, mode)
    }

    /// Lets every layer initialize what it takes from data ([`Transform::initialize`]) on the
    /// batch `x` (of the classes `classes`, in a model whose layers read them), pushed through
    /// the layers before it in mean mode (which draws no noise).
    pub fn initialize(self, x: Tensor<4>, classes: Option<&Tensor<2>>) -> Self {
        let mut h = x;
        let layers = self
            .layers
            .into_iter()
            .map(|layer| {
                let layer = layer.initialize(&h);
                h = match classes {
                    Some(classes) => layer.forward_given(h.clone(), classes, Mode::Mean),
                    None => layer.forward(h.clone(), Mode::Mean),
                }
                .0
                .detach();
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

/// The classes `labels` one-hot, `[labels.len(), classes]`: what the `_given` methods of
/// [`FlowModel`] take.
///
/// # Panics
/// If a label is not below `classes`.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; labels.len() * classes];
    for (i, &label) in labels.iter().enumerate() {
        assert!(label < classes, "label {label} of {classes} classes");
        values[i * classes + label] = 1.0;
    }
    Tensor::from_data(TensorData::new(values, [labels.len(), classes]), device)
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
