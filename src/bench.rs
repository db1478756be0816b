//! `flowify bench`: the time of whole training steps (forward, backward, optimizer, rotation
//! retraction) on random pixels of the dataset's shape, after warm-up.

use std::time::Instant;

use crate::kernels::adam::FusedAdam;
use crate::kernels::fast_path;
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use crate::flow::{Mode, Transform};
use crate::layers::Layer;
use crate::model::{one_hot, FlowModel};
use crate::spec::ModelSpec;
use crate::train::train_step;

/// Median, minimum and maximum of the timed steps, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The architecture's name (a preset's, or its file's stem).
    pub arch: String,
    /// One input's `[C, H, W]`.
    pub input: [usize; 3],
    pub batch_size: usize,
    /// The device, as burn writes it.
    pub device: String,
    /// Whether the ops ran their portable bodies rather than the CPU kernels.
    pub portable: bool,
    pub threads: usize,
    pub ms_per_step: Spread,
    pub steps_per_sec: f64,
    pub peak_rss_mb: f64,
    /// Each layer's forward + backward time, where asked for ([`per_layer`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerTime>>,
}

/// One layer's forward + backward time on its real input, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTime {
    pub name: String,
    pub ms: f64,
}

/// `spec`'s model, initialized from seed 0 on `device` with autodiff.
fn seeded_model(spec: &ModelSpec, device: &Device) -> Result<(FlowModel, Device), String> {
    device.seed(0);
    let device = device.clone().autodiff();
    let model = spec.init(&device)?;
    Ok((model, device))
}

/// `batch_size` images of random whole pixel values in the spec's input shape.
fn random_batch(spec: &ModelSpec, batch_size: usize, device: &Device) -> Tensor<4> {
    let [c, h, w] = spec.input;
    Tensor::<4>::random(
        [batch_size, c, h, w],
        Distribution::Uniform(0.0, 256.0),
        device,
    )
    .floor()
}

/// For a class-conditional spec, the classes of a batch in turn, one-hot.
fn batch_classes(spec: &ModelSpec, batch_size: usize, device: &Device) -> Option<Tensor<2>> {
    spec.classes.map(|classes| {
        let labels: Vec<usize> = (0..batch_size).map(|i| i % classes).collect();
        one_hot(&labels, classes, device)
    })
}

/// Times `steps` training steps of `spec` (named `arch`) on random batches after `warmup` steps,
/// on `device`. A step ends when its loss is on the host, so a GPU's queue is drained in each.
pub fn bench(
    spec: &ModelSpec,
    arch: &str,
    steps: usize,
    warmup: usize,
    batch_size: usize,
    device: &Device,
) -> Result<BenchReport, String> {
    let total = warmup
        .checked_add(steps.max(1))
        .ok_or("--warmup and --steps: more steps than can be counted")?;
    let (mut model, autodiff) = seeded_model(spec, device)?;
    let mut optim = FusedAdam::init();
    let mut times = Vec::new();
    for step in 0..total {
        let x = random_batch(spec, batch_size, &autodiff);
        let classes = batch_classes(spec, batch_size, &autodiff);
        let started = Instant::now();
        let (next, loss) = train_step(model, &mut optim, x, classes, 1e-4, step);
        if !loss.is_finite() {
            return Err(format!("step {step}: the loss is {loss}"));
        }
        model = next;
        if step >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(BenchReport {
        arch: arch.to_string(),
        input: spec.input,
        batch_size,
        device: format!("{device:?}"),
        portable: !fast_path(device),
        threads: rayon::current_num_threads(),
        ms_per_step: Spread {
            median,
            min: times[0],
            max: times[times.len() - 1],
        },
        steps_per_sec: 1e3 / median,
        peak_rss_mb: peak_rss_mb(),
        layers: None,
    })
}

/// Forward + backward time of each layer on its real input (the batch pushed through the layers
/// before it), in milliseconds, labelled with the layer's name: where a training step's time goes.
pub fn per_layer(
    spec: &ModelSpec,
    repeats: usize,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<LayerTime>, String> {
    let (model, device) = seeded_model(spec, device)?;
    let mut x = random_batch(spec, batch_size, &device);
    let classes = batch_classes(spec, batch_size, &device);
    let forward = |layer: &Layer, x: Tensor<4>| match &classes {
        Some(classes) => layer.forward_given(x, classes, Mode::Sample),
        None => layer.forward(x, Mode::Sample),
    };
    let mut rows = Vec::new();
    for (layer_spec, layer) in spec.layers.iter().zip(&model.layers) {
        let mut times = Vec::new();
        for _ in 0..repeats.max(1).saturating_add(1) {
            let input = x.clone().detach().require_grad();
            let started = Instant::now();
            let (z, v) = forward(layer, input);
            let loss = z.sum() + v.sum();
            let _ = loss.backward();
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        rows.push(LayerTime {
            name: layer_spec.name(),
            ms: times[times.len() / 2],
        });
        x = forward(layer, x.detach()).0.detach();
    }
    Ok(rows)
}

/// The process's peak resident memory (`VmHWM`), in MiB; 0 where `/proc` is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
