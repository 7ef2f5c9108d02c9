"""Anomaly scores for a trained model: one class per score, registered by name.

Every score maps a batch ``x`` (batch, data_dim) to a tensor of shape (batch,) where
HIGHER = MORE ANOMALOUS. Why more than -ELBO: a likelihood model gives *simple* inputs
(few edges, large flat areas) a high likelihood whether or not it has seen anything like
them (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"), so
-ELBO and -log p(x) can rank a never-seen simple class as *more* normal than the training
data. The corrected scores below remove that complexity term in different ways.

Use::

    from pyro_vae import scores
    s = scores.build("latent_knn")                    # or {"name": "latent_knn", "k": 20}; None = default
    s = scores.prepare(s, model, train_x, run_dir)    # fits (or loads RUN/scores/NAME.pt) if needed
    values = scores.compute(s, model, x)              # (batch,), batched
    scores.score_report({"dose": values}, is_anomaly, labels, out_dir)  # roc.png, histograms, AUROC

A score that needs statistics of the training data has ``needs_fit = True``;
:meth:`AnomalyScore.fit` computes them and :meth:`AnomalyScore.state_dict` returns them as
plain tensors, numbers and strings, saved to ``RUN/scores/NAME.pt`` and read back with
``torch.load(..., weights_only=True)`` (loading never runs code).

Register your own::

    from pyro_vae.scores import AnomalyScore, register

    @register("my_score")
    class MyScore(AnomalyScore):
        "One line for `pyro-vae list`."
        def score(self, model, x):
            return (x - model.reconstruct(x)).abs().sum(-1)
"""

import io
import math
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .plots import roc_curves, score_histograms
from .registry import Registry
from .sparse import take
from .utils import read_weights, save_tensors, write_json

ANOMALY_SCORES = Registry("anomaly score")
register = ANOMALY_SCORES.register

#: the score `pyro-vae score` uses when none is named (benchmarks/RESULTS.md compares the scores)
DEFAULT_SCORE = "latent_knn"

SCORES_DIR = "scores"
STATE_FORMAT = "pyro_vae.scores/1"


class AnomalyScore:
    """Base class: ``score(model, x) -> (batch,)``, higher = more anomalous.

    Subclasses that need statistics of the training data set ``needs_fit``
    and implement ``fit`` / ``state_dict`` / ``load_state_dict``.
    """

    needs_fit = False
    registry_name = "?"

    def __init__(self):
        self.fitted = not self.needs_fit

    # ---- the interface --------------------------------------------------------
    def fit(self, model, train_x: torch.Tensor, run_dir=None, seed: int = 0) -> "AnomalyScore":
        """Compute what the score needs from the training inputs (no-op by default)."""
        self.fitted = True
        return self

    def score(self, model, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What ``fit`` learned, as tensors / numbers / strings (nested dicts allowed)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.fitted = True

    # ---- persistence ----------------------------------------------------------
    def save(self, run_dir) -> Path:
        """Write ``RUN/scores/NAME.pt`` (plain tensors; read with weights_only=True)."""
        path = state_path(run_dir, self.registry_name)
        payload = {
            "format": STATE_FORMAT,
            "name": self.registry_name,
            "params": dict(self.params()),
            "state": self.state_dict(),
        }
        save_tensors(payload, path)
        return path

    def load(self, run_dir) -> "AnomalyScore":
        path = state_path(run_dir, self.registry_name)
        payload = read_weights(path)  # weights only; a damaged file is a one-line error
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a saved anomaly score")
        if payload.get("params") != dict(self.params()):
            raise ValueError(
                f"{path} was fitted with parameters {payload.get('params')}, "
                f"not {dict(self.params())}; delete it to refit"
            )
        self.load_state_dict(payload["state"])
        return self

    def params(self) -> Dict[str, object]:
        """The constructor parameters (saved beside the state, checked on load)."""
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def _check_fitted(self):
        if not self.fitted:
            raise RuntimeError(f"anomaly score {self.registry_name!r} needs fit(model, train_x) first")


def state_path(run_dir, name: str) -> Path:
    return Path(run_dir) / SCORES_DIR / f"{name}.pt"


# ------------------------------------------------------------------ helpers
@torch.no_grad()
def neg_log_likelihood(model, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """-log p(x) per row (nats): -ELBO for ``num_samples`` = 1 (one z), else the IWAE bound."""
    if num_samples <= 1:
        return -model.elbo(x).float().cpu()
    from .evaluate import iwae_log_likelihood

    return -iwae_log_likelihood(model, x, num_samples)


def _to_bytes(x: torch.Tensor) -> torch.Tensor:
    """Rows as 8-bit integers: inputs in [0,1] scaled by 255, others rounded and clipped."""
    x = x.detach().float().cpu()
    if float(x.min()) >= 0 and float(x.max()) <= 1:
        x = x * 255
    return x.round().clamp(0, 255).to(torch.uint8)


def compressed_bits(x: torch.Tensor, image_shape=None, compressor: str = "png") -> torch.Tensor:
    """Lossless compressed length of each row in bits: PNG (needs Pillow and an image shape)
    or zlib level 9 of the 8-bit row."""
    q = _to_bytes(x).numpy()
    out = torch.empty(q.shape[0])
    if compressor == "png" and image_shape is not None:
        from PIL import Image

        c, h, w = image_shape
        for i, row in enumerate(q):
            img = row.reshape(c, h, w)
            img = Image.fromarray(img[0]) if c == 1 else Image.fromarray(img.transpose(1, 2, 0))
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=True)
            out[i] = 8 * len(buf.getvalue())
    else:
        for i, row in enumerate(q):
            out[i] = 8 * len(zlib.compress(row.tobytes(), 9))
    return out


def _subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


# ------------------------------------------------------------------ the scores
@register("neg_elbo")
class NegELBO(AnomalyScore):
    """-ELBO in nats (one z per row, averaged over `num_samples`): the classic score.

    Assumes: anomalies are inputs the model explains badly. Fails on simpler-than-training
    inputs, which get a *better* ELBO (Nalisnick et al. 2019). Cost: one encoder + decoder pass
    per sample.
    """

    def __init__(self, num_samples: int = 1):
        super().__init__()
        self.num_samples = int(num_samples)

    def score(self, model, x):
        return -model.elbo(x, num_particles=self.num_samples).float().cpu()


@register("neg_log_likelihood")
class NegLogLikelihood(AnomalyScore):
    """-log p(x) in nats by importance sampling with K = `num_samples` (IWAE bound, Burda et al. 2015).

    Assumes: the same as -ELBO with a tighter estimate of the likelihood; same failure on
    simple inputs. Cost: K encoder + decoder passes per row.
    """

    def __init__(self, num_samples: int = 64):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.num_samples = int(num_samples)

    def score(self, model, x):
        return neg_log_likelihood(model, x, self.num_samples)


@register("recon_error")
class ReconError(AnomalyScore):
    """Squared error ||x - E[x | z = E_q[z|x]]||^2 of the reconstruction from the posterior mean.

    Assumes: the encoder-decoder pair only reproduces what it was trained on; ignores the
    likelihood's noise model and the KL. Cost: one encoder + decoder pass.
    """

    def score(self, model, x):
        return ((model.reconstruct(x) - x[:, : model.data_dim]) ** 2).sum(-1).float().cpu()


@register("input_complexity")
class InputComplexity(AnomalyScore):
    """Input-complexity correction (Serrà et al. 2020): -log p(x) minus the compressed length L(x).

    S(x) = -log p(x) - slope * L(x) with L(x) the lossless PNG (or zlib) length of the 8-bit input
    in bits and -log p(x) in bits. slope = 1 is Serrà's score for a likelihood over the same 8-bit
    values; for likelihoods in other units (e.g. a Bernoulli on grey levels, which is not a
    density over 8-bit images) `slope: fit` takes the least-squares slope of -log p(x) on L(x)
    over the training data, so S is the part of -log p(x) that the input's complexity does not
    explain. Assumes: a generic compressor measures the complexity that inflates likelihoods.
    Cost: `num_samples` model passes plus one compression per row (CPU, ~0.1 ms).
    """

    needs_fit = True

    def __init__(self, num_samples: int = 1, compressor: str = "png", slope="fit"):
        if compressor not in ("png", "zlib"):
            raise ValueError(f"compressor must be png or zlib, got {compressor!r}")
        if slope != "fit" and not isinstance(slope, (int, float)):
            raise ValueError(f"slope must be 'fit' or a number, got {slope!r}")
        self.num_samples, self.compressor, self.slope = int(num_samples), compressor, slope
        super().__init__()
        self._slope = None if slope == "fit" else float(slope)
        self.fitted = slope != "fit"

    def _parts(self, model, x):
        nll_bits = neg_log_likelihood(model, x, self.num_samples) / math.log(2)
        return nll_bits, compressed_bits(x, getattr(model, "image_shape", None), self.compressor)

    @torch.no_grad()
    def fit(self, model, train_x, run_dir=None, seed=0):
        if self.slope == "fit":
            nll, bits = compute_parts(self._parts, model, _subsample(train_x, 5000, seed))
            b = bits - bits.mean()
            self._slope = float((b * (nll - nll.mean())).sum() / b.pow(2).sum().clamp_min(1e-12))
        self.fitted = True
        return self

    def score(self, model, x):
        self._check_fitted()
        nll, bits = self._parts(model, x)
        return nll - self._slope * bits

    def state_dict(self):
        return {"slope": torch.tensor(self._slope)}

    def load_state_dict(self, state):
        self._slope = float(state["slope"])
        self.fitted = True


@register("dose")
class DensityOfStates(AnomalyScore):
    """Density of states (DoSE, Morningstar et al. 2021): KDE-judged atypicality of ELBO statistics.

    How atypical the model's summary statistics of x are, each judged by a kernel density
    fitted on the training data.

    Statistics per input: -ELBO, reconstruction error ||x - E[x|z=mu]||^2, the posterior mean's
    squared norm ||mu||^2 (how far from the prior's centre the code lies) and the posterior
    log-volume sum_d log sigma_d. Each gets a Gaussian KDE (Scott's bandwidth) over up to
    `max_train` training rows; S(x) = -sum_i log KDE_i(T_i(x)). Flags inputs that are too likely
    or too simple as well as poorly explained ones, with no second model. Assumes: the training
    data's statistics describe normal inputs; the statistics are treated as independent.
    Cost: one encoder pass, `num_samples` ELBO passes and one reconstruction per row, plus a
    (batch x max_train) kernel sum per statistic; fit: one pass over `max_train` training rows.
    """

    needs_fit = True
    statistic_names = ("neg_elbo", "recon_error", "latent_norm", "posterior_log_volume")

    def __init__(self, num_samples: int = 4, max_train: int = 5000):
        self.num_samples, self.max_train = int(num_samples), int(max_train)
        super().__init__()
        self.train_stats, self.bandwidth = None, None

    @torch.no_grad()
    def statistics(self, model, x):
        loc, scale = model.encode(x)
        stats = [
            -model.elbo(x, num_particles=self.num_samples).float(),
            ((model.reconstruct(x) - x[:, : model.data_dim]) ** 2).sum(-1).float(),
            loc.float().pow(2).sum(-1),
            scale.float().log().sum(-1),
        ]
        return torch.stack(stats, -1).cpu()

    @torch.no_grad()
    def fit(self, model, train_x, run_dir=None, seed=0):
        t = compute_fn(self.statistics, model, _subsample(train_x, self.max_train, seed))
        self.train_stats = t
        n = t.shape[0]
        # Scott's rule per statistic, with a robust spread (min of std and IQR/1.34)
        q = torch.quantile(t, torch.tensor([0.25, 0.75]), dim=0)
        spread = torch.minimum(t.std(0), (q[1] - q[0]) / 1.34).clamp_min(1e-6)
        self.bandwidth = 1.06 * spread * n ** (-1 / 5)
        self.fitted = True
        return self

    def score(self, model, x):
        self._check_fitted()
        t = self.statistics(model, x)  # (b, S)
        z = (t[:, None, :] - self.train_stats[None]) / self.bandwidth  # (b, n, S)
        log_k = -0.5 * z.pow(2) - torch.log(self.bandwidth) - 0.5 * math.log(2 * math.pi)
        log_density = torch.logsumexp(log_k, 1) - math.log(self.train_stats.shape[0])  # (b, S)
        return -log_density.sum(-1)

    def state_dict(self):
        return {"train_stats": self.train_stats, "bandwidth": self.bandwidth}

    def load_state_dict(self, state):
        self.train_stats, self.bandwidth = state["train_stats"].float(), state["bandwidth"].float()
        self.fitted = True


@register("latent_knn")
class LatentKNN(AnomalyScore):
    """Distance from the code E_q[z|x] to its k-th nearest training code (Sun et al. 2022).

    Deep nearest neighbours (Sun et al. 2022) applied to the VAE's posterior means, the
    latent-space distance of Denouden et al. 2018.

    Stores the posterior means E_q[z|x] of up to `max_train` training rows; S(x) = the Euclidean
    distance from E_q[z|x] to its `k`-th nearest stored code. Judges *where* an input lands in
    latent space, not how well it is reconstructed, so simple and complex unseen inputs alike
    score high when they fall where no training input does. A small `k` keeps the score local:
    it stays meaningful when a normal class has only a few dozen training rows. Assumes: the
    encoder maps unseen kinds of input away from the training codes, and Euclidean distance
    between posterior means reflects similarity; no likelihood involved. Cost: one encoder pass
    plus a (batch x max_train) distance matrix per batch; the stored codes take
    max_train x latent_dim floats in RUN/scores/latent_knn.pt.
    """

    needs_fit = True

    def __init__(self, k: int = 5, max_train: int = 20000):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k, self.max_train = int(k), int(max_train)
        super().__init__()
        self.codes = None

    @torch.no_grad()
    def fit(self, model, train_x, run_dir=None, seed=0):
        self.codes = compute_fn(lambda m, xb: m.encode(xb)[0].float(), model, _subsample(train_x, self.max_train, seed))
        self.fitted = True
        return self

    def score(self, model, x):
        self._check_fitted()
        z = model.encode(x)[0].float()
        codes = self.codes.to(z.device)
        d = torch.cdist(z, codes)
        k = min(self.k, codes.shape[0])
        return d.topk(k, dim=1, largest=False).values[:, -1].cpu()

    def state_dict(self):
        return {"codes": self.codes}

    def load_state_dict(self, state):
        self.codes = state["codes"].float()
        self.fitted = True


@register("combined")
class Combined(AnomalyScore):
    """Sum of standardised component scores (default: latent_knn + input_complexity).

    Each component is calibrated on training rows it was not fitted on (a z-score version of
    combining per-statistic evidence, as in DoSE, Morningstar et al. 2021).

    S(x) = sum_i (S_i(x) - mean_i) / std_i with mean_i, std_i over `calibration` training rows
    held out of the rows the components are fitted on. The default pair covers both failure
    modes: `latent_knn` flags inputs whose codes land where no training code does (semantic
    novelty, also for simple inputs), `input_complexity` flags inputs the model explains worse than
    their complexity predicts (novel detail). Assumes: the components' evidence adds up; each
    is one-sided (higher = more anomalous). Cost: the sum of the components' costs.
    """

    needs_fit = True

    def __init__(self, components: Sequence[str] = ("latent_knn", "input_complexity"), calibration: int = 5000):
        components = list(components)
        if not components or "combined" in components:
            raise ValueError(f"components must name other anomaly scores, got {components}")
        for name in components:
            ANOMALY_SCORES.get(name)
        self.components, self.calibration = components, int(calibration)
        super().__init__()
        self.parts = [ANOMALY_SCORES.get(name)() for name in components]
        self.mean, self.std = None, None

    @torch.no_grad()
    def fit(self, model, train_x, run_dir=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(train_x.shape[0], generator=g)
        n_cal = min(self.calibration, train_x.shape[0] // 2)
        cal, rest = train_x[perm[:n_cal]], train_x[perm[n_cal:]]
        values = []
        for part in self.parts:
            if part.needs_fit:
                part.fit(model, rest, seed=seed)
            values.append(compute(part, model, cal))
        v = torch.stack(values, -1)
        self.mean, self.std = v.mean(0), v.std(0).clamp_min(1e-8)
        self.fitted = True
        return self

    def score(self, model, x):
        self._check_fitted()
        v = torch.stack([part.score(model, x).float().cpu() for part in self.parts], -1)
        return ((v - self.mean) / self.std).sum(-1)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std, "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"].float(), state["std"].float()
        for part, s in zip(self.parts, state["parts"]):
            part.load_state_dict(s)
        self.fitted = True


# ------------------------------------------------------------------ running scores
def build(spec=None) -> AnomalyScore:
    """The score named by ``spec``: a name, a ``{"name": ..., **params}`` mapping, or None
    for :data:`DEFAULT_SCORE`."""
    if spec is None:
        spec = DEFAULT_SCORE
    if isinstance(spec, str):
        spec = {"name": spec}
    return ANOMALY_SCORES.build(spec)


def prepare(
    score: AnomalyScore, model, train_x: Optional[torch.Tensor] = None, run_dir=None, seed: int = 0, refit: bool = False
) -> AnomalyScore:
    """Make ``score`` ready: load ``RUN/scores/NAME.pt`` if it exists (and not ``refit``), else
    fit it on ``train_x`` and save it in ``run_dir`` (when given)."""
    if not score.needs_fit:
        return score
    if run_dir is not None and not refit and state_path(run_dir, score.registry_name).is_file():
        return score.load(run_dir)
    if train_x is None:
        raise ValueError(f"anomaly score {score.registry_name!r} must be fitted on the training data first")
    model.eval()
    score.fit(model, train_x, run_dir=run_dir, seed=seed)
    if run_dir is not None:
        score.save(run_dir)
    return score


@torch.no_grad()
def compute_fn(fn, model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``fn(model, batch)`` over ``x`` in batches on the model's device, concatenated on the CPU."""
    model.eval()
    device = model.device
    out = [fn(model, take(x, slice(i, i + batch_size)).to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def compute_parts(fn, model, x, batch_size: int = 1000):
    parts = []
    device = model.device
    for i in range(0, x.shape[0], batch_size):
        parts.append([p.cpu() for p in fn(model, take(x, slice(i, i + batch_size)).to(device))])
    return [torch.cat(p) for p in zip(*parts)]


def compute(score: AnomalyScore, model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Per-row scores (higher = more anomalous), shape (N,), computed in batches."""
    with torch.no_grad():
        return compute_fn(score.score, model, x, batch_size).float()


# ------------------------------------------------------------------ reporting
def auroc_auprc(scores, is_anomaly) -> Dict[str, float]:
    """AUROC and AUPRC (average precision) of detecting ``is_anomaly`` by ``scores``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = torch.as_tensor(is_anomaly).bool().cpu().numpy()
    s = torch.nan_to_num(torch.as_tensor(scores).float(), nan=float("inf")).cpu().numpy()
    return {"auroc": float(roc_auc_score(y, s)), "auprc": float(average_precision_score(y, s))}


def score_report(
    scores: Dict[str, torch.Tensor],
    is_anomaly,
    labels=None,
    out_dir=None,
    class_names: Optional[Sequence[str]] = None,
    prefix: str = "",
) -> dict:
    """AUROC / AUPRC per score; with ``out_dir`` also ``roc.png`` (one curve per score) and
    ``score_histograms.png`` (one panel per score, one outline per class of ``labels`` or, without
    labels, for the normal rows and the anomalies; classes of anomalies only drawn thick and black).
    Returns ``{name: {"auroc": .., "auprc": ..}}``."""
    is_anomaly = torch.as_tensor(is_anomaly).bool().cpu()
    result = {name: auroc_auprc(s, is_anomaly) for name, s in scores.items()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        roc_curves(scores, is_anomaly, {name: r["auroc"] for name, r in result.items()}, out_dir / f"{prefix}roc.png")
        note = " (anomaly)"
        if labels is None:  # two groups: the normal rows and the anomalies
            labels, class_names, note = is_anomaly.long(), ["normal", "anomaly"], ""
        labels = torch.as_tensor(labels).cpu()
        anomalous = [c for c in torch.unique(labels).tolist() if bool(is_anomaly[labels == c].all())]
        score_histograms(scores, labels, out_dir / f"{prefix}score_histograms.png", anomalous, class_names, note)
        write_json(out_dir / f"{prefix}score_metrics.json", result)
    return result
