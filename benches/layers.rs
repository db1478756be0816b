//! Criterion benchmarks of the hot layers: forward + backward of a flowified dense layer, the
//! spline activation, tile/untile of an overlapping convolution and a coupling stack, at the
//! sizes of the MNIST presets (batch 128).

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use flowify::flow::{Mode, Transform};
use flowify::layers::activation::RqSplineConfig;
use flowify::layers::coupling::CouplingStackConfig;
use flowify::layers::dense::FlowLinearConfig;
use flowify::layers::tile::TileConfig;

fn device() -> Device {
    let device = Device::flex();
    device.seed(0);
    device.autodiff()
}

/// Forward + backward of `f` on a fresh leaf copy of `x`.
fn step<const D: usize, const E: usize>(
    x: &Tensor<D>,
    f: impl Fn(Tensor<D>) -> (Tensor<E>, Tensor<1>),
) {
    let (z, v) = f(x.clone().detach().require_grad());
    let _ = (z.sum() + v.sum()).backward();
}

fn layers(c: &mut Criterion) {
    let dev = device();
    let mut group = c.benchmark_group("forward+backward");
    group.sample_size(10);

    let dense = FlowLinearConfig::new(784, 512).init(&dev);
    let x = Tensor::<2>::random([128, 784], Distribution::Normal(0.0, 1.0), &dev);
    group.bench_function("dense 784→512", |b| {
        b.iter(|| step(&x, |x| dense.forward(x, Mode::Sample)))
    });

    let spline = RqSplineConfig::new().init(&dev);
    let h = Tensor::<2>::random([128, 784], Distribution::Normal(0.0, 1.5), &dev);
    group.bench_function("spline 128×784", |b| {
        b.iter(|| step(&h, |x| Transform::<2>::forward(&spline, x, Mode::Sample)))
    });

    let tile = TileConfig::new(3, 2).init(&dev);
    let image = Tensor::<4>::random([128, 16, 29, 29], Distribution::Normal(0.0, 1.0), &dev);
    group.bench_function("tile k3 s2 16×29×29", |b| {
        b.iter(|| step(&image, |x| tile.forward(x, Mode::Sample)))
    });

    let coupling = CouplingStackConfig::new(16, 2, true).init(&dev);
    let map = Tensor::<4>::random([128, 16, 7, 7], Distribution::Normal(0.0, 1.0), &dev);
    group.bench_function("conv coupling 16×7×7", |b| {
        b.iter(|| step(&map, |x| coupling.forward(x, Mode::Sample)))
    });
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
