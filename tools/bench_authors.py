#!/usr/bin/env python3
"""Time the AUTHORS' OWN training step of Flowification (balintmate/flowification).

Thin driver only: every layer, model class and the loss come from the authors' checkout in
.authors/flowification (exported unchanged from the fetched repository). The architectures are
built by the authors' own experiments/architectures.py:getArchitecture, wrapped exactly as
experiments/image_generation.py does (FlowifiedNet = Flow(CompositeTransform(layers),
LogNormal(latent_dim))), and trained as that script's loop does:

    z, logL = model.forward(x); opt.zero_grad(); (-logL.mean()).backward(); opt.step()

with torch.optim.Adam(lr=5e-4), batch 128. Input: random integer pixels k in {0..255} of the
dataset's shape, given to the model as k/255 (what torchvision's ToTensor feeds it).

Only deviation in construction: the released getArchitecture('cifar', 'mlp') overwrites the MLP
layer list with an unfinished MLP-Mixer variant whose classes (MakePatches, MixerLayer, Fold)
do not exist in the repository (NameError). For cifar/mlp this driver therefore builds the MLP
list that the same branch defines first (and that the paper describes) from the authors'
classes: Dequantize, Flatten, Linear(3072,1024), RqSpline, ..., Linear(256,128), latent 128.

Prints one JSON line per architecture on stdout (flushed).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
AUTHORS_ROOT = os.path.join(HERE, "flowification")

ALL = [
    ("mnist", "mlp"), ("mnist", "conv1"), ("mnist", "conv1_nsf"),
    ("mnist", "conv2"), ("mnist", "conv2_nsf"),
    ("cifar10", "mlp"), ("cifar10", "conv1"), ("cifar10", "conv1_nsf"),
    ("cifar10", "conv2"), ("cifar10", "conv2_nsf"),
]
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
AUTHOR_DATA_NAME = {"mnist": "mnist", "cifar10": "cifar"}


def _install_shims():
    """Make the authors' imports resolvable on a machine without wandb (and, on Python >= 3.13,
    without the removed stdlib module audioop). Nothing of their computation is replaced:
    wandb is only used for logging (wandb.log in models/flows.py), audioop only imported and
    never used (models/layers/funnel.py: `from audioop import mul`)."""
    try:
        import wandb  # noqa: F401
    except Exception:
        wandb = types.ModuleType("wandb")
        wandb.log = lambda *a, **k: None
        sys.modules["wandb"] = wandb
    try:
        # nflows/nn/nde/made.py imports pyplot at module level (used only in its __main__ demo)
        import matplotlib  # noqa: F401
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except Exception:
        mpl = types.ModuleType("matplotlib")
        plt = types.ModuleType("matplotlib.pyplot")
        mpl.pyplot = plt
        mpl.__path__ = []
        sys.modules["matplotlib"] = mpl
        sys.modules["matplotlib.pyplot"] = plt
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import audioop  # noqa: F401
    except Exception:
        audioop = types.ModuleType("audioop")
        audioop.mul = None
        sys.modules["audioop"] = audioop

    # The authors' top-level packages 'models' and 'experiments' have no __init__.py (namespace
    # packages). A regular package of the same name anywhere on sys.path would shadow them, so
    # pin both names to the checkout explicitly.
    if AUTHORS_ROOT not in sys.path:
        sys.path.insert(0, AUTHORS_ROOT)
    for name in ("models", "experiments"):
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(AUTHORS_ROOT, name)]
        sys.modules[name] = mod


def build_model(dataset, arch):
    from models.flows import Flow
    from models.transforms import CompositeTransform
    from models.distributions.standard_normal import LogNormal
    from experiments.architectures import getArchitecture

    data = AUTHOR_DATA_NAME[dataset]
    if data == "cifar" and arch == "mlp":
        from models.layers.Dequantize import Dequantize
        from models.layers.Flatten import Flatten
        from models.layers.Linear import Linear
        from models.layers.activations import RqSpline
        layers = [
            Dequantize(),
            Flatten(),
            Linear(3072, 1024), RqSpline(),
            Linear(1024, 512), RqSpline(),
            Linear(512, 512), RqSpline(),
            Linear(512, 256), RqSpline(),
            Linear(256, 128),
        ]
        latent_dim = 128
    else:
        layers, latent_dim = getArchitecture(data, arch)

    # == experiments/image_generation.py: class FlowifiedNet(Flow)
    return Flow(CompositeTransform(layers), LogNormal(latent_dim))


def bench_one(dataset, arch, device, steps, warmup, batch, lr, seed, scheduler_on):
    import torch

    torch.manual_seed(seed)
    model = build_model(dataset, arch).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = None
    if scheduler_on:
        # image_generation.py: CosineAnnealingWarmRestarts(opt, epochs * len(trainloader))
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, 300 * 469)

    c, h, w = SHAPES[dataset]
    gen = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randint(0, 256, (batch, c, h, w), generator=gen)
    base = (pixels.float() / 255.0).to(device)  # ToTensor: k / 255
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step():
        x = base.clone()  # Dequantize adds its noise to x in place
        z, logL = model.forward(x)
        opt.zero_grad()
        loss = -logL.mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        return loss

    last_loss = float("nan")
    for _ in range(warmup):
        last_loss = step()
    sync()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        last_loss = step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    loss_val = float(last_loss.detach().cpu()) if hasattr(last_loss, "detach") else last_loss
    d = c * h * w
    rec = {
        "dataset": dataset,
        "arch": arch,
        "device": device.type if not cuda else torch.cuda.get_device_name(device),
        "ms_per_step_median": round(statistics.median(times), 3),
        "min": round(min(times), 3),
        "max": round(max(times), 3),
        "steps": steps,
        "warmup": warmup,
        "batch": batch,
        "params": params,
        "last_loss_bpd": round(loss_val / (d * math.log(2)), 4) if math.isfinite(loss_val) else None,
        "torch": torch.__version__,
    }
    if cuda:
        rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="",
                    help="comma list of dataset/arch, e.g. mnist/conv2,cifar10/mlp "
                         "(cifar is accepted for cifar10)")
    ap.add_argument("--scheduler", action="store_true",
                    help="also step the authors' CosineAnnealingWarmRestarts each step")
    ap.add_argument("--params-only", action="store_true",
                    help="build each model and print its trainable parameter count, no timing")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (cpu)")
    args = ap.parse_args()

    _install_shims()
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    todo = ALL
    if args.only:
        want = []
        for item in args.only.split(","):
            item = item.strip()
            if not item:
                continue
            ds, _, ar = item.partition("/")
            ds = "cifar10" if ds == "cifar" else ds
            if (ds, ar) not in ALL:
                ap.error("unknown architecture %r" % item)
            want.append((ds, ar))
        todo = want

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "cuda requested but torch.cuda.is_available() is False"}),
              flush=True)
        sys.exit(2)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")

    failures = 0
    for ds, ar in todo:
        try:
            if args.params_only:
                torch.manual_seed(args.seed)
                m = build_model(ds, ar)
                rec = {"dataset": ds, "arch": ar,
                       "params": sum(p.numel() for p in m.parameters() if p.requires_grad)}
                del m
            else:
                rec = bench_one(ds, ar, device, args.steps, args.warmup, args.batch, args.lr,
                                args.seed, args.scheduler)
        except Exception as e:  # keep going: one broken architecture must not lose the others
            failures += 1
            rec = {"dataset": ds, "arch": ar, "error": "%s: %s" % (type(e).__name__, e)}
            traceback.print_exc(file=sys.stderr)
        print(json.dumps(rec), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
