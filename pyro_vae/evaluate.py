"""Evaluation: test ELBO, importance-weighted log-likelihood, latent diagnostics, AUROC.

* ``test_loss`` — the negative ELBO per datum (nats), one z per datum.
* ``iwae_log_likelihood`` — log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x)
  (Burda et al. 2015): a lower bound that tightens as K grows and equals the ELBO in
  expectation at K = 1. Computed in chunks, so memory stays bounded for K in the thousands.
  For the semi-supervised model the label is summed out exactly.
* ``test_bpd_elbo`` / ``test_bpd`` — bits per dimension, -log2 p(x) / D (D values per row:
  pixels x channels), the figure image-likelihood papers report; only for a likelihood that is
  a probability mass over the values 0..L-1 (``likelihood.levels``: categorical, binomial,
  discretized_logistic), where -log p(x) counts bits of a lossless code. ``test_bpd_elbo``
  comes from the ELBO (``test_loss``): an upper bound. ``test_bpd`` comes from the IWAE
  estimate (with ``iwae_samples``): tighter, and what papers report. A density over [0,1]
  (bernoulli on grey levels, gaussian, ...) is no probability of the pixel values: none.
* ``active_units`` — latent dimensions whose posterior mean varies over the data:
  Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2015); ``kl_per_dim`` — KL(q(z_d|x) || p(z_d))
  averaged over the data, for factorised priors with a closed-form KL.
"""

import math
from typing import Optional

import torch
import pyro.distributions as dist

from .models.base import Classifier
from .sparse import batched, take


@torch.no_grad()
def iwae_log_likelihood(model, x: torch.Tensor, num_samples: int, max_rows: Optional[int] = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per row (nats), shape (batch,).

    Uses ``model.log_weights(x)`` of shape (batch, C): one z per row and exactly-summed
    component c (C = 1 without discrete latents; the classes of a semi-supervised model),
    so log p(x) = logsumexp_c logmeanexp_k w_{k,c}. At most ``max_rows`` rows
    (datum x sample) are in flight at once (default: about 200 MB of decoder output).
    """
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    if max_rows is None:
        per_row = model.likelihood.output_size * (model.num_classes if isinstance(model, Classifier) else 1)
        max_rows = int(max(1, min(65536, 5e7 // per_row)))
    device = model.device
    out = []
    rows_per_datum = max(1, max_rows // max(1, num_samples))
    for i in range(0, x.shape[0], rows_per_datum):
        xb = take(x, slice(i, i + rows_per_datum)).to(device)  # dense per chunk (x may be sparse)
        b = xb.shape[0]
        k_chunk = max(1, max_rows // b)
        acc = None  # running logsumexp over samples, shape (b,) or (b, C)
        done = 0
        while done < num_samples:
            k = min(k_chunk, num_samples - done)
            rep = xb.repeat(k, *([1] * (xb.dim() - 1)))
            w = model.log_weights(rep).reshape(k, b, -1)
            lse = torch.logsumexp(w, 0)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
            done += k
        ll = torch.logsumexp(acc - math.log(num_samples), -1)  # the discrete component summed out
        out.append(ll.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def latent_diagnostics(model, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000) -> dict:
    """Active units and (for factorised priors with an analytic KL) the KL per latent dimension."""
    device = model.device
    loc, scale = (t.to(device) for t in batched(model.encode, x, batch_size, device))
    var = loc.float().var(0)
    result = {
        "active_units": int((var > threshold).sum()),
        "latent_dim": int(loc.shape[1]),
        "posterior_mean_variance": [round(float(v), 5) for v in var],
    }
    prior = model.prior()
    base = prior.base_dist if isinstance(prior, dist.Independent) else None
    if base is not None and model.prior.analytic_kl:
        try:
            kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), base).mean(0)
            result["kl_per_dim"] = [round(float(v), 4) for v in kl]
        except NotImplementedError:
            pass
    return result


def bits_per_dim(nats: float, data_dim: int) -> float:
    """``nats`` of -log p(x) per row as bits per dimension: nats / (D ln 2)."""
    return float(nats) / (data_dim * math.log(2))


@torch.no_grad()
def test_metrics(plan, split, cfg, iwae_samples: Optional[int] = None, seed: int = 0) -> dict:
    """Final metrics on ``split``: ``test_loss`` (-ELBO per datum, nats) and the model kind's
    extras (from its training plan); with ``iwae_samples`` (or cfg.evaluate.iwae_samples) > 0
    also ``test_log_likelihood``; ``test_bpd_elbo`` (and with IWAE ``test_bpd``) for a likelihood
    that is a probability mass over integer levels. Seeded: the same model and data give the same numbers."""
    model = plan.model
    model.eval()
    torch.manual_seed(seed)
    metrics = {"test_" + k: v for k, v in plan.evaluate(split, cfg.train.eval_batch_size).items()}
    k = cfg.evaluate.iwae_samples if iwae_samples is None else iwae_samples
    if k and k > 0:
        metrics["test_log_likelihood"] = float(iwae_log_likelihood(model, split.x, k).mean())
        metrics["iwae_samples"] = int(k)
    if getattr(model.likelihood, "levels", None) and "test_loss" in metrics:
        metrics["test_bpd_elbo"] = bits_per_dim(metrics["test_loss"], model.data_dim)
        if "test_log_likelihood" in metrics:
            metrics["test_bpd"] = bits_per_dim(-metrics["test_log_likelihood"], model.data_dim)
    n = min(len(split), 10000)
    metrics.update(latent_diagnostics(model, split.x[:n]))
    return metrics
