//! Standardization (docs/method.md §2.13): `z = (x − μ) / σ` per value, with the training
//! split's means and standard deviations, a fixed affine bijection with `V = −Σ ln σ`. As the
//! first layer it makes a model's likelihood one of the data as its file gives it, so figures
//! compare with any other model of the same file.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::LayerConfig;
use crate::flow::{Kind, Mode, Transform};

/// `layer = "standardize"`: `mean` and `std`, one per input value; left out, a run fills them
/// in from its training split ([`crate::spec::ModelSpec::fitted`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardizeSpec {
    /// `μ`, one per input value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f64>,
    /// `σ > 0`, one per input value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f64>,
}

impl StandardizeSpec {
    /// The entry for data whose rows are `values` (`dim` numbers each): their means and
    /// standard deviations (a constant column gets `σ = 1`).
    pub fn of(values: &[f32], dim: usize) -> Self {
        let rows = (values.len() / dim.max(1)).max(1) as f64;
        let mut mean = vec![0.0; dim];
        for row in values.chunks_exact(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += f64::from(v) / rows);
        }
        let mut var = vec![0.0; dim];
        for row in values.chunks_exact(dim) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(v) - m).powi(2) / rows;
            }
        }
        let std = var
            .into_iter()
            .map(|v| if v > 0.0 { v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, std }
    }

    /// Whether `mean` and `std` are still to be filled in from data.
    pub fn is_unfitted(&self) -> bool {
        self.mean.is_empty() && self.std.is_empty()
    }
}

impl LayerConfig for StandardizeSpec {
    type Layer = Standardize;

    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        let dim: usize = input.iter().product();
        if self.is_unfitted() {
            return Ok(input);
        }
        for (field, values) in [("mean", &self.mean), ("std", &self.std)] {
            if values.len() != dim {
                return Err(format!(
                    "{field}: expected {dim} values, one per input value, got {}",
                    values.len()
                ));
            }
        }
        match self.std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            Some(i) => Err(format!(
                "std: expected numbers > 0, got {} at {i}",
                self.std[i]
            )),
            None if self.mean.iter().all(|m| m.is_finite()) => Ok(input),
            None => Err("mean: expected finite numbers".into()),
        }
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Bijection
    }

    fn name(&self) -> String {
        "Std".into()
    }

    fn params(&self, _input: [usize; 3]) -> usize {
        0
    }

    fn init(&self, input: [usize; 3], _device: &Device) -> Standardize {
        let dim: usize = input.iter().product();
        let (mean, std) = if self.is_unfitted() {
            (vec![0.0; dim], vec![1.0; dim])
        } else {
            (self.mean.clone(), self.std.clone())
        };
        Standardize {
            shape: input.to_vec(),
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std: std.into_iter().map(|s| s as f32).collect(),
        }
    }
}

/// The fixed affine map of [`StandardizeSpec`]; its numbers are constants, not parameters.
#[derive(Module, Debug)]
pub struct Standardize {
    shape: Vec<usize>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardize {
    /// `values` as a `[1, C, H, W]` tensor that broadcasts over a batch.
    fn row(&self, values: &[f32], device: &Device) -> Tensor<4> {
        let shape = [1, self.shape[0], self.shape[1], self.shape[2]];
        Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
    }
}

impl Transform<4> for Standardize {
    /// `x: [batch, C, H, W]` → `(x − μ)/σ`; `V = −Σ ln σ`, the same for every example.
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let device = x.device();
        let log_det: f64 = self.std.iter().map(|&s| -f64::from(s).ln()).sum();
        let v = Tensor::full([x.dims()[0]], log_det, &device);
        let z = (x - self.row(&self.mean, &device)) / self.row(&self.std, &device);
        (z, v)
    }

    fn inverse(&self, z: Tensor<4>, _mode: Mode) -> Tensor<4> {
        let device = z.device();
        z * self.row(&self.std, &device) + self.row(&self.mean, &device)
    }
}
