//! Evaluation: bits/dim over a whole split, with the one-sample bound and the K-sample
//! importance-weighted bound of docs/method.md §1.3.

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::ImageSet;
use crate::flow::{host_values, Mode};
use crate::model::FlowModel;

/// Test-set figures of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Mean bits/dim of one stochastic forward pass per image (the figure the paper reports).
    pub bpd: f64,
    /// Mean bits/dim of `−log mean_k exp(L_k)` over `samples` passes; `None` for one sample.
    pub iw_bpd: Option<f64>,
    /// `K`, the forward passes per image.
    pub samples: usize,
    /// Images evaluated.
    pub images: usize,
}

/// Pixel values of the images at `indices` as a float batch `[n, C, H, W]`.
pub fn batch_tensor(set: &ImageSet, indices: &[usize], device: &Device) -> Tensor<4> {
    let mut pixels = Vec::with_capacity(indices.len() * set.dim());
    for &i in indices {
        pixels.extend(set.image(i).iter().map(|&p| p as f32));
    }
    let shape = [indices.len(), set.channels, set.height, set.width];
    Tensor::from_data(TensorData::new(pixels, shape), device)
}

/// Bits/dim of `model` over every image of `set`, with `samples ≥ 1` forward passes per image.
/// `model` should be on a device without autodiff (`model.valid()`).
pub fn evaluate(
    model: &FlowModel,
    set: &ImageSet,
    batch_size: usize,
    samples: usize,
    device: &Device,
) -> Evaluation {
    let samples = samples.max(1);
    let (mut one, mut weighted) = (0.0, 0.0);
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let x = batch_tensor(set, chunk, device);
        let passes: Vec<Vec<f64>> = (0..samples)
            .map(|_| {
                host_values(model.log_likelihood(x.clone(), Mode::Sample))
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .collect();
        for i in 0..chunk.len() {
            one += passes[0][i];
            weighted += log_mean_exp(passes.iter().map(|p| p[i]));
        }
    }
    let n = set.len as f64;
    Evaluation {
        bpd: model.bits_per_dim(one / n),
        iw_bpd: (samples > 1).then(|| model.bits_per_dim(weighted / n)),
        samples,
        images: set.len,
    }
}

/// `log((1/K) Σ exp(a_k))`, computed stably.
pub fn log_mean_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    let count = values.clone().count() as f64;
    max + (values.map(|v| (v - max).exp()).sum::<f64>() / count).ln()
}
