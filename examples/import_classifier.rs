//! A trained network brought into flowify (docs/method.md §2.12): trains a plain LeakyReLU MLP
//! classifier on MNIST with burn, saves its weights to safetensors, imports them, and checks that
//! the flow in mean mode classifies every test image as the classifier does.
//!
//! `cargo run --release --example import_classifier -- [STEPS] [OUT.safetensors]`
//! (defaults: 300 steps, `runs/classifier.safetensors`). The file can then be imported from the
//! command line and fine-tuned as a flow; the README shows how.

use std::path::PathBuf;

use anyhow::Result;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use flowify::data::{self, Dataset, Examples, Split};
use flowify::eval::batch_tensor;
use flowify::flow::{host_values, Mode};
use flowify::import::{import, sequential_spec};
use flowify::layers::trained::{Layout, Trained};

/// The LeakyReLU's slope, in the classifier and in its import.
const SLOPE: f64 = 0.1;

#[derive(Module, Debug)]
struct Classifier {
    layers: Vec<Linear>,
}

impl Classifier {
    /// Pixels `k` are read as `(k + ½)/256`, what the flow's dequantization gives in mean mode.
    fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let [batch, ..] = pixels.dims();
        let x = pixels
            .add_scalar(0.5)
            .div_scalar(256.0)
            .reshape([batch as i64, -1]);
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last {
                leaky_relu(h, SLOPE)
            } else {
                h
            }
        })
    }
}

/// Each row's largest entry.
fn classes(logits: Tensor<2>) -> Vec<usize> {
    let [_, k] = logits.dims();
    host_values(logits)
        .chunks(k)
        .map(|row| (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best }))
        .collect()
}

fn accuracy(predicted: &[usize], set: &Examples) -> f64 {
    let right = predicted
        .iter()
        .zip(&set.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    right as f64 / set.len as f64
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map_or(Ok(300), |s| s.parse())?;
    let out = PathBuf::from(args.next().unwrap_or("runs/classifier.safetensors".into()));
    let data_dir = PathBuf::from("data");
    let train = data::load(&Dataset::Mnist, &data_dir, Split::Train)?;
    let test = data::load(&Dataset::Mnist, &data_dir, Split::Test)?;

    let plain = Device::flex();
    plain.seed(0);
    let device = plain.clone().autodiff();
    let mut model = Classifier {
        layers: vec![
            LinearConfig::new(784, 256).init(&device),
            LinearConfig::new(256, 10).init(&device),
        ],
    };
    let mut optim = AdamConfig::new().init();
    let loss = CrossEntropyLossConfig::new().init(&device);
    let batch = 128;
    for step in 0..steps {
        let start = (step * batch) % (train.len - batch);
        let indices: Vec<usize> = (start..start + batch).collect();
        let labels: Vec<i64> = indices.iter().map(|&i| train.labels[i] as i64).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
        let value = loss.forward(
            model.forward(batch_tensor(&train, &indices, &device)),
            targets,
        );
        let grads = GradientsParams::from_grads(value.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let model = model.valid();
    let all: Vec<usize> = (0..test.len).collect();
    let pixels = batch_tensor(&test, &all, &plain);
    let logits = model.forward(pixels.clone());
    let predicted = classes(logits.clone());
    println!(
        "classifier: {steps} steps, test accuracy {:.4}",
        accuracy(&predicted, &test)
    );

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    model.save_into(&mut SafetensorsStore::from_file(&out).overwrite(true))?;
    let trained = Trained::read(&out, Layout::Burn).map_err(anyhow::Error::msg)?;
    let spec = sequential_spec(&trained, [1, 28, 28], SLOPE).map_err(anyhow::Error::msg)?;
    let flow = import(&spec, &trained, &plain).map_err(anyhow::Error::msg)?;
    let (z, _) = flow.forward(pixels, Mode::Mean);
    let z = z.reshape([test.len, 10]);
    let flowed = classes(z.clone());
    let same = predicted
        .iter()
        .zip(&flowed)
        .filter(|(a, b)| a == b)
        .count();
    let scale = host_values(logits.clone().abs().max())
        .first()
        .copied()
        .unwrap_or(1.0);
    let deviation = host_values((z - logits).abs().max())[0] / scale;
    println!(
        "imported flow, mean mode: test accuracy {:.4}, the same class for {same} of {} images, \
         largest logit deviation {deviation:.2e} (relative)",
        accuracy(&flowed, &test),
        test.len
    );
    println!("weights: {}", out.display());
    Ok(())
}
