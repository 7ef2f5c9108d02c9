"""Loading a folder of JPEGs: the first load (decoding) and the next ones (the decoded cache).

Each measurement runs in a fresh process (``OMP_NUM_THREADS=1``) with its own empty cache
folder (``PYRO_VAE_CACHE``) and times ``pyro_vae.data.load_data`` for
``data=image_folder data.channels=3`` on ``--root`` (CIFAR-10's train folder: 50,000 JPEGs of
32x32), from the config to the float32 train/test rows:

* ``first``: the cache is empty: list, decode, write the cache entry;
* ``first, files not in the page cache``: the same after ``posix_fadvise(DONTNEED)`` on every
  file (as after a reboot; the OS may keep some pages anyway);
* ``cached``: the second load in a new process (the cache entry is read and checked);
* ``data.cache=false``: decoding every time, nothing written;
* ``--baseline COMMIT``: the same first load with the pyro_vae sources of that commit (taken
  with ``git archive``), e.g. the commit before the cache and the parallel decoding.

Then the decoding alone (``pyro_vae.images.decode_image`` over the files in chunks of 1000) in
one process, a thread pool and a process pool (fork), 2 workers each: which pool decodes faster
on this machine. The machine's load average is recorded: other jobs share its cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_cache.py --root /work/data/cifar10/train [--baseline COMMIT]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LOAD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from pyro_vae.config import load_config
from pyro_vae.data import load_data
root, cold, extra = sys.argv[1], sys.argv[2] == "cold", sys.argv[3:]
if cold:
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
t = time.perf_counter()
d = load_data(load_config(None, ["data=image_folder", f"data.root={root}", "data.channels=3", *extra]))
print(json.dumps({"seconds": time.perf_counter() - t, "train": len(d.train), "test": len(d.test),
                  "shape": list(d.image_shape)}))
"""

DECODE = r"""
import json, sys, time
import multiprocessing
from multiprocessing.pool import ThreadPool
import numpy as np
from pyro_vae.images import decode_image, list_image_folder

def chunk(paths):
    return np.stack([decode_image(p, "RGB", None) for p in paths])

if __name__ == "__main__":
    files = [str(p) for p in list_image_folder(sys.argv[1])[0]]
    chunks = [files[i:i + 1000] for i in range(0, len(files), 1000)]
    out = {}
    for rep in range(int(sys.argv[2])):
        for name, make in (
            ("one process", None),
            ("2 threads", lambda: ThreadPool(2)),
            ("2 processes (fork)", lambda: multiprocessing.get_context("fork").Pool(2)),
        ):
            t = time.perf_counter()
            if make is None:
                list(map(chunk, chunks))
            else:
                with make() as pool:
                    list(pool.imap(chunk, chunks))
            out.setdefault(name, []).append(time.perf_counter() - t)
    print(json.dumps(out))
"""


def child(code: str, args, cache: str, src: Path = REPO) -> dict:
    """Run ``code`` in a fresh interpreter that imports pyro_vae from ``src``; its last line of JSON.
    It starts in the cache folder: ``python -c`` puts the working folder first on sys.path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYRO_VAE_CACHE=cache, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, cwd=cache, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def sources_of(commit: str, into: Path) -> Path:
    """The pyro_vae package of ``commit`` extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "pyro_vae"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/work/data/cifar10/train")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", default=None, help="a commit whose pyro_vae times the same first load")
    p.add_argument("--out", default=str(HERE / "image_cache.json"))
    args = p.parse_args(argv)
    rows = {}
    base = tempfile.TemporaryDirectory()
    baseline = sources_of(args.baseline, Path(base.name)) if args.baseline else None
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cold_cache:
            rows.setdefault("first", []).append(child(LOAD, [args.root, "warm"], cache))
            rows.setdefault("cached", []).append(child(LOAD, [args.root, "warm"], cache))
            rows.setdefault("first, files not in the page cache", []).append(
                child(LOAD, [args.root, "cold"], cold_cache)
            )
            rows.setdefault("data.cache=false", []).append(child(LOAD, [args.root, "warm", "data.cache=false"], cache))
            if args.baseline:
                rows.setdefault(f"first, the sources of {args.baseline}", []).append(
                    child(LOAD, [args.root, "warm"], cache, baseline)
                )
        print(rep, {k: round(v[-1]["seconds"], 2) for k, v in rows.items()}, os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory() as cache:
        decode = child(DECODE, [args.root, args.repeats], cache)
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_cache.py " + " ".join(argv or sys.argv[1:]),
        "root": args.root,
        "images": rows["first"][0]["train"] + rows["first"][0]["test"],
        "image_shape": rows["first"][0]["shape"],
        "loads": [
            {
                "load": name,
                "median_seconds": round(median([r["seconds"] for r in runs]), 2),
                "seconds": [round(r["seconds"], 2) for r in runs],
            }
            for name, runs in rows.items()
        ],
        "decode_only": [
            {"pool": name, "median_seconds": round(median(s), 2), "seconds": [round(v, 2) for v in s]}
            for name, s in decode.items()
        ],
        "baseline": args.baseline,
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
