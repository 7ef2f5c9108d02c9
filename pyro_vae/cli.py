"""Command line: ``pyro-vae train | tune | config | evaluate | sample | encode | classify | score | list``.

Every error the user can fix prints one line (``pyro-vae: error: ...``) and exits 2;
an interrupted training run saves a checkpoint, says how to resume, and exits 130 / 143.
Commands that do not train never import Lightning.
"""

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from .errors import Interrupted, PyroVAEError, SignalReceived
from .utils import PROFILE, signals_raise, take_pending_signal

EPILOG_TRAIN = """\
Overrides are dotted key=value pairs applied after the YAML file, e.g.
  pyro-vae train examples/configs/fashion_vae.yaml train.epochs=5 latent_dim=16
  pyro-vae train data=digits prior=mog prior.components=10 likelihood=bernoulli
  pyro-vae train model=ssvae data.labels=100 data.validation=300
  pyro-vae train encoder.hidden=[512,256] trainer.devices=2 trainer.strategy=ddp

`model=X`, `data=X`, `prior=X`, `likelihood=X` name a registry entry (`pyro-vae list`);
`pyro-vae config [CONFIG] [key=value ...]` prints every key with its default and what it does.
Continue a run after a crash or Ctrl-C:  pyro-vae train --resume RUN_DIR
"""


OUTPUT_ROWS = 1000  # encode / score: rows computed and written at a time


def _data_overrides(spec):
    """--data either names an array file or gives data.* overrides (name=... root=...)."""
    if not spec:
        return []
    if len(spec) == 1 and "=" not in spec[0]:
        anndata = spec[0].rstrip("/").endswith((".h5ad", ".zarr"))
        return [f"data.name={'anndata' if anndata else 'array'}", f"data.path={spec[0]}"]
    return [s if s.startswith("data.") else f"data.{s}" for s in spec]


def _is_file_spec(data_spec) -> bool:
    return bool(data_spec) and len(data_spec) == 1 and "=" not in data_spec[0]


def _load_run(args):
    """(model, config, data loader) of a run; ``--data`` overrides replace the run's data section."""
    from .config import load_config
    from .data import load_data
    from .rundir import load

    with PROFILE.phase("import torch + pyro, load the model"):
        model = load(args.run_dir, plugins=args.plugin, device=getattr(args, "device", "cpu"))
    cfg = model.config
    data_spec = getattr(args, "data", None)
    if data_spec and not _is_file_spec(data_spec):
        cfg = load_config(None, _data_overrides(data_spec), base=cfg, import_plugins=False)

    def get_data():
        with PROFILE.phase("data"):
            return load_data(cfg)

    return model, cfg, get_data


def _rows_of(model, cfg, get_data, args):
    """The rows a command works on: a --data file whole and in order (used as given, so scale
    it as the training data were), else one split of the run's data set. Checked once for
    every command: the model's number of columns, and what its likelihood accepts. ``split.x``
    is what the model reads (``model.inputs``: a conditional model's covariates appended)."""
    return _load_rows(model, cfg, get_data, args)[0]


def _load_rows(model, cfg, get_data, args, want_adata: bool = False):
    """(split, batch names, the AnnData file the rows come from or None) of :func:`_rows_of`."""
    from .config import load_config
    from .data import Split, load_array

    source = None
    if _is_file_spec(args.data) and args.data[0].rstrip("/").endswith((".h5ad", ".zarr")):  # whole, in order
        import torch

        from .data import anndata_rows

        keys = [f"data.{k}={cfg.data[k]}" for k in ("layer", "label_key", "batch_key", "storage") if cfg.data.get(k)]
        if cfg.data.get("covariate_keys"):
            keys.append(f"data.covariate_keys=[{','.join(cfg.data.covariate_keys)}]")
        file_cfg = load_config(None, ["data.name=anndata", f"data.path={args.data[0]}", *keys], import_plugins=False)
        x, y, _, batch, batch_names, covariates = anndata_rows(
            file_cfg.data, args.data[0], class_names=getattr(model, "data_info", None) and model.data_info.class_names
        )
        keys = list(file_cfg.data.covariate_keys) if covariates is not None else None
        split, where = Split(x, y, torch.arange(x.shape[0]), batch, covariates, keys), args.data[0]
        source = Path(args.data[0]).expanduser()
    elif _is_file_spec(args.data):
        file_cfg = load_config(None, ["data.name=array", f"data.path={args.data[0]}"], base=cfg, import_plugins=False)
        x, y, rows = load_array(file_cfg.data)
        split, where, batch_names = Split(x, y, rows), args.data[0], None
    else:
        data = get_data()
        split = getattr(data, args.split)
        if split is None:
            raise PyroVAEError(f"this data has no {args.split} split (set data.validation=N for a val split)")
        where, batch_names = f"the {args.split} split", data.extra.get("batch_names")
        if want_adata and cfg.data.name == "anndata" and cfg.data.get("path"):
            from .data import anndata_paths

            paths = anndata_paths(cfg.data.path)
            if len(paths) > 1:
                raise PyroVAEError("--out FILE.h5ad copies one AnnData file; this run read several: write .npy or .csv")
            source = paths[0]
    if split.x.shape[1] != model.data_dim:
        raise PyroVAEError(f"{where} has {split.x.shape[1]} columns but the model expects {model.data_dim}")
    from .training.base import check_likelihood

    check_likelihood(model.likelihood, split.x, where, split.rows)
    from .models.cvae import CVAE

    if isinstance(model, CVAE) and split.batch is not None and batch_names and cfg.data.get("batch_key"):
        if any(t.key == cfg.data.batch_key for t in model.terms):  # the file's batch names -> the model's codes
            split.batch = model.codes(cfg.data.batch_key, [batch_names[int(c)] for c in split.batch], len(split))
    split.x = model.inputs(split)
    return split, batch_names, source


def _blocks(fn, x, device):
    """(first row, ``fn`` of rows [first, first + OUTPUT_ROWS) of ``x`` on ``device``, on the CPU) in
    order: what encode and score write as it comes, so that memory holds one block of rows (rows on
    disk are read a block at a time)."""
    import torch

    from .sparse import take

    with torch.no_grad():
        for a in range(0, x.shape[0], OUTPUT_ROWS):
            out = fn(take(x, slice(a, a + OUTPUT_ROWS)).to(device))
            yield a, tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def cmd_train(args):
    with PROFILE.phase("import torch + pyro, config"):
        from .config import load_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.config, overrides = None, [args.config] + overrides
    if args.resume:
        if args.config:
            raise PyroVAEError("--resume continues a run with its own config; drop the config file")
        if args.overwrite or args.out:
            raise PyroVAEError("--resume continues in the run's own folder; drop --out / --overwrite")
        cfg = None
    else:
        with PROFILE.phase("import torch + pyro, config"):
            cfg = load_config(args.config, overrides)  # fails fast, before Lightning is imported
    with PROFILE.phase("import Lightning (the engine)"):
        from .train import fit

    result = fit(
        cfg, out=args.out, overrides=overrides if args.resume else (), resume=args.resume, overwrite=args.overwrite
    )
    if result is None:  # an extra process of a multi-process run: rank zero reports
        return 0
    m = result.metrics
    print(f"run directory: {result.run_dir}")
    print(json.dumps({k: m[k] for k in sorted(m) if not isinstance(m[k], (list, dict))}, indent=2))
    return 0


def cmd_tune(args):
    with PROFILE.phase("import torch + pyro, config"):
        from .config import load_config
        from .tune import parse_space

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.config, overrides = None, [args.config] + overrides
    if args.trials is not None and args.trials < 1:
        raise PyroVAEError(f"--trials must be at least 1 (got {args.trials})")
    if args.keep is not None and args.keep < 1:
        raise PyroVAEError(f"--keep must be at least 1 (got {args.keep})")
    if args.resume:
        if args.config or overrides or args.space or args.out or args.keep is not None:
            raise PyroVAEError("--resume continues a study with its own config and spaces; give only --trials")
        folder = Path(args.resume)
    else:
        if not args.out:
            raise PyroVAEError("give --out DIR for a new study (or --resume DIR to continue one)")
        if args.trials is None:
            raise PyroVAEError("give --trials N: how many trials the study runs")
        spaces = [parse_space(s) for s in args.space]
        cfg = load_config(args.config, overrides)
        folder = Path(args.out)
        from .tune import create

        create(folder, cfg, spaces, args.trials, args.keep)
    from .tune import run as run_study

    with signals_raise():
        best = run_study(folder, args.trials)
    if best:
        print(f"best trial {best['number']}: {best['value']:.6g} with {json.dumps(best['params'])}")
        print(f"train it: pyro-vae train {folder / 'best.yaml'}")
    return 0


def cmd_config(args):
    from .config import commented_yaml, load_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.config, overrides = None, [args.config] + overrides
    print(commented_yaml(load_config(args.config, overrides)), end="")
    return 0


def cmd_evaluate(args):
    from .evaluate import test_metrics
    from .training import plan_for

    if args.iwae_samples is not None and args.iwae_samples < 0:
        raise PyroVAEError("--iwae-samples must be 0 (off) or a positive number of samples")
    model, cfg, get_data = _load_run(args)
    split = _rows_of(model, cfg, get_data, args)
    with PROFILE.phase("test metrics"):
        metrics = test_metrics(plan_for(model, cfg), split, cfg, iwae_samples=args.iwae_samples, seed=args.seed)
    metrics["num_examples"] = len(split)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_sample(args):
    import numpy as np
    import torch

    from .rundir import load
    from .utils import atomic_path

    model = load(args.run_dir, plugins=args.plugin, device=args.device)
    if args.n < 1:
        raise PyroVAEError("-n must be at least 1")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.interpolate or args.traverse:
        return _sample_paths(model, args, out)
    if args.condition:
        from .models.cvae import CVAE

        if not isinstance(model, CVAE):
            raise PyroVAEError(
                f"--condition needs a conditional model (model=cvae); {args.run_dir} holds model={model.config.model.name}"
            )
        x = model.sample(args.n, mean=not args.draw, covariates=_conditions(args.condition)).cpu()
    else:
        x = model.sample(args.n, mean=not args.draw).cpu()
    if out.suffix == ".npy":
        with atomic_path(out) as tmp:
            np.save(tmp, x.numpy())
    elif out.suffix == ".png":
        if model.image_shape is None:
            raise PyroVAEError("this model's data are not images; write samples to a .npy file")
        from .plots import image_grid

        image_grid(x, model.image_shape, out, ncol=min(args.n, 8), title=f"{args.n} samples")
    else:
        raise PyroVAEError(f"--out must end in .png or .npy (got {out.name})")
    print(f"wrote {out}")
    return 0


def _conditions(items) -> dict:
    """``KEY=VALUE`` strings as {key: value}; one-line error for anything else."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PyroVAEError(f"--condition takes KEY=VALUE, e.g. --condition batch=b2 (got {item!r})")
        out[key] = value
    return out


def _sample_paths(model, args, out):
    """--interpolate I J / --traverse [I]: latent paths decoded to a PNG grid (or .npy)."""
    import numpy as np
    import torch

    from .data import load_data
    from .models import LatentPaths
    from .utils import atomic_path

    if not isinstance(model, LatentPaths):
        # an ssvae decodes (z, y): a path through z alone would draw a random label per image
        raise PyroVAEError(
            f"latent paths need a model with a continuous code alone (model=vae); {args.run_dir} "
            f"holds model={model.config.model.name}"
        )
    if args.steps < 2:
        raise PyroVAEError("--steps must be at least 2")
    from .sparse import take

    test = load_data(model.config).test
    model = model.cpu()
    idx = list(args.interpolate or []) + (
        [args.traverse_from] if args.traverse and args.traverse_from is not None else []
    )
    for i in idx:
        if not 0 <= i < len(test):
            raise PyroVAEError(f"test index {i} is out of range 0..{len(test) - 1}")
    if out.suffix not in (".npy", ".png") or (out.suffix == ".png" and model.image_shape is None):
        raise PyroVAEError("--out must be .png (image data) or .npy")
    from .plots import interpolation_grid, traversal_grid

    png = out.suffix == ".png"
    if args.interpolate:
        i, j = args.interpolate
        if png:  # the two test images frame the decoded path
            x = interpolation_grid(
                model,
                take(test.x, i),
                take(test.x, j),
                out,
                args.steps,
                title=f"test image {i}, interpolation, test image {j}",
            )
        else:
            x = model.interpolate(take(test.x, i), take(test.x, j), args.steps)
    else:
        x0 = take(test.x, args.traverse_from) if args.traverse_from is not None else None
        # the most active dimensions first: largest variance of E_q[z_d|x] over the test images
        activity = model.encode(take(test.x, slice(0, 2000)))[0].var(0)
        dims = activity.argsort(descending=True)[: max(1, args.max_dims)].tolist()
        values = torch.linspace(-args.range, args.range, args.steps)
        x = traversal_grid(model, out, x0, dims, values) if png else model.traverse(x0, dims, values)
    if not png:
        with atomic_path(out) as tmp:
            np.save(tmp, x.numpy())
    print(f"wrote {out}")
    return 0


def cmd_score(args):
    """Anomaly scores per row (higher = more anomalous), AUROC / AUPRC, a ROC curve and histograms."""
    import numpy as np
    import torch

    from . import scores as S
    from .config import load_config
    from .utils import atomic_path

    out = Path(args.out)
    if out.suffix != ".csv":
        raise PyroVAEError(f"--out must end in .csv (got {out.name})")
    model, cfg, get_data = _load_run(args)
    if args.score:  # NAME [key=value ...]: checked like any config section
        cfg = load_config(
            None, [f"score={args.score[0]}"] + [f"score.{kv}" for kv in args.score[1:]], base=cfg, import_plugins=False
        )
    split = _rows_of(model, cfg, get_data, args)
    classes = args.anomaly_class if args.anomaly_class is not None else list(cfg.data.get("exclude_classes", []))
    positive = None
    if classes and split.y is not None:  # checked before anything is computed or written
        positive = torch.isin(split.y, torch.tensor(classes))
        if positive.all() or not positive.any():
            raise PyroVAEError(f"AUROC needs rows both in and outside classes {classes}")
    torch.manual_seed(args.seed)
    score = S.build(_plain(cfg.score))
    if score.needs_fit:  # statistics of the training data, kept in RUN/scores/
        run_dir = Path(args.run_dir) if Path(args.run_dir).is_dir() else Path(args.run_dir).parent
        score = S.prepare(score, model, train_x=model.inputs(get_data().train), run_dir=run_dir, seed=args.seed)
    name = score.registry_name
    header, fmt = ["row", name] + (["label"] if split.y is not None else []), ["%d", "%.6g", "%d"]
    model.eval()
    values = []
    with atomic_path(out) as tmp, open(tmp, "w") as f:  # a block of rows scored, then written
        f.write(",".join(header) + "\n")
        for a, v in _blocks(lambda xb: score.score(model, xb).float(), split.x, model.device):
            values.append(v)
            cols = [np.arange(a, a + len(v))[:, None], v.numpy()[:, None]]
            if split.y is not None:
                cols.append(split.y[a : a + len(v)].numpy()[:, None])
            np.savetxt(f, np.concatenate(cols, 1), delimiter=",", fmt=fmt[: len(cols)])
    values = torch.cat(values) if values else torch.zeros(0)
    print(f"wrote {out} ({len(split)} rows; higher {name} = more anomalous)")
    if positive is not None:
        class_names = getattr(get_data(), "class_names", None) if not _is_file_spec(args.data) else None
        result = S.score_report({name: values}, positive, split.y, out.parent, class_names, prefix=f"{out.stem}.")
        print(json.dumps({"anomaly_classes": classes, "score": name, **result[name]}))
        print(f"wrote {out.parent / (out.stem + '.roc.png')} and {out.stem}.score_histograms.png")
    return 0


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def cmd_encode(args):
    import itertools

    import numpy as np

    from .utils import NpyWriter, atomic_path

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv", ".h5ad"):
        raise PyroVAEError(f"--out must end in .npy, .csv or .h5ad (got {out.name})")
    if out.suffix == ".h5ad" and out.exists() and not args.overwrite:  # it may be the user's own AnnData
        raise PyroVAEError(f"{out} exists; choose another --out or pass --overwrite")
    model, cfg, get_data = _load_run(args)
    if args.decode_as and out.suffix == ".h5ad":
        raise PyroVAEError("--decode-as writes decoded rows to .npy or .csv")
    split, batch_names, source = _load_rows(model, cfg, get_data, args, want_adata=out.suffix == ".h5ad")
    if out.suffix == ".h5ad" and source is None:
        raise PyroVAEError("--out FILE.h5ad needs AnnData input (--data FILE.h5ad, or a run on data.name=anndata)")
    model.eval()
    if args.decode_as:
        from .models.cvae import CVAE

        if not isinstance(model, CVAE):
            raise PyroVAEError(
                f"--decode-as needs a conditional model (model=cvae); this run is model={cfg.model.name}"
            )
        to = _conditions(args.decode_as)
        width = model.data_dim
        names = [f"x{i}" for i in range(width)]
        blocks = (
            (a, xr.numpy(), None)
            for a, xr in _blocks(lambda xb: model.reconstruct(xb, decode_as=to), split.x, model.device)
        )
    else:
        d = int(model.latent_dim)
        width = d * (2 if args.with_scale else 1)
        names = [f"z{i}" for i in range(d)] + ([f"scale{i}" for i in range(d)] if args.with_scale else [])
        blocks = (
            (a, np.concatenate([loc.numpy(), scale.numpy()], 1) if args.with_scale else loc.numpy(), (loc, scale))
            for a, (loc, scale) in _blocks(model.encode, split.x, model.device)
        )
    first = next(blocks, None)  # the width of what is written: that of the first block
    if first is not None:
        width, blocks = first[1].shape[1], itertools.chain([first], blocks)
        if not args.decode_as:
            d = first[2][0].shape[1]
            names = [f"z{i}" for i in range(d)] + ([f"scale{i}" for i in range(d)] if args.with_scale else [])
    n = len(split)
    with atomic_path(out) as tmp:
        if out.suffix == ".npy":
            w = NpyWriter(tmp, n, width)
            for _, arr, _ in blocks:
                w.write(arr)
            w.close()
        elif out.suffix == ".csv":
            with open(tmp, "w", newline="") as f:
                _write_codes_csv(f, blocks, names, split, cfg, batch_names)
        else:
            _write_codes_h5ad(tmp, source, blocks, split, cfg, args.with_scale)
    print(f"wrote {out} ({n} rows x {width} columns)")
    return 0


def _write_codes_h5ad(tmp, source: Path, blocks, split, cfg, with_scale: bool) -> None:
    """A copy of the AnnData ``source`` (the split's rows) with the codes in ``.obsm['X_pyro_vae']`` (and
    the scales in ``X_pyro_vae_scale``). An .h5ad whose rows are all there, in order, is copied as a file
    and the codes written into the copy a block at a time (its matrix never read); otherwise (a split,
    a .zarr store) the split's rows are read into memory and written with the codes."""
    import numpy as np

    from .backed import AnnDataMatrix, ObsmWriter

    rows = split.rows.numpy()
    if source.suffix == ".h5ad" and len(rows) == AnnDataMatrix(source, cfg.data.get("layer")).rows:
        if np.array_equal(rows, np.arange(len(rows))):
            w = ObsmWriter(source, tmp, len(rows))
            try:
                for a, _, (loc, scale) in blocks:
                    w.write("X_pyro_vae", a, loc.numpy())
                    if with_scale:
                        w.write("X_pyro_vae_scale", a, scale.numpy())
            finally:
                w.close()
            return
    import anndata

    from .data import read_h5ad

    parts = [(loc.numpy(), scale.numpy()) for _, _, (loc, scale) in blocks]
    if source.suffix == ".h5ad":  # only the split's rows read: file order, then the split's
        order = np.argsort(rows, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        copy = anndata.read_h5ad(source, backed="r")[rows[order]].to_memory()[back]
    else:
        copy = read_h5ad(source)[rows]
    copy = copy.copy()
    copy.obsm["X_pyro_vae"] = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 0), np.float32)
    if with_scale:
        copy.obsm["X_pyro_vae_scale"] = np.concatenate([p[1] for p in parts])
    copy.write_h5ad(tmp)


def _write_codes_csv(f, blocks, names, split, cfg, batch_names) -> None:
    """``row`` (each row's index in the user's data), the codes, then what joins them back to the
    user's table: the label, the batch (a column named after data.batch_key) and each covariate;
    written to the open file ``f`` a block of (first row, codes) at a time."""
    import csv

    header, extra = ["row"] + names, []
    if split.y is not None:
        header.append("label")
        extra.append(lambda i: int(split.y[i]))
    if split.batch is not None and cfg.data.get("batch_key"):
        header.append(str(cfg.data.batch_key))
        extra.append(lambda i: batch_names[int(split.batch[i])] if batch_names else int(split.batch[i]))
    for j, key in enumerate(split.covariate_keys or []):
        header.append(str(key))
        extra.append(lambda i, j=j: f"{float(split.covariates[i, j]):.6g}")
    rows = split.rows.tolist() if split.rows is not None else None
    w = csv.writer(f)
    w.writerow(header)
    for a, arr, _ in blocks:
        for i in range(a, a + len(arr)):
            w.writerow(
                [int(rows[i]) if rows is not None else i] + [f"{v:.6g}" for v in arr[i - a]] + [c(i) for c in extra]
            )


def cmd_classify(args):
    import csv

    from .utils import atomic_path

    from .models import Classifier

    out = Path(args.out)
    if out.suffix != ".csv":
        raise PyroVAEError(f"--out must end in .csv (got {out.name})")
    model, cfg, get_data = _load_run(args)
    if not isinstance(model, Classifier):
        raise PyroVAEError(
            f"{args.run_dir} holds a model={cfg.model.name} run, which does not classify; "
            "classify needs a classifier such as model=ssvae"
        )
    split = _rows_of(model, cfg, get_data, args)
    from .sparse import batched

    proba = batched(model.predict_proba, split.x, 1000, model.device).numpy()
    pred = proba.argmax(1)
    names = getattr(model, "data_info", None) and model.data_info.class_names
    header = ["row", "predicted"] + ([f"p_{n}" for n in names] if names else [f"p{k}" for k in range(proba.shape[1])])
    if names:  # the data named its classes: the predicted name is a column too
        header.insert(2, "predicted_name")
    if split.y is not None:
        header.append("label")
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, k in enumerate(pred):
                row = [i, int(k)] + ([names[k] if k < len(names) else str(k)] if names else [])
                row += [f"{p:.6f}" for p in proba[i]]
                if split.y is not None:
                    row.append(int(split.y[i]))
                w.writerow(row)
    msg = f"wrote {out} ({len(pred)} rows)"
    if split.y is not None and bool((split.y >= 0).any()):
        known = split.y.numpy() >= 0
        msg += f"; accuracy on the {int(known.sum())} labelled rows: {float((pred[known] == split.y.numpy()[known]).mean()):.4f}"
    print(msg)
    return 0


def render_listing() -> str:
    """Every registry, one entry a line: what ``pyro-vae list`` prints (imports torch and Pyro)."""
    from .config import registries
    from .networks import ACTIVATIONS, NETWORKS
    from .training import LOSS_TERMS, OBJECTIVES

    groups = dict(registries())
    order = [
        ("model kinds", groups["model"]),
        ("data sets", groups["data"]),
        ("priors", groups["prior"]),
        ("likelihoods", groups["likelihood"]),
        ("network types", NETWORKS),
        ("activations", ACTIVATIONS),
        ("anomaly scores", groups["score"]),
        ("semi-supervised loss terms", LOSS_TERMS),
        ("training objectives (train.elbo)", OBJECTIVES),
    ]
    lines = []
    for title, reg in order:
        lines.append(f"{title}:")
        lines += ["  " + line for line in reg.describe()]
    return "\n".join(lines) + "\n"


def write_listing(path=None) -> Path:
    """Render the built-in registries into ``pyro_vae/_listing.py`` (``make listing``)."""
    path = Path(path or Path(__file__).with_name("_listing.py"))
    body = "".join(f"    {line!r},\n" for line in render_listing().splitlines())
    path.write_text(
        '"""The built-in registries as ``pyro-vae list`` prints them, rendered ahead so that `list` '
        "answers\nwithout importing torch. Generated by `make listing`; tests/test_architecture.py checks it is "
        'current."""\nLINES = [\n' + body + ']\nTEXT = "\\n".join(LINES) + "\\n"\n'
    )
    return path


def cmd_list(args):
    if args.plugin:  # plugins add entries: render the live registries
        print(f"(with plugins: {', '.join(args.plugin)})")
        print(render_listing(), end="")
    else:
        from ._listing import TEXT

        print(TEXT, end="")
    return 0


def _profile_arg(p):
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where the wall time went, phase by phase (imports, data, training, evaluation, plots)",
    )


def _run_args(p, data=True, device=True):
    p.add_argument("run_dir", help="a run directory written by `pyro-vae train` (or its model.pt)")
    _profile_arg(p)
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="import this plugin file/module first (a run never imports its plugins by itself)",
    )
    if device:
        p.add_argument("--device", default="cpu", help="where to compute: cpu (default), cuda, cuda:1, mps")
    if data:
        p.add_argument(
            "--data",
            nargs="+",
            help=(
                "data to use instead of the run's test split: an array file "
                "(.npy/.npz/.csv, every row in order) or data.* overrides such "
                "as name=fashion-mnist root=/path"
            ),
        )
        p.add_argument("--split", default="test", choices=["train", "val", "test"])


def build_parser():
    p = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Train and use variational autoencoders written as Pyro programs.",
        epilog="Run `pyro-vae COMMAND --help` for each command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model from a YAML config and key=value overrides",
        description="Train a model; writes a run directory (config, metrics, checkpoints, model, plots).",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", nargs="?", help="YAML config file (optional: defaults + overrides are a complete run)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.add_argument("--out", help="run directory to write, new or empty (default runs/<name>-<time>)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its checkpoints/last.ckpt")
    _profile_arg(t)
    t.set_defaults(func=cmd_train)

    tu = sub.add_parser(
        "tune",
        help="search settings with Optuna: trials trained on the validation split, a resumable study",
        description=(
            "Search key values with Optuna (TPE sampler, median pruning at epoch ends). Each trial trains the "
            "config with its values in DIR/trials/NNNN and is scored by its model kind's selection metric on the "
            "validation split (a tenth of the training data when the config has none; the test split is never "
            "used to select). DIR keeps the study (study.db), best.yaml (pyro-vae train DIR/best.yaml runs the "
            "best trial), trials.csv and pictures. Several processes can run --resume DIR at once."
        ),
        epilog=(
            "SPEC: log:LOW:HIGH | float:LOW:HIGH | int:LOW:HIGH | choice:A,B,C, e.g.\n"
            "  pyro-vae tune data=digits train.epochs=10 --space train.lr=log:1e-4:1e-2 "
            "--space latent_dim=choice:4,8,16 --trials 20 --out tune-digits\n"
            "  pyro-vae tune --resume tune-digits --trials 30"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tu.add_argument("config", nargs="?", help="YAML config file (optional)")
    tu.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    tu.add_argument("--space", action="append", default=[], metavar="KEY=SPEC", help="a key to search (repeat)")
    tu.add_argument("--trials", type=int, help="finished trials the study should hold (new study: required)")
    tu.add_argument("--out", help="the tune folder, new or empty")
    tu.add_argument("--resume", metavar="DIR", help="continue the study in DIR (its config and spaces)")
    tu.add_argument("--keep", type=int, help="keep only the best K trials' run folders (default: all)")
    tu.set_defaults(func=cmd_tune)

    cf = sub.add_parser(
        "config",
        help="print the full resolved config, one comment per key",
        description="Print the config a `pyro-vae train` with the same arguments would run.",
    )
    cf.add_argument("config", nargs="?", help="YAML config file (optional)")
    cf.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    cf.set_defaults(func=cmd_config)

    e = sub.add_parser("evaluate", help="print test metrics of a run as JSON (seeded: repeatable)")
    _run_args(e)
    e.add_argument(
        "--iwae-samples", type=int, default=None, help="importance samples for test_log_likelihood (e.g. 1000)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo estimates (default 0, as training)")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="generate new data from the prior")
    _run_args(s, data=False)
    s.add_argument("-n", type=int, default=64, help="how many samples (default 64)")
    s.add_argument("--out", required=True, help="FILE.png (image grid) or FILE.npy (array)")
    s.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    s.add_argument(
        "--condition",
        nargs="+",
        metavar="KEY=VALUE",
        help="model=cvae: generate under these covariates (e.g. label=3 batch=b2); others are drawn or at their mean",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--interpolate",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        help="decode the line between the codes of test images I and J",
    )
    s.add_argument("--traverse", action="store_true", help="vary each latent dimension in turn")
    s.add_argument(
        "--traverse-from",
        type=int,
        default=None,
        metavar="I",
        help="traverse around the code of test image I (default: z = 0)",
    )
    s.add_argument("--steps", type=int, default=10, help="images per path (default 10)")
    s.add_argument("--range", type=float, default=3.0, help="traversal from -R to R (default 3)")
    s.add_argument(
        "--max-dims", type=int, default=10, help="traverse this many dimensions, the most active first (default 10)"
    )
    s.set_defaults(func=cmd_sample)

    sc = sub.add_parser(
        "score",
        help="anomaly scores per example; AUROC, AUPRC, ROC curve and histograms",
        description="Anomaly scores (higher = more anomalous). With held-out classes (the run's "
        "data.exclude_classes or --anomaly-class) also AUROC/AUPRC, OUT.roc.png and "
        "OUT.score_histograms.png.",
    )
    _run_args(sc)
    sc.add_argument("--out", required=True, help="scores.csv: row, score[, label]")
    sc.add_argument(
        "--score",
        nargs="+",
        metavar="NAME [KEY=VALUE]",
        help="which score (`pyro-vae list`; default: the run's score.name) and its parameters, "
        "e.g. --score neg_log_likelihood num_samples=1000",
    )
    sc.add_argument(
        "--anomaly-class",
        type=int,
        nargs="+",
        default=None,
        help="print the AUROC of these classes vs the rest (default: the run's data.exclude_classes)",
    )
    sc.add_argument("--seed", type=int, default=0)
    sc.set_defaults(func=cmd_score)

    c = sub.add_parser("encode", help="write latent codes (posterior means): dimensionality reduction")
    _run_args(c)
    c.add_argument(
        "--out",
        required=True,
        help="FILE.npy (codes), FILE.csv (row index, codes, label, batch and covariate columns) or "
        "FILE.h5ad (AnnData input: a copy with the codes in .obsm['X_pyro_vae'])",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE.h5ad")
    c.add_argument("--with-scale", action="store_true", help="also write the posterior scales")
    c.add_argument(
        "--decode-as",
        nargs="+",
        metavar="KEY=VALUE",
        help="model=cvae: write each row decoded from its code under these covariates instead of the codes "
        "(counterfactual, e.g. --decode-as batch=b1)",
    )
    c.set_defaults(func=cmd_encode)

    k = sub.add_parser("classify", help="predict labels with a classifier run (model=ssvae or m1m2)")
    _run_args(k)
    k.add_argument("--out", required=True, help="predictions.csv: row, predicted label, class probabilities[, label]")
    k.set_defaults(func=cmd_classify)

    ls = sub.add_parser("list", help="show every registry: model kinds, data sets, priors, likelihoods, scores, ...")
    ls.add_argument("--plugin", action="append", default=[], metavar="FILE", help="import this plugin first")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options: `train cfg.yaml --out d a.b=1`
        if getattr(args, "command", None) in ("train", "config", "tune") and all(
            "=" in e and not e.startswith("-") for e in extra
        ):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    saved_show = warnings.showwarning  # warnings as one line each, without the source line
    warnings.showwarning = lambda msg, *a, **k: print(f"pyro-vae: warning: {msg}", file=sys.stderr)
    logger = logging.getLogger("pyro_vae")
    saved_level = logger.level
    lines = logging.StreamHandler(sys.stderr)  # the library's info lines (e.g. the image cache), one each
    lines.setFormatter(logging.Formatter("pyro-vae: %(message)s"))
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        if getattr(args, "plugin", None):
            from .config import load_plugins

            load_plugins(args.plugin)
        if args.func is cmd_train:  # a signal while importing or loading is one line too
            with signals_raise():
                return args.func(args)
        return args.func(args)
    except SignalReceived as e:  # before the engine started: nothing was written
        import signal

        take_pending_signal()

        print(
            f"pyro-vae: interrupted by {signal.Signals(e.signum).name} while starting; nothing was saved; "
            "run the same command again",
            file=sys.stderr,
        )
        return 128 + e.signum
    except Interrupted as e:
        print(f"pyro-vae: {e}", file=sys.stderr)
        return e.exit_code
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`pyro-vae list | head`): nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a path the user gave: unreadable, read-only, a folder where a file goes
        where = f" {e.filename}" if e.filename else ""
        print(f"pyro-vae: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = saved_show
        logger.removeHandler(lines)
        logger.setLevel(saved_level)
        if getattr(args, "profile", False):
            print("where the time went (wall seconds):\n" + PROFILE.table(), file=sys.stderr)


def run() -> None:
    """The ``pyro-vae`` program: :func:`main`, then a quick exit. Once the command is done and
    its files are closed, the exit handlers run (logging, multiprocessing, finalizers) and the
    process ends without the interpreter's module-by-module teardown, which costs torch and
    Lightning seconds at every exit. ``main`` itself returns normally (for use from Python)."""
    import atexit
    import os

    try:
        code = main()
    except SystemExit as e:  # argparse's --help and usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`pyro-vae list | head`) or stream
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
