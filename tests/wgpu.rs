//! flowify on burn's wgpu backend, in a build with the `wgpu` feature, over whatever Vulkan
//! driver the machine has (CI installs Mesa's software one, lavapipe; without a driver these
//! tests fail and say how to get one): a model's forward pass, gradients and inverse agree with
//! the CPU's, and a run trains there, is interrupted, and resumes and evaluates on the CPU.
#![cfg(feature = "wgpu")]

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use common::values;
use flowify::data::{self, Dataset, Split};
use flowify::device::DeviceChoice;
use flowify::eval::batch_tensor;
use flowify::flow::Mode;
use flowify::model::FlowModel;
use flowify::presets::spec;
use flowify::train::{load_run, loss_and_gradients, train, RunOptions, TrainConfig, TrainError};

fn wgpu() -> Device {
    DeviceChoice::Wgpu(None)
        .open()
        .unwrap_or_else(|e| panic!("{e} (the wgpu tests need a Vulkan driver)"))
}

/// Mean-mode `z`, `V`, inverse and the loss's parameter gradients, as host values.
fn mean_mode(model: &FlowModel, x: Tensor<4>) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let (z, v) = model.forward(x.clone(), Mode::Mean);
    let inverse = model.inverse(z.clone().detach(), Mode::Mean);
    let (_, grads) = loss_and_gradients(model, x, None, Mode::Mean);
    struct Collect<'a>(&'a GradientsParams, Vec<Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1
                .push(self.0.get::<D>(param.id).map(values).unwrap_or_default());
        }
    }
    let mut collect = Collect(&grads, vec![]);
    model.visit(&mut collect);
    (values(z), values(v), values(inverse), collect.1)
}

fn deviation(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The same weights on the CPU (kernels) and on wgpu (portable ops) compute the same mean-mode
/// values and gradients.
#[test]
fn a_preset_computes_the_same_on_wgpu_as_on_the_cpu() {
    let gpu = wgpu().autodiff();
    for arch in ["conv2_nsf", "conv1"] {
        let spec = spec(&Dataset::Mnist, arch).unwrap();
        let cpu = common::device(4);
        let model = spec.init(&cpu).unwrap();
        let x =
            Tensor::<4>::random([2, 1, 28, 28], Distribution::Uniform(0.0, 256.0), &cpu).floor();
        let on_cpu = mean_mode(&model, x.clone());
        let moved = model.to_device(&gpu);
        let on_gpu = mean_mode(&moved, x.to_device(&gpu));
        for (name, a, b) in [
            ("z", &on_gpu.0, &on_cpu.0),
            ("V", &on_gpu.1, &on_cpu.1),
            ("inverse", &on_gpu.2, &on_cpu.2),
        ] {
            let d = deviation(a, b);
            assert!(d <= 1e-3, "{arch}: {name} differs by {d:e}");
        }
        assert_eq!(on_gpu.3.len(), on_cpu.3.len());
        let mut worst = 0f32;
        for (i, (a, b)) in on_gpu.3.iter().zip(&on_cpu.3).enumerate() {
            assert_eq!(a.is_empty(), b.is_empty(), "{arch}: parameter {i}");
            worst = worst.max(deviation(a, b));
        }
        assert!(worst <= 5e-3, "{arch}: a gradient differs by {worst:e}");
        eprintln!("{arch}: gradients within {worst:.1e} of the CPU's");
    }
}

/// A run trains on wgpu, is stopped after its first step, resumes on the CPU from that
/// checkpoint, and its model evaluates the same on both devices.
#[test]
fn a_run_trains_on_wgpu_and_resumes_and_evaluates_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let config = TrainConfig {
        dataset: Dataset::Mnist,
        arch: "conv2_nsf".into(),
        epochs: 1,
        max_steps: Some(3),
        batch_size: 16,
        lr: 5e-4,
        seed: 5,
        data_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data"),
        log_every: 1,
        checkpoint_every: None,
        test_limit: Some(32),
        device: DeviceChoice::Wgpu(None),
        minutes: None,
        patience: None,
        ema: None,
    };
    let stop = Arc::new(AtomicBool::new(true));
    let stopped = train(
        &config,
        &spec(&Dataset::Mnist, "conv2_nsf").unwrap(),
        &dir,
        RunOptions {
            stop: Some(stop),
            quiet: true,
            ..Default::default()
        },
    );
    assert!(
        matches!(stopped, Err(TrainError::Interrupted { step: 1, .. })),
        "{stopped:?}"
    );
    let recorded = flowify::train::read_config(&dir).unwrap();
    assert_eq!(recorded.device, DeviceChoice::Wgpu(None));

    let on_cpu = TrainConfig {
        device: DeviceChoice::Cpu,
        ..recorded
    };
    let summary = train(
        &on_cpu,
        &flowify::train::read_spec(&dir).unwrap(),
        &dir,
        RunOptions {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .expect("the run resumes on the CPU");
    assert_eq!(summary.steps, 3);
    assert!(summary.test_bpd.is_finite(), "{summary:?}");
    assert_eq!(
        flowify::train::read_config(&dir).unwrap().device,
        DeviceChoice::Cpu
    );

    let test = data::load(&Dataset::Mnist, &on_cpu.data_dir, Split::Test)
        .unwrap()
        .truncated(8);
    let indices: Vec<usize> = (0..8).collect();
    let likelihood = |device: &Device| {
        let (_, model) = load_run(&dir, device).unwrap();
        values(model.log_likelihood(batch_tensor(&test, &indices, device), Mode::Mean))
    };
    let (cpu, gpu) = (likelihood(&Device::flex()), likelihood(&wgpu()));
    let d = deviation(&gpu, &cpu);
    assert!(
        d <= 1e-4,
        "log-likelihoods differ by {d:e}: {gpu:?} vs {cpu:?}"
    );
}
