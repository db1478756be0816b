//! flowify: ordinary networks — dense layers, convolutions, invertible activations — turned into
//! normalizing flows ("flowification", Máté et al., NeurIPS 2022) and trained as density models
//! of images, 2-D toy densities and tabular data, on burn.
//!
//! - [`flow`]: the layer contract (forward → `(z, V)`, inverse, each with a [`flow::Mode`]).
//! - [`layers`]: one file per layer of the spec, and [`layers::Layer`], a model's list element.
//! - [`model`]: a list of layers with a standard-normal base; likelihood, sampling, reconstruction.
//! - [`spec`]: architecture files, a model as data; [`presets`]: the paper's ten, shipped as
//!   such files; [`info`] lists one.
//! - [`data`]: MNIST and CIFAR-10 readers and the checked download; 2-D toy sets; CSV files.
//! - [`train`], [`eval`]: the training protocol, run folders, checkpoints; test bits/dim;
//!   [`average`]: the moving average of the weights that a run may evaluate.
//! - [`pictures`]: sample grids, loss curves and heat maps as PNG; [`plane`]: 2-D densities on
//!   a grid, and the energy distance between point sets.
//! - [`bench`](mod@bench): timing of training steps.
//! - [`kernels`]: the ops burn's general ops handle slowly, each portable, with a CPU kernel as
//!   the fast path on the `flex` backend.
//! - [`device`]: the devices a run can use (`cpu`, `wgpu`).

pub mod average;
pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod flow;
pub mod import;
pub mod info;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod pictures;
pub mod plane;
pub mod presets;
pub mod spec;
pub mod train;
