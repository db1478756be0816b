//! Independent references for the checks of docs/method.md §5: Jacobians by autodiff, determinants by
//! Gaussian elimination in f64, and host-side tensor helpers.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use flowify::data::{Dataset, Toy};
use flowify::layers::dense::FlowLinear;
use flowify::train::TrainConfig;

/// An autodiff CPU device with a fixed seed.
pub fn device(seed: u64) -> Device {
    let dev = Device::flex();
    dev.seed(seed);
    dev.autodiff()
}

/// Draws from `N(0, std²)` on the device's generator.
pub fn random<const D: usize>(shape: [usize; D], std: f64, dev: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), dev)
}

/// A `[1]` parameter tensor holding `v`, trainable like the layers' own.
pub fn scalar_param(p: Param<Tensor<1>>, v: f64) -> Param<Tensor<1>> {
    p.map(|s| s.zeros_like().add_scalar(v).require_grad())
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    flowify::flow::host_values(t)
}

pub fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The Jacobian `∂f(x)_i/∂x_j` of `f: [1, n] → [1, m]` at `x`, row by row with autodiff.
pub fn jacobian(f: impl Fn(Tensor<2>) -> Tensor<2>, x: &[f32], device: &Device) -> Vec<Vec<f64>> {
    let n = x.len();
    let m = f(tensor(x.to_vec(), [1, n], device)).dims()[1];
    (0..m)
        .map(|i| {
            let input = tensor(x.to_vec(), [1, n], device).require_grad();
            let out = f(input.clone()).narrow(1, i, 1).sum();
            let grads = out.backward();
            values(input.grad(&grads).expect("input reaches the output"))
                .iter()
                .map(|&g| g as f64)
                .collect()
        })
        .collect()
}

/// `log |det m|` by Gaussian elimination with partial pivoting.
pub fn log_abs_det(mut m: Vec<Vec<f64>>) -> f64 {
    let n = m.len();
    let mut total = 0.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap();
        m.swap(col, pivot);
        let p = m[col][col];
        total += p.abs().ln();
        for row in col + 1..n {
            let factor = m[row][col] / p;
            for k in col..n {
                m[row][k] -= factor * m[col][k];
            }
        }
    }
    total
}

pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

/// The dense matrix `M` with `z = x·M + b` in mean mode, composed from the layer's parameters
/// (`U1 · [0 | diag e^s] · U2`), independently of its forward pass.
pub fn dense_matrix(layer: &FlowLinear) -> Tensor<2> {
    let (d1, d2) = (layer.d_input(), layer.d_output());
    let dev = layer.log_scale.device();
    let scale = Tensor::<2>::eye(d2, &dev) * layer.log_scale.val().exp().unsqueeze_dim::<2>(0);
    // Rows of U1's output that survive the middle step: the last D2 for a funnel, all for the rest.
    let p = if d1 >= d2 {
        Tensor::cat(vec![Tensor::zeros([d1 - d2, d2], &dev), scale], 0)
    } else {
        scale.narrow(0, 0, d1)
    };
    layer.u1.matrix().matmul(p).matmul(layer.u2.matrix())
}

/// A short run of the `dense` preset on a toy density: `steps` steps of 128 points at the
/// learning rate the README uses for them, tested on 2,000 points.
pub fn toy_config(toy: Toy, steps: usize) -> TrainConfig {
    TrainConfig {
        dataset: Dataset::Toy(toy),
        arch: "dense".into(),
        epochs: 1,
        max_steps: Some(steps),
        batch_size: 128,
        lr: 5e-3,
        seed: 0,
        data_dir: "data".into(),
        log_every: 100,
        checkpoint_every: None,
        test_limit: Some(2000),
        device: Default::default(),
        minutes: None,
        patience: None,
        ema: None,
    }
}

/// Every parameter's values with its path (`layers.3.kernel.base`, …), in traversal order.
pub fn named_parameters(model: &impl Module) -> Vec<(String, Vec<f32>)> {
    struct Named(Vec<(String, Vec<f32>)>, Vec<String>);
    impl ModuleVisitor for Named {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((self.1.join("."), values(param.val())));
        }
    }
    let mut found = Named(vec![], vec![]);
    model.visit(&mut found);
    found.0
}
