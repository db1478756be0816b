//! The `flowify` command line: a thin shell over the library.

/// mimalloc rather than glibc's allocator: see the README's "Measured here" section.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, Parser, Subcommand};

use flowify::data::{self, Dataset, Split};
use flowify::device::DeviceChoice;
use flowify::eval::{self, batch_classes, batch_tensor, evaluate};
use flowify::flow::{host_values, Mode};
use flowify::import;
use flowify::layers::trained::{Layout, Trained};
use flowify::model::one_hot;
use flowify::presets;
use flowify::spec::{ModelSpec, Recipe};
use flowify::train::{self, RunOptions, TrainConfig};
use flowify::{bench, info, pictures};

/// Flowification: dense layers, convolutions and invertible activations trained as normalizing
/// flows — likelihoods in bits/dim, samples and reconstructions of images.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: one MNIST epoch of conv2_nsf, about 2 minutes on 2 cores).
    Train(TrainArgs),
    /// Test bits/dim of a trained run: one-sample and K-sample importance-weighted bounds.
    Eval(EvalArgs),
    /// Write a grid of samples drawn from a trained run.
    Sample(SampleArgs),
    /// Write rows of test images, their mean-mode and sample-mode reconstructions.
    Reconstruct(ReconstructArgs),
    /// Print each input's latent vector, one line per input, in order.
    Encode(EncodeArgs),
    /// Print each input's log-likelihood and bits/dim, one line per input, in order.
    Score(ScoreArgs),
    /// List an architecture's layers with shapes, kinds and parameter counts, or print its spec.
    Info(InfoArgs),
    /// Fetch CIFAR-10 (official binary archive, checksum verified) into a data folder.
    Download(DownloadArgs),
    /// Time training steps (forward, backward, optimizer) on random batches.
    Bench(BenchArgs),
    /// Turn a trained network's weights into a run whose mean mode is that network.
    Import(ImportArgs),
    /// Plot the test bits/dim of runs against their minutes of training, side by side.
    Curves(CurvesArgs),
}

#[derive(Args)]
struct CurvesArgs {
    /// Run folders, one curve each (up to 6).
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct DownloadArgs {
    /// Folder to unpack `cifar-10-batches-bin/` into.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// A mirror of the archive instead of the official address (needs --sha256).
    #[arg(long, requires = "sha256")]
    url: Option<String>,
    /// SHA-256 (hex) the mirror's archive must have.
    #[arg(long, requires = "url")]
    sha256: Option<String>,
}

/// Which architecture: a preset of the paper for a dataset, or an architecture file.
#[derive(Args)]
struct ArchArgs {
    /// Dataset: mnist, cifar10, a 2-D toy set (moons, checkerboard, 8gaussians, 2spirals, rings,
    /// pinwheel) or csv:PATH (numeric columns, split 80/10/10), with options after the path:
    /// ,label=COLUMN takes that column (header name or number from 1) as each row's class;
    /// ,test=PATH and ,validation=PATH read those parts from files of their own.
    #[arg(long, default_value = "mnist")]
    dataset: Dataset,
    /// A preset (presets/<mnist|cifar10|flat>/<arch>.toml): the paper's mlp, conv1, conv1_nsf,
    /// conv2, conv2_nsf; fast (conv2_nsf with a recipe for a time budget); for MNIST also
    /// multiscale; dense for flat data. Default: conv2_nsf for images, dense for flat data.
    #[arg(long)]
    arch: Option<String>,
    /// An architecture file (TOML, or JSON if named *.json) instead of a preset.
    #[arg(long, value_name = "FILE", conflicts_with = "arch")]
    model: Option<PathBuf>,
    /// A class-conditional model of the dataset's labels: a learned base mean per class, and the
    /// class given to the couplings whose entries set `classes` (docs/method.md §1.4).
    #[arg(long)]
    conditional: bool,
}

impl ArchArgs {
    /// The architecture's name and its resolved spec.
    fn spec(&self) -> Result<(String, ModelSpec)> {
        let (name, spec) = self.unconditional_spec()?;
        if !self.conditional {
            return Ok((name, spec));
        }
        let Some(classes) = self.dataset.classes()? else {
            bail!(
                "--conditional: {} has no labels to condition on",
                self.dataset
            );
        };
        let spec = spec
            .conditional(classes)
            .map_err(|e| anyhow::anyhow!("--conditional: {e}"))?;
        Ok((name, spec))
    }

    fn unconditional_spec(&self) -> Result<(String, ModelSpec)> {
        Ok(match &self.model {
            Some(path) => {
                let spec = ModelSpec::read(path).map_err(anyhow::Error::msg)?;
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                (stem.unwrap_or_else(|| "model".into()), spec)
            }
            None => {
                let name = self
                    .arch
                    .clone()
                    .unwrap_or_else(|| presets::default_name(&self.dataset).into());
                let spec = presets::spec(&self.dataset, &name).map_err(anyhow::Error::msg)?;
                (name, spec)
            }
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Print one JSON line (with --per-layer, the layers' times in it as "layers").
    #[arg(long)]
    json: bool,
    /// Also time each layer's forward + backward pass on its own.
    #[arg(long)]
    per_layer: bool,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Run every op through its portable tensor-op body, not the CPU kernels (to compare them).
    #[arg(long)]
    portable: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    arch: ArchArgs,
    #[command(flatten)]
    plan: PlanArgs,
    /// Run folder (default: runs/<dataset>-<arch>-<n>, the first that is free).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint: its config.json and model.json
    /// are the plan and the architecture, so only --device, --download and --quiet go with it.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "out", "dataset", "arch", "model", "conditional", "epochs", "max_steps", "minutes", "batch_size", "lr",
        "seed", "data_dir", "log_every", "checkpoint_every", "test_limit", "patience", "ema",
    ])]
    resume: Option<PathBuf>,
    /// Fetch CIFAR-10 into --data-dir first if it is not there.
    #[arg(long)]
    download: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// How a run trains: what `config.json` records.
#[derive(Args)]
struct PlanArgs {
    /// Epochs to plan for.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Plan for and stop at this many optimizer steps instead (with --minutes: at most).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Train for this many minutes of wall time instead of --epochs: the cosine schedule is
    /// planned from the step time measured over the first steps, so it reaches 0 on time.
    #[arg(long)]
    minutes: Option<f64>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate of the cosine schedule [default: the architecture file's `train.lr`,
    /// else 0.0005]
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialization, data order and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder holding mnist/ (shipped in data/) or cifar-10-batches-bin/.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Write a metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Also checkpoint every N steps (always at epoch ends and on Ctrl-C).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Stop after N epochs without a better validation log-likelihood (data with a validation
    /// split: the toy sets and CSV files; the best model is kept in best.safetensors either way).
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// Evaluate, and keep for eval, sample and the other commands, a moving average of the
    /// weights with this decay (such as 0.999) instead of the last weights.
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature (default: cpu, or the
    /// resumed run's).
    #[arg(long)]
    device: Option<DeviceChoice>,
}

impl PlanArgs {
    /// The run's plan: these flags, and for those not given, the architecture's `recipe` or
    /// the paper's protocol.
    fn config(self, dataset: Dataset, arch: String, recipe: &Recipe) -> TrainConfig {
        TrainConfig {
            dataset,
            arch,
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            lr: self.lr.or(recipe.lr).unwrap_or(train::PAPER_LR),
            seed: self.seed,
            data_dir: self.data_dir,
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            test_limit: self.test_limit,
            device: self.device.unwrap_or_default(),
            minutes: self.minutes,
            patience: self.patience,
            ema: self.ema,
        }
    }
}

#[derive(Args)]
struct ImportArgs {
    /// The trained network's weights (safetensors).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// The data the flow models, whose images are the network's input.
    #[arg(long, default_value = "mnist")]
    dataset: Dataset,
    /// The network's input, C,H,W; checked against the dataset's images.
    #[arg(long, value_name = "C,H,W", value_parser = parse_shape)]
    input_shape: Option<[usize; 3]>,
    /// An architecture file whose layers name their tensors (`weights = "prefix"`); without
    /// it, the file is read as a sequential network.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// How the file lays out dense weights: torch ([out, in]) or burn ([in, out]).
    #[arg(long, default_value = "torch")]
    layout: Layout,
    /// The slope of the LeakyReLU between the layers of a sequential network.
    #[arg(long, value_name = "SLOPE", default_value_t = 0.01)]
    leaky_relu: f64,
    /// Run folder to write (it must not hold a run).
    #[arg(long)]
    out: PathBuf,
    /// The fine-tuning that `flowify train --resume OUT` will run.
    #[command(flatten)]
    plan: PlanArgs,
}

/// `C,H,W` or a flat `D`.
fn parse_shape(text: &str) -> Result<[usize; 3], String> {
    let parts: Result<Vec<usize>, _> = text.split(',').map(|p| p.trim().parse()).collect();
    match parts.as_deref() {
        Ok(&[c, h, w]) => Ok([c, h, w]),
        Ok(&[d]) => Ok([d, 1, 1]),
        _ => Err(format!("expected C,H,W (or D), got '{text}'")),
    }
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder written by `flowify train`.
    #[arg(long)]
    run: PathBuf,
    /// K: forward passes per image for the importance-weighted bound.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args)]
struct SampleArgs {
    /// A run folder written by `flowify train`.
    #[arg(long)]
    run: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// sample: draw the dropped coordinates; mean: use their means.
    #[arg(long, default_value = "sample")]
    mode: Mode,
    /// Standard deviation of the latent draws.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draw this class only, in a class-conditional run (default: the classes in turn, one
    /// column each).
    #[arg(long, value_name = "C")]
    class: Option<usize>,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args)]
struct ReconstructArgs {
    /// A run folder written by `flowify train`.
    #[arg(long)]
    run: PathBuf,
    /// Number of test images.
    #[arg(long, default_value_t = 16)]
    n: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PNG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args)]
struct EncodeArgs {
    /// A run folder written by `flowify train`.
    #[arg(long)]
    run: PathBuf,
    /// Inputs: CSV rows of C·H·W numbers (*.csv), an IDX image file of 1×H×W images, or a
    /// PNG of the model's shape.
    #[arg(long)]
    input: PathBuf,
    /// mean: the augmentations' noise at its mean (the plain network); sample: drawn.
    #[arg(long, default_value = "mean")]
    mode: Mode,
    /// Seed of the draws in sample mode.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON array per line instead of comma-separated values.
    #[arg(long)]
    json: bool,
    /// The inputs' class, in a class-conditional run whose couplings read it.
    #[arg(long, value_name = "C")]
    class: Option<usize>,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args)]
struct ScoreArgs {
    /// A run folder written by `flowify train`.
    #[arg(long)]
    run: PathBuf,
    /// Input files, each PNGs of the model's shape, an IDX image file or CSV rows (*.csv) of
    /// pixel values 0–255.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// K: forward passes per input for the importance-weighted bound.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// JSON Lines instead of CSV.
    #[arg(long)]
    json: bool,
    /// Seed of the forward passes' noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu, or wgpu / wgpu:N in a build with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Print the architecture as a spec file with every default written out, to start from.
    #[arg(long)]
    print_spec: bool,
}

fn main() -> ExitCode {
    // burn materializes a loaded optimizer state on its default device, which a wgpu build takes
    // to be the GPU: keep it on the CPU (the first step moves it to the run's device), so a run
    // resumes on a machine without one. Set before any thread starts.
    if std::env::var_os("BURN_DEVICE").is_none() {
        std::env::set_var("BURN_DEVICE", "flex");
    }
    let cli = Cli::parse();
    // The commands run on a thread of the pool, not beside it: the calling thread's serial work
    // (burn's ops, the autodiff graph) then never competes for a core with a worker that spins
    // while waiting for the next parallel loop.
    let outcome = match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(|| run(cli)),
        Err(e) => Err(e.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error of the library is one line that already names its cause.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train_command(args),
        Command::Eval(args) => eval_command(args),
        Command::Sample(args) => sample_command(args),
        Command::Reconstruct(args) => reconstruct_command(args),
        Command::Encode(args) => encode_command(args),
        Command::Score(args) => score_command(args),
        Command::Bench(args) => bench_command(args),
        Command::Import(args) => import_command(args),
        Command::Curves(args) => curves_command(args),
        Command::Download(args) => {
            match (&args.url, &args.sha256) {
                (Some(url), Some(sha)) => data::download_archive(
                    url,
                    data::Checksum::Sha256(sha),
                    &args.data_dir,
                    data::CIFAR10_DIR,
                )?,
                _ => data::download_cifar10(&args.data_dir)?,
            }
            println!(
                "CIFAR-10 is in {}",
                args.data_dir.join(data::CIFAR10_DIR).display()
            );
            Ok(())
        }
        Command::Info(args) => {
            let (_, spec) = args.arch.spec()?;
            if args.print_spec {
                print!("{}", spec.to_toml());
            } else {
                print!("{}", info::describe(&spec).map_err(anyhow::Error::msg)?);
            }
            Ok(())
        }
    }
}

fn train_command(args: TrainArgs) -> Result<()> {
    let download = args.download;
    let (config, spec, out, resume) = match args.resume {
        Some(dir) => {
            let resumed = train::read_config(&dir)?;
            let spec = train::read_spec(&dir)?;
            let device = args.plan.device.unwrap_or(resumed.device);
            (TrainConfig { device, ..resumed }, spec, dir, true)
        }
        None => {
            let (arch, spec) = args.arch.spec()?;
            let config = args
                .plan
                .config(args.arch.dataset.clone(), arch, &spec.train);
            let out = args.out.unwrap_or_else(|| free_run_dir(&config));
            (config, spec, out, false)
        }
    };
    // After `--resume` has read the run's own dataset and data folder.
    if download && config.dataset == Dataset::Cifar10 {
        data::download_cifar10(&config.data_dir)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))?;
    let summary = train::train(
        &config,
        &spec,
        &out,
        RunOptions {
            resume,
            stop: Some(stop),
            quiet: args.quiet,
        },
    )?;
    let figure = if summary.dataset.is_images() {
        format!(
            "bits/dim {:.4} over {} images",
            summary.test_bpd, summary.test_images
        )
    } else {
        format!(
            "log-likelihood {:.4} nats per example ({:.4} bits/dim) over {} examples",
            summary.test_log_likelihood, summary.test_bpd, summary.test_images
        )
    };
    println!(
        "trained {} on {} for {} steps in {:.0} s ({:.3} s/step; {:.0} s with evaluations); test \
         {figure}",
        summary.arch,
        summary.dataset.name(),
        summary.steps,
        summary.train_seconds,
        summary.seconds_per_step,
        summary.wall_seconds,
    );
    println!("run folder: {}", out.display());
    println!(
        "  model:   {}",
        out.join("checkpoint/model.safetensors").display()
    );
    if let Some((score, step)) = summary.best {
        println!(
            "  best:    {} (step {step}, validation log-likelihood {score:.4} nats per example; \
             eval, sample and score use it)",
            out.join("best.safetensors").display()
        );
    }
    println!("  summary: {}", out.join("summary.json").display());
    println!("  samples: {}", out.join("samples").display());
    println!("  curve:   {}", out.join("loss.png").display());
    Ok(())
}

fn free_run_dir(config: &TrainConfig) -> PathBuf {
    let stem = format!("{}-{}", config.dataset.name(), config.arch);
    (1..)
        .map(|n| Path::new("runs").join(format!("{stem}-{n}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

fn plain_device(choice: DeviceChoice, seed: u64) -> Result<Device> {
    let device = choice.open().map_err(anyhow::Error::msg)?;
    device.seed(seed);
    Ok(device)
}

fn eval_command(args: EvalArgs) -> Result<()> {
    if args.samples == 0 || args.limit == Some(0) {
        bail!("--samples and --limit: must be at least 1");
    }
    let device = plain_device(args.device, 0)?;
    let (config, model) = train::load_run(&args.run, &device)?;
    let mut test = data::load(&config.dataset, &config.data_dir, Split::Test)?;
    if let Some(limit) = args.limit {
        test = test.truncated(limit);
    }
    let evaluation = evaluate(&model, &test, 500, args.samples, &device);
    let classification = (model.classes() > 0).then(|| eval::classify(&model, &test, 500, &device));
    if args.json {
        let mut line = serde_json::to_value(&evaluation)?;
        if let Some(classification) = &classification {
            line["classification"] = serde_json::to_value(classification)?;
        }
        println!("{line}");
    } else {
        let noun = if config.dataset.is_images() {
            "images"
        } else {
            "examples"
        };
        let given = if classification.is_some() {
            ", each given its class"
        } else {
            ""
        };
        println!(
            "test bits/dim (1 sample):   {:.4} over {} {noun}{given}",
            evaluation.bpd, evaluation.images
        );
        if !config.dataset.is_images() {
            println!(
                "test log-likelihood:        {:.4} nats per example",
                evaluation.log_likelihood
            );
        }
        if let Some(iw) = evaluation.iw_bpd {
            println!(
                "test bits/dim ({} samples): {iw:.4} (importance-weighted)",
                evaluation.samples
            );
        }
        if let Some(c) = classification {
            let nats = if config.dataset.is_images() {
                String::new()
            } else {
                format!(", {:.4} nats per example", c.marginal_log_likelihood)
            };
            println!(
                "class not given:            {:.4} bits/dim{nats} (the marginal over {} classes)",
                c.marginal_bpd,
                model.classes()
            );
            println!(
                "classification accuracy:    {:.4} over {} {noun} (argmax_c log p(x | c))",
                c.accuracy, c.examples
            );
        }
    }
    Ok(())
}

fn sample_command(args: SampleArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n: must be at least 1");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature: must be a finite number ≥ 0, got {}",
            args.temperature
        );
    }
    let device = plain_device(args.device, args.seed)?;
    let (_, model) = train::load_run(&args.run, &device)?;
    let [c, h, w] = model.input_shape();
    let classes = model.classes();
    let square = (args.n as f64).sqrt().ceil() as usize;
    let (images, cols) = match class_of_run(args.class, &args.run, classes)? {
        None if classes > 0 => (
            model.sample(args.n, args.mode, args.temperature, &device),
            classes.min(args.n),
        ),
        None => (
            model.sample(args.n, args.mode, args.temperature, &device),
            square,
        ),
        Some(class) => {
            let given = one_hot(&vec![class; args.n], classes, &device);
            (
                model.sample_given(&given, args.mode, args.temperature),
                square,
            )
        }
    };
    let pixels = host_values(images);
    pictures::save_grid(&args.out, &pixels, args.n, c, h, w, cols, 2)?;
    println!("wrote {} samples to {}", args.n, args.out.display());
    Ok(())
}

/// `--class`, checked against the run in `run`, a model of `classes` classes (0: unconditional).
fn class_of_run(class: Option<usize>, run: &Path, classes: usize) -> Result<Option<usize>> {
    match class {
        Some(_) if classes == 0 => bail!(
            "--class: the run in {} is not class-conditional (train it with --conditional)",
            run.display()
        ),
        Some(class) if class >= classes => bail!(
            "--class: {class} is not a class of the run in {}: expected 0 to {}",
            run.display(),
            classes - 1
        ),
        class => Ok(class),
    }
}

fn reconstruct_command(args: ReconstructArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n: must be at least 1");
    }
    let device = plain_device(args.device, args.seed)?;
    let (config, model) = train::load_run(&args.run, &device)?;
    let test = data::load(&config.dataset, &config.data_dir, Split::Test)?;
    let n = args.n.min(test.len);
    let indices: Vec<usize> = (0..n).collect();
    let x = batch_tensor(&test, &indices, &device);
    let classes = batch_classes(&test, &indices, model.classes(), &device);
    let originals = x.clone().div_scalar(255.0);
    let mean = model.reconstruct(x.clone(), classes.as_ref(), Mode::Mean);
    let sample = model.reconstruct(x, classes.as_ref(), Mode::Sample);
    let rows = burn::tensor::Tensor::cat(vec![originals, mean, sample], 0);
    let [c, h, w] = model.input_shape();
    let pixels = host_values(rows);
    pictures::save_grid(&args.out, &pixels, 3 * n, c, h, w, n, 2)?;
    println!(
        "wrote originals, mean- and sample-mode reconstructions of {n} test images to {}",
        args.out.display()
    );
    Ok(())
}

fn encode_command(args: EncodeArgs) -> Result<()> {
    let device = plain_device(args.device, args.seed)?;
    let (_, model) = train::load_run(&args.run, &device)?;
    let [c, h, w] = model.input_shape();
    let (values, n) = data::read_inputs(&args.input, [c, h, w])?;
    let classes = model.classes();
    let class = match class_of_run(args.class, &args.run, classes)? {
        None if model.reads_class() => bail!(
            "--class: the couplings of the run in {} read the class; give the inputs' class",
            args.run.display()
        ),
        class => class,
    };
    let x = Tensor::from_data(TensorData::new(values, [n, c, h, w]), &device);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // In batches, so a whole test set fits in memory.
    for chunk in x.split(500, 0) {
        let rows = chunk.dims()[0];
        let (z, _) = match class {
            Some(class) => model.forward_given(
                chunk,
                &one_hot(&vec![class; rows], classes, &device),
                args.mode,
            ),
            None => model.forward(chunk, args.mode),
        };
        let latent = host_values(z);
        for row in latent.chunks(latent.len() / rows) {
            let line = if args.json {
                serde_json::to_string(row)?
            } else {
                row.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
            };
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn import_command(args: ImportArgs) -> Result<()> {
    let [c, h, w] = args.dataset.shape()?;
    if let Some(given) = args.input_shape.filter(|&s| s != [c, h, w]) {
        let [gc, gh, gw] = given;
        bail!(
            "--input-shape: {gc}×{gh}×{gw}, but the flow models {} images, {c}×{h}×{w}",
            args.dataset
        );
    }
    let file = args.weights.display();
    let trained = Trained::read(&args.weights, args.layout).map_err(anyhow::Error::msg)?;
    let (arch, spec) = match &args.model {
        Some(path) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let spec = ModelSpec::read(path).map_err(anyhow::Error::msg)?;
            (stem.unwrap_or_else(|| "imported".into()), spec)
        }
        None => {
            let spec = import::sequential_spec(&trained, [c, h, w], args.leaky_relu)
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            ("imported".to_string(), spec)
        }
    };
    let model = import::import(&spec, &trained, &Device::flex())
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let config = args.plan.config(args.dataset, arch, &spec.train);
    train::write_run(&config, &spec, &model, &args.out)?;
    print!("{}", info::describe(&spec).map_err(anyhow::Error::msg)?);
    println!(
        "imported {file} into {}; fine-tune it with: flowify train --resume {}",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn curves_command(args: CurvesArgs) -> Result<()> {
    if args.runs.len() > pictures::PALETTE.len() {
        bail!(
            "curves: {} runs, expected at most {}",
            args.runs.len(),
            pictures::PALETTE.len()
        );
    }
    let mut labelled = vec![];
    for run in &args.runs {
        let config = train::read_config(run)?;
        let points = train::test_curve_minutes(run)?;
        let Some(&(minutes, bpd)) = points.last() else {
            bail!("{}: no test evaluation yet", run.display());
        };
        let label = format!(
            "{}, lr {}, seed {}: {bpd:.3} after {minutes:.0} min",
            config.arch, config.lr, config.seed
        );
        println!("{}\t{label}", run.display());
        labelled.push((label, points));
    }
    let curves: Vec<pictures::Curve> = labelled
        .iter()
        .zip(pictures::PALETTE)
        .map(|((label, points), color)| pictures::Curve::new(label, points, color, true))
        .collect();
    let chart = pictures::Chart {
        caption: "test bits/dim against minutes of training",
        x_desc: "minutes of training (evaluations excluded)",
        y_desc: "test bits/dim",
    };
    pictures::save_chart(&args.out, &chart, &curves)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn score_command(args: ScoreArgs) -> Result<()> {
    if args.samples == 0 {
        bail!("--samples: must be at least 1");
    }
    let device = plain_device(args.device, args.seed)?;
    let (_, model) = train::load_run(&args.run, &device)?;
    let [c, h, w] = model.input_shape();
    // Every file is read (and refused) before the first line is printed.
    let inputs = args
        .input
        .iter()
        .map(|path| Ok((path, data::read_inputs(path, [c, h, w])?)))
        .collect::<Result<Vec<_>>>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !args.json {
        writeln!(out, "input,log_likelihood,bits_per_dim,samples")?;
    }
    for (path, (values, n)) in inputs {
        let x = Tensor::<4>::from_data(TensorData::new(values, [n, c, h, w]), &device);
        for (chunk_index, chunk) in x.split(500, 0).into_iter().enumerate() {
            let scores = eval::log_likelihoods(&model, chunk, None, args.samples);
            for (i, ll) in scores.bound.iter().enumerate() {
                // A file of one input is named alone; inputs of a larger file by their index.
                let name = match n {
                    1 => path.display().to_string(),
                    _ => format!("{}#{}", path.display(), chunk_index * 500 + i),
                };
                let bpd = model.bits_per_dim(*ll);
                if args.json {
                    let line = serde_json::json!({
                        "input": name, "log_likelihood": ll, "bits_per_dim": bpd,
                        "samples": args.samples,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{name},{ll},{bpd},{}", args.samples)?;
                }
            }
        }
    }
    Ok(())
}

fn bench_command(args: BenchArgs) -> Result<()> {
    if args.steps == 0 || args.batch_size == 0 {
        bail!("--steps and --batch-size: must be at least 1");
    }
    flowify::kernels::force_portable(args.portable);
    let (arch, spec) = args.arch.spec()?;
    let device = args.device.open().map_err(anyhow::Error::msg)?;
    let layers = args
        .per_layer
        .then(|| bench::per_layer(&spec, args.steps, args.batch_size, &device))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let report = bench::BenchReport {
        layers,
        ..bench::bench(
            &spec,
            &arch,
            args.steps,
            args.warmup,
            args.batch_size,
            &device,
        )
        .map_err(anyhow::Error::msg)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(layers) = &report.layers {
            let total: f64 = layers.iter().map(|l| l.ms).sum();
            for layer in layers {
                let share = 100.0 * layer.ms / total;
                println!("{:<24} {:>9.2} ms  {share:>5.1}%", layer.name, layer.ms);
            }
            println!(
                "{:<24} {total:>9.2} ms (forward + backward, layer by layer)",
                "sum"
            );
        }
        let t = &report.ms_per_step;
        println!(
            "{} on {} inputs, batch {} on {}{}: {:.1} ms/step (min {:.1}, max {:.1}), {:.2} steps/s, {} threads, peak {:.0} MiB",
            report.arch, flowify::layers::shape_text(report.input), report.batch_size, report.device,
            if report.portable { " (portable ops)" } else { "" }, t.median, t.min, t.max,
            report.steps_per_sec, report.threads, report.peak_rss_mb
        );
    }
    Ok(())
}
