"""Whole-job speed of the reference VAE on Fashion-MNIST, side by side with Pyro and pythae.

The reference VAE is Pyro's examples/vae/vae.py: MLP 784-400-50 (softplus), Bernoulli
likelihood on the grey levels, batch 256, Adam 1e-3, Trace_ELBO, test loss = -ELBO per
image in nats on the 10k test images. Every command below runs as a subprocess with the
same thread count (--threads, default: all cores), its wall time measured from start to
exit, the commands interleaved (ours, ours bf16, Pyro, pythae, ours, ...) --repeats times:

  ours       pyro-vae train examples/configs/fashion_vae.yaml train.epochs=N --profile
             (the whole command: imports, data, training, test metrics, plots, model.pt);
             fp32, and bf16-mixed too when oneDNN has native bf16 kernels on this CPU
             (the config's default, trainer.precision=auto, picks bf16-mixed there)
  pyro       Pyro's examples/vae/vae.py unchanged, from a Pyro git checkout at a pinned tag
             (-n N -tf N-1: it evaluates the test loss after the first and the last epoch;
             it always tests after epoch 0), run by the peer environment's Python
  pythae     benchmarks/peers/pythae_vae.py: pythae's VAE in the same shape (its BCE loss,
             analytic KL) trained by its TrainingPipeline, then its own loss (-ELBO per
             image) over the test images

It also measures the matrix-product peak (torch.mm, 2048 x 2048, same threads; fp32, and
bf16 when the bf16 run is on) before and after the commands and reports our seconds per
epoch of training steps (from the --profile table) as a fraction of the peak of the run's
precision. FLOPs of one epoch, counted analytically:
3 (forward + backward) x 2 (multiply-add) x (sum over the linear layers of in x out) x rows,
with layers 784x400, 400x50 (loc), 400x50 (scale) in the encoder and 50x400, 400x784 in the
decoder: 687,200 weights, 4.12 MFLOP per row, 247 GFLOP per epoch of 60,000 rows.

Set-up, once (the peer environment, outside the repository):
    python3 -m venv /work/venvs/peers
    /work/venvs/peers/bin/pip install "setuptools<81" wheel
    /work/venvs/peers/bin/pip install --no-build-isolation visdom
    /work/venvs/peers/bin/pip install torch==2.14.1 torchvision==0.29.1 pyro-ppl==1.9.1 \\
        pythae pandas seaborn matplotlib
(pyro-ppl 1.9.1: Pyro's 1.9.1 scripts assert that version; vae.py imports visdom and plots
with seaborn/pandas.)

Full run: about 5 minutes on a quiet 2-core VM at issue 18's speeds (ours fp32 and bf16,
Pyro, pythae: 10 epochs each, plus about 30 s of peak measurement and warm-up);
benchmarks/m2_speed.py takes about 9-10 more, so both together about 14-15 minutes, less
as pyro-vae gets faster:
    .venv/bin/python benchmarks/vae_speed.py              # 10 epochs, 1 repeat -> benchmarks/vae_speed.json
Quick check of the plumbing (1.5-2.5 minutes):
    .venv/bin/python benchmarks/vae_speed.py --epochs 1 --out /tmp/vae_speed.json
"""

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import harness as H  # noqa: E402

LAYERS = [(784, 400), (400, 50), (400, 50), (50, 400), (400, 784)]
FLOP_FORMULA = (
    "3 (forward + backward) x 2 (multiply-add) x sum(in x out of the linear layers: "
    "784x400 + 400x50 + 400x50 encoder, 50x400 + 400x784 decoder = 687,200) x training rows"
)
TRAIN_ROWS = 60000


def flops_per_epoch(rows: int = TRAIN_ROWS) -> float:
    return 3 * 2 * sum(i * o for i, o in LAYERS) * rows


def commands(args, bf16: bool):
    """The commands to run, in the interleaving order (bf16 only where the hardware has it)."""
    if args.only and "ours-bf16" in args.only and not bf16:
        H.log("vae_speed: no ours-bf16 run: oneDNN has no native bf16 kernels on this CPU")
    names = ["ours-fp32"] + (["ours-bf16"] if bf16 else []) + ["pyro-vae.py", "pythae"]
    return [n for n in names if not args.only or n in args.only]


def _precision(name: str) -> str:
    return "bf16-mixed" if name.endswith("bf16") else "32-true"


def run_ours(name, args, workdir, rep):
    out = Path(workdir) / f"{name}-{rep}"
    precision = _precision(name)
    cmd = [
        sys.executable,
        "-m",
        "pyro_vae.cli",
        "train",
        "examples/configs/fashion_vae.yaml",
        f"data.root={args.root}",
        f"train.epochs={args.epochs}",
        f"trainer.precision={precision}",
        "trainer.progress_bar=false",
        "--out",
        str(out),
        "--profile",
    ]
    if args.cuda:
        cmd.append("trainer.accelerator=gpu")
    res = H.run_timed(cmd, H.REPO, H.thread_env(args.threads, {"PYTHONPATH": str(H.REPO)}), args.timeout)
    row = {
        "command": _show(cmd),
        "rc": res["rc"],
        **{k: res[k] for k in ("wall_seconds", "cpu_seconds", "load_before")},
    }
    if res["rc"] != 0:
        return {**row, "error": H.failure(res)}
    metrics = json.loads((out / "metrics.json").read_text())
    profile = H.parse_profile(res["stderr"])
    epochs = int(metrics.get("epochs") or args.epochs)
    steps = H.training_seconds(profile)
    row.update(
        {
            "test_loss": round(metrics["test_loss"], 2),
            "epochs": epochs,
            "precision": metrics.get("precision"),
            "num_train": metrics.get("num_train"),
            "steps_per_epoch": metrics.get("steps_per_epoch"),
            "profile": profile,
            "seconds_per_epoch_with_validation": metrics.get("seconds_per_epoch"),
            "seconds_per_epoch": round(steps / epochs, 3) if steps is not None else metrics.get("seconds_per_epoch"),
        }
    )
    return row


def run_pyro(args, workdir, rep, vae_dir):
    cwd = Path(workdir) / f"pyro-{rep}"
    cwd.mkdir()
    cmd = [args.peer_python, str(vae_dir / "vae.py"), "-n", str(args.epochs), "-tf", str(max(1, args.epochs - 1))]
    if args.cuda:
        cmd.append("--cuda")
    res = H.run_timed(cmd, cwd, H.thread_env(args.threads), args.timeout)
    row = {
        "command": _show(cmd),
        "rc": res["rc"],
        **{k: res[k] for k in ("wall_seconds", "cpu_seconds", "load_before")},
    }
    if res["rc"] != 0:
        return {**row, "error": H.failure(res)}
    tests = [float(m.group(1)) for _, ln in res["lines"] if (m := re.search(r"average test loss: ([-\d.]+)", ln))]
    # "[epoch k] average training loss" is printed after epoch k's steps; between lines k-1 and k
    # lies epoch k's training, plus the test pass when epoch k-1 was tested (epoch 0 always is)
    gaps = H.epoch_seconds_from_lines(res["lines"], r"average training loss")
    row.update(
        {
            "test_loss": round(tests[-1], 2) if tests else None,
            "epochs": args.epochs,
            "epoch_seconds_from_output": gaps,
            "seconds_per_epoch": H.median(gaps[1:]) if len(gaps) > 1 else None,
        }
    )
    return row


def run_pythae(args, workdir, rep):
    out = Path(workdir) / f"pythae-{rep}"
    cmd = [
        args.peer_python,
        str(Path(__file__).resolve().parent / "peers" / "pythae_vae.py"),
        "--root",
        args.root,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--out-dir",
        str(out),
    ] + (["--cuda"] if args.cuda else [])
    res = H.run_timed(cmd, Path(workdir), H.thread_env(args.threads), args.timeout)
    row = {
        "command": _show(cmd),
        "rc": res["rc"],
        **{k: res[k] for k in ("wall_seconds", "cpu_seconds", "load_before")},
    }
    result = [json.loads(ln.split(" ", 1)[1]) for _, ln in res["lines"] if ln.startswith("PYTHAE_RESULT ")]
    if res["rc"] != 0 or not result:
        return {**row, "error": H.failure(res)}
    r = result[-1]
    row.update(
        {
            "test_loss": round(r["test_loss"], 2),
            "epochs": r["epochs"],
            "epoch_seconds": r["epoch_seconds"],
            "seconds_per_epoch": H.median(r["epoch_seconds"]),
            "pythae": r.get("pythae"),
        }
    )
    return row


def bare_step_ms(args, precision: str, steps: int = 200) -> dict:
    """ms per training step of the job's compiled loss (train.compile=jit) with fused Adam alone, in this
    process at --threads threads: no Lightning, no batching, one batch of real rows (speed_floor.py's step;
    a fresh batch per step costs the same). Timed right after each run of ours, at the load that run saw."""
    import torch

    from speed_floor import build, step_ms

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, model, plan, x = build(args.root)
    wall, cpu = step_ms(torch, list(model.parameters()), plan.step_loss, x, precision == "bf16-mixed", steps)
    return {"ms_per_step": round(wall, 3), "cpu_ms_per_step": round(cpu, 3), "steps": steps}


def breakdown(summary: dict, bare: dict) -> dict:
    """Per run of ours: its --profile medians grouped into start-up, data, steps (the bare step times the
    steps taken, and Lightning's work inside each step), the loop around the steps, evaluation, pictures."""
    out = {}
    for name, s in summary.items():
        prof, b = s.get("profile_median"), bare.get(name)
        if not prof or not b or H.STEPS not in prof:
            continue
        steps = s["steps_per_epoch"] * s["epochs"]
        bare_s = min(prof[H.STEPS], steps * b["ms_per_step"] / 1000)
        groups = {
            "start-up (interpreter, imports, config)": sum(v for k, v in prof.items() if k.startswith("import"))
            + prof.get("the rest (interpreter start-up, the command's own work)", 0.0)
            + (s.get("wall_minus_profile_total") or 0.0),
            "data loading": prof.get("data", 0.0),
            "model, plan, Trainer": prof.get("model and training plan", 0.0) + prof.get("Lightning Trainer", 0.0),
            "training steps, the step alone": bare_s,
            "training steps, Lightning's work inside each step": prof[H.STEPS] - bare_s,
            "the loop around the steps (next batch, hooks)": prof.get(H.LOOP, 0.0),
            "Lightning start/stop, checkpoints, validation": sum(
                prof.get(k, 0.0)
                for k in ("Lightning loop (checkpoints, logging, start/stop)", "validation", "best checkpoint reload")
            ),
            "test evaluation": prof.get("test metrics", 0.0),
            "pictures": sum(v for k, v in prof.items() if k.startswith("plot:")),
            "saving (model.pt, metrics, trackers)": prof.get("save model.pt, metrics.json", 0.0)
            + prof.get("trackers: test metrics, artifacts", 0.0),
        }
        wall = s["wall_seconds_median"]
        out[name] = {
            "wall_seconds": wall,
            "cpu_seconds": s.get("cpu_seconds_median"),
            "steps": steps,
            "bare_step": b,
            "ms_per_step_in_job": round(1000 * prof[H.STEPS] / steps, 3),
            "loop_ms_per_step": round(1000 * prof.get(H.LOOP, 0.0) / steps, 3),
            "seconds": {k: round(v, 3) for k, v in groups.items()},
            "share": {k: round(100 * v / wall, 1) for k, v in groups.items()},
        }
    return out


def _show(cmd):
    return " ".join(shlex.quote(str(c).replace(str(H.REPO) + "/", "")) for c in cmd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="rounds of the interleaved commands (default 1)")
    p.add_argument(
        "--threads", type=int, default=H.default_threads(), help="threads of every command (default: all cores)"
    )
    p.add_argument(
        "--only", nargs="+", choices=["ours-fp32", "ours-bf16", "pyro-vae.py", "pythae"], help="run only these commands"
    )
    p.add_argument("--root", default=H.FASHION, help="folder with Fashion-MNIST's four IDX .gz files")
    p.add_argument(
        "--peer-python", default=H.PEER_PYTHON, help="Python of the environment with pyro-ppl, visdom, pythae"
    )
    p.add_argument("--pyro-git", default=H.PYRO_GIT, help="a git clone (or bare mirror) of github.com/pyro-ppl/pyro")
    p.add_argument("--pyro-tag", default=H.PYRO_TAG)
    p.add_argument("--cache", default=str(H.CACHE), help="where Pyro's examples and their data are extracted")
    p.add_argument("--timeout", type=float, default=900, help="seconds per command before it is stopped")
    p.add_argument("--cuda", action="store_true", help="run every command on the GPU (peak on the GPU too)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--epochs, --repeats and --threads must be at least 1")

    try:
        mach = H.machine(args.threads)
        names = commands(args, bf16=mach["cpu_native_bf16"] or args.cuda)
        vae_dir = None
        if "pyro-vae.py" in names or "pythae" in names:
            mods = (["pyro", "visdom", "seaborn", "pandas"] if "pyro-vae.py" in names else []) + (
                ["pythae"] if "pythae" in names else []
            )
            H.peer_python(args.peer_python, mods)
            mach["peer_env"] = H.peer_versions(args.peer_python, ["torch", "pyro-ppl", "pythae", "visdom"])
        if "pyro-vae.py" in names:
            vae_dir = H.pyro_examples(args.root, args.pyro_git, args.pyro_tag, Path(args.cache))
    except H.BenchError as e:
        print(f"vae_speed: {e}", file=sys.stderr)
        return 2

    device = "cuda" if args.cuda else "cpu"
    dtypes = ["float32"] + (["bfloat16"] if any(n.endswith("bf16") for n in names) else [])
    peaks = [H.matmul_peak(args.threads, device=device, dtype=dt) for dt in dtypes]
    H.log(
        "matmul peak: "
        + ", ".join(f"{pk['dtype']} {pk['gflops']} GFLOP/s" for pk in peaks)
        + f" ({args.threads} threads, {mach['cpu']})"
    )
    H.warm_up(sys.executable, ["torch", "pyro", "lightning", "pyro_vae.train"], args.threads)
    if any(not n.startswith("ours") for n in names):
        H.warm_up(args.peer_python, ["torch", "pyro", "torchvision"], args.threads)
    runs = []
    load0 = round(os.getloadavg()[0], 2)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vae_speed-") as workdir:
        for rep in range(args.repeats):
            for name in names:
                if name.startswith("ours"):
                    row = run_ours(name, args, workdir, rep)
                    if not args.cuda and row["rc"] == 0:  # at the machine's load of the job just run
                        row["bare_step"] = bare_step_ms(args, _precision(name))
                elif name == "pyro-vae.py":
                    row = run_pyro(args, workdir, rep, vae_dir)
                else:
                    row = run_pythae(args, workdir, rep)
                row = {"name": name, "repeat": rep, **row}
                runs.append(row)
                H.log(
                    f"[{rep + 1}/{args.repeats}] {name}: {row['wall_seconds']:.1f} s whole job, test loss "
                    f"{row.get('test_loss')}, {row.get('seconds_per_epoch')} s/epoch"
                    + (f"  FAILED {row['error']}" if "error" in row else "")
                )
    peaks += [H.matmul_peak(args.threads, device=device, dtype=dt) for dt in dtypes]
    peak = {dt: max(pk["gflops"] for pk in peaks if pk["dtype"] == dt) for dt in dtypes}
    bare = {}  # per command of ours: the median of the bare steps timed right after each of its runs
    for name in names:
        steps = [r["bare_step"] for r in runs if r["name"] == name and "bare_step" in r]
        if steps:
            bare[name] = {k: H.median([b[k] for b in steps]) for k in steps[0]}
    summary, speedup = H.summarise(
        runs, "test_loss", flops_per_row=flops_per_epoch(1), peak_gflops=peak, default_rows=TRAIN_ROWS
    )
    for name, s in summary.items():
        ok = [r for r in runs if r["name"] == name and r["rc"] == 0]
        if name.startswith("ours") and ok:
            s.update(steps_per_epoch=ok[0]["steps_per_epoch"], epochs=ok[0]["epochs"])
    out = {
        "benchmark": "vae_speed",
        "setup": "Fashion-MNIST 60k/10k, MLP 784-400-50 softplus, Bernoulli on grey levels, batch 256, "
        "Adam 1e-3, Trace_ELBO (pythae: its VAE, BCE + analytic KL)",
        "command": "python benchmarks/vae_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": device,
        "pyro_examples": {"git": args.pyro_git, "tag": args.pyro_tag},
        "machine": mach,
        "matmul_peak": {
            "runs": peaks,
            "gflops": peak,
            "what": "torch.mm of 2048 x 2048 matrices, best of "
            "the runs before and after the commands; % of peak: fp32 runs against float32, bf16 "
            "runs against bfloat16",
        },
        "flops_per_epoch_formula": FLOP_FORMULA,
        "test_loss": "-ELBO per test image in nats (ours and Pyro: Trace_ELBO, one sample; pythae: "
        "its loss, BCE + analytic KL, the same quantity in expectation)",
        "speedup_definition": "peer whole-job wall seconds / ours (median over repeats); > 1: ours is faster",
        "seconds": round(time.perf_counter() - t_start, 1),
        "runs": runs,
        "summary": summary,
        "speedup": speedup,
        "breakdown": breakdown(summary, bare),
        "load_average": {"start": load0, "end": round(os.getloadavg()[0], 2), "cores": os.cpu_count()},
    }
    return H.finish(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
