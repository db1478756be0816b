//! flowify as a library: a network read from a spec file, built, and used to score images.
//!
//!     cargo run --release --example density -- examples/wide-conv2-leaky.toml

use std::path::Path;

use burn::tensor::Device;
use flowify::data::{self, Dataset, Split};
use flowify::eval::batch_tensor;
use flowify::flow::{host_values, Mode};
use flowify::spec::ModelSpec;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/wide-conv2-leaky.toml".into());
    let spec = ModelSpec::read(Path::new(&path)).map_err(anyhow::Error::msg)?;
    let device = Device::flex();
    let model = spec.init(&device).map_err(anyhow::Error::msg)?;
    println!("{path}: {} parameters", model.trainable_params());
    let test = data::load(&Dataset::Mnist, Path::new("data"), Split::Test)?;
    let images = batch_tensor(&test, &[0, 1, 2, 3], &device);
    for (i, l) in host_values(model.log_likelihood(images, Mode::Sample))
        .into_iter()
        .enumerate()
    {
        let bpd = model.bits_per_dim(f64::from(l));
        println!("test image {i}: L = {l:.1} nats, {bpd:.3} bits/dim (untrained)");
    }
    Ok(())
}
