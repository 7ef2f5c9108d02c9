"""Peak memory of loading a dense float32 ``.npy`` into memory and training on it: goal <= 1.5x the array.

For each size a float32 array (rows x 1,000 columns of standard normal values) is written with
``np.lib.format.open_memmap`` in a temporary folder, then a fresh process trains
``data=array data.path=FILE likelihood=gaussian``: the whole file loaded and split 80/20 into train
and test, 16 training steps, then the test split evaluated (``--label after`` runs were given
``data.storage=memory``, the key that did not exist before). The child polls its own
anonymous memory (``RssAnon`` in /proc/self/status, every 10 ms) and also reports the kernel's
peak resident size (``ru_maxrss``, which includes file pages mapped by the process); the table
gives the peak anonymous memory above the imports' against the array's size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py [--sizes 0.25 1 4] [--label after]

Each run adds (or replaces) one labelled entry of ``benchmarks/memory.json`` (``before`` /
``after`` a change), so one file holds both measurements.

``--images ROOT`` measures an image folder instead (CIFAR-10's 60,000 32x32 colour JPEGs in
``ROOT/train`` and ``ROOT/test``): each run a fresh process trains ``data=image_folder
data.channels=3`` (the default network and likelihood) for ``--steps`` steps of 128 images, then
evaluates the test split, with the decoded cache made beforehand (the loads read it, they do not
decode). Measured with the sources of ``--baseline COMMIT`` (the float32 tensors before this
change), and now with ``data.storage=memory`` (uint8 in memory) and ``data.storage=disk`` (uint8
read from the cache's file by index); written to the ``images`` entry of ``memory.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py --images /work/data/cifar10 --baseline COMMIT
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLUMNS = 1000
TRAIN = [
    "likelihood=gaussian",
    "trainer.extra={limit_train_batches: 16}",
    "train.epochs=1",
    "train.batch_size=128",
    "trainer.progress_bar=false",
    "trainer.logger=none",
    "trainer.accelerator=cpu",
]


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def peak_anon(base: float):
    """A one-item list holding the highest RssAnon (MB) seen every 10 ms while the block runs."""
    peak = [base]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], status_mb("RssAnon"))
            time.sleep(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        done.set()
        t.join()


def write_array(path: Path, rows: int, seed: int = 0, chunk: int = 50_000) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, COLUMNS))
    for a in range(0, rows, chunk):
        b = min(rows, a + chunk)
        out[a:b] = rng.standard_normal((b - a, COLUMNS), dtype=np.float32)
    out.flush()
    del out


def machine() -> dict:
    """The CPU, the one thread the runs use, Python's version and the machine's memory."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": 1,
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def measured_fit(overrides):
    """``pyro_vae.fit`` on one thread in this process, polling its anonymous memory: the result and the measured
    fields of its JSON line (peak and post-import anonymous memory, peak RSS, seconds, test loss)."""
    import torch

    import pyro_vae

    torch.set_num_threads(1)
    base = status_mb("RssAnon")
    with peak_anon(base) as peak:
        t0 = time.perf_counter()
        r = pyro_vae.fit(None, save=False, overrides=overrides)
        seconds = time.perf_counter() - t0
    peak[0] = max(peak[0], status_mb("RssAnon"))
    return r, {
        "peak_anon_mb": round(peak[0], 1),
        "anon_after_imports_mb": round(base, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fit_seconds": round(seconds, 1),
        "test_loss": round(r.metrics["test_loss"], 2),
    }


def child(path: str, extra) -> None:
    """Train on ``path`` in this process and print one JSON line (runs in a fresh interpreter)."""
    r, fields = measured_fit(["data=array", f"data.path={path}", *TRAIN, *extra])
    print(json.dumps({**fields, "storage": type(r.data.test.x).__name__}))


def image_child(root: str, extra) -> None:
    """Train on the image folder ``root`` in this process and print one JSON line."""
    import torch

    r, fields = measured_fit(["data=image_folder", f"data.root={root}", "data.channels=3", *TRAIN[1:], *extra])
    x = r.data.train.x
    held_as = str(getattr(x, "dtype", "")) if torch.is_tensor(x) else str(x.file.dtype)
    print(
        json.dumps(
            {**fields, "rows": type(x).__name__, "held_as": held_as, "on_disk": bool(getattr(x, "on_disk", False))}
        )
    )


def batch_reads(cache: str, root: str, batches: int = 400) -> dict:
    """Milliseconds to gather one batch of 128 random training images as float32 in [0,1]: from the
    float32 tensor the splits held before, from the uint8 rows in memory, and from the cache's file."""
    import torch

    sys.path.insert(0, str(HERE.parent))
    os.environ["PYRO_VAE_CACHE"] = cache
    from pyro_vae.images import cache_dir
    from pyro_vae.sparse import take
    from pyro_vae.streaming import DiskRows, MemoryArray, NpyRows, divided

    torch.set_num_threads(1)
    path = cache_dir(Path(root) / "train", None, 3) / "images.npy"
    pixels = np.load(path)
    held = {
        "float32 tensor (before)": torch.from_numpy(pixels.reshape(len(pixels), -1)).float() / 255,
        "uint8 rows in memory": divided(DiskRows(MemoryArray(pixels)), 255),
        "uint8 rows on disk (random rows)": divided(NpyRows.open(path), 255),
    }
    g = torch.Generator().manual_seed(0)
    idx = [torch.randperm(len(pixels), generator=g)[:128] for _ in range(batches)]
    out = {}
    for name, x in held.items():
        take(x, idx[0])
        t = time.perf_counter()
        for i in idx:
            take(x, i)
        out[name] = round((time.perf_counter() - t) / batches * 1e3, 3)
    return out


def images(args, extra) -> None:
    """The ``--images`` measurements (see the module's docstring)."""
    import importlib

    sys.path.insert(0, str(HERE))
    sources_of = importlib.import_module("image_cache").sources_of
    steps = [f"trainer.extra={{limit_train_batches: {args.steps}}}", *extra]
    runs = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as old:
        env = {"PYRO_VAE_CACHE": cache}
        measure(args.images, ["data.storage=memory", "trainer.extra={limit_train_batches: 1}"], env, "--image-child")
        cases = [
            ("after", "memory", ["data.storage=memory"], HERE.parent),
            ("after", "disk", ["data.storage=disk"], HERE.parent),
        ]
        if args.baseline:
            cases.insert(0, ("before", "memory (float32)", [], sources_of(args.baseline, Path(old))))
        for label, storage, keys, src in cases:
            row = {"measured": label, "storage": storage}
            row.update(measure(args.images, [*keys, *steps], env, "--image-child", src))
            runs.append(row)
            print(json.dumps(row), flush=True)
        reads = batch_reads(cache, args.images)
        print(json.dumps(reads), flush=True)
    suffixes = (".png", ".jpg", ".jpeg")
    count = sum(f.lower().endswith(suffixes) for _, _, files in os.walk(args.images) for f in files)
    pixels = count * 32 * 32 * 3
    out_path = HERE / "memory.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out["images"] = {
        "root": args.images,
        "images": pixels // 3072,
        "pixels_mb": round(pixels / 2**20, 1),
        "steps": args.steps,
        "baseline": args.baseline,
        "runs": runs,
        "batch_ms": [{"held_as": k, "ms": v} for k, v in reads.items()],
        "train_overrides": ["data=image_folder", "data.channels=3", *TRAIN[1:], *steps],
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path} (images)")


def measure(path: Path, extra, env=None, mode="--child", src: Path = HERE.parent) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(src), **(env or {}))
    r = subprocess.run(
        [sys.executable, __file__, mode, str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    if r.returncode:
        raise SystemExit(f"training on {path} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="array sizes in GB")
    p.add_argument("--label", default="after", help="entry of memory.json to write (before | after)")
    p.add_argument("--images", help="an image folder (CIFAR-10's, with train/ and test/) instead of arrays")
    p.add_argument("--steps", type=int, default=50, help="--images: training steps of 128 images")
    p.add_argument("--baseline", help="--images: a commit whose sources are measured as 'before'")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--image-child", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args()
    if args.child:
        return child(args.child, extra)
    if args.image_child:
        return image_child(args.image_child, extra)
    if args.images:
        return images(args, extra)
    rows_out = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for gb in args.sizes:
            n = int(gb * 1e9 / (4 * COLUMNS))
            path = Path(tmp) / f"x{n}.npy"
            write_array(path, n)
            row = {"rows": n, "columns": COLUMNS, "array_mb": round(n * COLUMNS * 4 / 2**20, 1)}
            row.update(measure(path, extra))
            row["peak_over_array"] = round((row["peak_anon_mb"] - row["anon_after_imports_mb"]) / row["array_mb"], 2)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            path.unlink()
    out_path = HERE / "memory.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out[args.label] = {
        "rows": rows_out,
        "train_overrides": TRAIN + extra,
        "machine": machine(),
    }
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path} ({args.label})")


if __name__ == "__main__":
    main()
