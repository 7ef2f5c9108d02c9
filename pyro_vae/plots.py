"""Pictures of a run: sample grids, reconstructions, latent maps, loss curves, a classifier's
confusion matrix and class-conditional samples, and anomaly scores' ROC curves and histograms.

Every figure is written atomically (temp file, then rename) with the Agg backend.
"""

import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .sparse import batched, take
from .utils import PROFILE, atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def class_name(class_names: Optional[Sequence[str]], c) -> str:
    """The name of class ``c``: its entry in ``class_names`` when there is one, else the number."""
    c = int(c)
    return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)


def tile(images: torch.Tensor, image_shape, ncol: int) -> np.ndarray:
    """(N, C*H*W) in [0,1] -> one (rows*H, ncol*W[, C]) array with 1-pixel gaps."""
    c, h, w = image_shape
    imgs = images.detach().float().cpu().clamp(0, 1).reshape(-1, c, h, w).numpy()
    n = imgs.shape[0]
    nrow = math.ceil(n / ncol)
    canvas = np.ones((c, nrow * (h + 1) - 1, ncol * (w + 1) - 1), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        canvas[:, r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = imgs[i]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0,1] for display when data are not already there (e.g. raw counts)."""
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 1:
        return x
    return (x - lo) / max(hi - lo, 1e-8)


def image_grid(images, image_shape, path, ncol: int = 8, title: Optional[str] = None, row_labels=None):
    plt = _plt()
    grid = tile(_scaled(images), image_shape, ncol)
    fig, ax = plt.subplots(figsize=(max(3, ncol * 0.7), max(3, grid.shape[0] / grid.shape[1] * ncol * 0.7)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        h = image_shape[1]
        ax.set_yticks([(h + 1) * i + h / 2 for i in range(len(row_labels))])
        ax.set_yticklabels(row_labels)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def reconstructions(x, xr, image_shape, path, n: int = 10):
    """Inputs (top row) above their reconstructions (bottom row)."""
    n = min(n, x.shape[0])
    both = torch.cat([x[:n], xr[:n]])
    return image_grid(both, image_shape, path, ncol=n, title="input (top) / reconstruction (bottom)")


def principal_components(z: np.ndarray, k: int = 2) -> np.ndarray:
    """Projections of the rows of ``z`` on its first ``k`` principal axes (an SVD of the centred
    data; each axis signed so that its largest loading is positive, so the picture is stable)."""
    z = z - z.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    return z @ (axes * signs[:, None]).T


def latent_map(codes, labels, path, class_names: Optional[Sequence[str]] = None, title="latent map"):
    """2-D scatter of latent means (PCA to 2-D when latent_dim > 2), coloured by label."""
    plt = _plt()
    z = codes.detach().float().cpu().numpy()
    xlabel, ylabel = "z[0]", "z[1]"
    if z.shape[1] > 2:
        z = principal_components(z, 2)
        xlabel, ylabel = "PC 1 of latent means", "PC 2"
    elif z.shape[1] == 1:
        z = np.concatenate([z, np.zeros_like(z)], 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is not None and (labels >= 0).any():
        lab = labels.cpu().numpy()
        sc = ax.scatter(z[:, 0], z[:, 1], c=lab, cmap="tab10", s=4, alpha=0.7)
        classes = np.unique(lab[lab >= 0])
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(c)), label=class_name(class_names, c))
            for c in classes
        ]
        ax.legend(handles=handles, fontsize=7, markerscale=1.5, loc="best", ncol=2)
    else:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def loss_curves(rows, path):
    """Per-epoch train loss and held-out loss (nats per datum)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    for key in rows[0] if rows else []:
        if key.endswith("loss"):
            ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", ms=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO per datum (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


@torch.no_grad()
def run_report(model, data, run_dir, rows, plan=None):
    """Write the standard PNGs of a run into ``run_dir``; the model kind's plan adds its own.
    The model computes on its own device; images come back to the CPU to be drawn."""
    run_dir = Path(run_dir)
    device = model.device
    torch.manual_seed(0)
    if rows:
        with PROFILE.phase("plot: loss_curves.png"):
            loss_curves(rows, run_dir / "loss_curves.png")
    test = data.test
    if data.image_shape is not None:
        with PROFILE.phase("plot: samples.png"):
            image_grid(
                model.sample(64).cpu(),
                data.image_shape,
                run_dir / "samples.png",
                ncol=8,
                title="samples from the prior",
            )
        with PROFILE.phase("plot: reconstructions.png"):
            x = take(test.x, slice(0, 10))
            xr = model.reconstruct(x.to(device)).cpu()  # x may carry covariate columns after the data's
            reconstructions(x[:, : xr.shape[1]], xr, data.image_shape, run_dir / "reconstructions.png")
    with PROFILE.phase("plot: latent_map.png"):
        n = min(len(test), 5000)
        latent_map(
            batched(model.encode, test.x[:n], 1000, device)[0],
            None if test.y is None else test.y[:n],
            run_dir / "latent_map.png",
            data.class_names,
        )
    if plan is not None:
        with PROFILE.phase("plot: the model kind's own"):
            plan.extra_plots(data, run_dir)


def confusion_counts(y_true, y_pred) -> np.ndarray:
    """counts[i, j] = how many examples of class i were predicted as class j."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = int(max(y_true.max(), y_pred.max())) + 1
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def confusion_matrix_plot(y_true, y_pred, path, class_names=None, title="confusion matrix (test)"):
    """Row-normalised confusion matrix with counts (row: true class, column: predicted)."""
    plt = _plt()
    cm = confusion_counts(y_true, y_pred)
    labels = np.arange(len(cm))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [class_name(class_names, i) for i in labels]
    ax.set_xticks(labels)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(labels)
    ax.set_yticklabels(names, fontsize=8)
    for i in labels:
        for j in labels:
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    ax.set_title(f"{title}: accuracy {acc:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


@torch.no_grad()
def confusion_matrix_report(model, data, run_dir):
    """``confusion_matrix.png``: a classifier's ``predict`` against the test rows' known labels
    (nothing when no test label is known)."""
    test = data.test
    if test.y is None or not bool((test.y >= 0).any()):
        return None
    mask = test.y >= 0
    predicted = batched(model.predict, test.x[mask], 1000, model.device).numpy()
    return confusion_matrix_plot(
        test.y[mask].numpy(), predicted, Path(run_dir) / "confusion_matrix.png", data.class_names
    )


def conditional_generation(images, num_classes: int, data, run_dir, ncol: int, title: str):
    """``conditional_generation.png``: ``images`` (num_classes * ncol, data_dim) drawn for class 0,
    then 1, ...: one row per class, labelled with its name."""
    names = [class_name(data.class_names, k) for k in range(num_classes)]
    return image_grid(
        images, data.image_shape, Path(run_dir) / "conditional_generation.png", ncol=ncol, title=title, row_labels=names
    )


@torch.no_grad()
def ssvae_report(model, data, run_dir, n_styles: int = 10):
    """Semi-supervised plots: confusion matrix, conditional generation, style transfer."""
    run_dir = Path(run_dir)
    device = model.device
    confusion_matrix_report(model, data, run_dir)
    if data.image_shape is None:
        return
    c = model.num_classes
    # conditional generation: rows = classes, columns = one shared style z each
    torch.manual_seed(0)
    z = model.prior().sample((n_styles,))
    yy = torch.arange(c, device=device).repeat_interleave(n_styles)
    conditional_generation(
        model.decode(z.repeat(c, 1), yy).cpu(), c, data, run_dir, n_styles, "rows: class; columns: one shared style z"
    )
    # style transfer: each test image's style z = E[q(z|x, predicted y)], re-decoded under every label
    x = take(data.test.x, slice(0, n_styles))
    zs = model.encode(x.to(device))[0]
    out = model.decode(zs.repeat(c, 1), torch.arange(c, device=device).repeat_interleave(len(x))).cpu()
    names = [class_name(data.class_names, k) for k in range(c)]
    image_grid(
        torch.cat([x, out]),
        data.image_shape,
        run_dir / "style_transfer.png",
        ncol=len(x),
        title="top: test images; below: their style under each label",
        row_labels=["input"] + names,
    )


# ---- evaluation uses: latent paths and anomaly scores ------------------------------------


@torch.no_grad()
def interpolation_grid(
    model, x_a, x_b, path, steps: int = 10, image_shape=None, title: Optional[str] = None, show_inputs: bool = True
):
    """One row of images along the straight latent line between two inputs.

    z(t) = (1 - t) E_q[z|x_a] + t E_q[z|x_b] for t = 0, 1/(steps-1), ..., 1, each decoded to
    E[x|z(t)] (``model.interpolate``); with ``show_inputs`` the inputs x_a and x_b frame the row.
    Returns the decoded path, shape (steps, data_dim).
    """
    shape = image_shape or getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError("interpolation_grid draws images; this model's data are not images")
    x_a, x_b = torch.as_tensor(x_a, dtype=torch.float32), torch.as_tensor(x_b, dtype=torch.float32)
    line = model.interpolate(x_a, x_b, steps).cpu()
    row = torch.cat([x_a[None], line, x_b[None]]) if show_inputs else line
    what = "input, then " if show_inputs else ""
    image_grid(
        row,
        shape,
        path,
        ncol=row.shape[0],
        title=title or f"latent interpolation ({what}{steps} decoded steps{', input' if show_inputs else ''})",
    )
    return line


@torch.no_grad()
def traversal_grid(model, path, x=None, dims=None, values=None, image_shape=None, title: Optional[str] = None):
    """Rows: latent dimensions d; columns: z_d = v for each v in ``values`` (default -3..3),
    the other coordinates held at E_q[z|x] (or 0 without ``x``), decoded to E[x|z]
    (``model.traverse``). Returns the decoded images, shape (len(dims) * len(values), data_dim)."""
    shape = image_shape or getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError("traversal_grid draws images; this model's data are not images")
    dims = list(range(min(model.latent_dim, 10))) if dims is None else list(dims)
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values, dtype=torch.float32)
    x = None if x is None else torch.as_tensor(x, dtype=torch.float32)
    imgs = model.traverse(x, dims, values).cpu()
    lo, hi = float(values.min()), float(values.max())
    image_grid(
        imgs,
        shape,
        path,
        ncol=len(values),
        row_labels=[f"z{d}" for d in dims],
        title=title
        or f"latent traversal: z_d from {lo:g} to {hi:g}, others at {'the code of x' if x is not None else '0'}",
    )
    return imgs


def roc_curves(scores: Dict[str, torch.Tensor], is_anomaly, auroc: Dict[str, float], path):
    """ROC curves of detecting ``is_anomaly`` by each score (NaN scores count as most anomalous),
    one line per score with its AUROC (``auroc[name]``) in the legend."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = torch.as_tensor(is_anomaly).bool().cpu().numpy()
    for name, s in scores.items():
        s = torch.nan_to_num(torch.as_tensor(s).float(), nan=float("inf")).cpu().numpy()
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name}: AUROC {auroc[name]:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def score_histograms(
    scores: Dict[str, torch.Tensor],
    labels,
    path,
    highlight=(),
    class_names: Optional[Sequence[str]] = None,
    note: str = " (held out)",
    xlabel: str = "anomaly score (higher = more anomalous)",
    bins: int = 60,
):
    """Density histograms of per-row scores: one panel per entry of ``scores`` (titled with its
    key), one outline per value of ``labels``; the classes in ``highlight`` (e.g. the ones held out
    of training) drawn thick and black, ``note`` after their names. A panel's x range covers the
    0.5-99.5 percentiles of its finite scores, so a few extreme scores do not squash the rest
    (scores outside it are counted in the end bins)."""
    plt = _plt()
    lab = torch.as_tensor(labels).cpu().numpy()
    highlight = {int(c) for c in highlight}
    fig, axes = plt.subplots(len(scores), 1, figsize=(8, 3.2 * len(scores)), squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], scores.items()):
        s = torch.as_tensor(values).detach().float().cpu().numpy()
        finite = s[np.isfinite(s)]
        lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins)
        for c in np.unique(lab):
            held = int(c) in highlight
            style = dict(lw=2.5, color="black") if held else dict(lw=1, alpha=0.8)
            ax.hist(
                np.clip(s[lab == c], edges[0], edges[-1]),
                bins=edges,
                histtype="step",
                density=True,
                label=class_name(class_names, c) + (note if held else ""),
                **style,
            )
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("density")
        ax.legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel(xlabel)
    return save_figure(fig, path)
