"""Cost of a training epoch: M2 on the pixels against M1+M2's two stages, side by side.

Fashion-MNIST, data.labels=N (default 3000), data.validation=1000, each model kind with its
defaults (batch size included). In one process and on one thread, the training step of each
(the loss of the plan the trainer uses, backward, Adam) runs in alternating blocks of 10 steps
on the same few batches from the kind's own sampler, after a warm-up; the median block gives ms
a step, and ms a step times the steps of an epoch gives seconds an epoch. Precision follows the
default (bf16 autocast on CPUs with native bf16 units, float32 otherwise).

  m2        model=ssvae: M2 on the pixels (conv q(y|x), pseudo-labels; 128 rows a step here)
  m1        model=m1m2, first stage: M1's ELBO on all rows
  m1m2-m2   model=m1m2, second stage: M2 on M1's code means (and the codes' spread)

The models are freshly initialised, so few pseudo-labels pass M2's threshold and M2's step is
at its cheapest (a trained M2 sends 65-75% of the unlabelled copies through q(y|x) again).

    .venv/bin/python benchmarks/m1m2_cost.py      # under a minute -> benchmarks/m1m2_cost.json
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyro_vae.config import load_config  # noqa: E402
from pyro_vae.data import load_data  # noqa: E402
from pyro_vae.fastmath import cpu_has_native_bf16  # noqa: E402
from pyro_vae.train import build_model  # noqa: E402
from pyro_vae.training import plan_for  # noqa: E402
from pyro_vae.utils import write_json  # noqa: E402

ROOT = "/usr/share/datasets/fashion-mnist"


def setup(kind, labels, root, second_stage):
    cfg = load_config(
        None,
        [
            f"model={kind}",
            "data.name=fashion-mnist",
            f"data.root={root}",
            f"data.labels={labels}",
            "data.validation=1000",
        ],
    )
    data = load_data(cfg)
    model = build_model(cfg, data.info())
    plan = plan_for(model, cfg)
    plan.setup(data)
    model.train()
    loader = plan.train_dataloader(data, 0)
    if second_stage:
        loader.sampler.set_epoch(int(cfg.model.m1_epochs))
    it = iter(loader)
    batches = [next(it) for _ in range(5)]
    if not second_stage and kind == "m1m2":
        assert not isinstance(batches[0], dict), "expected M1's batches"
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "plan": plan,
        "batches": batches,
        "steps_per_epoch": len(loader),
        "batch_size": int(cfg.train.batch_size),
        "opt": torch.optim.Adam(params, lr=float(cfg.train.lr)),
    }


def block(r, autocast, n=10):
    t = time.perf_counter()
    for i in range(n):
        with autocast():
            loss = r["plan"].loss(r["batches"][i % len(r["batches"])])
        r["opt"].zero_grad(set_to_none=True)
        loss.backward()
        r["opt"].step()
    return (time.perf_counter() - t) / n * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, default=3000)
    p.add_argument("--root", default=ROOT, help="folder with Fashion-MNIST's IDX files")
    p.add_argument("--blocks", type=int, default=8, help="timed blocks of 10 steps per kind")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bf16 = cpu_has_native_bf16()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    runs = {
        "m2": setup("ssvae", args.labels, args.root, False),
        "m1": setup("m1m2", args.labels, args.root, False),
        "m1m2-m2": setup("m1m2", args.labels, args.root, True),
    }
    for r in runs.values():
        block(r, autocast, 5)
    times = {k: [] for k in runs}
    for _ in range(args.blocks):
        for k, r in runs.items():
            times[k].append(block(r, autocast))
    rows = []
    for k, r in runs.items():
        ms = statistics.median(times[k])
        rows.append(
            {
                "kind": k,
                "batch_size": r["batch_size"],
                "steps_per_epoch": r["steps_per_epoch"],
                "ms_per_step": round(ms, 1),
                "seconds_per_epoch": round(ms * r["steps_per_epoch"] / 1000, 1),
                "blocks_ms": [round(t, 1) for t in times[k]],
            }
        )
        print(
            f"{k:8s} batch {r['batch_size']:4d}  {r['steps_per_epoch']:4d} steps  {ms:6.1f} ms/step  "
            f"{rows[-1]['seconds_per_epoch']:6.1f} s/epoch",
            flush=True,
        )
    write_json(
        args.out,
        {
            "benchmark": "m1m2 cost",
            "labels": args.labels,
            "threads": 1,
            "precision": "bf16 autocast" if bf16 else "float32",
            "cpu": _cpu(),
            "rows": rows,
        },
    )


def _cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
