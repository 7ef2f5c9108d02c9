"""How fast can the reference VAE's whole job be on this machine? The floors, measured.

`benchmarks/vae_speed.py` times `pyro-vae train` against Pyro's `vae.py`. This benchmark
measures, in one run on the same machine, what bounds that ratio from above:

  imports    wall seconds of `python -c "import ..."` (median of --repeats): the interpreter
             alone; torch + pyro; + torch._dynamo, which torch's optimizers import at their
             first step (`torch._compile._disable_dynamo`), so every eager training job pays it;
             + lightning (the engine; it imports torchmetrics, which imports scipy.signal,
             matplotlib and torchvision.models)
  steps      milliseconds per training step (batch 256, real Fashion-MNIST rows, fused Adam,
             median of --repeats rounds of --steps steps, the variants interleaved) of
               pyro      Pyro's Trace_ELBO on the VAE's model and guide, run eagerly (train.compile=none)
               pyro jit  the same loss recorded by torch.jit.trace and replayed (train.compile=jit,
                         pyro_vae.pyromodule.TracedProgram: Pyro's ELBO semantics, the same draws)
               torch     the same networks and the same estimator written as plain torch
                         (reparameterised z, Bernoulli log-likelihood, Monte-Carlo KL): the
                         eager floor with no probabilistic-programming layer at all
             in float32 and, where oneDNN has native bf16 kernels, under bf16 autocast
  compile    torch.compile of the Pyro loss module (the first step's seconds: the compile, with
             an empty compile cache; then ms per step), whether Pyro's JitTrace_ELBO runs, and
             the seconds of train.compile=jit's first step (run, record, replay)
  M2 convs   ms per training step of M2 with its defaults (its q(y|x) is convolutional) under
             bf16 autocast with the convolutions in float32 and in bf16 (native bf16 CPUs only)
  jobs       `pyro-vae train examples/configs/fashion_vae.yaml` and Pyro's examples/vae/vae.py,
             10 epochs each, whole process (as in vae_speed.py)

The bound: a 10-epoch job cannot take less than the import floor (torch + pyro + dynamo) plus
2350 steps (10 x 235) at the fastest eager step measured (its best round), even with no
Lightning, no data loading, no evaluation and no plots; Pyro's wall time over that floor is the
largest whole-job speed-up eager PyTorch allows here, and `pyro-vae train`'s over it how close
this project comes. GFLOP/s of a step: 1.05 GFLOP (the 784-400-50
network's 687,200 weights x 6 x 256 rows) over its seconds, against the torch.mm peak.

    .venv/bin/python benchmarks/speed_floor.py            # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/speed_floor.py --no-peer --out /tmp/floor.json
"""

import argparse
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import harness as H  # noqa: E402

BATCH, ROWS, EPOCHS = 256, 60000, 10
STEPS_PER_EPOCH = math.ceil(ROWS / BATCH)
WEIGHTS = 784 * 400 + 400 * 50 + 400 * 50 + 50 * 400 + 400 * 784
GFLOP_PER_STEP = 6 * WEIGHTS * BATCH / 1e9
IMPORTS = {
    "python": "pass",
    "torch + pyro": "import torch, pyro",
    "torch + pyro + torch._dynamo": "import torch, pyro, torch._dynamo",
    "torch + pyro + lightning": "import torch, pyro, lightning",
}


def import_seconds(threads, repeats):
    env = H.thread_env(threads, {"PYTHONPATH": str(H.REPO)})
    out = {}
    for name, code in IMPORTS.items():
        walls = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
        out[name] = round(statistics.median(walls), 3)
        H.log(f"import {name}: {out[name]:.2f} s")
    return out


def build(root):
    """The reference VAE (examples/configs/fashion_vae.yaml), its loss module and one batch of real rows."""
    import torch
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data
    from pyro_vae.models.base import DataInfo
    from pyro_vae.train import build_model
    from pyro_vae.training import plan_for

    cfg = load_config(str(H.REPO / "examples/configs/fashion_vae.yaml"), [f"data.root={root}", "train.compile=jit"])
    x = load_data(cfg).train.x[:BATCH].clone()
    model = build_model(cfg, DataInfo(784, (1, 28, 28), 10, ROWS))
    model.num_data = ROWS
    plan = plan_for(model, cfg)
    return torch, model, plan, x


def torch_loss(model, torch):
    """The same estimator as Trace_ELBO on the VAE, in plain torch: -(log p(x|z) + log p(z) - log q(z|x)) * N/B."""
    from pyro_vae.fastmath import softplus

    enc, dec = model.encoder, model.decoder

    def loss(x):
        loc, scale = enc(x)
        z = loc + scale * torch.randn_like(loc)
        logits = dec(z).float()
        log_px = (x * logits - softplus(logits)).sum()
        loc, scale, z = loc.float(), scale.float(), z.float()
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum()
        log_p = (-0.5 * z**2).sum()  # the 0.5 log(2 pi) terms cancel
        return -(log_px + log_p - log_q) * (model.num_data / x.shape[0])

    return loss


def step_ms(torch, params, loss, x, bf16, steps):
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss(x)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    for _ in range(5):
        step()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1000, (time.process_time() - cpu) / steps * 1000


def step_times(torch, model, plan, x, bf16_ok, steps, repeats):
    variants = {"pyro": plan.loss_module, "pyro jit": plan.step_loss, "torch": torch_loss(model, torch)}
    precisions = ["float32"] + (["bf16-mixed"] if bf16_ok else [])
    runs = {f"{v} {p}": [] for p in precisions for v in variants}
    cpu = {k: [] for k in runs}  # the process's CPU ms per step: less moved by other work on the machine
    params = list(model.parameters())
    for r in range(repeats):
        for p in precisions:
            for v, fn in variants.items():
                wall, used = step_ms(torch, params, fn, x, p != "float32", steps)
                runs[f"{v} {p}"].append(wall)
                cpu[f"{v} {p}"].append(used)
        H.log(f"steps, round {r + 1}/{repeats}: " + ", ".join(f"{k} {ms[-1]:.2f} ms" for k, ms in runs.items()))
    return {
        k: {
            "ms_per_step": round(statistics.median(ms), 3),
            "vs_torch": round(statistics.median(ms) / statistics.median(runs["torch " + k.split()[-1]]), 3),
            "cpu_ms_per_step": round(statistics.median(cpu[k]), 3),
            "cpu_vs_torch": round(statistics.median(cpu[k]) / statistics.median(cpu["torch " + k.split()[-1]]), 3),
            "rounds": [round(m, 3) for m in ms],
            "gflops": round(GFLOP_PER_STEP / (statistics.median(ms) / 1000), 1),
        }
        for k, ms in runs.items()
    }


def m2_conv_precision(torch, root, steps, repeats):
    """ms per training step of M2 with its defaults (conv q(y|x); 100 labels) under bf16 autocast,
    its convolutions in float32 (as on CPUs without native bf16) and in bf16 (native bf16 CPUs)."""
    import pyro_vae.networks as networks
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data
    from pyro_vae.train import build_model
    from pyro_vae.training import plan_for

    cfg = load_config(
        None, ["model=ssvae", "data.name=fashion-mnist", f"data.root={root}", "data.labels=100", "data.validation=1000"]
    )
    data = load_data(cfg)
    model = build_model(cfg, data.info())
    plan = plan_for(model, cfg)
    plan.setup(data)
    batch = next(iter(plan.train_dataloader(data, 0)))
    native = networks.cpu_has_native_bf16
    times = {"float32 convolutions": [], "bf16 convolutions": []}
    try:
        for _ in range(repeats):
            for k in times:
                networks.cpu_has_native_bf16 = lambda k=k: k.startswith("bf16")
                times[k].append(
                    step_ms(torch, list(model.parameters()), plan.loss, batch, True, max(10, steps // 5))[0]
                )
    finally:
        networks.cpu_has_native_bf16 = native
    H.log("M2 step: " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in times.items()))
    return {
        "batch": {k: list(v.shape) for k, v in batch.items()},
        **{k: round(statistics.median(v), 2) for k, v in times.items()},
    }


def compiled(torch, plan, x, steps):
    """torch.compile of the Pyro loss module: compile seconds (the first step) and ms per step after."""
    import torch._logging

    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    fn = torch.compile(plan.loss_module)
    opt = torch.optim.Adam(list(plan.model.parameters()), lr=1e-3, fused=True)

    def step():
        value = fn(x)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    try:
        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        for _ in range(5):
            step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        ms = (time.perf_counter() - t) / steps * 1000
    except Exception as e:  # a failure is a result here
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    H.log(f"torch.compile: first step {first:.1f} s, then {ms:.2f} ms/step")
    return {"first_step_seconds": round(first, 1), "ms_per_step": round(ms, 3)}


def jit_first_step(torch, plan, x):
    """Seconds of train.compile=jit's first step on a new batch shape: a run that finds the parameters,
    the recording by torch.jit.trace, and the first replay (forward and backward)."""
    from pyro_vae.pyromodule import TracedProgram

    fresh = TracedProgram(plan.step_loss.fn, plan.step_loss.modules, plan.step_loss.scalars)
    t = time.perf_counter()
    fresh(x).backward()
    first = time.perf_counter() - t
    H.log(f"train.compile=jit: first step {first:.2f} s")
    return {"first_step_seconds": round(first, 3)}


def jit_elbo(torch, model, x):
    """Whether Pyro's JitTrace_ELBO runs on the model (PyroModule parameters)."""
    from pyro.infer import JitTrace_ELBO

    try:
        JitTrace_ELBO().differentiable_loss(model.model, model.guide, x).backward()
        return {"runs": True}
    except Exception as e:
        return {"runs": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def run_jobs(args, bf16):
    """Whole jobs in this run: `pyro-vae train` (its default precision here) and Pyro's vae.py, 10 epochs."""
    from vae_speed import run_ours, run_pyro

    H.peer_python(args.peer_python, ["pyro", "visdom", "seaborn", "pandas"])
    vae_dir = H.pyro_examples(args.root, args.pyro_git, args.pyro_tag, Path(args.cache))
    H.warm_up(sys.executable, ["torch", "pyro", "lightning", "pyro_vae.train"], args.threads)
    H.warm_up(args.peer_python, ["torch", "pyro", "torchvision"], args.threads)
    job_args = argparse.Namespace(
        peer_python=args.peer_python, epochs=EPOCHS, cuda=False, threads=args.threads, timeout=900, root=args.root
    )
    with tempfile.TemporaryDirectory(prefix="speed_floor-") as workdir:
        ours = run_ours("ours-bf16" if bf16 else "ours-fp32", job_args, workdir, 0)
        peer = run_pyro(job_args, workdir, 0, vae_dir)
    H.log(
        f"{EPOCHS} epochs, whole job: pyro-vae train {ours['wall_seconds']:.1f} s, Pyro's vae.py "
        f"{peer['wall_seconds']:.1f} s"
    )
    return ours, peer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=H.default_threads())
    p.add_argument("--steps", type=int, default=100, help="timed steps per round (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of steps and of each import (default 3)")
    p.add_argument("--no-peer", action="store_true", help="skip the whole jobs (pyro-vae train, Pyro's vae.py)")
    p.add_argument("--root", default=H.FASHION, help="folder with Fashion-MNIST's four IDX .gz files")
    p.add_argument("--peer-python", default=H.PEER_PYTHON)
    p.add_argument("--pyro-git", default=H.PYRO_GIT)
    p.add_argument("--pyro-tag", default=H.PYRO_TAG)
    p.add_argument("--cache", default=str(H.CACHE))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    compile_cache = tempfile.TemporaryDirectory(prefix="speed_floor-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache.name  # a cold compile, as a user's first run
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    mach = H.machine(args.threads)
    load_start = os.getloadavg()[0]  # the machine's 1-minute load: other work timed beside this run
    try:
        ours, peer = (None, None) if args.no_peer else run_jobs(args, bool(mach["cpu_native_bf16"]))
    except H.BenchError as e:
        print(f"speed_floor: {e}", file=sys.stderr)
        return 2
    imports = import_seconds(args.threads, args.repeats)
    torch, model, plan, x = build(args.root)
    torch.set_num_threads(args.threads)
    bf16 = bool(mach["cpu_native_bf16"])
    dtypes = ["float32"] + (["bfloat16"] if bf16 else [])
    peaks = [H.matmul_peak(args.threads, dtype=dt) for dt in dtypes]
    steps = step_times(torch, model, plan, x, bf16, args.steps, args.repeats)
    peaks += [H.matmul_peak(args.threads, dtype=dt) for dt in dtypes]
    peak = {dt: max(pk["gflops"] for pk in peaks if pk["dtype"] == dt) for dt in dtypes}
    for k, s in steps.items():
        s["percent_of_peak"] = round(100 * s["gflops"] / peak["bfloat16" if "bf16" in k else "float32"], 1)
    jit = jit_elbo(torch, model, x)
    ours_jit = jit_first_step(torch, plan, x)
    comp = compiled(torch, plan, x, args.steps)
    m2 = m2_conv_precision(torch, args.root, args.steps, args.repeats) if bf16 else None

    floor_imports = imports["torch + pyro + torch._dynamo"]
    fastest = {k: min(s["rounds"]) for k, s in steps.items()}  # a floor: the best round
    best = min(fastest, key=fastest.get)
    pyro_best = min((k for k in fastest if k.startswith("pyro")), key=fastest.get)
    bound = {
        "steps": EPOCHS * STEPS_PER_EPOCH,
        "fastest_eager_step": best,
        "floor_seconds": round(floor_imports + EPOCHS * STEPS_PER_EPOCH * fastest[best] / 1000, 1),
        "floor_seconds_with_pyro_loss": round(floor_imports + EPOCHS * STEPS_PER_EPOCH * fastest[pyro_best] / 1000, 1),
        "what": "import floor (torch + pyro + torch._dynamo) + 10 epochs x 235 steps at the fastest eager step "
        "(its best round); no Lightning, data, evaluation or plots",
    }
    if ours and ours.get("rc") == 0:
        bound["ours_wall_seconds"] = ours["wall_seconds"]
        bound["ours_precision"] = ours.get("precision")
    if peer and peer.get("rc") == 0:
        bound["peer_wall_seconds"] = peer["wall_seconds"]
        bound["max_speedup"] = round(peer["wall_seconds"] / bound["floor_seconds"], 2)
        bound["max_speedup_with_pyro_loss"] = round(peer["wall_seconds"] / bound["floor_seconds_with_pyro_loss"], 2)
    out = {
        "benchmark": "speed_floor",
        "command": "python benchmarks/speed_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads,
        "machine": mach,
        "batch": BATCH,
        "gflop_per_step": round(GFLOP_PER_STEP, 3),
        "matmul_peak": {"runs": peaks, "gflops": peak},
        "imports_seconds": imports,
        "steps": steps,
        "m2_step_ms": m2,
        "torch_compile": comp,
        "jit_trace_elbo": jit,
        "compile_jit": ours_jit,
        "ours": ours,
        "peer": peer,
        "bound": bound,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2), "cores": os.cpu_count()},
    }
    H.write_json(args.out, out)
    H.log(
        f"wrote {args.out}; whole-job floor {bound['floor_seconds']} s"
        + (
            f", Pyro's vae.py {peer['wall_seconds']:.1f} s: at most {bound['max_speedup']}x"
            if "max_speedup" in bound
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
