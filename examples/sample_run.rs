//! A trained run, from the library: trained by `flowify::train::train` if the folder holds none
//! yet (one epoch of `conv2` on the shipped MNIST), then loaded back, sampled at two
//! temperatures and scored on test images.
//!
//!     cargo run --release --example sample_run -- runs/example-conv2

use std::path::PathBuf;

use burn::tensor::Device;
use flowify::data::{self, Dataset, Split};
use flowify::eval::evaluate;
use flowify::flow::{host_values, Mode};
use flowify::pictures::save_grid;
use flowify::train::{load_run, train, RunOptions, TrainConfig};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("runs/example-conv2".into()),
    );
    if !dir.join("config.json").exists() {
        let config = TrainConfig {
            dataset: Dataset::Mnist,
            arch: "conv2".into(),
            epochs: 1,
            max_steps: None,
            batch_size: 128,
            lr: 5e-4,
            seed: 0,
            data_dir: PathBuf::from("data"),
            log_every: 10,
            checkpoint_every: None,
            test_limit: Some(1000),
            device: Default::default(),
            minutes: None,
            patience: None,
            ema: None,
        };
        let spec =
            flowify::presets::spec(&config.dataset, &config.arch).map_err(anyhow::Error::msg)?;
        let summary = train(&config, &spec, &dir, RunOptions::default())?;
        println!(
            "trained {} steps: test {:.4} bits/dim",
            summary.steps, summary.test_bpd
        );
    }

    let device = Device::flex();
    device.seed(1);
    let (config, model) = load_run(&dir, &device)?;
    let [c, h, w] = model.input_shape();
    for temperature in [1.0, 0.7] {
        let images = host_values(model.sample(16, Mode::Sample, temperature, &device));
        let path = dir.join(format!("samples-T{temperature}.png"));
        save_grid(&path, &images, 16, c, h, w, 4, 2)?;
        println!("wrote {}", path.display());
    }
    // The K-sample bound of docs/method.md §1.3 beside the one-sample figure.
    let test = data::load(&config.dataset, &config.data_dir, Split::Test)?.truncated(1000);
    let scores = evaluate(&model, &test, 500, 4, &device);
    println!(
        "1000 test images: {:.4} bits/dim (one sample), {:.4} (K = 4)",
        scores.bpd,
        scores.iw_bpd.unwrap_or(scores.bpd)
    );
    Ok(())
}
