//! An exponential moving average of a model's weights, for evaluation (Polyak averaging;
//! docs/method.md §4): `θ̄ ← d_t·θ̄ + (1 − d_t)·θ` after every optimizer step, with the decay
//! warmed up as `d_t = min(d, (1 + t)/(10 + t))` so that the first steps do not tie the average
//! to the initialization.
//!
//! Rotations are averaged as matrices, which leaves the group; [`WeightAverage::model`] pulls
//! each back onto it before the average is used.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::model::FlowModel;

/// Newton–Schulz steps that take an averaged rotation back to an orthogonal matrix. Each maps a
/// singular value σ to σ(3 − σ²)/2: nearby rotations average to σ ≈ 1, already within round-off
/// after two, and even σ = 0.8 comes within 10⁻⁶ after five.
const POLISHES: usize = 5;

/// The running average of a training model's weights, held without autodiff.
#[derive(Debug, Clone)]
pub struct WeightAverage {
    decay: f64,
    average: FlowModel,
}

impl WeightAverage {
    /// An average with decay `decay` in `(0, 1)` that starts at `model`'s weights.
    pub fn new(decay: f64, model: &FlowModel) -> Self {
        Self::resumed(decay, model.valid())
    }

    /// An average with decay `decay` whose current value is `average` (from a checkpoint).
    pub fn resumed(decay: f64, average: FlowModel) -> Self {
        Self {
            decay,
            average: average.valid(),
        }
    }

    /// The decay of the update after optimizer step `step` (from 0).
    pub fn decay_at(&self, step: usize) -> f64 {
        self.decay.min((1 + step) as f64 / (10 + step) as f64)
    }

    /// Takes `model`, the weights after optimizer step `step` (from 0), into the average.
    pub fn update(&mut self, model: &FlowModel, step: usize) {
        let mut current = Flattened(vec![]);
        model.visit(&mut current);
        let mut blend = Blend {
            decay: self.decay_at(step),
            current: current.0.into_iter(),
        };
        self.average = self.average.clone().map(&mut blend);
    }

    /// The averaged weights as they stand, unpolished (what a checkpoint stores).
    pub fn raw(&self) -> &FlowModel {
        &self.average
    }

    /// The averaged model, its rotations back on the orthogonal group: the one to evaluate.
    pub fn model(&self) -> FlowModel {
        (0..POLISHES).fold(self.average.clone(), |m, _| m.retract(true))
    }
}

/// Every float parameter's value, flattened, in the order of burn's traversal.
struct Flattened(Vec<Tensor<1>>);

impl ModuleVisitor for Flattened {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().inner();
        let n = value.shape().num_elements();
        self.0.push(value.reshape([n]));
    }
}

/// Blends each parameter of the average with the current value [`Flattened`] collected from
/// a model of the same architecture, hence in the same order.
struct Blend<I> {
    decay: f64,
    current: I,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Blend<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, average, mapper) = param.consume();
        let current = self
            .current
            .next()
            .unwrap_or_else(|| unreachable!("the average has the model's architecture"))
            .reshape(average.dims());
        let blended = average.mul_scalar(self.decay) + current.mul_scalar(1.0 - self.decay);
        Param::from_mapped_value(id, blended, mapper)
    }
}
