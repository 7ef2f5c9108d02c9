"""Shared parts of the whole-job speed benchmarks (vae_speed.py, m2_speed.py).

Each command runs as a subprocess with the same thread count (OMP_NUM_THREADS and
MKL_NUM_THREADS), its wall time measured from start to exit; every line it prints is
time-stamped on arrival (unbuffered), which gives per-epoch times of scripts that only
print a line per epoch. Pyro's example scripts are extracted from a Pyro git checkout at a
pinned tag into a cache folder outside the repository, with Fashion-MNIST's four IDX files
placed where their torchvision loader looks, so they run unchanged and offline.
"""

import gzip
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FASHION = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PYRO_GIT = "/work/.mirror/pyro-ppl+pyro/repo"
PYRO_TAG = "1.9.1"
PEER_PYTHON = "/work/venvs/peers/bin/python"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyro_vae_speed"


class BenchError(Exception):
    """A set-up problem, reported in one line."""


# ---------------------------------------------------------------- machine


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_facts() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"cpu": model, "cpu_flags": [f for f in wanted if f in flags], "logical_cpus": os.cpu_count()}


def machine(threads: int) -> dict:
    import torch

    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    out = {
        **cpu_facts(),
        "cpu_native_bf16": bf16,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import pyro

        out["pyro"] = pyro.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def matmul_peak(threads: int, n: int = 2048, seconds: float = 2.0, device: str = "cpu", dtype: str = "float32") -> dict:
    """Matrix-product peak: the best GFLOP/s of torch.mm on n x n matrices (2 n^3 flops each)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, generator=g).to(device=device, dtype=getattr(torch, dtype))
        sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
        torch.mm(a, b)  # warm-up
        sync()
        best, reps, t_end = float("inf"), 0, time.perf_counter() + seconds
        while reps < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
            reps += 1
        return {"gflops": round(2 * n**3 / best / 1e9, 1), "n": n, "repeats": reps, "device": device, "dtype": dtype}
    finally:
        torch.set_num_threads(saved)


# ---------------------------------------------------------------- subprocesses


def thread_env(threads: int, extra: dict = None) -> dict:
    env = dict(os.environ)
    env.pop("CI", None)  # pyro.contrib.examples puts the data in ~/.data under CI
    env.update(
        {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    )
    env.update(extra or {})
    return env


def run_timed(cmd, cwd, env, timeout: float) -> dict:
    """Run ``cmd``; wall seconds from start to exit, its CPU seconds (user + system, its children's
    included), the 1-minute load average before it, stdout lines with their arrival times."""
    lines, err = [], []
    load = os.getloadavg()[0]
    used0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )

    def read_out():
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    def read_err():
        err.extend(proc.stderr)

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for r in readers:
        r.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    wall = time.perf_counter() - t0
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - used0.ru_utime - used0.ru_stime
    for r in readers:
        r.join(timeout=10)
    return {
        "rc": rc,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "load_before": round(load, 2),
        "lines": lines,
        "stderr": "".join(err),
    }


def failure(res: dict) -> str:
    """The last informative stderr/stdout line of a failed run."""
    tail = [ln for ln in res["stderr"].splitlines() if ln.strip()] or [ln for _, ln in res["lines"] if ln.strip()]
    return f"exit {res['rc']}: " + (tail[-1][:300] if tail else "(no output)")


PROFILE_HEAD = "where the time went (wall seconds):"
_PROFILE_ROW = re.compile(r"^(.*\S)\s+(-?\d+(?:\.\d+)?) s\s+(-?\d+(?:\.\d+)?)%\s*$")


def parse_profile(stderr: str) -> dict:
    """``pyro-vae ... --profile``'s table as {phase: seconds} (empty when it printed none)."""
    if PROFILE_HEAD not in stderr:
        return {}
    out = {}
    for line in stderr.split(PROFILE_HEAD, 1)[1].splitlines()[1:]:
        m = _PROFILE_ROW.match(line)
        if not m:
            if out:
                break
            continue
        out[m.group(1).strip()] = float(m.group(2))
    return out


#: ``--profile``'s phases of the training epochs outside validation: the steps and the loop around them
STEPS = "training steps (forward, backward, optimiser)"
LOOP = "loop around the steps (next batch, hooks)"


def training_seconds(profile: dict):
    """Seconds of the training epochs outside validation in a ``--profile`` table (steps + the loop
    around them; an older table's one phase), None when it has neither."""
    if STEPS in profile:
        return profile[STEPS] + profile.get(LOOP, 0.0)
    return profile.get("training epochs (steps)")


def epoch_seconds_from_lines(lines, pattern: str):
    """Times between consecutive stdout lines matching ``pattern`` (one per epoch)."""
    stamps = [t for t, ln in lines if re.search(pattern, ln)]
    return [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


# ---------------------------------------------------------------- peers


def peer_python(path: str, modules) -> str:
    """The peer environment's interpreter, checked to import ``modules``."""
    if not Path(path).exists():
        raise BenchError(f"no peer Python at {path}: create it (see --help) or leave the peers out with --only")
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    r = subprocess.run([path, "-c", code, *modules], capture_output=True, text=True, env=thread_env(1))
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchError(f"the peer Python {path} cannot import {', '.join(modules)}: {last}")
    return path


def warm_up(python: str, modules, threads: int) -> None:
    """Import ``modules`` once, untimed, so that no timed command pays for a cold file cache."""
    subprocess.run(
        [python, "-c", "import " + ", ".join(modules)],
        capture_output=True,
        env=thread_env(threads, {"PYTHONPATH": str(REPO)}),
        cwd=str(REPO),
    )


def peer_versions(python: str, dists) -> dict:
    """Installed versions of the distributions ``dists`` in the peer environment."""
    code = (
        "import json, sys\nfrom importlib.metadata import version\nout = {}\nfor d in sys.argv[1:]:\n"
        "    try:\n        out[d] = version(d)\n    except Exception:\n        out[d] = None\n"
        "print(json.dumps(out))"
    )
    r = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True, env=thread_env(1))
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}


def _place_idx(root: str, raw: Path) -> None:
    """The four IDX files, uncompressed, in ``raw`` (torchvision's MNIST looks there, no download)."""
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        dest = raw / name
        if dest.exists():
            continue
        src = Path(root) / f"{name}.gz"
        plain = Path(root) / name
        tmp = dest.with_suffix(".part")
        if src.exists():
            with gzip.open(src, "rb") as f, open(tmp, "wb") as g:
                shutil.copyfileobj(f, g)
        elif plain.exists():
            shutil.copyfile(plain, tmp)
        else:
            raise BenchError(f"{root} lacks {name}.gz (Fashion-MNIST's IDX files)")
        os.replace(tmp, dest)


def pyro_examples(root: str, git_dir: str = PYRO_GIT, tag: str = PYRO_TAG, cache: Path = CACHE) -> Path:
    """Pyro's examples/vae at ``tag``, unchanged, in the cache; Fashion-MNIST as its MNIST data."""
    dest = Path(cache) / f"pyro-{tag}" / "examples" / "vae"
    if not (dest / "vae.py").exists():
        if not Path(git_dir).exists():
            raise BenchError(
                f"no Pyro git checkout at {git_dir} (pass --pyro-git DIR, a clone of github.com/pyro-ppl/pyro)"
            )
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
        try:
            archive = subprocess.run(
                ["git", f"--git-dir={git_dir}", "archive", tag, "examples/vae"], capture_output=True
            )
            if archive.returncode:
                raise BenchError(
                    f"git archive {tag} failed in {git_dir}: {archive.stderr.decode(errors='replace').strip()[:200]}"
                )
            tar_path = tmp / "vae.tar"
            tar_path.write_bytes(archive.stdout)
            with tarfile.open(tar_path) as tar:
                try:
                    tar.extractall(tmp / "x", filter="data")
                except TypeError:  # Python without extraction filters
                    tar.extractall(tmp / "x")
            dest.parent.parent.mkdir(parents=True, exist_ok=True)
            if dest.parent.exists():
                shutil.rmtree(dest.parent)
            os.replace(tmp / "x" / "examples", dest.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # pyro.contrib.examples.util.get_data_directory(utils/mnist_cached.py) = utils/.data; both
    # scripts load through MNISTCached, and torchvision looks in <root>/<class name>/raw
    _place_idx(root, dest / "utils" / ".data" / "MNISTCached" / "raw")
    return dest


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")  # key order kept: commands and phases in run order
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summarise(runs, quality: str, flops_per_row: float = None, peak_gflops: dict = None, default_rows: int = None):
    """Per command: medians over the repeats; per (peer, ours) pair: the whole-job speed-up.

    For our commands with ``flops_per_row``: GFLOP/s of the training steps and % of the peak of
    their precision (``peak_gflops``: {"float32": ..., "bfloat16": ...}, bf16 for names ending in
    "bf16"), and the median of each --profile phase."""
    by = {}
    for r in runs:
        by.setdefault(r["name"], []).append(r)
    summary = {}
    for name, rs in by.items():
        ok = [r for r in rs if r["rc"] == 0]
        s = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "wall_seconds": [r["wall_seconds"] for r in ok],
            "wall_seconds_median": median([r["wall_seconds"] for r in ok]),
            "cpu_seconds_median": median([r.get("cpu_seconds") for r in ok]),
            "load_before": [r.get("load_before") for r in ok],
            quality: median([r.get(quality) for r in ok]),
            "seconds_per_epoch": median([r.get("seconds_per_epoch") for r in ok]),
        }
        if name.startswith("ours"):
            if flops_per_row and s["seconds_per_epoch"]:
                rows = median([r.get("num_train") for r in ok]) or default_rows
                s["gflop_per_epoch"] = round(flops_per_row * rows / 1e9, 1)
                s["gflops_achieved"] = round(flops_per_row * rows / s["seconds_per_epoch"] / 1e9, 1)
                dtype = "bfloat16" if name.endswith("bf16") else "float32"
                if (peak_gflops or {}).get(dtype):
                    s["percent_of_peak"] = round(100 * s["gflops_achieved"] / peak_gflops[dtype], 1)
                    s["peak"] = dtype
            profiles = [r["profile"] for r in ok if r.get("profile")]
            if profiles:
                keys = list(dict.fromkeys(k for p in profiles for k in p))
                s["profile_median"] = {k: round(median([p.get(k) for p in profiles]), 3) for k in keys}
                exits = [r["wall_seconds"] - r["profile"]["total"] for r in ok if "total" in r.get("profile", {})]
                if exits:  # the process's own clock starts after exec and stops before exit
                    s["wall_minus_profile_total"] = round(median(exits), 3)
        summary[name] = s
    speedup = {}
    for ours in (n for n in summary if n.startswith("ours")):
        for peer in (n for n in summary if not n.startswith("ours")):
            a, b = summary[ours]["wall_seconds_median"], summary[peer]["wall_seconds_median"]
            if a and b:
                speedup[f"{peer} / {ours}"] = round(b / a, 2)
            a, b = summary[ours]["cpu_seconds_median"], summary[peer]["cpu_seconds_median"]
            if a and b:  # the same ratio in CPU seconds: less moved by other work on a shared machine
                summary[peer].setdefault("cpu_speedup", {})[ours] = round(b / a, 2)
    return summary, speedup


def finish(path, out: dict) -> int:
    """Write the benchmark's JSON, print the speed-ups; exit status 1 when a command failed."""
    write_json(path, out)
    log(f"wrote {path}")
    for k, v in out["speedup"].items():
        log(f"  speed-up {k}: {v}x")
    return 1 if any(r["rc"] != 0 for r in out["runs"]) else 0
