"""Image folders: listing, parallel decoding with Pillow, and a cache of the decoded pixels.

A folder holds one sub-folder per class (sorted names -> labels 0..C-1, as torchvision's
ImageFolder) or the images directly (no labels). Decoding runs in a process pool where the
platform forks (a thread pool elsewhere), in chunks, with a log line every few seconds.

The decoded images are kept in a cache outside the data folder, one entry per folder, image
size and channel count: ``images.npy`` (uint8, N x C x H x W), ``labels.npy`` (int64, when
the folder has classes) and ``manifest.json`` (a format version, the folder's fingerprint:
relative paths, sizes and modification times of its images, the image size, channels, the
decoder and checksums of both arrays). An entry whose manifest does not match the folder as
it is now, or whose arrays do not match their checksums, is decoded again and rewritten;
arrays are read with ``allow_pickle=False`` (reading never runs code). Decoded chunks are
written to ``images.npy`` as they come (the pixels are never all in memory at once), and the
entry can be opened as a memory map (``mmap``), which :class:`~pyro_vae.streaming.NpyRows`
then reads by index. The cache lives in
``$PYRO_VAE_CACHE/images`` (default ``$XDG_CACHE_HOME/pyro_vae/images``, i.e.
``~/.cache/pyro_vae/images``); deleting it is always safe.
"""

import functools
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .errors import DataError
from .utils import atomic_path, first_line, write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
CACHE_FORMAT = 1  # bump when the cache's files or their meaning change: older entries are rebuilt
PARALLEL_MIN = 1024  # smaller folders are decoded in this process, without starting a pool
PROGRESS_SECONDS = 5.0  # a progress line at most this often while decoding


# ---------------------------------------------------------------- listing
def image_files(folder: Path) -> List[Path]:
    """The image files directly inside ``folder`` (by suffix), sorted by name."""
    with os.scandir(folder) as entries:  # the entries' types come with the listing: no stat per file
        names = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())
    return [folder / name for name in names]


def class_folders(root: Path) -> List[str]:
    """The sorted names of ``root``'s visible sub-folders: its classes."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_image_folder(root) -> Tuple[List[Path], Optional[np.ndarray], Optional[List[str]]]:
    """(image files, int64 labels or None, class names or None) of a folder, in the order the
    images are loaded: class by class (sorted names), file names sorted within each."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    classes = class_folders(root)
    if not classes:
        files = image_files(root)
        if not files:
            raise DataError(f"{root} holds no images ({kinds}) and no class sub-folders")
        return files, None, None
    files, labels = [], []
    for k, name in enumerate(classes):
        found = image_files(root / name)
        if not found:
            hint = ""
            if class_folders(root / name):
                hint = (
                    "; it holds folders instead: point data.root at the folder whose sub-folders are the classes "
                    "(and data.test_root at its test counterpart)"
                )
            raise DataError(f"class folder {root / name} holds no images ({kinds}){hint}")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def split_folders(root, test_root=None) -> Tuple[Path, Optional[Path]]:
    """(train folder, test folder or None): ``test_root`` when given; else ``root/train`` and
    ``root/test`` when those two are the only sub-folders of ``root`` (a data set that comes
    with its own test split); else ``root`` alone (the test split is then drawn at random)."""
    root = Path(root).expanduser()
    if test_root:
        test = Path(test_root).expanduser()
        if not test.is_dir():
            raise DataError(f"data.test_root {test} is not a folder")
        return root, test
    if root.is_dir() and class_folders(root) == ["test", "train"] and not image_files(root):
        return root / "train", root / "test"
    return root, None


def check_same_classes(train: Path, test: Path) -> None:
    """A one-line error unless the train and test folders have the same class sub-folders."""
    a, b = class_folders(train), class_folders(test)
    if a == b:
        return
    if not a or not b:
        labelled, other = (train, test) if a else (test, train)
        raise DataError(
            f"{labelled} has class sub-folders but {other} holds its images directly; give both the same layout"
        )

    def names(items):
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    parts = []
    if sorted(set(a) - set(b)):
        parts.append(f"lacks {names(sorted(set(a) - set(b)))}")
    if sorted(set(b) - set(a)):
        parts.append(f"has {names(sorted(set(b) - set(a)))} that {train} lacks")
    raise DataError(
        f"the test folder {test} {' and '.join(parts)}: train and test need the same class sub-folders (the labels)"
    )


# ---------------------------------------------------------------- decoding
def decode_image(path, mode: str, image_size: Optional[int]) -> np.ndarray:
    """One image as uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", resized when asked."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        if image_size:
            im = im.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _decode_or_error(path, mode: str, image_size: Optional[int]):
    """(the image, None), or (None, a one-line error naming the file) when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        return decode_image(path, mode, image_size), None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        return None, f"could not read image {path}: {first_line(e, 160)}"


def _decode_chunk(paths: List[str], mode: str, image_size: Optional[int], like: Tuple[str, tuple]):
    """(uint8 stack of ``paths``, None) or (None, the one-line error of the first bad file);
    every image must have the size of ``like`` (its file name, its shape)."""
    out = []
    for path in paths:
        a, error = _decode_or_error(path, mode, image_size)
        if error:
            return None, error
        if a.shape[:2] != like[1][:2]:
            (h, w), (h0, w0) = a.shape[:2], like[1][:2]
            return None, (
                f"{path} is {w}x{h} pixels but {like[0]} is {w0}x{h0}; set data.image_size=N to resize them all"
            )
        out.append(a)
    return np.stack(out), None


def _quiet_worker():
    """A pool worker leaves Ctrl-C and termination to the main process, which stops the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool(workers: int):
    """Processes forked from this one where the platform forks safely (Linux); threads elsewhere
    (Pillow releases the GIL while it decodes, so they still overlap the decoding itself).
    ``terminate()`` stops either at once: an error or an interrupt never waits for the chunks."""
    from multiprocessing.pool import ThreadPool

    forks = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if forks and not multiprocessing.current_process().daemon:  # a daemon process may not start processes
        return multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker)
    return ThreadPool(workers)


class NpyWriter:
    """A uint8 ``.npy`` written chunk by chunk, in order (``begin(shape)``, then ``write(chunk)``), its
    CRC-32 kept as it goes: the file is complete once every row was written."""

    def __init__(self, path):
        self.path, self.crc, self.shape, self._f = Path(path), 0, None, None

    def begin(self, shape) -> None:
        self.shape = tuple(int(v) for v in shape)
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._f, {**header, "shape": self.shape})

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
        self._f.write(chunk.data)
        self.crc = zlib.crc32(chunk.data, self.crc)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def decode_images(
    files: List[Path], channels: int = 1, image_size: Optional[int] = None, workers=None, where="", sink=None
):
    """uint8 array (N, C, H, W) of ``files`` decoded with Pillow, grey (``channels=1``) or RGB,
    resized to ``image_size`` square when given (else all must have the first one's size).
    ``workers``: processes (threads where the platform does not fork) decoding chunks in
    parallel; None = every usable CPU for folders of at least PARALLEL_MIN images, else 1.
    With ``sink`` (a :class:`NpyWriter`) the chunks are written to it in order instead of kept,
    and the array's shape is returned."""
    mode = "L" if channels == 1 else "RGB"
    n = len(files)
    first, error = _decode_or_error(files[0], mode, image_size)
    if error:
        raise DataError(error)
    shape = (n, channels) + first.shape[:2]
    if sink is not None:
        sink.begin(shape)
    out = np.empty(shape, dtype=np.uint8) if sink is None else None
    if workers is None:
        workers = usable_cpus() if n >= PARALLEL_MIN else 1
    size = int(min(1000, max(16, -(-n // (workers * 8)))))  # ~8 chunks a worker: balanced, progress often
    bounds = [(i, min(n, i + size)) for i in range(0, n, size)]
    work = functools.partial(_decode_chunk, mode=mode, image_size=image_size, like=(str(files[0]), first.shape))
    chunks = ([str(p) for p in files[a:b]] for a, b in bounds)
    pool = _pool(workers) if workers > 1 and len(bounds) > 1 else None
    t0 = last = time.perf_counter()
    try:
        results = pool.imap(work, chunks) if pool else map(work, chunks)  # in order, as each chunk is done
        for (a, b), (arr, error) in zip(bounds, results):
            if error:
                raise DataError(error)
            block = arr[:, None] if channels == 1 else arr.transpose(0, 3, 1, 2)
            if sink is None:
                out[a:b] = block
            else:
                sink.write(block)
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS and b < n:
                log.info("decoding the images in %s: %d of %d (%.0f s)", where, b, n, now - t0)
                last = now
    except BaseException:
        if pool:  # an error or an interrupt: the workers are stopped, not waited for
            pool.terminate()
        raise
    if pool:
        pool.close()
        pool.join()
    return out if sink is None else shape


# ---------------------------------------------------------------- the cache
def cache_home() -> Path:
    """Where decoded image folders are cached: ``$PYRO_VAE_CACHE/images``, else
    ``$XDG_CACHE_HOME/pyro_vae/images`` (``~/.cache/pyro_vae/images``)."""
    own = os.environ.get("PYRO_VAE_CACHE")
    if own:
        return Path(own).expanduser() / "images"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path("~/.cache").expanduser()  # the XDG spec: relative = unset
    return base / "pyro_vae" / "images"


def cache_dir(root, image_size: Optional[int], channels: int) -> Path:
    """The cache entry of one folder read at one image size and channel count."""
    key = f"{Path(root).expanduser().resolve()}\0{image_size}\0{channels}"
    return cache_home() / hashlib.sha256(key.encode()).hexdigest()[:16]


def fingerprint(root: Path, files: List[Path]) -> str:
    """A digest of the images' paths relative to ``root``, their sizes and modification times."""
    h, skip = hashlib.sha256(), len(str(root).rstrip(os.sep) + os.sep)
    for p in map(str, files):  # each is root/[class/]name, listed from root as given
        st = os.stat(p)
        h.update(f"{p[skip:].replace(os.sep, '/')}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "sha256:" + h.hexdigest()


def _crc(a: np.ndarray) -> str:
    """CRC-32 of an array's bytes (a memory map is read a slice at a time, nothing copied)."""
    a = np.ascontiguousarray(a).reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    crc, step = 0, max(1, (64 << 20) // max(1, a[:1].nbytes))
    for i in range(0, len(a), step):
        crc = zlib.crc32(a[i : i + step].data, crc)
    return f"crc32:{crc:08x}"


def _decoder() -> str:
    import PIL

    return f"Pillow {PIL.__version__}"  # another Pillow may decode a JPEG to other pixels


def read_cache(entry: Path, expect: dict, labels: Optional[np.ndarray], mmap: bool = False):
    """(images, why): the cached uint8 images when ``entry``'s manifest matches ``expect`` and
    its arrays their checksums (and the labels ``labels``), else (None, why not). With ``mmap``
    the images are a read-only memory map of the entry's file, not read into memory."""
    manifest = entry / "manifest.json"
    if not manifest.is_file():
        return None, "new"
    try:
        m = json.loads(manifest.read_text())
        if any(m.get(k) != v for k, v in expect.items()):
            return None, "out of date"
        images = np.load(entry / "images.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
        if images.dtype != np.uint8 or list(images.shape) != m["shape"] or _crc(images) != m["images_crc"]:
            return None, "damaged"
        if labels is not None:
            cached = np.load(entry / "labels.npy", allow_pickle=False)
            if _crc(cached) != m["labels_crc"] or not np.array_equal(cached, labels):
                return None, "damaged"
        return images, "used"
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):  # unreadable: rebuilt, never trusted
        return None, "damaged"


def write_cache(entry: Path, manifest: dict, decode, labels: Optional[np.ndarray]) -> None:
    """``decode(sink)`` writes the images into the entry's ``images.npy`` (an :class:`NpyWriter`) as it
    decodes them. Each file written atomically (not synced to disk: the cache can be made again); the
    manifest last, with both arrays' checksums, so an entry that was cut short (a crash, a full
    disk) or mixed by two writers never matches and is rebuilt."""
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "manifest.json").unlink(missing_ok=True)
    with atomic_path(entry / "images.npy", sync=False) as tmp:
        sink = NpyWriter(tmp)
        try:
            decode(sink)
        finally:
            sink.close()
    if labels is not None:
        with atomic_path(entry / "labels.npy", sync=False) as tmp:
            np.save(tmp, labels, allow_pickle=False)
    extra = {"shape": list(sink.shape), "images_crc": f"crc32:{sink.crc:08x}"}
    if labels is not None:
        extra["labels_crc"] = _crc(labels)
    write_json(entry / "manifest.json", {**manifest, **extra})


def load_image_folder(
    root, image_size: Optional[int] = None, channels: int = 1, cache: bool = True, workers=None, mmap: bool = False
):
    """(uint8 array (N, C, H, W), labels (N,) or None, class names or None) from a folder: one
    sub-folder per class, or the images directly inside it (no labels). The pixels come from the
    cache when its entry matches the folder as it is now; otherwise each file is decoded once
    with Pillow (in parallel) and, with ``cache``, the entry is (re)written as it is decoded.
    With ``cache`` and ``mmap`` the array is a read-only memory map of the entry's ``images.npy``
    (its ``filename``), else in memory."""
    root = Path(os.path.abspath(Path(root).expanduser()))  # absolute: no "." for pathlib to drop from the files
    t0 = time.perf_counter()
    files, labels, classes = list_image_folder(root)
    if not cache:
        images = decode_images(files, channels, image_size, workers, root)
        log.info("decoded %d images in %s (%.1f s; data.cache=false)", len(files), root, time.perf_counter() - t0)
        return images, labels, classes
    entry = cache_dir(root, image_size, channels)
    expect = {
        "format": CACHE_FORMAT,
        "root": str(root.resolve()),
        "image_size": image_size,
        "channels": channels,
        "decoder": _decoder(),
        "images": len(files),
        "classes": classes,
        "fingerprint": fingerprint(root, files),
    }
    images, why = read_cache(entry, expect, labels, mmap)
    if images is not None:
        log.info(
            "read %d decoded images of %s from the cache %s (%.1f s)", len(files), root, entry, time.perf_counter() - t0
        )
        return images, labels, classes
    try:
        write_cache(entry, expect, lambda sink: decode_images(files, channels, image_size, workers, root, sink), labels)
    except OSError as e:
        warnings.warn(
            f"could not write the image cache {entry}: {e.strerror or e}; the next load decodes again "
            "(set PYRO_VAE_CACHE to a writable folder, or data.cache=false)",
            stacklevel=2,
        )
        return decode_images(files, channels, image_size, workers, root), labels, classes
    try:
        images = np.load(entry / "images.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:  # removed or cut short since it was written a moment ago
        raise DataError(f"could not read the image cache {entry}: {first_line(e)}; delete it and run again") from None
    old = {"new": "", "out of date": "; the folder changed since the last one", "damaged": "; the last one was damaged"}
    log.info(
        "decoded %d images in %s (%.1f s) and cached them in %s (%.1f MB%s; delete it to free the space)",
        len(files),
        root,
        time.perf_counter() - t0,
        entry,
        images.nbytes / 1e6,
        old[why],
    )
    return images, labels, classes
