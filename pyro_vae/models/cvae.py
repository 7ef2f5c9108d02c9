"""The conditional VAE (Sohn, Lee & Yan 2015; the covariates of scVI, Lopez et al. 2018) as a Pyro program.

Observed covariates c_n (a label, a batch, continuous columns) enter both networks::

    z_n ~ p(z)                                prior from the registry (default N(0, I))
    x_n ~ p(x | decoder(z_n, c_n))            likelihood from the registry (counts: library size too)

    q(z_n | x_n, c_n) = Normal(loc(x_n, c_n), scale(x_n, c_n))

so the ELBO is ``E_q[log p(x|z,c)] - KL(q(z|x,c) || p(z))`` (Sohn et al. 2015, eq. 4 with the prior
p(z|c) = p(z)). Since the decoder is told c, the code z need not carry it: a batch effect explained
by c stays out of z (batch correction), ``sample(n, covariates=...)`` generates under the asked c
(conditional generation), and ``decode(encode(x, c), covariates=c')`` decodes a row's code under
another batch (counterfactual decoding, scVI's ``transform_batch``).

c is a design vector: one-hot for a categorical covariate (the label, ``data.batch_key``), the
standardised value of each continuous one (``data.covariate_keys``), concatenated in the order of
:attr:`CVAE.terms`. The rows the engine passes (training batches, ``evaluate``, ``score``,
``encode``) are the data columns followed by that design (:meth:`CVAE.inputs`); a user's
own rows take ``covariates={key: values}`` instead.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro import poutine

from .. import likelihoods as likelihoods_mod
from .. import priors as priors_mod
from ..errors import ConfigError, DataError
from ..networks import GaussianEncoder, make_body, make_decoder, network_type
from ..pyromodule import pyro_program
from ..registry import option
from ..sparse import append_columns, is_sparse
from ..streaming import AppendedRows, DiskRows
from .base import MODELS, DataInfo, LatentVariableModel, network_input

CONDITIONS = ("label", "batch", "covariates")


@dataclass
class CVAEConfig:
    """``model: cvae`` keys: which observed covariates condition the encoder and decoder."""

    conditions: Optional[List[str]] = option(
        None,
        "covariates c of q(z|x,c) and p(x|z,c): label | batch (data.batch_key) | covariates "
        "(data.covariate_keys); null = batch and covariates where the data give them, else the label",
    )

    @staticmethod
    def check(c) -> None:
        for name in c.conditions or []:
            if name not in CONDITIONS:
                raise ConfigError(f"model.conditions has {name!r}; choose from: {', '.join(CONDITIONS)}")


@dataclass
class Term:
    """One covariate of the design: its key, kind and (categorical) category names or
    (continuous) training mean and scale."""

    key: str
    kind: str  # "label" | "categorical" | "continuous"
    categories: Optional[List[str]] = None
    mean: float = 0.0
    scale: float = 1.0

    @property
    def size(self) -> int:
        return len(self.categories) if self.categories is not None else 1


def resolve_conditions(conditions, info: DataInfo) -> List[str]:
    """``model.conditions`` with null resolved against the data: batch and continuous covariates
    where the data give them, else the label."""
    have = {s.get("role") for s in info.covariates or []}
    if conditions is None:
        conditions = [n for n in ("batch", "covariates") if n in have] or (["label"] if info.num_classes else [])
    conditions = list(conditions)
    if not conditions:
        raise ConfigError(
            "model=cvae needs covariates: set data.batch_key / data.covariate_keys (AnnData obs columns), "
            "data.covariates_path (data=array) or give labels (model.conditions=[label])"
        )
    for name in conditions:
        if name == "label" and not info.num_classes:
            raise ConfigError("model.conditions has label but the data have no labels; give labels or drop it")
        if name in ("batch", "covariates") and name not in have:
            key = "data.batch_key" if name == "batch" else "data.covariate_keys"
            raise ConfigError(f"model.conditions has {name} but {key} is not set; set it or drop {name}")
    return conditions


def terms_of(conditions, info: DataInfo) -> List[Term]:
    """The design's covariates, in order: the label, the batch, then each continuous covariate."""
    terms = []
    if "label" in conditions:
        names = info.class_names or [str(k) for k in range(int(info.num_classes))]
        terms.append(Term("label", "label", [str(n) for n in names]))
    for spec in info.covariates or []:
        if spec["role"] == "batch" and "batch" in conditions:
            terms.append(Term(spec["key"], "categorical", [str(c) for c in spec["categories"]]))
        elif spec["role"] == "covariates" and "covariates" in conditions:
            terms.append(Term(spec["key"], "continuous", None, float(spec["mean"]), float(spec["scale"])))
    return terms


class ConditionedBody(nn.Module):
    """An MLP body that reads the data (log(1 + x) for counts, via ``network_input``) and c together."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.out_dim = module.out_dim

    def forward(self, x, c):
        return self.module(torch.cat([x.to(c.dtype), c], -1))


class ConditionedEncoder(nn.Module):
    """q(z|x,c): the body reads x (and c, for MLPs); the Gaussian head reads its features and c."""

    def __init__(self, body: nn.Module, latent_dim: int, cond_dim: int, body_reads_c: bool):
        super().__init__()
        self.gaussian = GaussianEncoder(body, latent_dim, extra_in=cond_dim)
        self.body_reads_c = body_reads_c

    def forward(self, x, c):
        g = self.gaussian
        h = g.body(x, c) if self.body_reads_c else g.body(x)
        loc, raw = g.head(torch.cat([h, c.to(h.dtype)], -1)).float().split(g.latent_dim, -1)
        return loc, nn.functional.softplus(raw) + 1e-5


@MODELS.register("cvae", config=CVAEConfig)
class CVAE(LatentVariableModel):
    """Conditional VAE: z ~ prior, x ~ likelihood(decoder(z, c)); q(z|x,c) Gaussian; c observed."""

    def __init__(self, encoder, decoder, prior, likelihood, latent_dim, terms: List[Term], image_shape=None):
        super().__init__(encoder, decoder, prior, likelihood, latent_dim, image_shape)
        self.terms = list(terms)
        self.cond_dim = sum(t.size for t in self.terms)

    @classmethod
    def from_config(cls, cfg, info: DataInfo) -> "CVAE":
        conditions = resolve_conditions(cfg.model.get("conditions"), info)
        if cfg.model.get("conditions") != conditions:
            cfg.model.conditions = conditions  # resolved once, before the run's config is written
        terms = terms_of(conditions, info)
        k = sum(t.size for t in terms)
        likelihood = likelihoods_mod.LIKELIHOODS.build(cfg.likelihood, data_dim=info.data_dim)
        prior = priors_mod.PRIORS.build(cfg.prior, latent_dim=cfg.latent_dim)
        mlp = network_type(cfg.encoder, info.image_shape) == "mlp"
        body = make_body(cfg.encoder, info.data_dim + (k if mlp else 0), info.image_shape)
        body = network_input(ConditionedBody(body) if mlp else body, likelihood, info)
        encoder = ConditionedEncoder(body, cfg.latent_dim, k, mlp)
        decoder = make_decoder(cfg.decoder, cfg.latent_dim + k, likelihood.output_size, info.data_dim, info.image_shape)
        model = cls(encoder, decoder, prior, likelihood, cfg.latent_dim, terms, info.image_shape)
        model.num_data = info.num_data
        return model

    # ---- covariates --------------------------------------------------------
    def covariate_names(self) -> List[str]:
        return [t.key for t in self.terms]

    def _term(self, key: str) -> Term:
        for t in self.terms:
            if t.key == key or (t.kind == "label" and key in ("label", "y")):
                return t
        raise DataError(f"this model has no covariate {key!r}; its covariates: {', '.join(self.covariate_names())}")

    def codes(self, key: str, values, n: int) -> torch.Tensor:
        """Category codes of covariate ``key`` for ``values`` (names, or integer codes), shape (n,)."""
        return self._codes(self._term(key), values, n)

    def _codes(self, t: Term, values, n: int) -> torch.Tensor:
        """Category codes of ``values`` (names, or integer codes) for term ``t``, shape (n,)."""
        if torch.is_tensor(values) and not values.is_floating_point() and values.numel() == n:  # codes already
            codes = values.reshape(-1).long().cpu()
            if n and not bool(((codes >= 0) & (codes < t.size)).all()):
                raise DataError(f"{t.key} codes must be in 0..{t.size - 1} ({', '.join(t.categories)})")
            return codes
        v = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, dtype=object)
        v = np.broadcast_to(v.reshape(-1) if v.ndim else v, (n,))
        lookup = {name: k for k, name in enumerate(t.categories)}
        codes = np.empty(n, dtype=np.int64)
        for i, value in enumerate(v):
            name = str(value)
            if name in lookup:
                codes[i] = lookup[name]
            elif isinstance(value, (int, np.integer)) and 0 <= int(value) < len(t.categories):
                codes[i] = int(value)
            else:
                raise DataError(
                    f"unknown {t.key} {name!r}; this model knows {len(t.categories)}: {', '.join(t.categories)}"
                )
        return torch.from_numpy(codes)

    def design(self, covariates: Dict[str, object], n: int, draw_missing: bool = False) -> torch.Tensor:
        """The design c (n, cond_dim) of ``covariates`` ({key: value or n values}; categories by name
        or code, continuous values as measured). A key left out is an error, or with
        ``draw_missing``: a categorical one drawn uniformly per row, a continuous one at its training mean."""
        given = {self._term(k).key: v for k, v in (covariates or {}).items()}
        parts = []
        for t in self.terms:
            if t.key not in given:
                if not draw_missing:
                    raise DataError(f"give covariates for {', '.join(self.covariate_names())} (missing: {t.key})")
                if t.categories is not None:
                    parts.append(nn.functional.one_hot(torch.randint(t.size, (n,)), t.size).float())
                else:
                    parts.append(torch.zeros(n, 1))
                continue
            if t.categories is not None:
                parts.append(nn.functional.one_hot(self._codes(t, given[t.key], n), t.size).float())
            else:
                try:
                    v = torch.as_tensor(np.asarray(given[t.key], dtype=np.float32)).reshape(-1)
                except (TypeError, ValueError):
                    raise DataError(f"covariate {t.key} takes numbers (got {given[t.key]!r})") from None
                if not bool(torch.isfinite(v).all()):
                    raise DataError(f"covariate {t.key} has NaN/inf values; every row needs a value")
                parts.append(((v.expand(n) - t.mean) / t.scale)[:, None])
        return torch.cat(parts, -1).to(self.device) if parts else torch.zeros(n, 0, device=self.device)

    def split_design(self, split) -> torch.Tensor:
        """The design of a data split's rows (its labels ``y``, batch codes ``batch`` and continuous
        ``covariates`` columns); DataError naming what is missing."""
        n, given = len(split), {}
        for t in self.terms:
            if t.kind == "label":
                if split.y is None or bool((split.y < 0).any()):
                    raise DataError("model=cvae conditioned on the label needs a known label for every row")
                given[t.key] = split.y
            elif t.kind == "categorical":
                if getattr(split, "batch", None) is None:
                    raise DataError(f"model=cvae needs the batch of every row: set data.batch_key={t.key}")
                given[t.key] = split.batch
            else:
                keys = list(getattr(split, "covariate_keys", None) or [])
                if getattr(split, "covariates", None) is None or t.key not in keys:
                    raise DataError(f"model=cvae needs covariate {t.key!r} per row: list it in data.covariate_keys")
                given[t.key] = split.covariates[:, keys.index(t.key)]
        return self.design(given, n).cpu()

    def inputs(self, split):
        """The rows the engine passes to this model: the split's data columns followed by its
        design (dense, sparse or read by index like ``split.x``: :class:`~pyro_vae.streaming.AppendedRows`).
        Rows that already carry it are returned as they are."""
        if split.x.shape[1] == self.data_dim + self.cond_dim and split.x.shape[1] != self.data_dim:
            return split.x
        c = self.split_design(split)
        if is_sparse(split.x):
            return append_columns(split.x, c)
        if isinstance(split.x, DiskRows):  # rows read by index (uint8 pixels, a .npy or AnnData on disk) stay so
            return AppendedRows(split.x, c)
        return torch.cat([split.x, c.to(split.x.dtype)], 1)

    def _inputs(self, x: torch.Tensor, covariates=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(data columns, design) of ``x``: conditioned rows, or data rows with ``covariates``."""
        if covariates is not None:
            if x.shape[-1] == self.data_dim + self.cond_dim and self.cond_dim:
                x = x[..., : self.data_dim]
            c = covariates if torch.is_tensor(covariates) else self.design(covariates, x.shape[0])
            return x, c.to(x.device, torch.float32)
        if x.shape[-1] != self.data_dim + self.cond_dim or not self.cond_dim:
            if not self.cond_dim:
                return x, x.new_zeros(x.shape[:-1] + (0,))
            raise DataError(
                f"model=cvae reads {self.data_dim} data columns with covariates={{{', '.join(self.covariate_names())}}}"
                f" (or rows with the {self.cond_dim} design columns appended); got {x.shape[-1]} columns"
            )
        return x[..., : self.data_dim], x[..., self.data_dim :].float()

    # ---- the Pyro program -------------------------------------------------
    def _plate(self, x):
        n = x.shape[0]
        return pyro.plate("data", self.num_data or n, subsample=torch.arange(n, device=x.device))

    @pyro_program
    def model(self, x: torch.Tensor, covariates=None):
        """p(x, z | c) = p(z) p(x | z, c), observed at the data columns of ``x``."""
        x, c = self._inputs(x, covariates)
        with self._plate(x):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self._decoder(z, c), x), obs=x)

    @pyro_program
    def guide(self, x: torch.Tensor, covariates=None):
        """q(z | x, c) = Normal(loc(x, c), scale(x, c))."""
        x, c = self._inputs(x, covariates)
        with self._plate(x):
            loc, scale = self.encoder(x, c)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _decoder(self, z, c):
        return self.decoder(torch.cat([z, c.to(z.dtype).expand(z.shape[:-1] + c.shape[-1:])], -1))

    def q_z(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,c); rows of data columns alone (a VampPrior's pseudo-inputs) at c = 0."""
        if x.shape[-1] == self.data_dim:
            return self.encoder(x, x.new_zeros(x.shape[:-1] + (self.cond_dim,)))
        return self.encoder(*self._inputs(x))

    # ---- the user API -----------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, covariates=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and scale of q(z|x,c) (``covariates``: {key: values}, or rows with the design appended)."""
        return self.encoder(*self._inputs(x, covariates))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, covariates=None) -> torch.Tensor:
        """E[x|z,c] (count likelihoods: at the training rows' median library size). ``covariates``:
        {key: value(s)} or a design tensor; keys left out are drawn (categorical) or at their mean."""
        c = covariates if torch.is_tensor(covariates) else self.design(covariates, z.shape[0], draw_missing=True)
        return self.likelihood.mean(self._decoder(z, c.to(z.device)))

    def replace(self, c: torch.Tensor, covariates: Dict[str, object]) -> torch.Tensor:
        """The design ``c`` with the columns of the keys in ``covariates`` set to those values."""
        c, start = c.clone(), 0
        given = {self._term(k).key: v for k, v in covariates.items()}
        for t in self.terms:
            if t.key in given:
                part = self.design({t.key: given[t.key]}, c.shape[0], draw_missing=True)
                c[:, start : start + t.size] = part[:, start : start + t.size].to(c.device)
            start += t.size
        return c

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, covariates=None, decode_as=None) -> torch.Tensor:
        """E[x|z,c] at the posterior mean of each row, at its own library size. ``decode_as``
        ({key: value}) replaces those covariates for decoding only: the row's code decoded under
        another batch (counterfactual decoding, scVI's ``transform_batch``)."""
        xd, c = self._inputs(x, covariates)
        z = self.encoder(xd, c)[0]
        if decode_as:
            c = self.replace(c, decode_as)
        return self.likelihood.mean(self._decoder(z, c), xd)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, covariates=None) -> torch.Tensor:
        """New data under c: z ~ p(z), then E[x|z,c] (``mean=True``) or x ~ p(x|z,c). ``covariates``
        ({key: value}) fixes c; keys left out are drawn (categorical) or at their training mean."""
        z = self.prior().sample((n,))
        c = self.design(covariates, n, draw_missing=True).to(z.device)
        out = self._decoder(z, c)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z | c) - log q(z | x, c) for one z ~ q per row: shape (batch, 1). Unscaled."""
        xd, c = self._inputs(x)
        loc, scale = self.encoder(xd, c)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample()
        w = self.likelihood(self._decoder(z, c), xd).log_prob(xd) + self.prior().log_prob(z) - q.log_prob(z)
        return w[:, None]

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
        """Per-row ELBO estimate (nats), shape (batch,); averaged over ``num_particles``."""
        return torch.stack([self.log_weights(x)[:, 0] for _ in range(num_particles)]).mean(0)
