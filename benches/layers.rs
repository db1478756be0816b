//! Criterion benchmarks of the hot layers: forward + backward of a flowified dense layer, the
//! spline activation, tile/untile of an overlapping convolution and a coupling stack, at the
//! sizes of the MNIST presets (batch 128); and the CPU kernels beside the burn ops they replace
//! (a context network's 3×3 convolution, a context network's MLP layer, the tile's unfold and
//! its fold, the sampling noise).

use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use flowify::flow::{Mode, Transform};
use flowify::kernels::conv3x3::conv3x3_rows;
use flowify::kernels::linear::linear_rows;
use flowify::kernels::noise::random;
use flowify::kernels::to_rows;
use flowify::kernels::unfold::unfold;
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

/// `x` as a fresh leaf, through `f`, summed and differentiated.
fn grad_step<const D: usize, const E: usize>(x: &Tensor<D>, f: impl Fn(Tensor<D>) -> Tensor<E>) {
    let _ = f(x.clone().detach().require_grad()).sum().backward();
}

fn kernels(c: &mut Criterion) {
    let dev = device();
    let mut group = c.benchmark_group("kernel vs burn, forward+backward");
    group.sample_size(10);

    // Conv(16→32, 2, 2) of conv2: 64 channels on 8×8 maps.
    let conv = Conv2dConfig::new([64, 64], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&dev);
    let image = Tensor::<4>::random([128, 64, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
    let rows = to_rows(image.clone());
    group.bench_function("conv3x3+ReLU 64ch 8×8: burn conv2d", |b| {
        b.iter(|| grad_step(&image, |x| relu(conv.forward(x))))
    });
    group.bench_function("conv3x3+ReLU 64ch 8×8: kernel", |b| {
        b.iter(|| grad_step(&rows, |x| conv3x3_rows(&conv, x, [8, 8], true)))
    });

    // Conv(16→24, 2, 2) of conv1: a 56-unit layer on 128·14·14 positions.
    let layer = LinearConfig::new(56, 56).init(&dev);
    let positions = Tensor::<2>::random([25_088, 56], Distribution::Normal(0.0, 1.0), &dev);
    group.bench_function("linear+ReLU 25088×56→56: burn Linear", |b| {
        b.iter(|| grad_step(&positions, |x| relu(layer.forward(x))))
    });
    group.bench_function("linear+ReLU 25088×56→56: kernel", |b| {
        b.iter(|| grad_step(&positions, |x| linear_rows(&layer, x, true)))
    });

    // An overlapping tile (k = 3, t = 2) of a 16-channel 29×29 map: unfold, and fold backward.
    let padded = Tensor::<4>::random([128, 16, 29, 29], Distribution::Normal(0.0, 1.0), &dev);
    let options = UnfoldOptions::new([2, 2], [0, 0], [1, 1]);
    group.bench_function("unfold k3 s2 128×16×29×29: burn unfold4d", |b| {
        b.iter(|| grad_step(&padded, |x| unfold4d(x, [3, 3], options.clone())))
    });
    group.bench_function("unfold k3 s2 128×16×29×29: kernel", |b| {
        b.iter(|| grad_step(&padded, |x| unfold(x, 3, 2)))
    });

    // The copy noise such a tile draws: one normal per patch value.
    let normal = Distribution::Normal(0.0, 1.0);
    group.bench_function("normal noise 128×144×196: burn random", |b| {
        b.iter(|| Tensor::<3>::random([128, 144, 196], normal, &dev))
    });
    group.bench_function("normal noise 128×144×196: kernel", |b| {
        b.iter(|| random([128, 144, 196], normal, &dev))
    });
    group.finish();
}

criterion_group!(benches, layers, kernels);
criterion_main!(benches);
