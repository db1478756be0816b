//! Training with the protocol of docs/method.md §4: Adam, cosine schedule to 0 over the planned steps,
//! loss `−mean L`. A run folder holds the configuration, metrics, checkpoints, pictures and the
//! summary; a run can be resumed from its last checkpoint and ends where an uninterrupted run
//! would, because the data order and every random draw are functions of `(seed, step)`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::average::WeightAverage;
use crate::data::{self, Dataset, Examples, Split};
use crate::device::DeviceChoice;
use crate::eval::{batch_classes, batch_tensor, evaluate, Evaluation};
use crate::flow::{host_values, Mode};
use crate::kernels::adam::FusedAdam;
use crate::kernels::noise;
use crate::model::{one_hot, FlowModel};
use crate::pictures;
use crate::plane::Grid;
use crate::spec::ModelSpec;

/// Everything that defines a training run; saved as `config.json` in the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Which images.
    pub dataset: Dataset,
    /// The architecture's name: a preset's, or the stem of the architecture file it was read
    /// from. The run's own `model.json` holds the architecture itself.
    pub arch: String,
    /// Passes over the training set to plan for.
    pub epochs: usize,
    /// Plan for (and stop at) this many optimizer steps instead of `epochs` whole epochs.
    pub max_steps: Option<usize>,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Peak learning rate; the cosine schedule takes it to 0 at the last planned step.
    pub lr: f64,
    /// Seed of the initialization, data order and every random draw.
    pub seed: u64,
    /// Folder with `mnist/` or `cifar-10-batches-bin/`.
    pub data_dir: PathBuf,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Also checkpoint every this many steps (checkpoints are always written at epoch ends).
    pub checkpoint_every: Option<usize>,
    /// Evaluate on the first this many test images only (default: all).
    pub test_limit: Option<usize>,
    /// Where the run trains; a checkpoint does not depend on it (runs from before this field
    /// trained on the CPU).
    #[serde(default)]
    pub device: DeviceChoice,
    /// Train for this many minutes of wall time instead of `epochs`: the cosine schedule's
    /// length is planned from the measured step time (and `max_steps`, if set, caps it).
    #[serde(default)]
    pub minutes: Option<f64>,
    /// On data with a validation split: stop after this many epoch ends without a better
    /// validation log-likelihood (the best model is kept either way).
    #[serde(default)]
    pub patience: Option<usize>,
    /// Evaluate (and keep for `eval`, `sample`, ...) an exponential moving average of the weights
    /// with this decay instead of the last ones (`crate::average`).
    #[serde(default)]
    pub ema: Option<f64>,
}

impl TrainConfig {
    /// Steps in one epoch of `train_len` images (the last batch may be smaller).
    pub fn steps_per_epoch(&self, train_len: usize) -> usize {
        train_len.div_ceil(self.batch_size)
    }

    /// The most optimizer steps the run may take: `planned_steps`, or under `minutes`,
    /// `max_steps` (unbounded without it).
    fn step_bound(&self, train_len: usize) -> usize {
        match self.minutes {
            Some(_) => self.max_steps.unwrap_or(usize::MAX),
            None => self.planned_steps(train_len),
        }
    }

    /// Optimizer steps the run plans for.
    pub fn planned_steps(&self, train_len: usize) -> usize {
        self.max_steps
            .unwrap_or_else(|| self.epochs.saturating_mul(self.steps_per_epoch(train_len)))
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |flag: &str, why: &str| Err(TrainError::Config(format!("--{flag}: {why}")));
        if self.batch_size == 0 {
            return bad("batch-size", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return bad("lr", "must be in (0, 1]");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs", "must be at least 1");
        }
        if self.minutes.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            return bad("minutes", "must be a number > 0");
        }
        if self.max_steps == Some(0) {
            return bad("max-steps", "must be at least 1");
        }
        if self.ema.is_some_and(|d| !(d > 0.0 && d < 1.0)) {
            return bad("ema", "must be a decay in (0, 1), such as 0.999");
        }
        if self.patience == Some(0) {
            return bad("patience", "must be at least 1");
        }
        if self.patience.is_some() && self.dataset.is_images() {
            return bad(
                "patience",
                &format!("{} has no validation split to stop on", self.dataset.name()),
            );
        }
        if self.test_limit == Some(0) {
            return bad("test-limit", "must be at least 1");
        }
        if self.log_every == 0 || self.checkpoint_every == Some(0) {
            return bad("log-every/--checkpoint-every", "must be at least 1");
        }
        Ok(())
    }
}

/// What a finished run reports; saved as `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub dataset: Dataset,
    pub arch: String,
    pub steps: usize,
    pub epochs: f64,
    pub test_bpd: f64,
    /// The same evaluation's mean test log-likelihood per example, in nats.
    #[serde(default)]
    pub test_log_likelihood: f64,
    pub test_images: usize,
    pub final_train_bpd: f64,
    pub train_seconds: f64,
    /// Wall time of the run's steps and evaluations, over all its sessions.
    #[serde(default)]
    pub wall_seconds: f64,
    pub seconds_per_step: f64,
    pub seed: u64,
    pub params: usize,
    pub device: DeviceChoice,
    pub run_dir: PathBuf,
    /// On data with a validation split: the best validation log-likelihood (nats per example)
    /// and its step, whose model the test figures are of.
    #[serde(default)]
    pub best: Option<(f64, usize)>,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("step {step}: the loss is {value}; stopped, {kept}")]
    NonFinite {
        step: usize,
        value: f64,
        kept: String,
    },
    #[error("interrupted after step {step}; checkpoint written, continue with --resume {dir}")]
    Interrupted { step: usize, dir: PathBuf },
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// How a run is driven: fresh or resumed, how it may be stopped, whether it draws progress.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run in the folder from its last checkpoint.
    pub resume: bool,
    /// Set from outside (Ctrl-C) to checkpoint and stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// No progress bar.
    pub quiet: bool,
}

/// Position of a run, saved in every checkpoint; the default is a run's start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct RunState {
    step: usize,
    train_seconds: f64,
    /// Wall time so far, evaluations included.
    #[serde(default)]
    wall_seconds: f64,
    /// Under `--minutes`: the steps the schedule plans for, once measured.
    #[serde(default)]
    planned: Option<usize>,
    /// The best validation log-likelihood so far (nats per example) and its step.
    #[serde(default)]
    best: Option<(f64, usize)>,
    /// Epoch ends since the best.
    #[serde(default)]
    stale: usize,
}

/// The paper's peak learning rate, where neither `--lr` nor the architecture names one.
pub const PAPER_LR: f64 = 5e-4;

/// Steps timed, in each session of a `--minutes` run, before its schedule is planned.
const CALIBRATION_STEPS: usize = 20;

/// The steps a run plans for at `state.step`, recorded in `state`: without `--minutes`, its
/// plan as it stands; under it, as many as fit in what is left of the budget at the pace of this
/// session (which began at `session = (step, wall seconds)`; evaluations included), less one
/// more evaluation of `evaluation` seconds (the run's last), within `[state.step, bound]`.
fn replan(
    config: &TrainConfig,
    state: &mut RunState,
    session: (usize, f64),
    evaluation: f64,
    bound: usize,
) -> usize {
    let Some(minutes) = config.minutes else {
        return state.planned.unwrap_or(bound);
    };
    let pace = (state.wall_seconds - session.1) / (state.step - session.0).max(1) as f64;
    let left = minutes * 60.0 - state.wall_seconds - evaluation;
    let more = (left / pace).floor().max(0.0).min(usize::MAX as f64 / 2.0) as usize;
    let planned = state.step.saturating_add(more).min(bound);
    state.planned = Some(planned);
    planned
}

const CHECKPOINT: &str = "checkpoint";
/// The weight average, in the checkpoint of a run that keeps one.
const AVERAGE: &str = "average.safetensors";
/// The model of the best validation log-likelihood, in a run on data with a validation split.
const BEST: &str = "best.safetensors";
const POLISH_EVERY: usize = 100;

/// The random draws of step `step` of a run seeded with `seed`.
fn step_seed(seed: u64, step: usize) -> u64 {
    noise::mix(seed, step as u64)
}

/// The learning rate of step `step` (from 0) of `planned`: cosine annealing from `peak` to 0.
pub fn cosine_lr(peak: f64, step: usize, planned: usize) -> f64 {
    0.5 * peak * (1.0 + (std::f64::consts::PI * step as f64 / planned as f64).cos())
}

/// The order in which epoch `epoch` visits `n` training images.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        step_seed(seed, epoch) ^ 0xD1CE,
    ));
    order
}

/// Trains `config` into the run folder `out`: a fresh run of `spec`, or with
/// [`RunOptions::resume`] the run already there (whose own `model.json` `spec` must be).
///
/// Three steps of `mlp` on the MNIST copy shipped in `data/`, then the run loaded back to
/// draw samples, as `flowify sample` does:
///
/// ```
/// use std::path::PathBuf;
/// use burn::tensor::Device;
/// use flowify::data::Dataset;
/// use flowify::flow::Mode;
/// use flowify::train::{load_run, train, RunOptions, TrainConfig};
///
/// let config = TrainConfig {
///     dataset: Dataset::Mnist,
///     arch: "mlp".into(),
///     epochs: 1,
///     max_steps: Some(3),
///     batch_size: 16,
///     lr: 5e-4,
///     seed: 0,
///     data_dir: PathBuf::from("data"),
///     log_every: 1,
///     checkpoint_every: None,
///     test_limit: Some(32),
///     device: Default::default(),
///     minutes: None,
///     patience: None,
///     ema: None,
/// };
/// let spec = flowify::presets::spec(&Dataset::Mnist, "mlp").map_err(anyhow::Error::msg)?;
/// let out = tempfile::tempdir()?;
/// let options = RunOptions { quiet: true, ..Default::default() };
/// let summary = train(&config, &spec, out.path(), options)?;
/// assert_eq!(summary.steps, 3);
///
/// let device = Device::flex();
/// let (_, model) = load_run(out.path(), &device)?;
/// let images = model.sample(4, Mode::Mean, 1.0, &device);
/// assert_eq!(images.dims(), [4, 1, 28, 28]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn train(
    config: &TrainConfig,
    spec: &ModelSpec,
    out: &Path,
    options: RunOptions,
) -> Result<Summary, TrainError> {
    config.check()?;
    let device = config.device.open().map_err(TrainError::Config)?;
    let splits = Splits::load(config)?;
    check_input(config, spec, splits.train.shape())?;
    device.seed(config.seed);
    let device = device.autodiff();
    // A resumed run's spec is its own `model.json`, fitted when it started.
    let spec = &if options.resume {
        spec.clone()
    } else {
        spec.fitted(&splits.train).map_err(TrainError::Config)?
    };
    let (mut model, mut optim, state, average) =
        open_run(config, spec, out, options.resume, &device)?;
    if !options.resume {
        // What layers take from data (ActNorm), from the run's first batch.
        let first = epoch_order(splits.train.len, config.seed, 0);
        let batch = &first[..config.batch_size.min(splits.train.len)];
        let classes = batch_classes(&splits.train, batch, model.classes(), &device);
        model = model.initialize(
            batch_tensor(&splits.train, batch, &device),
            classes.as_ref(),
        );
    }
    // A fresh run's average starts from the initialized weights.
    let average = average.or_else(|| config.ema.map(|d| WeightAverage::new(d, &model)));
    let mut run = Run::new(config, out, &splits, state, &options, average);
    while run.goes_on() {
        model = run.step(model, &mut optim, &device)?;
        run.after_step(&model, &optim, &device)?;
    }
    run.finish(&model, &device)
}

/// The splits a run reads: training, test (cut to `test_limit`), and validation where the data
/// has one.
struct Splits {
    train: Examples,
    test: Examples,
    validation: Option<Examples>,
}

impl Splits {
    fn load(config: &TrainConfig) -> Result<Self, TrainError> {
        let load = |split| data::load(&config.dataset, &config.data_dir, split);
        let train = load(Split::Train)?;
        let mut test = load(Split::Test)?;
        if let Some(limit) = config.test_limit {
            test = test.truncated(limit);
        }
        let validation = if config.dataset.is_images() {
            None
        } else {
            Some(load(Split::Validation)?)
        };
        Ok(Self {
            train,
            test,
            validation,
        })
    }
}

/// A run's bookkeeping while it trains: its position and schedule, clocks, data order, logs
/// and progress bar. The model and optimizer pass through it step by step.
struct Run<'a> {
    config: &'a TrainConfig,
    out: &'a Path,
    splits: &'a Splits,
    options: &'a RunOptions,
    state: RunState,
    /// Steps the cosine schedule runs over; under `--minutes`, planned from the measured pace.
    planned: usize,
    /// The most steps the run may take.
    bound: usize,
    per_epoch: usize,
    /// Step and wall time where this process took the run up: the pace is measured from here.
    session: (usize, f64),
    /// Seconds the last epoch-end evaluation took.
    last_evaluation: f64,
    /// When wall time was last added to the state.
    mark: Instant,
    /// The shuffled order of the epoch in progress: a function of (seed, epoch), drawn once.
    order: (usize, Vec<usize>),
    log: StepLog,
    bar: ProgressBar,
    /// The last evaluation on the test split.
    evaluation: Option<Evaluation>,
    /// Early stopping's patience has run out.
    stopping: bool,
    /// The weight average that is evaluated, where the run keeps one.
    average: Option<WeightAverage>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a TrainConfig,
        out: &'a Path,
        splits: &'a Splits,
        state: RunState,
        options: &'a RunOptions,
        average: Option<WeightAverage>,
    ) -> Self {
        let bound = config.step_bound(splits.train.len);
        // Under `--minutes`, the peak rate holds (an unbounded cosine) until the pace is measured.
        let planned = state.planned.unwrap_or(bound);
        Self {
            config,
            out,
            splits,
            options,
            planned,
            bound,
            per_epoch: config.steps_per_epoch(splits.train.len),
            session: (state.step, state.wall_seconds),
            last_evaluation: 0.0,
            mark: Instant::now(),
            order: (usize::MAX, vec![]),
            log: StepLog::default(),
            bar: progress_bar(planned, state.step, options.quiet),
            evaluation: None,
            // A resumed run that had already stopped early trains no further.
            stopping: config.patience.is_some_and(|p| state.stale >= p),
            state,
            average,
        }
    }

    fn goes_on(&self) -> bool {
        self.state.step < self.planned && !self.stopping
    }

    /// One optimizer step on the next batch of the epoch's order, with its metrics.
    fn step(
        &mut self,
        model: FlowModel,
        optim: &mut ModuleOptimizer,
        device: &Device,
    ) -> Result<FlowModel, TrainError> {
        let (config, step) = (self.config, self.state.step);
        let started = Instant::now();
        let (epoch, position) = (step / self.per_epoch, step % self.per_epoch);
        if self.order.0 != epoch {
            self.order = (
                epoch,
                epoch_order(self.splits.train.len, config.seed, epoch),
            );
        }
        let end = ((position + 1) * config.batch_size).min(self.splits.train.len);
        let batch = &self.order.1[position * config.batch_size..end];
        device.seed(step_seed(config.seed, step));
        let x = batch_tensor(&self.splits.train, batch, device);
        let classes = batch_classes(&self.splits.train, batch, model.classes(), device);
        let lr = cosine_lr(config.lr, step, self.planned);
        let (model, loss_value) = train_step(model, optim, x, classes, lr, step);
        if !loss_value.is_finite() {
            self.bar.abandon();
            return Err(non_finite(self.out, step + 1, loss_value));
        }
        if let Some(average) = &mut self.average {
            average.update(&model, step);
        }
        self.state.step += 1;
        self.state.train_seconds += started.elapsed().as_secs_f64();
        self.clock();
        if self.state.step - self.session.0 == CALIBRATION_STEPS {
            self.replan();
        }

        // The loss is `−mean L`.
        let bpd = model.bits_per_dim(-loss_value);
        self.bar.set_position(self.state.step as u64);
        self.bar
            .set_message(format!("epoch {}  bpd {bpd:.3}", epoch + 1));
        self.log.add(bpd);
        if self.state.step % config.log_every == 0 || self.state.step == self.planned {
            self.log.write(self.out, self.state, epoch, lr)?;
        }
        Ok(model)
    }

    /// Adds the wall time since the last mark to the state.
    fn clock(&mut self) {
        self.state.wall_seconds += self.mark.elapsed().as_secs_f64();
        self.mark = Instant::now();
    }

    /// The model evaluations see: the weight average where the run keeps one.
    fn evaluated(&self, model: &FlowModel) -> FlowModel {
        match &self.average {
            Some(average) => average.model(),
            None => model.valid(),
        }
    }

    /// Plans the schedule again from the pace so far (a no-op without `--minutes`).
    fn replan(&mut self) {
        self.planned = replan(
            self.config,
            &mut self.state,
            self.session,
            self.last_evaluation,
            self.bound,
        );
        self.bar.set_length(self.planned as u64);
    }

    /// What follows a step: the evaluations at an epoch's end (test, validation, pictures), the
    /// checkpoint when one is due, and a stop asked for from outside.
    fn after_step(
        &mut self,
        model: &FlowModel,
        optim: &ModuleOptimizer,
        device: &Device,
    ) -> Result<(), TrainError> {
        let (config, out, step) = (self.config, self.out, self.state.step);
        let epoch_end = step % self.per_epoch == 0;
        if epoch_end || step == self.planned {
            let plain = device.clone().inner();
            let evaluating = Instant::now();
            let evaluated = self.evaluated(model);
            self.evaluation = Some(evaluate_epoch(
                out,
                &evaluated,
                &self.splits.test,
                self.state,
                self.per_epoch,
                &plain,
            )?);
            if let Some(validation) = &self.splits.validation {
                self.stopping = validate(
                    out,
                    &evaluated,
                    validation,
                    &mut self.state,
                    config.patience,
                    &plain,
                )?;
            }
            self.last_evaluation = evaluating.elapsed().as_secs_f64();
            // At an epoch end, with its evaluation timed, the budget is planned again.
            self.clock();
            let measured = step - self.session.0;
            if epoch_end && step < self.planned && measured > CALIBRATION_STEPS {
                self.replan();
            }
        }
        let interrupted = self
            .options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst));
        let periodic = config.checkpoint_every.is_some_and(|n| step % n == 0);
        if epoch_end || periodic || interrupted || self.stopping || step == self.planned {
            let average = self.average.as_ref().map(WeightAverage::raw);
            save_checkpoint(&out.join(CHECKPOINT), model, optim, average, self.state)?;
        }
        if interrupted && !self.stopping && step < self.planned {
            self.bar.abandon();
            return Err(TrainError::Interrupted {
                step,
                dir: out.to_path_buf(),
            });
        }
        Ok(())
    }

    /// The run's test figures (of the best model, where validation picked one) and its summary.
    fn finish(mut self, model: &FlowModel, device: &Device) -> Result<Summary, TrainError> {
        self.bar.finish();
        let plain = device.clone().inner();
        let test = &self.splits.test;
        let evaluation = match (self.evaluation.take(), self.state.best) {
            (_, Some((_, step))) if step != self.state.step => {
                let best = load_model(&self.out.join(BEST), model.valid())?;
                evaluate(&best, test, 500, 1, &plain)
            }
            (Some(e), _) => e,
            (None, _) => evaluate(&self.evaluated(model), test, 500, 1, &plain),
        };
        self.clock();
        let summary = summarize(
            self.config,
            self.out,
            model,
            self.state,
            self.per_epoch,
            evaluation,
            self.log.last,
        );
        write_json(&self.out.join("summary.json"), &summary)?;
        Ok(summary)
    }
}

/// A run folder holding `model` at step 0 (an imported network, docs/method.md §2.12): `eval`,
/// `sample` and `encode` read it, and `train --resume` trains it as `config` plans, from these
/// values (a resumed run is never initialized from data again).
pub fn write_run(
    config: &TrainConfig,
    spec: &ModelSpec,
    model: &FlowModel,
    out: &Path,
) -> Result<(), TrainError> {
    config.check()?;
    check_input(config, spec, config.dataset.shape()?)?;
    start_run_dir(out, config, spec)?;
    save_checkpoint(
        &out.join(CHECKPOINT),
        model,
        &FusedAdam::init(),
        None,
        RunState::default(),
    )
}

/// What a finished run reports.
fn summarize(
    config: &TrainConfig,
    out: &Path,
    model: &FlowModel,
    state: RunState,
    per_epoch: usize,
    evaluation: Evaluation,
    final_train_bpd: f64,
) -> Summary {
    Summary {
        dataset: config.dataset.clone(),
        arch: config.arch.clone(),
        steps: state.step,
        epochs: state.step as f64 / per_epoch as f64,
        test_bpd: evaluation.bpd,
        test_log_likelihood: evaluation.log_likelihood,
        test_images: evaluation.images,
        final_train_bpd,
        train_seconds: state.train_seconds,
        wall_seconds: state.wall_seconds,
        seconds_per_step: state.train_seconds / state.step.max(1) as f64,
        seed: config.seed,
        params: model.trainable_params(),
        device: config.device,
        run_dir: out.to_path_buf(),
        best: state.best,
    }
}

/// Refuses an architecture whose input is not the shape of the dataset's examples.
fn check_input(
    config: &TrainConfig,
    spec: &ModelSpec,
    [c, h, w]: [usize; 3],
) -> Result<(), TrainError> {
    if let Some(classes) = spec.classes {
        let data = config.dataset.classes()?;
        if data != Some(classes) {
            let data = data.map_or("has no labels".into(), |n| format!("has {n} classes"));
            return Err(TrainError::Config(format!(
                "the architecture is class-conditional with {classes} classes, but {} {data}",
                config.dataset
            )));
        }
    }
    if spec.input == [c, h, w] {
        return Ok(());
    }
    let what = if config.dataset.is_images() {
        format!("{} images are {c}×{h}×{w}", config.dataset.name())
    } else {
        format!("{} examples are flat, [{c}]", config.dataset)
    };
    Err(TrainError::Config(format!(
        "the architecture's input is {}, but {what}",
        spec.input_text(),
    )))
}

/// What a run starts from: the model, the optimizer, the position, and the weight average
/// where the run keeps one.
type Opened = (FlowModel, ModuleOptimizer, RunState, Option<WeightAverage>);

/// What a run starts from: fresh in a new run folder (no average yet: it starts from the
/// initialized model), or the last checkpoint of the run in `out`.
fn open_run(
    config: &TrainConfig,
    spec: &ModelSpec,
    out: &Path,
    resume: bool,
    device: &Device,
) -> Result<Opened, TrainError> {
    let model = spec.init(device).map_err(TrainError::Config)?;
    // Autodiff has nothing to differentiate; refused here, before the run folder is written.
    if model.num_params() == 0 {
        return Err(TrainError::Config(format!(
            "the architecture {} has no parameters to train: add a layer that learns, such as \
             linear, conv, nsf or act_norm",
            config.arch
        )));
    }
    let optim = FusedAdam::init();
    if !resume {
        start_run_dir(out, config, spec)?;
        return Ok((model, optim, RunState::default(), None));
    }
    let dir = checkpoint_dir(out)?;
    let (model, optim, state) = load_checkpoint(&dir, model, optim)?;
    let average = match config.ema {
        Some(decay) => {
            let template = spec
                .init(&device.clone().inner())
                .map_err(TrainError::Config)?;
            let average = load_model(&dir.join(AVERAGE), template)?;
            Some(WeightAverage::resumed(decay, average))
        }
        None => None,
    };
    truncate_metrics(&out.join("metrics.jsonl"), state.step)?;
    // The device may differ from the one the run started on.
    write_json(&out.join("config.json"), config)?;
    Ok((model, optim, state, average))
}

/// The training bits/dim of the steps since the last metrics line.
#[derive(Default)]
struct StepLog {
    sum: f64,
    count: usize,
    /// The mean of the last line written.
    last: f64,
}

impl StepLog {
    fn add(&mut self, bpd: f64) {
        self.sum += bpd;
        self.count += 1;
    }

    /// Appends the metrics line of `state.step` and starts the next mean.
    fn write(
        &mut self,
        out: &Path,
        state: RunState,
        epoch: usize,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.last = self.sum / self.count as f64;
        (self.sum, self.count) = (0.0, 0);
        append_metric(
            out,
            &serde_json::json!({
                "step": state.step, "epoch": epoch + 1, "train_bpd": self.last,
                "lr": lr, "seconds": state.train_seconds,
            }),
        )
    }
}

/// Test bits/dim at the end of an epoch (or of the run), with its metrics line and pictures.
fn evaluate_epoch(
    out: &Path,
    model: &FlowModel,
    test_set: &Examples,
    state: RunState,
    per_epoch: usize,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let valid = model.valid();
    let evaluation = evaluate(&valid, test_set, 500, 1, device);
    append_metric(
        out,
        &serde_json::json!({
            "step": state.step, "epoch": state.step as f64 / per_epoch as f64, "test_bpd": evaluation.bpd,
            "test_log_likelihood": evaluation.log_likelihood,
        }),
    )?;
    let epoch = (state.step - 1) / per_epoch + 1;
    write_pictures(out, &valid, test_set, epoch, device)?;
    Ok(evaluation)
}

/// The validation log-likelihood at an epoch's end, with its metrics line; keeps the model in
/// [`BEST`] when it is the best so far. Returns whether `patience` epoch ends have passed
/// without a better one.
fn validate(
    out: &Path,
    model: &FlowModel,
    validation: &Examples,
    state: &mut RunState,
    patience: Option<usize>,
    device: &Device,
) -> Result<bool, TrainError> {
    let valid = model.valid();
    let score = evaluate(&valid, validation, 500, 1, device).log_likelihood;
    append_metric(
        out,
        &serde_json::json!({"step": state.step, "validation_log_likelihood": score}),
    )?;
    if state.best.is_none_or(|(best, _)| score > best) {
        state.best = Some((score, state.step));
        state.stale = 0;
        save_model(&out.join(BEST), &valid)?;
    } else {
        state.stale += 1;
    }
    Ok(patience.is_some_and(|p| state.stale >= p))
}

/// Why a run stopped at a non-finite loss, and what is kept.
fn non_finite(out: &Path, step: usize, value: f64) -> TrainError {
    let checkpoint = out.join(CHECKPOINT);
    let kept = if checkpoint.exists() {
        format!(
            "the last good checkpoint is kept in {}",
            checkpoint.display()
        )
    } else {
        "no checkpoint had been written yet".to_string()
    };
    TrainError::NonFinite { step, value, kept }
}

/// One optimizer step on the batch `x` (pixel values) at learning rate `lr`: returns the updated
/// model and the loss `−mean L` in nats. A non-finite loss leaves the model as it was.
/// `classes`: each example's class one-hot, for a class-conditional model (see
/// [`loss_and_gradients`]).
pub fn train_step(
    model: FlowModel,
    optim: &mut ModuleOptimizer,
    x: Tensor<4>,
    classes: Option<Tensor<2>>,
    lr: f64,
    step: usize,
) -> (FlowModel, f64) {
    let (value, grads) = loss_and_gradients(&model, x, classes, Mode::Sample);
    if !value.is_finite() {
        return (model, value);
    }
    let model = optim
        .step(lr, model, grads)
        .retract((step + 1) % POLISH_EVERY == 0);
    (model, value)
}

/// The loss `−mean L` of the batch `x` in `mode` and its gradients, the batch split in two
/// halves that run at once. Given `classes` (each example's, one-hot), `L` is `L(x | c)`;
/// without, a class-conditional model's loss is the marginal's.
///
/// Why: burn's autodiff bookkeeping and its element-wise ops run on the calling thread, which
/// left one of two cores idle for a quarter of a conv preset's step. The loss is a sum over
/// images, so the halves' losses and gradients add up to the batch's. Each half works on its own
/// autodiff leaves of the parameters (same values, same ids), so the two graphs stay apart and
/// their backward passes run together, and draws its noise from its own stream, seeded from the
/// device's generator before the split, so a seed still fixes a step to the bit.
pub fn loss_and_gradients(
    model: &FlowModel,
    x: Tensor<4>,
    classes: Option<Tensor<2>>,
    mode: Mode,
) -> (f64, GradientsParams) {
    let batch = x.dims()[0];
    let device = x.device();
    let half = |part: Tensor<4>, classes: Option<Tensor<2>>, seed: u64| {
        let replica = model.clone().map(&mut FreshLeaves);
        noise::with_stream(seed, || {
            let log_likelihood = match classes {
                Some(classes) => replica.log_likelihood_given(part, &classes, mode),
                None => replica.log_likelihood(part, mode),
            };
            let loss = log_likelihood.sum().neg().div_scalar(batch as f64);
            let value = loss.clone().into_scalar::<f32>() as f64;
            (
                value,
                GradientsParams::from_grads(loss.backward(), &replica),
            )
        })
    };
    if batch == 1 {
        return half(x, classes, noise::device_seed(&device));
    }
    let mut halves = x.split(batch.div_ceil(2), 0).into_iter();
    let (first, second) = (halves.next().unwrap(), halves.next().unwrap());
    let (first_classes, second_classes) = match classes {
        Some(classes) => {
            let mut halves = classes.split(batch.div_ceil(2), 0).into_iter();
            (halves.next(), halves.next())
        }
        None => (None, None),
    };
    let seeds = [noise::device_seed(&device), noise::device_seed(&device)];
    let ((value, mut grads), (other_value, other_grads)) = rayon::join(
        || half(first, first_classes, seeds[0]),
        || half(second, second_classes, seeds[1]),
    );
    model.visit(&mut AddGradients {
        into: &mut grads,
        from: other_grads,
    });
    (value + other_value, grads)
}

/// Gives every parameter a new autodiff leaf with the same value and id, so work on the copy
/// builds a graph of its own.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let fresh = value.clone().detach();
        let fresh = if value.is_require_grad() {
            fresh.require_grad()
        } else {
            fresh
        };
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Adds the gradients in `from` to those in `into`, parameter by parameter.
struct AddGradients<'a> {
    into: &'a mut GradientsParams,
    from: GradientsParams,
}

impl ModuleVisitor for AddGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(other) = self.from.remove::<D>(param.id) else {
            return;
        };
        let sum = match self.into.remove::<D>(param.id) {
            Some(grad) => grad + other,
            None => other,
        };
        self.into.register(param.id, sum);
    }
}

/// The configuration a run folder was started with.
pub fn read_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    read_json(&dir.join("config.json"))
}

/// The architecture a run folder holds (`model.json`, every default written out): the source of
/// truth for every later command, whatever file or preset the run was started from.
pub fn read_spec(dir: &Path) -> Result<ModelSpec, TrainError> {
    let path = dir.join("model.json");
    if !path.exists() {
        read_config(dir)?;
    }
    ModelSpec::read(&path).map_err(TrainError::Config)
}

/// Builds the model a run folder describes, without autodiff, and loads its weights: those of
/// the best validation log-likelihood where the data has a validation split, else the last
/// checkpoint's (its weight average, in a run that keeps one).
pub fn load_run(dir: &Path, device: &Device) -> Result<(TrainConfig, FlowModel), TrainError> {
    let config = read_config(dir)?;
    let spec = read_spec(dir)?;
    let model = spec.init(device).map_err(TrainError::Config)?;
    let best = dir.join(BEST);
    if best.exists() {
        return Ok((config, load_model(&best, model)?));
    }
    let checkpoint = checkpoint_dir(dir)?;
    let model = match config.ema {
        Some(decay) => {
            let average = load_model(&checkpoint.join(AVERAGE), model)?;
            WeightAverage::resumed(decay, average).model()
        }
        None => load_model(&checkpoint.join("model.safetensors"), model)?,
    };
    Ok((config, model))
}

fn start_run_dir(out: &Path, config: &TrainConfig, spec: &ModelSpec) -> Result<(), TrainError> {
    if out.join("config.json").exists() {
        return Err(TrainError::Config(format!(
            "{}: already holds a run; continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
    write_json(&out.join("config.json"), config)?;
    write_json(&out.join("model.json"), spec)?;
    fs::write(out.join("metrics.jsonl"), "").map_err(|e| io_error(out, e))
}

fn progress_bar(planned: usize, done: usize, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(planned as u64);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg}  step {pos}/{len} [{bar:30}] {per_sec} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

/// What a run draws at an epoch's end: samples (for 2-D data, three panels: the test points,
/// as many samples and the model's density) and the loss curve.
fn write_pictures(
    out: &Path,
    model: &FlowModel,
    test_set: &Examples,
    epoch: usize,
    device: &Device,
) -> Result<(), TrainError> {
    let dir = out.join("samples");
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let picture = dir.join(format!("epoch-{epoch:03}.png"));
    match model.input_shape() {
        [2, 1, 1] => {
            let data: Vec<f32> = (0..test_set.len).fold(vec![], |mut v, i| {
                test_set.extend_with(i, &mut v);
                v
            });
            let samples = host_values(model.sample(test_set.len, Mode::Sample, 1.0, device));
            let grid = Grid::around(&data, PLANE_CELLS);
            pictures::save_panels(
                &picture,
                &[
                    ("data", &grid.histogram(&data)),
                    ("samples", &grid.histogram(&samples)),
                    (
                        "density E_u[exp L]",
                        &grid.density(model, PLANE_SAMPLES, device),
                    ),
                ],
                PLANE_CELLS,
            )
        }
        [c @ (1 | 3), h, w] => {
            // A class-conditional model draws a row of each class.
            let (n, samples) = match model.classes() {
                0 => (64, model.sample(64, Mode::Sample, 1.0, device)),
                classes => {
                    let rows: Vec<usize> = (0..8 * classes).map(|i| i / 8).collect();
                    let given = one_hot(&rows, classes, device);
                    (rows.len(), model.sample_given(&given, Mode::Sample, 1.0))
                }
            };
            pictures::save_grid(&picture, &host_values(samples), n, c, h, w, 8, 2)
        }
        _ => Ok(()),
    }
    .map_err(|e| io_error(&picture, e))?;
    let curves = read_curves(&out.join("metrics.jsonl"))?;
    let curve = out.join("loss.png");
    pictures::save_loss_curve(&curve, &curves.train, &curves.test).map_err(|e| io_error(&curve, e))
}

/// Cells per side of a 2-D model's pictures.
const PLANE_CELLS: usize = 100;
/// Forward passes per cell of a 2-D model's density picture (the `K` of docs/method.md §1.3).
const PLANE_SAMPLES: usize = 16;

/// A run's curves from its `metrics.jsonl`: bits/dim of the training batches and of the test set
/// against the step, and the training seconds (evaluations excluded) reached at logged steps.
#[derive(Debug, Default)]
struct Curves {
    train: Vec<(f64, f64)>,
    test: Vec<(f64, f64)>,
    seconds: Vec<(f64, f64)>,
}

fn read_curves(path: &Path) -> Result<Curves, TrainError> {
    let mut curves = Curves::default();
    for line in fs::read_to_string(path)
        .map_err(|e| io_error(path, e))?
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| io_error(path, e))?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(b) = v["train_bpd"].as_f64() {
            curves.train.push((step, b));
        }
        if let Some(s) = v["seconds"].as_f64() {
            curves.seconds.push((step, s));
        }
        if let Some(b) = v["test_bpd"].as_f64() {
            curves.test.push((step, b));
        }
    }
    Ok(curves)
}

/// The test bits/dim of the run in `dir` at each of its evaluations, against the minutes of
/// training before it (the steps' wall time, evaluations excluded; between logged steps, the
/// time is interpolated).
pub fn test_curve_minutes(dir: &Path) -> Result<Vec<(f64, f64)>, TrainError> {
    let curves = read_curves(&dir.join("metrics.jsonl"))?;
    let clock: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(curves.seconds.iter().copied())
        .collect();
    let seconds_at = |step: f64| {
        let after = clock.partition_point(|&(s, _)| s < step);
        match (clock.get(after.wrapping_sub(1)), clock.get(after)) {
            (_, Some(&(s, t))) if s == step => t,
            (Some(&(s0, t0)), Some(&(s1, t1))) => t0 + (t1 - t0) * (step - s0) / (s1 - s0),
            (Some(&(s0, t0)), None) if s0 > 0.0 => t0 * step / s0,
            _ => f64::NAN,
        }
    };
    Ok(curves
        .test
        .iter()
        .map(|&(step, bpd)| (seconds_at(step) / 60.0, bpd))
        .collect())
}

fn append_metric(out: &Path, line: &serde_json::Value) -> Result<(), TrainError> {
    let path = out.join("metrics.jsonl");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    writeln!(file, "{line}").map_err(|e| io_error(&path, e))
}

/// Drops metrics lines past `step`: a resumed run redoes those steps.
fn truncate_metrics(path: &Path, step: usize) -> Result<(), TrainError> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn save_checkpoint(
    dir: &Path,
    model: &FlowModel,
    optim: &ModuleOptimizer,
    average: Option<&FlowModel>,
    state: RunState,
) -> Result<(), TrainError> {
    // Written whole into a fresh folder, then swapped in: a kill at any moment leaves either the
    // previous checkpoint or the new one, never a mixture.
    let fresh = dir.with_extension("new");
    let old = dir.with_extension("old");
    let _ = fs::remove_dir_all(&fresh);
    fs::create_dir_all(&fresh).map_err(|e| io_error(&fresh, e))?;
    save_model(&fresh.join("model.safetensors"), model)?;
    if let Some(average) = average {
        save_model(&fresh.join(AVERAGE), average)?;
    }
    let optim_path = fresh.join("optimizer.bpk");
    optim
        .save(&optim_path)
        .map_err(|e| io_error(&optim_path, format!("{e:?}")))?;
    write_json(&fresh.join("param_ids.json"), &param_ids(model))?;
    write_json(&fresh.join("state.json"), &state)?;
    if dir.exists() {
        let _ = fs::remove_dir_all(&old);
        fs::rename(dir, &old).map_err(|e| io_error(dir, e))?;
    }
    fs::rename(&fresh, dir).map_err(|e| io_error(dir, e))?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint folder of the run in `out`.
fn checkpoint_dir(out: &Path) -> Result<PathBuf, TrainError> {
    let dir = out.join(CHECKPOINT);
    // A kill between the two renames of `save_checkpoint` leaves only the previous one.
    let dir = if dir.exists() {
        dir
    } else {
        dir.with_extension("old")
    };
    if !dir.exists() {
        return Err(io_error(
            &dir,
            "no checkpoint: the run has not saved one yet",
        ));
    }
    Ok(dir)
}

fn load_checkpoint(
    dir: &Path,
    model: FlowModel,
    optim: ModuleOptimizer,
) -> Result<(FlowModel, ModuleOptimizer, RunState), TrainError> {
    let state: RunState = read_json(&dir.join("state.json"))?;
    // Safetensors stores no parameter identities; the optimizer's state is keyed by them.
    let ids: BTreeMap<String, u64> = read_json(&dir.join("param_ids.json"))?;
    let model = load_model(&dir.join("model.safetensors"), model)?
        .map(&mut AssignIds { path: vec![], ids });
    let optim_path = dir.join("optimizer.bpk");
    let optim = optim
        .load(&optim_path)
        .map_err(|e| io_error(&optim_path, format!("{e:?}")))?;
    Ok((model, optim, state))
}

/// Writes `model`'s weights to `path`, whole or not at all.
fn save_model(path: &Path, model: &FlowModel) -> Result<(), TrainError> {
    let partial = path.with_extension("partial");
    let mut store = SafetensorsStore::from_file(&partial);
    model.save_into(&mut store).map_err(|e| io_error(path, e))?;
    fs::rename(&partial, path).map_err(|e| io_error(path, e))
}

fn load_model(path: &Path, mut model: FlowModel) -> Result<FlowModel, TrainError> {
    if !path.exists() {
        return Err(io_error(path, "not found"));
    }
    let mut store = SafetensorsStore::from_file(path);
    let result = model.load_from(&mut store).map_err(|e| io_error(path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(io_error(
            path,
            format!(
                "does not match the model: {} errors, missing {:?}",
                result.errors.len(),
                result.missing
            ),
        ));
    }
    Ok(model)
}

/// Every parameter's id by its path in the module tree.
fn param_ids(model: &FlowModel) -> BTreeMap<String, u64> {
    struct Ids(Vec<String>, BTreeMap<String, u64>);
    impl ModuleVisitor for Ids {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1.insert(self.0.join("."), param.id.val());
        }
    }
    let mut ids = Ids(vec![], BTreeMap::new());
    model.visit(&mut ids);
    ids.1
}

/// Gives every parameter the id saved for its path, so a loaded optimizer state finds it.
struct AssignIds {
    path: Vec<String>,
    ids: BTreeMap<String, u64>,
}

impl ModuleMapper for AssignIds {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let id = self
            .ids
            .get(&self.path.join("."))
            .map_or(id, |&saved| ParamId::from(saved));
        Param::from_mapped_value(id, value, mapper)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| io_error(path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_error(path, e))?;
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}
