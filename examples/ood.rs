//! Out-of-distribution detection with a density model: a run trained on MNIST scores the MNIST
//! test set, the same images inverted (`255 − k`), and uniform noise, by each input's
//! log-likelihood; prints each set's mean bits/dim and the AUROC of telling MNIST from each.
//!
//! `cargo run --release --example ood -- RUN [K]` (K: forward passes per input, default 1).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::{Device, Distribution, Tensor};
use flowify::data::{self, Dataset, Split};
use flowify::eval::{auroc, batch_tensor, log_likelihoods};
use flowify::train::load_run;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let run = PathBuf::from(args.next().context("usage: ood RUN [K]")?);
    let samples: usize = args.next().map_or(Ok(1), |k| k.parse())?;
    let device = Device::flex();
    device.seed(0);
    let (config, model) = load_run(&run, &device)?;
    anyhow::ensure!(
        config.dataset == Dataset::Mnist,
        "{}: not an MNIST run",
        run.display()
    );
    let test = data::load(&Dataset::Mnist, &config.data_dir, Split::Test)?;
    let all: Vec<usize> = (0..test.len).collect();
    let mnist = batch_tensor(&test, &all, &device);
    let sets = [
        ("MNIST test", mnist.clone()),
        ("inverted", mnist.clone().neg().add_scalar(255.0)),
        (
            "uniform noise",
            Tensor::random(mnist.dims(), Distribution::Uniform(0.0, 256.0), &device).floor(),
        ),
    ];
    let mut scores = vec![];
    for (name, x) in sets {
        let ll: Vec<f64> = x
            .split(500, 0)
            .into_iter()
            .flat_map(|chunk| log_likelihoods(&model, chunk, None, samples).bound)
            .collect();
        let mean = ll.iter().sum::<f64>() / ll.len() as f64;
        println!(
            "{name:>14}: mean bits/dim {:.4} (K = {samples})",
            model.bits_per_dim(mean)
        );
        scores.push((name, ll));
    }
    for (name, ll) in &scores[1..] {
        println!(
            "AUROC, MNIST test against {name}: {:.6}",
            auroc(&scores[0].1, ll)
        );
    }
    Ok(())
}
