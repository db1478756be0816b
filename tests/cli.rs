//! The command line end to end, through the real binary: train → eval → sample → reconstruct,
//! resuming a killed run, the loopback download, and bad input.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use tempfile::TempDir;

mod fixtures;
use fixtures::*;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn flowify() -> Command {
    Command::cargo_bin("flowify").unwrap()
}

/// Runs `flowify args…`, expecting failure; returns stderr, which must be one clear error line.
fn fails(args: &[&str]) -> String {
    let out = flowify().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {stderr}"
    );
    stderr
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `flowify train` arguments for a small MNIST run of `arch` into `out`.
fn tiny_train(out: &Path, arch: &str, batch_size: &str, extra: &[&str]) -> Vec<String> {
    let data = mnist_dir().display().to_string();
    let out = out.display().to_string();
    let base = [
        "train",
        "--arch",
        arch,
        "--batch-size",
        batch_size,
        "--test-limit",
        "64",
        "--quiet",
    ];
    let paths = ["--data-dir", data.as_str(), "--out", out.as_str()];
    base.iter()
        .chain(&paths)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// `(step, train_bpd)` of every logged step of a run.
fn train_bpd(run: &Path) -> Vec<(u64, f64)> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|l| Some((l["step"].as_u64()?, l["train_bpd"].as_f64()?)))
        .collect()
}

#[test]
fn train_eval_sample_reconstruct_on_a_tiny_budget() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("run");
    let out = flowify()
        .args(tiny_train(
            &run,
            "conv2",
            "16",
            &["--max-steps", "4", "--log-every", "2"],
        ))
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("test bits/dim"), "{stdout}");

    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["steps"], 4);
    assert_eq!(summary["arch"], "conv2");
    assert_eq!(summary["dataset"], "mnist");
    assert_eq!(summary["test_images"], 64);
    let test_bpd = summary["test_bpd"].as_f64().unwrap();
    assert!(test_bpd.is_finite() && test_bpd > 0.0);
    assert!(summary["train_seconds"].as_f64().unwrap() > 0.0);
    let metrics = fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = train_bpd(&run).into_iter().map(|(step, _)| step).collect();
    assert_eq!(steps, [2, 4]);
    assert!(lines
        .iter()
        .all(|l| l.get("train_bpd").is_none() || (l["lr"].is_f64() && l["seconds"].is_f64())));
    assert!(lines.iter().any(|l| l.get("test_bpd").is_some()));
    assert_eq!(json(&run.join("config.json"))["arch"], "conv2");
    assert!(run.join("checkpoint/model.safetensors").exists());
    assert!(image::image_dimensions(run.join("loss.png")).is_ok());
    assert!(image::image_dimensions(run.join("samples/epoch-001.png")).is_ok());

    let run_arg = run.display().to_string();
    let out = flowify()
        .args([
            "eval",
            "--run",
            &run_arg,
            "--samples",
            "4",
            "--limit",
            "64",
            "--json",
        ])
        .assert()
        .success();
    let eval: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let (one, iw) = (
        eval["bpd"].as_f64().unwrap(),
        eval["iw_bpd"].as_f64().unwrap(),
    );
    assert!(one.is_finite() && iw.is_finite(), "{eval}");
    assert!(
        iw < one,
        "the 4-sample bound {iw} is tighter than the 1-sample one {one}"
    );
    assert_eq!(eval["images"], 64);

    let picture = |command: &str, n: &str, file: &str| {
        let out = tmp.path().join(file);
        let out_arg = out.display().to_string();
        flowify()
            .args([command, "--run", &run_arg, "--n", n, "--out", &out_arg])
            .assert()
            .success();
        image::image_dimensions(&out).unwrap()
    };
    let (w, h) = picture("sample", "9", "samples.png");
    assert!(
        w >= 3 * 28 && h >= 3 * 28 && w == h,
        "3×3 grid of 28×28 images: {w}×{h}"
    );
    let (w, h) = picture("reconstruct", "4", "recon.png");
    assert!(w > h && h >= 3 * 28, "3 rows of 4 images: {w}×{h}");

    // Bad input against a real run: one line naming the flag or the file asked for.
    let missing = tmp
        .path()
        .join("no/such/folder/s.png")
        .display()
        .to_string();
    let err = fails(&["sample", "--run", &run_arg, "--out", &missing]);
    assert!(
        err.contains(&missing) && err.matches("os error").count() == 1,
        "{err}"
    );
    let err = fails(&[
        "sample",
        "--run",
        &run_arg,
        "--temperature=-1",
        "--out",
        &missing,
    ]);
    assert!(err.contains("--temperature"), "{err}");
    let err = fails(&["eval", "--run", &run_arg, "--limit", "0"]);
    assert!(err.contains("--limit"), "{err}");
}

/// All parameter values of a run's last checkpoint, in visiting order.
fn parameters(run: &Path) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(flowify::flow::host_values(param.val()));
        }
    }
    let (_, model) = flowify::train::load_run(run, &Device::flex()).unwrap();
    let mut collect = Collect(vec![]);
    model.visit(&mut collect);
    collect.0
}

#[test]
fn a_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends() {
    killed_run_resumes_as_if_whole(&["--arch", "conv2"]);
}

/// The weight average is part of a checkpoint: a resumed run's average (what `load_run` gives)
/// ends where the uninterrupted run's does.
#[test]
fn a_run_with_a_weight_average_resumes_as_if_whole() {
    killed_run_resumes_as_if_whole(&["--arch", "conv2", "--ema", "0.9"]);
}

/// ActNorm takes its statistics from the first batch of a fresh run only: a resumed run keeps
/// the checkpoint's, and ends where the uninterrupted run ends.
#[test]
fn a_run_with_act_norm_and_splits_resumes_without_initializing_again() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("multiscale.toml");
    fs::write(
        &file,
        r#"input = [1, 28, 28]
layers = [
  { layer = "dequantize" },
  { layer = "conv", c_in = 1, c_out = 4, kernel = 2, stride = 2 },
  { layer = "act_norm" },
  { layer = "split" },
  { layer = "conv", c_in = 2, c_out = 8, kernel = 2, stride = 2 },
  { layer = "act_norm" },
  { layer = "spline" },
  { layer = "split", depth = 1, hidden = 8 },
]
"#,
    )
    .unwrap();
    killed_run_resumes_as_if_whole(&["--model", &file.display().to_string()]);
}

/// Trains one run whole and one killed after a checkpoint and resumed; they must agree to the
/// last bit. `model` picks the architecture (`--arch A` or `--model FILE`).
fn killed_run_resumes_as_if_whole(model: &[&str]) {
    let tmp = TempDir::new().unwrap();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let mut budget = vec![
        "--max-steps",
        "30",
        "--checkpoint-every",
        "5",
        "--log-every",
        "5",
    ];
    budget.extend(model);
    let args = |out: &Path| {
        let mut args = tiny_train(out, "", "16", &budget);
        args.drain(1..3);
        args
    };
    flowify().args(args(&whole)).assert().success();

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("flowify"))
        .args(args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoint/state.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(
        !killed.join("summary.json").exists(),
        "the run was killed before it finished"
    );
    let saved = json(&killed.join("checkpoint/state.json"))["step"]
        .as_u64()
        .unwrap();
    assert!(
        saved >= 5 && saved < 30 && saved % 5 == 0,
        "checkpointed at step {saved}"
    );

    flowify()
        .args([
            "train",
            "--quiet",
            "--resume",
            &killed.display().to_string(),
        ])
        .assert()
        .success();
    assert_eq!(json(&killed.join("summary.json"))["steps"], 30);
    let steps: Vec<u64> = train_bpd(&killed)
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert_eq!(
        steps,
        [5, 10, 15, 20, 25, 30],
        "the step count continues without repeats"
    );

    // Same seed, same thread count: the same weights and figures to the last bit, whether or
    // not the run was interrupted.
    assert_eq!(
        parameters(&whole),
        parameters(&killed),
        "resumed parameters differ from the uninterrupted run's"
    );
    assert_eq!(train_bpd(&whole), train_bpd(&killed));
    assert_eq!(
        json(&whole.join("summary.json"))["test_bpd"],
        json(&killed.join("summary.json"))["test_bpd"]
    );
}

#[test]
fn cifar10_downloads_from_a_loopback_server_and_trains() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let archive = cifar_archive();
    let dir = data.display().to_string();

    // A wrong checksum: error naming the problem, nothing left that a later run would trust.
    let (url, server) = serve(Reply::Ok(archive.clone()), 1);
    let err = fails(&[
        "download",
        "--data-dir",
        &dir,
        "--url",
        &url,
        "--sha256",
        &"0".repeat(64),
    ]);
    assert!(err.contains("checksum"), "{err}");
    server.join().unwrap();
    assert!(!data.join("cifar-10-batches-bin").exists());

    let (url, server) = serve(Reply::Ok(archive.clone()), 1);
    flowify()
        .args([
            "download",
            "--data-dir",
            &dir,
            "--url",
            &url,
            "--sha256",
            &sha256_hex(&archive),
        ])
        .assert()
        .success();
    server.join().unwrap();
    assert!(data.join("cifar-10-batches-bin/test_batch.bin").exists());

    let run = tmp.path().join("run").display().to_string();
    flowify()
        .args([
            "train",
            "--dataset",
            "cifar10",
            "--arch",
            "conv2",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
        ])
        .args(["--data-dir", &dir, "--out", &run, "--quiet"])
        .assert()
        .success();
    assert_eq!(json(&tmp.path().join("run/summary.json"))["test_images"], 2);
}

#[test]
fn bad_input_ends_in_one_clear_error() {
    let tmp = TempDir::new().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("mnist")).unwrap();
    let run = tmp.path().join("run").display().to_string();

    let train_on = |data: &Path| {
        let data = data.display().to_string();
        fails(&[
            "train",
            "--data-dir",
            &data,
            "--out",
            &run,
            "--max-steps",
            "1",
        ])
    };
    let err = train_on(&empty);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("not found"),
        "{err}"
    );
    assert!(
        !Path::new(&run).join("config.json").exists(),
        "nothing written for a failed start"
    );

    // A corrupt file: MNIST images with the labels' magic number.
    let bad = tmp.path().join("bad");
    fs::create_dir_all(bad.join("mnist")).unwrap();
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        let from = if name == "train-images-idx3-ubyte.gz" {
            "train-labels-idx1-ubyte.gz"
        } else {
            name
        };
        fs::copy(
            mnist_dir().join("mnist").join(from),
            bad.join("mnist").join(name),
        )
        .unwrap();
    }
    let err = train_on(&bad);
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("magic"),
        "{err}"
    );

    let err = fails(&["train", "--arch", "resnet"]);
    assert!(err.contains("resnet") && err.contains("conv2_nsf"), "{err}");
    let err = fails(&["train", "--test-limit", "0", "--out", &run]);
    assert!(err.contains("--test-limit"), "{err}");
    let err = fails(&["train", "--batch-size", "0", "--out", &run]);
    assert!(err.contains("--batch-size"), "{err}");
    let err = fails(&["train", "--dataset", "svhn"]);
    assert!(err.contains("svhn"), "{err}");
    let err = fails(&["train", "--device", "tpu", "--out", &run]);
    assert!(err.contains("tpu") && err.contains("wgpu:N"), "{err}");
    let err = fails(&["bench", "--device", "wgpu:x"]);
    assert!(err.contains("wgpu:x"), "{err}");
    if !cfg!(feature = "wgpu") {
        let err = fails(&["train", "--device", "wgpu", "--out", &run]);
        assert!(
            err.contains("--device wgpu") && err.contains("--features wgpu"),
            "{err}"
        );
        assert!(!Path::new(&run).join("config.json").exists());
    }

    let err = fails(&[
        "eval",
        "--run",
        &tmp.path().join("nothing").display().to_string(),
    ]);
    assert!(err.contains("config.json"), "{err}");
    let err = fails(&[
        "train",
        "--resume",
        &tmp.path().join("nothing").display().to_string(),
    ]);
    assert!(err.contains("config.json"), "{err}");
    // A resumed run keeps its own plan and architecture: flags that would change them are refused.
    for flag in [["--epochs", "3"], ["--arch", "mlp"], ["--dataset", "moons"]] {
        let dir = tmp.path().join("nothing").display().to_string();
        let err = fails(&["train", "--resume", &dir, flag[0], flag[1]]);
        assert!(err.contains("cannot be used with"), "{flag:?}: {err}");
    }

    // An existing run is never overwritten.
    fs::create_dir_all(&run).unwrap();
    fs::write(Path::new(&run).join("config.json"), "{}").unwrap();
    let err = fails(&[
        "train",
        "--out",
        &run,
        "--max-steps",
        "1",
        "--data-dir",
        &mnist_dir().display().to_string(),
    ]);
    assert!(err.contains("already holds a run"), "{err}");
    assert_eq!(
        fs::read_to_string(Path::new(&run).join("config.json")).unwrap(),
        "{}"
    );
}

/// A network that is none of the presets, from a file: listed, printed back, trained, and
/// evaluated and resumed after the file is gone, from the run folder's own copy.
#[test]
fn an_architecture_file_trains_and_its_run_outlives_the_file() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("mine.toml");
    fs::write(
        &file,
        r#"# a small network of my own
input = [1, 28, 28]
layers = [
  { layer = "dequantize" },
  { layer = "conv", c_in = 1, c_out = 3, kernel = 4, stride = 4, context_width = 6 },
  { layer = "leaky_relu", slope = 0.3 },
  { layer = "nsf_conv", channels = 3, couplings = 1, hidden = 8 },
  { layer = "flatten" },
  { layer = "linear", d_input = 147, d_output = 16, conditioner = [64, 64] },
  { layer = "spline", bins = 6 },
]
"#,
    )
    .unwrap();
    let model = file.display().to_string();
    let info = |args: &[&str]| {
        let out = flowify().arg("info").args(args).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let table = info(&["--model", &model]);
    assert!(
        table.contains("Conv(1→3, k4, s4)")
            && table.contains("3×7×7")
            && table.contains("surjection"),
        "{table}"
    );
    let total = |table: &str| table.lines().last().unwrap().to_string();
    let printed = info(&["--model", &model, "--print-spec"]);
    assert!(
        printed.contains("context_depth = 5") && printed.contains("conditioner = [64, 64]"),
        "{printed}"
    );
    let again = tmp.path().join("again.toml");
    fs::write(&again, &printed).unwrap();
    assert_eq!(
        total(&info(&["--model", &again.display().to_string()])),
        total(&table)
    );
    // A preset printed as a file is the same network.
    let conv2 = tmp.path().join("conv2.toml");
    fs::write(&conv2, info(&["--arch", "conv2", "--print-spec"])).unwrap();
    assert_eq!(
        total(&info(&["--model", &conv2.display().to_string()])),
        total(&info(&["--arch", "conv2"]))
    );

    let run = tmp.path().join("run");
    let mut args = tiny_train(
        &run,
        "unused",
        "16",
        &["--max-steps", "2", "--model", &model],
    );
    args.drain(1..3); // no --arch beside --model
    flowify().args(&args).assert().success();
    assert_eq!(json(&run.join("config.json"))["arch"], "mine");
    assert!(fs::read_to_string(run.join("model.json"))
        .unwrap()
        .contains("\"context_depth\": 5"));
    fs::remove_file(&file).unwrap();
    let run_arg = run.display().to_string();
    flowify()
        .args(["eval", "--run", &run_arg, "--limit", "16"])
        .assert()
        .success();
    let png = tmp.path().join("s.png").display().to_string();
    flowify()
        .args(["sample", "--run", &run_arg, "--n", "4", "--out", &png])
        .assert()
        .success();
    // Resuming reads the run's own copy; the flags that would pick another network are ignored.
    let summary = flowify()
        .args(["train", "--resume", &run_arg, "--quiet"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&summary.get_output().stdout).into_owned();
    assert!(text.contains("trained mine"), "{text}");

    let err = fails(&["train", "--arch", "conv2", "--model", &model]);
    assert!(err.contains("--model") && err.contains("--arch"), "{err}");

    // A file's recipe sets the learning rate that --lr does not, and --lr overrides it.
    let tuned = tmp.path().join("tuned.toml");
    fs::write(
        &tuned,
        "input = [1, 28, 28]\ntrain = { lr = 0.002 }\nlayers = [{ layer = \"dequantize\" }, { layer = \"spline\" }]\n",
    )
    .unwrap();
    for (extra, lr) in [(vec![], 0.002), (vec!["--lr", "0.001"], 0.001)] {
        let run = tmp.path().join(format!("tuned-{}", extra.len()));
        let mut more = vec!["--max-steps", "1", "--model"];
        let file = tuned.display().to_string();
        more.push(&file);
        more.extend(extra);
        let mut args = tiny_train(&run, "unused", "16", &more);
        args.drain(1..3);
        flowify().args(&args).assert().success();
        assert_eq!(json(&run.join("config.json"))["lr"], lr);
    }
}

#[test]
fn bad_architecture_files_end_in_one_line_naming_file_layer_and_field() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("run");
    let cases = [
        (
            "input = [1, 28, 28]\nlayers = [\n  { layer = \"dequantize\" },\n  { layer = \"conv\", c_in = 2, c_out = 4, kernel = 2, stride = 2 },\n]\n",
            "layer 1 (conv), Conv(2→4, k2, s2): expects 2 channels, got 1×28×28",
        ),
        (
            "input = [1, 28, 28]\nlayers = [{ layer = \"spline\", knots = 4 }]\n",
            "layer 0 (spline): unknown field `knots`",
        ),
        ("input = [3, 32, 32]\nlayers = []\n", "input is 3×32×32, but mnist images are 1×28×28"),
        (
            "input = [1, 28, 28]\nlayers = [{ layer = \"dequantize\" }]\n",
            "the architecture bad3 has no parameters to train",
        ),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let file = tmp.path().join(format!("bad{i}.toml"));
        fs::write(&file, text).unwrap();
        let file = file.display().to_string();
        let mut args = tiny_train(
            &run,
            "unused",
            "16",
            &["--max-steps", "1", "--model", &file],
        );
        args.drain(1..3);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&args);
        assert!(err.contains(expected), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        if i < 2 {
            assert!(
                err.contains(&format!("bad{i}.toml")),
                "names the file: {err}"
            );
            let err = fails(&["info", "--model", &file]);
            assert!(err.contains(expected), "{err}");
        }
        assert!(!run.exists(), "nothing written for a refused spec");
    }
    let err = fails(&[
        "info",
        "--model",
        &tmp.path().join("none.toml").display().to_string(),
    ]);
    assert!(
        err.contains("none.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn every_subcommand_documents_its_defaults() {
    for sub in [
        "train",
        "eval",
        "sample",
        "reconstruct",
        "info",
        "bench",
        "download",
        "import",
        "encode",
        "score",
    ] {
        let out = flowify().args([sub, "--help"]).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(text.contains("Usage"), "{sub}: {text}");
    }
    let out = flowify().args(["train", "--help"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("[default: 128]") && text.contains("else 0.0005]"),
        "{text}"
    );
}

/// `bench --json` prints the issue's one line, its figures consistent with each other; with
/// `--per-layer` the line also holds every layer of the preset, in order, and nothing else is
/// printed.
#[test]
fn bench_prints_one_json_line_and_the_layers_when_asked() {
    let bench = ["bench", "--arch", "conv2", "--steps", "3", "--warmup", "0"];
    let spec = flowify::presets::spec(&flowify::data::Dataset::Mnist, "conv2").unwrap();
    for per_layer in [false, true] {
        let mut args = bench.to_vec();
        args.extend(["--batch-size", "4", "--json"]);
        if per_layer {
            args.push("--per-layer");
        }
        let out = flowify().args(&args).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert_eq!(text.lines().count(), 1, "{text}");
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["input"], serde_json::json!([1, 28, 28]));
        assert_eq!(report["arch"], "conv2");
        assert_eq!(report["batch_size"], 4);
        assert!(report["threads"].as_u64().unwrap() >= 1, "{text}");
        let ms = |key: &str| report["ms_per_step"][key].as_f64().unwrap();
        assert!(
            0.0 < ms("min") && ms("min") <= ms("median") && ms("median") <= ms("max"),
            "{text}"
        );
        let steps_per_sec = report["steps_per_sec"].as_f64().unwrap();
        assert!((steps_per_sec * ms("median") - 1e3).abs() < 1e-6, "{text}");
        assert!(report["peak_rss_mb"].as_f64().unwrap() > 0.0, "{text}");
        assert_eq!(report["portable"], false, "{text}");
        match report["layers"].as_array() {
            None => assert!(!per_layer, "no layers in {text}"),
            Some(layers) => {
                assert!(per_layer, "layers not asked for: {text}");
                let names: Vec<String> = spec.layers.iter().map(|l| l.name()).collect();
                let timed: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
                assert_eq!(timed, names);
                assert!(
                    layers.iter().all(|l| l["ms"].as_f64().unwrap() > 0.0),
                    "{text}"
                );
            }
        }
    }
    let out = flowify()
        .args(bench)
        .args(["--batch-size", "4", "--json", "--portable"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["portable"], true, "{report}");
    let out = flowify()
        .args(bench)
        .args(["--batch-size", "4", "--per-layer"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert_eq!(text.lines().count(), spec.layers.len() + 2, "{text}");
    assert!(
        text.contains("ms/step") && text.contains("steps/s"),
        "{text}"
    );
}

#[test]
fn a_short_mnist_training_run_lowers_the_loss() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("run");
    let budget = ["--max-steps", "40", "--log-every", "10", "--lr", "2e-3"];
    flowify()
        .args(tiny_train(&run, "mlp", "32", &budget))
        .assert()
        .success();
    let bpd: Vec<f64> = train_bpd(&run).into_iter().map(|(_, b)| b).collect();
    assert_eq!(bpd.len(), 4);
    assert!(
        bpd[3] < bpd[0] - 0.3,
        "train bits/dim over steps 1–10, …, 31–40: {bpd:?}"
    );
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("run");
    // A learning rate of 1 sends the mlp's loss to infinity within a few steps.
    let args = tiny_train(
        &run,
        "mlp",
        "16",
        &["--max-steps", "50", "--lr", "1", "--checkpoint-every", "1"],
    );
    let out = flowify().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    let failed: u64 = err
        .split("step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect(&err);
    assert!(
        err.contains("the loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    let kept = json(&run.join("checkpoint/state.json"))["step"]
        .as_u64()
        .unwrap();
    assert_eq!(
        kept,
        failed - 1,
        "the checkpoint of the last finite step is kept"
    );
    assert!(!run.join("summary.json").exists());
}

/// A two-step `conv2` run in `tmp/run`, and the MNIST test set.
fn two_step_run(tmp: &TempDir) -> (PathBuf, flowify::data::Examples) {
    let run = tmp.path().join("run");
    flowify()
        .args(tiny_train(&run, "conv2", "16", &["--max-steps", "2"]))
        .assert()
        .success();
    let test = flowify::data::load(
        &flowify::data::Dataset::Mnist,
        &mnist_dir(),
        flowify::data::Split::Test,
    )
    .unwrap();
    (run, test)
}

/// `encode` prints one latent vector per input, in input order, from CSV rows or IDX images;
/// in mean mode they are the model's mean-mode forward pass.
#[test]
fn encode_prints_each_inputs_latent_in_order() {
    let tmp = TempDir::new().unwrap();
    let (run, test) = two_step_run(&tmp);
    let run_arg = run.display().to_string();
    let csv = tmp.path().join("three.csv");
    let rows: Vec<String> = (0..3)
        .map(|i| {
            let pixels: Vec<String> = test.image(i).iter().map(u8::to_string).collect();
            pixels.join(",")
        })
        .collect();
    let header: Vec<String> = (0..784).map(|i| format!("p{i}")).collect();
    fs::write(&csv, format!("{}\n{}\n", header.join(","), rows.join("\n"))).unwrap();
    let encode = |input: &Path, extra: &[&str]| {
        let out = flowify()
            .args([
                "encode",
                "--run",
                &run_arg,
                "--input",
                &input.display().to_string(),
            ])
            .args(extra)
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let text = encode(&csv, &[]);
    let lines: Vec<Vec<f32>> = text
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let (_, model) = flowify::train::load_run(&run, &Device::flex()).unwrap();
    let x = flowify::eval::batch_tensor(&test, &[0, 1, 2], &Device::flex());
    let (z, _) = model.forward(x, flowify::flow::Mode::Mean);
    let expected = flowify::flow::host_values(z);
    assert_eq!(lines.concat(), expected, "mean-mode latents, in order");

    let json_lines: Vec<Vec<f32>> = encode(&csv, &["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json_lines, lines);

    // The same images as an IDX file.
    let idx = tmp.path().join("two-idx3-ubyte");
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    bytes.extend(test.image(0));
    bytes.extend(test.image(1));
    fs::write(&idx, bytes).unwrap();
    let from_idx: Vec<Vec<f32>> = encode(&idx, &[])
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(from_idx, lines[..2]);

    for (content, expected) in [
        (
            format!("{}\n1,2,3\n", rows[0]),
            "line 2: expected 784 values, found 3",
        ),
        (
            format!(
                "{}\n{}\n",
                rows[0],
                rows[1].replacen(',', ",x,", 1).replacen(",0", "", 1)
            ),
            "line 2, column 2: expected a number, found \"x\"",
        ),
        ("a,b\n".to_string(), "holds no rows of numbers"),
    ] {
        let bad = tmp.path().join("bad.csv");
        fs::write(&bad, content).unwrap();
        let err = fails(&[
            "encode",
            "--run",
            &run_arg,
            "--input",
            &bad.display().to_string(),
        ]);
        assert!(err.contains("bad.csv") && err.contains(expected), "{err}");
    }
}

/// A sequential network written with burn (784 → 24 → 10, LeakyReLU), saved to safetensors,
/// imported from the command line: `encode` in mean mode prints the network's own outputs, the
/// run evaluates and fine-tunes with `train --resume`, and what cannot be imported is refused
/// with one line before anything is written.
#[test]
fn an_imported_network_encodes_as_itself_and_fine_tunes() {
    use burn::nn::{Linear, LinearConfig};
    use burn::store::{ModuleSnapshot, SafetensorsStore};

    #[derive(Module, Debug)]
    struct Net {
        layers: Vec<Linear>,
    }
    let dev = Device::flex();
    dev.seed(4);
    let net = Net {
        layers: vec![
            LinearConfig::new(784, 24).init(&dev),
            LinearConfig::new(24, 10).init(&dev),
        ],
    };
    let tmp = TempDir::new().unwrap();
    let weights = tmp.path().join("net.safetensors");
    net.save_into(&mut SafetensorsStore::from_file(&weights))
        .unwrap();
    let run = tmp.path().join("imported");
    let (weights_arg, run_arg) = (weights.display().to_string(), run.display().to_string());
    let data = mnist_dir().display().to_string();
    let import = |extra: &[&str]| -> Vec<String> {
        ["import", "--weights", &weights_arg, "--leaky-relu", "0.3"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };

    // Refused, and nothing written.
    let err = fails(
        &import(&[
            "--out",
            &run_arg,
            "--layout",
            "burn",
            "--input-shape",
            "3,32,32",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(
        err.contains("--input-shape") && err.contains("1×28×28"),
        "{err}"
    );
    let err = fails(
        &import(&["--out", &run_arg, "--layout", "torch"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()[..],
    );
    assert!(
        err.contains("net.safetensors") && err.contains("layer"),
        "{err}"
    );
    assert!(!run.exists(), "a refused import wrote {run_arg}");

    let args = import(&[
        "--out",
        &run_arg,
        "--layout",
        "burn",
        "--data-dir",
        &data,
        "--max-steps",
        "3",
        "--batch-size",
        "16",
        "--test-limit",
        "32",
    ]);
    flowify().args(&args).assert().success();
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("already holds a run"), "{err}");

    // `encode` in mean mode: the network's outputs on (k + ½)/256.
    let pixels: Vec<u8> = (0..2 * 784).map(|i| ((i * 37) % 256) as u8).collect();
    let idx = tmp.path().join("two.idx");
    let mut file = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    file.extend(&pixels);
    fs::write(&idx, file).unwrap();
    let out = flowify()
        .args([
            "encode",
            "--run",
            &run_arg,
            "--input",
            &idx.display().to_string(),
            "--mode",
            "mean",
        ])
        .assert()
        .success();
    let printed: Vec<f32> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let x = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(
            pixels.iter().map(|&p| (p as f32 + 0.5) / 256.0).collect(),
            [2, 784],
        ),
        &dev,
    );
    let hidden = burn::tensor::activation::leaky_relu(net.layers[0].forward(x), 0.3);
    let expected = flowify::flow::host_values(net.layers[1].forward(hidden));
    assert_eq!(printed.len(), expected.len());
    for (a, b) in printed.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "encode {a} vs network {b}"
        );
    }

    flowify()
        .args(["eval", "--run", &run_arg, "--limit", "32"])
        .assert()
        .success();
    flowify()
        .args(["train", "--resume", &run_arg, "--quiet"])
        .assert()
        .success();
    assert_eq!(json(&run.join("summary.json"))["steps"], 3);
}

/// `score`: one line per input, in order, across PNG, IDX and CSV files; bits/dim consistent with
/// the log-likelihood; the same numbers as JSON Lines; over the first 64 test images, the mean
/// that `eval` reports; a file of the wrong shape refused before any line is printed.
#[test]
fn score_prints_each_inputs_likelihood_in_order() {
    let tmp = TempDir::new().unwrap();
    let (run, test) = two_step_run(&tmp);
    let run_arg = run.display().to_string();
    let first = test.image(0).to_vec();
    let png = tmp.path().join("one.png");
    image::GrayImage::from_raw(28, 28, first.clone())
        .unwrap()
        .save(&png)
        .unwrap();
    let idx = tmp.path().join("test64.idx");
    let mut file = vec![0, 0, 8, 3, 0, 0, 0, 64, 0, 0, 0, 28, 0, 0, 0, 28];
    (0..64).for_each(|i| file.extend(test.image(i)));
    fs::write(&idx, file).unwrap();
    let csv = tmp.path().join("row.csv");
    let row: Vec<String> = first.iter().map(|p| p.to_string()).collect();
    fs::write(&csv, row.join(",") + "\n").unwrap();
    let inputs = [&png, &idx, &csv].map(|p| p.display().to_string());

    let score = |extra: &[&str]| -> String {
        let mut args = vec!["score", "--run", &run_arg, "--input"];
        args.extend(inputs.iter().map(String::as_str));
        args.extend(extra);
        let out = flowify().args(&args).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let text = score(&[]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "input,log_likelihood,bits_per_dim,samples");
    assert_eq!(lines.len(), 1 + 1 + 64 + 1, "{text}");
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(names[0], inputs[0]);
    assert_eq!(names[1], format!("{}#0", inputs[1]));
    assert_eq!(names[64], format!("{}#63", inputs[1]));
    assert_eq!(names[65], inputs[2]);
    let numbers: Vec<(f64, f64)> = lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    for (ll, bpd) in &numbers {
        let expected = -ll / (784.0 * std::f64::consts::LN_2);
        assert!((bpd - expected).abs() < 1e-9, "{bpd} vs {expected}");
    }
    // The same draws, as JSON Lines.
    let json_text = score(&["--json"]);
    let from_json: Vec<f64> = json_text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["log_likelihood"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let from_csv: Vec<f64> = numbers.iter().map(|n| n.0).collect();
    assert_eq!(from_json, from_csv);
    // The test images' mean is eval's figure (other noise draws: within 0.05 bits/dim).
    let mean = numbers[1..65].iter().map(|n| n.1).sum::<f64>() / 64.0;
    let out = flowify()
        .args(["eval", "--run", &run_arg, "--limit", "64", "--json"])
        .assert()
        .success();
    let eval: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let bpd = eval["bpd"].as_f64().unwrap();
    assert!(
        (mean - bpd).abs() < 0.05,
        "score's mean {mean} vs eval's {bpd}"
    );

    let small = tmp.path().join("small.png");
    image::GrayImage::new(20, 20).save(&small).unwrap();
    let small_arg = small.display().to_string();
    let out = flowify()
        .args([
            "score", "--run", &run_arg, "--input", &inputs[0], &small_arg,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.contains(&small_arg) && stderr.contains("28×28"),
        "{stderr}"
    );
}

/// `--minutes`: the schedule is planned from the measured pace, so the run stops at the planned
/// step with the learning rate at (nearly) 0, and reports its wall time; `--max-steps` caps the
/// plan; a finished budgeted run resumes to nothing more.
#[test]
fn a_time_budget_plans_the_schedule_to_end_on_time() {
    let tmp = TempDir::new().unwrap();
    let last_lr = |run: &Path| -> f64 {
        let metrics = fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64())
            .last()
            .unwrap()
    };
    for (name, extra) in [
        ("budget", vec!["--minutes", "0.15"]),
        ("capped", vec!["--minutes", "5", "--max-steps", "30"]),
    ] {
        let run = tmp.path().join(name);
        let mut args = vec!["--log-every", "1"];
        args.extend(extra);
        flowify()
            .args(tiny_train(&run, "conv2", "16", &args))
            .assert()
            .success();
        let state = json(&run.join("checkpoint/state.json"));
        let summary = json(&run.join("summary.json"));
        assert_eq!(state["planned"], summary["steps"], "{name}: {state}");
        assert!(summary["steps"].as_u64().unwrap() > 20, "{name}: {summary}");
        assert!(
            last_lr(&run) < 5e-4 * 1e-2,
            "{name}: last rate {}",
            last_lr(&run)
        );
        assert!(
            summary["wall_seconds"].as_f64().unwrap() >= summary["train_seconds"].as_f64().unwrap()
        );
        if name == "capped" {
            assert_eq!(summary["steps"], 30);
            let run_arg = run.display().to_string();
            flowify()
                .args(["train", "--resume", &run_arg, "--quiet"])
                .assert()
                .success();
            assert_eq!(json(&run.join("summary.json"))["steps"], 30);
        }
    }
    for (flag, value, message) in [
        ("--minutes", "0", "--minutes: must be a number > 0"),
        ("--ema", "1", "--ema: must be a decay in (0, 1)"),
    ] {
        let args = tiny_train(&tmp.path().join("bad"), "conv2", "16", &[flag, value]);
        let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains(message), "{err}");
    }

    // The two runs' test curves, against minutes of training, side by side.
    let picture = tmp.path().join("curves.png");
    let runs = ["budget", "capped"].map(|name| tmp.path().join(name));
    let out = flowify()
        .args(["curves", "--out", &picture.display().to_string()])
        .args(&runs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for run in &runs {
        let summary = json(&run.join("summary.json"));
        let points = flowify::train::test_curve_minutes(run).unwrap();
        let (minutes, bpd) = *points.last().unwrap();
        // The resumed run evaluated again at its end, on other noise, for its summary.
        let summary_bpd = summary["test_bpd"].as_f64().unwrap();
        assert!((bpd - summary_bpd).abs() < 0.05, "{bpd} vs {summary_bpd}");
        let seconds = summary["train_seconds"].as_f64().unwrap();
        assert!(
            (minutes * 60.0 - seconds).abs() < 1e-9 * seconds,
            "{minutes} min vs {seconds} s"
        );
        assert!(points.windows(2).all(|p| p[0].0 <= p[1].0), "{points:?}");
        assert!(
            stdout.contains(&format!("conv2, lr 0.0005, seed 0: {bpd:.3}")),
            "{stdout}"
        );
    }
    assert_eq!(
        image::open(&picture).unwrap().to_rgb8().dimensions(),
        (800, 500)
    );
    let err = fails(&[
        "curves",
        "--out",
        "x.png",
        &tmp.path().join("bad").display().to_string(),
    ]);
    assert!(err.contains("config.json"), "{err}");
}

/// A toy set trains with the flat default preset and draws its three panels; `eval` reports
/// nats; a CSV file trains the same way, and a bad one gets one line naming line and column.
#[test]
fn flat_data_trains_with_the_dense_preset() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("moons");
    let out = flowify()
        .args([
            "train",
            "--dataset",
            "moons",
            "--max-steps",
            "30",
            "--quiet",
        ])
        .args(["--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("trained dense on moons") && stdout.contains("nats per example"),
        "{stdout}"
    );
    let picture = image::open(run.join("samples/epoch-001.png")).unwrap();
    assert_eq!((picture.width(), picture.height()), (960, 350));
    assert_eq!(json(&run.join("config.json"))["dataset"], "moons");
    let eval = flowify()
        .args(["eval", "--run", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&eval.stdout).contains("nats per example"));

    let table = tmp.path().join("gauss.csv");
    let rows: String = (0..200)
        .map(|i| format!("{},{},{}\n", i % 7, (i * 3) % 11, i % 5))
        .collect();
    fs::write(&table, format!("a,b,c\n{rows}")).unwrap();
    let dataset = format!("csv:{}", table.display());
    let csv_run = tmp.path().join("csv");
    flowify()
        .args([
            "train",
            "--dataset",
            &dataset,
            "--max-steps",
            "5",
            "--quiet",
        ])
        .args(["--out", csv_run.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        json(&csv_run.join("model.json"))["input"],
        serde_json::json!([3])
    );

    // Early stopping: 40 training rows, batches of 8 at a high rate overfit within a few epochs;
    // the run stops 2 epochs after its best, and reports (and evaluates) the best model.
    let noisy: String = (0..50)
        .map(|i| format!("{},{},{}\n", (i * 37) % 11, (i * 7) % 5, (i * 13) % 3))
        .collect();
    let small = tmp.path().join("small.csv");
    fs::write(&small, noisy).unwrap();
    let stopped = tmp.path().join("stopped");
    let small_arg = format!("csv:{}", small.display());
    let args = [
        "--epochs",
        "300",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--patience",
        "2",
        "--quiet",
    ];
    flowify()
        .args([
            "train",
            "--dataset",
            &small_arg,
            "--out",
            stopped.to_str().unwrap(),
        ])
        .args(args)
        .assert()
        .success();
    let summary = json(&stopped.join("summary.json"));
    let (steps, best_step) = (
        summary["steps"].as_u64().unwrap(),
        summary["best"][1].as_u64().unwrap(),
    );
    assert_eq!(steps, best_step + 2 * 5, "{summary}");
    assert!(stopped.join("best.safetensors").exists());
    let eval = flowify()
        .args(["eval", "--run", stopped.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["log_likelihood"], summary["test_log_likelihood"]);
    let err = fails(&[
        "train",
        "--patience",
        "2",
        "--max-steps",
        "1",
        "--out",
        tmp.path().join("p").to_str().unwrap(),
    ]);
    assert_eq!(
        err.trim(),
        "error: --patience: mnist has no validation split to stop on"
    );

    fs::write(&table, "a,b\n1,2\n3,x\n").unwrap();
    let err = fails(&[
        "train",
        "--dataset",
        &dataset,
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert_eq!(
        err.trim(),
        format!(
            "error: {}: line 3, column 2: expected a number, found \"x\"",
            table.display()
        )
    );
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn a_conditional_run_reports_its_accuracy_and_draws_the_class_asked_for() {
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("conditional");
    let args = tiny_train(&run, "mlp", "16", &["--conditional", "--max-steps", "2"]);
    flowify().args(&args).assert().success();
    assert_eq!(json(&run.join("model.json"))["classes"], 10);
    let dir = run.to_str().unwrap();

    let eval = flowify()
        .args(["eval", "--run", dir, "--limit", "64"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&eval.stdout);
    assert!(
        stdout.contains("over 64 images, each given its class")
            && stdout.contains("classification accuracy:")
            && stdout.contains("(the marginal over 10 classes)"),
        "{stdout}"
    );
    let eval = flowify()
        .args(["eval", "--run", dir, "--limit", "64", "--json"])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let accuracy = line["classification"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{line}");
    assert_eq!(line["classification"]["examples"], 64);
    // The marginal in nats per example and in bits/dim: one number, D = 784 values an image.
    let nats = line["classification"]["marginal_log_likelihood"]
        .as_f64()
        .unwrap();
    let bpd = line["classification"]["marginal_bpd"].as_f64().unwrap();
    assert!(
        (nats + bpd * 784.0 * std::f64::consts::LN_2).abs() < 1e-6 * nats.abs(),
        "{line}"
    );

    let sevens = tmp.path().join("sevens.png");
    flowify()
        .args(["sample", "--run", dir, "--class", "7", "--n", "4"])
        .args(["--out", sevens.to_str().unwrap()])
        .assert()
        .success();
    assert!(sevens.exists());
    let error = fails(&["sample", "--run", dir, "--class", "10", "--out", "x.png"]);
    assert!(
        error.contains("--class: 10 is not a class of the run") && error.contains("0 to 9"),
        "{error}"
    );

    let plain = tmp.path().join("plain");
    flowify()
        .args(tiny_train(&plain, "mlp", "16", &["--max-steps", "1"]))
        .assert()
        .success();
    let plain = plain.to_str().unwrap();
    let error = fails(&["sample", "--run", plain, "--class", "1", "--out", "x.png"]);
    assert!(error.contains("is not class-conditional"), "{error}");

    let table = tmp.path().join("table.csv");
    fs::write(&table, "1,2\n3,4\n5,6\n").unwrap();
    let dataset = format!("csv:{}", table.display());
    let error = fails(&["train", "--dataset", &dataset, "--conditional"]);
    assert!(
        error.contains("--conditional:") && error.contains("has no labels"),
        "{error}"
    );
    fails(&["train", "--resume", dir, "--conditional"]);
}
