"""Small helpers: atomic file writes (nothing a user saved is ever half-written), the first line
of an exception for one-line errors, and the per-phase wall-time profile of a command."""

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, sync: bool = True):
    """Yield a temporary path beside ``path`` (same suffix); on success fsync it (unless not
    ``sync``: a file that can be made again), give it the permissions a new file would get
    (the umask) and rename it onto ``path``. On any error, or an interrupt, the temporary file
    is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


PENDING_SIGNALS: list = []  # SIGINT / SIGTERM received inside signals_raise and not yet reported
_DEPTH = [0]  # signals_raise blocks open (the command line's holds fit's)


def take_pending_signal():
    """The first signal :func:`signals_raise` received since the last call, or None; clears them."""
    signum = PENDING_SIGNALS[0] if PENDING_SIGNALS else None
    PENDING_SIGNALS.clear()
    return signum


@contextlib.contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise :class:`~pyro_vae.errors.SignalReceived` inside the block (in the
    main thread; elsewhere the handlers stay as they are); the previous handlers come back after."""
    import signal
    import threading

    from .errors import SignalReceived

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # kept as well as raised: Python drops an exception raised inside a finalizer (``__del__``,
        # a weakref callback), so the training loop also looks here before its first step
        PENDING_SIGNALS.append(signum)
        raise SignalReceived(signum)

    def unraisable(info, previous=sys.unraisablehook):  # a dropped signal is not a traceback to show
        if not isinstance(info.exc_value, SignalReceived):
            previous(info)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        sys.unraisablehook = old_hook
        for s, h in old.items():
            if h is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(s, h)
        if not _DEPTH[0]:  # the outermost block: what it did not report is not carried further
            PENDING_SIGNALS.clear()


def first_line(e: BaseException, limit: Optional[int] = 200) -> str:
    """The first non-blank line of ``str(e)`` (the exception's type name when it has no text), at
    most ``limit`` characters: the part of a library's exception that a one-line error quotes."""
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if limit is None else line[:limit]


def read_weights(path):
    """``torch.load(path, weights_only=True)`` (loading never runs code) on the CPU; a missing,
    damaged or foreign file is a one-line :class:`~pyro_vae.errors.PyroVAEError` naming it."""
    import warnings

    import torch

    from .errors import PyroVAEError

    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before it fails on them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PyroVAEError(f"no checkpoint at {path}") from None
    except Exception as e:
        raise PyroVAEError(f"could not read checkpoint {path} (damaged or not a checkpoint): {first_line(e)}") from None


def save_tensors(obj, path, hint: str = "") -> None:
    """``torch.save(obj)`` to ``path`` atomically. The bytes are made in memory first, so a full
    disk or a read-only folder is an ``OSError`` of the write (torch's own file writer reports it
    as a RuntimeError), turned into a one-line error naming the file, ``hint`` appended."""
    import io

    import torch

    from .errors import PyroVAEError

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
    except OSError as e:
        raise PyroVAEError(f"could not write {path}: {e.strerror or e}{'; ' + hint if hint else ''}") from None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (this process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): interpreter start-up and
    the imports that ran before the first phase."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Profile:
    """Where the wall time of one command goes, phase by phase (``pyro-vae ... --profile``).

    ``with PROFILE.phase("data"): ...`` adds the block's seconds to that phase; ``add`` adds a
    measured amount. ``table()`` lists the phases in order plus the time no phase claimed."""

    def __init__(self):
        self.start = time.perf_counter() - _process_age()
        self.seconds = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def total(self) -> float:
        return time.perf_counter() - self.start

    def as_dict(self) -> dict:
        total = self.total()
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["the rest (interpreter start-up, the command's own work)"] = round(
            max(0.0, total - sum(self.seconds.values())), 3
        )
        out["total"] = round(total, 3)
        return out

    def table(self) -> str:
        d = self.as_dict()
        total = d["total"] or 1.0
        width = max(len(k) for k in d)
        return "\n".join(f"{k:<{width}}  {v:8.2f} s  {100 * v / total:5.1f}%" for k, v in d.items())


PROFILE = Profile()


class NpyWriter:
    """A ``.npy`` of ``rows`` x ``cols`` float32 written a block of rows at a time: NumPy's header
    first (``np.lib.format``), then each block's bytes as they come, so that memory holds one block.
    ``close`` checks that every row was written."""

    def __init__(self, path, rows: int, cols: int):
        import numpy as np

        self.rows, self.cols, self.done = int(rows), int(cols), 0
        self.f = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_2_0(self.f, {**header, "shape": (self.rows, self.cols)})

    def write(self, block) -> None:
        import numpy as np

        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.cols or self.done + block.shape[0] > self.rows:
            raise ValueError(f"a block of shape {block.shape} does not fit {self.rows} x {self.cols} rows")
        self.f.write(block.tobytes())
        self.done += block.shape[0]

    def close(self) -> None:
        self.f.close()
        if self.done != self.rows:
            raise ValueError(f"{self.done} of {self.rows} rows were written")
