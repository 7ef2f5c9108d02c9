"""Whole-job speed of semi-supervised M2 on Fashion-MNIST, side by side with Pyro's ss_vae_M2.py.

Pyro's setup (ss_vae_M2.py's defaults): 3000 class-balanced labels, 10,000 labelled
validation images held out of the 60,000, z 50, MLP 500 networks with softplus, an MLP
q(y|x), the auxiliary classification term with alpha 46 per labelled example, batch 200,
Adam lr 4.2e-4, Trace(Enum)_ELBO, N epochs (default 3). Every command runs as a subprocess
with the same thread count (--threads, default: all cores), its wall time measured from
start to exit, the commands interleaved --repeats times:

  ours-pyro-setup  pyro-vae train model.name=ssvae <data keys> + the overrides that
                   reproduce Pyro's setup (OURS_PYRO_SETUP; in the JSON too) --profile;
                   the precision is the project's default (auto), recorded per run
  ours-defaults    pyro-vae train model.name=ssvae <data keys> data.validation=10000 --profile:
                   the project's M2 defaults (conv q(y|x), batch 128, ...) on the same split as
                   Pyro's script (50,000 training rows an epoch), data keys and epochs only
  pyro-ss_vae_M2   Pyro's examples/vae/ss_vae_M2.py unchanged, from a Pyro git checkout at
                   a pinned tag: --aux-loss -n N --seed 0 (the aux term is off without
                   --aux-loss; everything else is the script's default), peer Python

Accuracy: ours is the test accuracy of the epoch with the best validation accuracy; Pyro's
script prints that too ("corresponding testing accuracy") and the last epoch's. Seconds per
epoch: ours from the --profile table (training steps only); Pyro's from the time between
its per-epoch lines (its steps plus its validation and test accuracy passes; the first
epoch, which starts with loading the data, is not counted).

Set-up of the peer environment: see `python benchmarks/vae_speed.py --help`.

Full run: about 9-10 minutes on a quiet 2-core VM at issue 18's speeds (about 2.5 each for
ours in Pyro's setup and Pyro's script, about 4 for the M2 defaults: a conv
q(y|x) reads every labelled and unlabelled batch; `--only ours-pyro-setup pyro-ss_vae_M2` leaves them out);
benchmarks/vae_speed.py takes about 5 more:
    .venv/bin/python benchmarks/m2_speed.py               # 3 epochs, 1 repeat -> benchmarks/m2_speed.json
Quick check of the plumbing (4-8 minutes: one epoch of each):
    .venv/bin/python benchmarks/m2_speed.py --epochs 1 --out /tmp/m2_speed.json
"""

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import harness as H  # noqa: E402

LABELS = 3000
OURS_PYRO_SETUP = [
    "data.validation=10000",
    "latent_dim=50",
    "encoder.type=mlp",
    "encoder.hidden=[500]",
    "encoder.activation=softplus",
    "decoder.type=mlp",
    "decoder.hidden=[500]",
    "decoder.activation=softplus",
    "model.classifier_type=mlp",
    "model.classifier_hidden=[500]",
    "model.classifier_activation=softplus",
    "model.classifier_dropout=0",
    "model.augment_shift=0",
    "model.pseudo_label_weight=0",
    "model.aux_scaling=labelled",
    "model.aux_loss_multiplier=46",
    "train.batch_size=200",
    "train.lr=4.2e-4",
    "train.elbo=trace",
    "train.lr_schedule=constant",
]  # trainer.precision stays the default (auto: bf16-mixed on CPUs with bf16 units), as a user runs it
SAME_SPLIT = ["data.validation=10000"]  # Pyro's script holds out 10,000 labelled images: the same epoch
NAMES = ["ours-pyro-setup", "ours-defaults", "pyro-ss_vae_M2"]


def run_ours(name, args, workdir, rep):
    out = Path(workdir) / f"{name}-{rep}"
    cmd = [
        sys.executable,
        "-m",
        "pyro_vae.cli",
        "train",
        "model.name=ssvae",
        "data.name=fashion-mnist",
        f"data.root={args.root}",
        f"data.labels={LABELS}",
        f"train.epochs={args.epochs}",
        *(OURS_PYRO_SETUP if name == "ours-pyro-setup" else SAME_SPLIT),
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
            "test_accuracy": round(metrics["test_accuracy"], 4),
            "epochs": epochs,
            "best_epoch": metrics.get("best_epoch"),
            "num_train": metrics.get("num_train"),
            "precision": metrics.get("precision"),
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
    cmd = [args.peer_python, str(vae_dir / "ss_vae_M2.py"), "--aux-loss", "-n", str(args.epochs), "--seed", "0"]
    if args.cuda:
        cmd.append("--cuda")
    res = H.run_timed(cmd, cwd, H.thread_env(args.threads), args.timeout)
    row = {
        "command": _show(cmd),
        "rc": res["rc"],
        **{k: res[k] for k in ("wall_seconds", "cpu_seconds", "load_before")},
    }
    last = [
        m
        for _, ln in res["lines"]
        if (
            m := re.search(
                r"best validation accuracy ([\d.]+) corresponding testing accuracy ([\d.]+) last testing accuracy ([\d.]+)",
                ln,
            )
        )
    ]
    if res["rc"] != 0 or not last:
        return {**row, "error": H.failure(res)}
    gaps = H.epoch_seconds_from_lines(res["lines"], r"^\d+ epoch: avg losses")
    row.update(
        {
            "test_accuracy": float(last[-1].group(2)),
            "last_epoch_test_accuracy": float(last[-1].group(3)),
            "best_validation_accuracy": float(last[-1].group(1)),
            "epochs": args.epochs,
            "epoch_seconds_from_output": gaps,
            "seconds_per_epoch": H.median(gaps),
        }
    )
    return row


def _show(cmd):
    return " ".join(shlex.quote(str(c).replace(str(H.REPO) + "/", "")) for c in cmd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="rounds of the interleaved commands (default 1)")
    p.add_argument(
        "--threads", type=int, default=H.default_threads(), help="threads of every command (default: all cores)"
    )
    p.add_argument("--only", nargs="+", choices=NAMES, help="run only these commands")
    p.add_argument("--root", default=H.FASHION, help="folder with Fashion-MNIST's four IDX .gz files")
    p.add_argument(
        "--peer-python", default=H.PEER_PYTHON, help="Python of the environment with pyro-ppl 1.9.1 and visdom"
    )
    p.add_argument("--pyro-git", default=H.PYRO_GIT, help="a git clone (or bare mirror) of github.com/pyro-ppl/pyro")
    p.add_argument("--pyro-tag", default=H.PYRO_TAG)
    p.add_argument("--cache", default=str(H.CACHE), help="where Pyro's examples and their data are extracted")
    p.add_argument("--timeout", type=float, default=900, help="seconds per command before it is stopped")
    p.add_argument("--cuda", action="store_true", help="run every command on the GPU")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--epochs, --repeats and --threads must be at least 1")
    names = [n for n in NAMES if not args.only or n in args.only]
    try:
        mach = H.machine(args.threads)
        vae_dir = None
        if "pyro-ss_vae_M2" in names:
            H.peer_python(args.peer_python, ["pyro", "visdom"])
            mach["peer_env"] = H.peer_versions(args.peer_python, ["torch", "pyro-ppl", "visdom"])
            vae_dir = H.pyro_examples(args.root, args.pyro_git, args.pyro_tag, Path(args.cache))
    except H.BenchError as e:
        print(f"m2_speed: {e}", file=sys.stderr)
        return 2

    H.warm_up(sys.executable, ["torch", "pyro", "lightning", "pyro_vae.train"], args.threads)
    if any(not n.startswith("ours") for n in names):
        H.warm_up(args.peer_python, ["torch", "pyro", "torchvision"], args.threads)
    runs = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="m2_speed-") as workdir:
        for rep in range(args.repeats):
            for name in names:
                row = (
                    run_pyro(args, workdir, rep, vae_dir)
                    if name == "pyro-ss_vae_M2"
                    else run_ours(name, args, workdir, rep)
                )
                row = {"name": name, "repeat": rep, **row}
                runs.append(row)
                H.log(
                    f"[{rep + 1}/{args.repeats}] {name}: {row['wall_seconds']:.1f} s whole job, test accuracy "
                    f"{row.get('test_accuracy')}, {row.get('seconds_per_epoch')} s/epoch"
                    + (f"  FAILED {row['error']}" if "error" in row else "")
                )
    summary, speedup = H.summarise(runs, "test_accuracy")
    out = {
        "benchmark": "m2_speed",
        "setup": f"Fashion-MNIST, {LABELS} labels, Pyro's ss_vae_M2.py setup (see ours_pyro_setup) and "
        "the project's M2 defaults",
        "command": "python benchmarks/m2_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": "cuda" if args.cuda else "cpu",
        "pyro_examples": {"git": args.pyro_git, "tag": args.pyro_tag},
        "ours_pyro_setup": OURS_PYRO_SETUP,
        "ours_defaults_overrides": SAME_SPLIT,
        "machine": mach,
        "test_accuracy": "ours: test accuracy of the epoch with the best validation accuracy; Pyro: its "
        "'corresponding testing accuracy' (the same selection)",
        "speedup_definition": "peer whole-job wall seconds / ours (median over repeats); > 1: ours is faster",
        "seconds": round(time.perf_counter() - t_start, 1),
        "runs": runs,
        "summary": summary,
        "speedup": speedup,
    }
    return H.finish(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
