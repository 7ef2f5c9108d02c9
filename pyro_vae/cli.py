"""Command line: ``pyro-vae train | evaluate | sample | encode | classify | score | list``.

Every error the user can fix prints one line (``pyro-vae: error: ...``) and exits 2.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import PyroVAEError

EPILOG_TRAIN = """\
Overrides are dotted key=value pairs applied after the YAML file, e.g.
  pyro-vae train examples/configs/fashion_vae.yaml train.epochs=5 latent_dim=16
  pyro-vae train data.name=digits prior.name=normal likelihood.name=bernoulli
  pyro-vae train encoder.hidden=[512,256] trainer.precision=bf16-mixed

Top-level keys: name seed model latent_dim encoder decoder prior likelihood data
train trainer ssvae evaluate plugins (see README "Config reference").
`pyro-vae list` shows the registered priors and likelihoods with their parameters.
"""


def _data_overrides(spec):
    """--data either names an array file or gives data.* overrides (name=... root=...)."""
    if not spec:
        return []
    if len(spec) == 1 and "=" not in spec[0]:
        return ["data.name=array", f"data.path={spec[0]}"]
    return [s if s.startswith("data.") else f"data.{s}" for s in spec]


def _is_file_spec(data_spec) -> bool:
    return bool(data_spec) and len(data_spec) == 1 and "=" not in data_spec[0]


def _load_run(run_dir, data_spec=None):
    """(model, config, data loader) of a run; ``--data`` overrides replace the run's data section."""
    from .config import load_config
    from .data import load_data
    from .rundir import load

    model = load(run_dir)
    cfg = model.config
    if data_spec and not _is_file_spec(data_spec):
        cfg = load_config(None, _data_overrides(data_spec), base=cfg)
    return model, cfg, (lambda: load_data(cfg))


def _rows_of(cfg, get_data, split_name, data_spec):
    """The rows a command works on: a --data file whole and in order (used as given, so scale
    it as the training data were), else one split of the run's data set."""
    from .data import Split, load_array

    if _is_file_spec(data_spec):
        file_cfg = load_config_for_file(cfg, data_spec[0])
        x, y = load_array(file_cfg.data)
        return Split(x, y)
    split = getattr(get_data(), split_name)
    if split is None:
        raise PyroVAEError(f"this data has no {split_name} split (set data.validation=N for a val split)")
    return split


def load_config_for_file(cfg, path):
    from .config import load_config

    return load_config(None, ["data.name=array", f"data.path={path}"], base=cfg)


def cmd_train(args):
    from .config import load_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.config, overrides = None, [args.config] + overrides
    cfg = load_config(args.config, overrides)  # fails fast, before Lightning is imported
    from .train import fit

    result = fit(cfg, out=args.out)
    m = result.metrics
    print(f"run directory: {result.run_dir}")
    print(json.dumps({k: m[k] for k in sorted(m) if not isinstance(m[k], (list, dict))}, indent=2))
    return 0


def cmd_evaluate(args):
    from .evaluate import test_metrics

    model, cfg, get_data = _load_run(args.run_dir, args.data)
    split = _rows_of(cfg, get_data, args.split, args.data)
    if args.iwae_samples is not None:
        cfg.evaluate.iwae_samples = args.iwae_samples
    model.likelihood.check_data(split.x, where=f"the {args.split} split")
    metrics = test_metrics(model, split, cfg)
    metrics["num_examples"] = len(split)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_sample(args):
    import numpy as np
    import torch

    from .rundir import load
    from .utils import atomic_path

    model = load(args.run_dir)
    if args.n < 1:
        raise PyroVAEError("-n must be at least 1")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.interpolate or args.traverse:
        return _sample_paths(model, args, out)
    x = model.sample(args.n, mean=not args.draw)
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


def _sample_paths(model, args, out):
    """--interpolate I J / --traverse [I]: latent paths decoded to a PNG grid (or .npy)."""
    import numpy as np
    import torch

    from .data import load_data
    from .utils import atomic_path

    if hasattr(model, "num_classes") or not (hasattr(model, "interpolate") and hasattr(model, "traverse")):
        # an ssvae decodes (z, y): a path through z alone would draw a random label per image
        raise PyroVAEError(f"latent paths need model=vae; {args.run_dir} holds model={model.config.model} "
                           "(its run directory has conditional_generation.png and style_transfer.png)")
    if args.steps < 2:
        raise PyroVAEError("--steps must be at least 2")
    test = load_data(model.config).test
    idx = list(args.interpolate or []) + ([args.traverse_from] if args.traverse and args.traverse_from is not None else [])
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
            x = interpolation_grid(model, test.x[i], test.x[j], out, args.steps,
                                   title=f"test image {i}, interpolation, test image {j}")
        else:
            x = model.interpolate(test.x[i], test.x[j], args.steps)
    else:
        x0 = test.x[args.traverse_from] if args.traverse_from is not None else None
        # the most active dimensions first: largest variance of E_q[z_d|x] over the test images
        activity = model.encode(test.x[:2000])[0].var(0)
        dims = activity.argsort(descending=True)[:max(1, args.max_dims)].tolist()
        values = torch.linspace(-args.range, args.range, args.steps)
        x = traversal_grid(model, out, x0, dims, values) if png else model.traverse(x0, dims, values)
    if not png:
        with atomic_path(out) as tmp:
            np.save(tmp, x.numpy())
    print(f"wrote {out}")
    return 0


def cmd_score(args):
    """Anomaly scores: -ELBO (or -log p(x) with --iwae-samples) and reconstruction error per row."""
    import numpy as np
    import torch

    from .evaluate import anomaly_scores, auroc
    from .utils import atomic_path

    if args.iwae_samples is not None and args.iwae_samples < 0:
        raise PyroVAEError("--iwae-samples must be 0 (score -ELBO) or a positive number of samples")
    model, cfg, get_data = _load_run(args.run_dir, args.data)
    split = _rows_of(cfg, get_data, args.split, args.data)
    if split.x.shape[1] != model.data_dim:
        raise PyroVAEError(f"the data have {split.x.shape[1]} columns but the model expects {model.data_dim}")
    model.likelihood.check_data(split.x, where="the scored data")
    torch.manual_seed(0)
    scores = anomaly_scores(model, split.x, args.iwae_samples or 0)
    out = Path(args.out)
    if out.suffix != ".csv":
        raise PyroVAEError(f"--out must end in .csv (got {out.name})")
    name = "neg_log_likelihood" if args.iwae_samples else "neg_elbo"
    cols = [np.arange(len(split))[:, None], scores["score"].numpy()[:, None], scores["recon_error"].numpy()[:, None]]
    header = ["row", name, "recon_error"]
    if split.y is not None:
        cols.append(split.y.numpy()[:, None])
        header.append("label")
    with atomic_path(out) as tmp:
        np.savetxt(tmp, np.concatenate(cols, 1), delimiter=",", header=",".join(header), comments="",
                   fmt=["%d", "%.4f", "%.4f"] + (["%d"] if split.y is not None else []))
    print(f"wrote {out} ({len(split)} rows; higher {name} = more anomalous)")
    classes = args.anomaly_class if args.anomaly_class is not None else list(cfg.data.exclude_classes)
    if classes and split.y is not None:
        positive = torch.isin(split.y, torch.tensor(classes))
        if positive.all() or not positive.any():
            raise PyroVAEError(f"AUROC needs rows both in and outside classes {classes}")
        result = {"anomaly_classes": classes, "auroc_" + name: auroc(scores["score"], positive),
                  "auroc_recon_error": auroc(scores["recon_error"], positive)}
        print(json.dumps(result))
    return 0


def cmd_encode(args):
    import numpy as np

    from .utils import atomic_path

    model, cfg, get_data = _load_run(args.run_dir, args.data)
    split = _rows_of(cfg, get_data, args.split, args.data)
    loc, scale = model.encode(split.x)
    arr = loc.numpy() if not args.with_scale else np.concatenate([loc.numpy(), scale.numpy()], 1)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        if out.suffix == ".npy":
            np.save(tmp, arr)
        elif out.suffix == ".csv":
            d = loc.shape[1]
            header = [f"z{i}" for i in range(d)] + ([f"scale{i}" for i in range(d)] if args.with_scale else [])
            cols = arr
            if split.y is not None:
                header.append("label")
                cols = np.concatenate([arr, split.y.numpy()[:, None]], 1)
            np.savetxt(tmp, cols, delimiter=",", header=",".join(header), comments="", fmt="%.6g")
        else:
            raise PyroVAEError(f"--out must end in .npy or .csv (got {out.name})")
    print(f"wrote {out} ({arr.shape[0]} rows x {arr.shape[1]} columns)")
    return 0


def cmd_classify(args):
    import numpy as np

    from .utils import atomic_path

    model, cfg, get_data = _load_run(args.run_dir, args.data)
    if not hasattr(model, "predict_proba"):
        raise PyroVAEError(f"{args.run_dir} holds a model={cfg.model} run; classify needs model=ssvae")
    split = _rows_of(cfg, get_data, args.split, args.data)
    if split.x.shape[1] != model.data_dim:
        raise PyroVAEError(f"the data have {split.x.shape[1]} columns but the model expects {model.data_dim}")
    proba = model.predict_proba(split.x).numpy()
    pred = proba.argmax(1)
    out = Path(args.out)
    if out.suffix != ".csv":
        raise PyroVAEError(f"--out must end in .csv (got {out.name})")
    cols = [np.arange(len(pred))[:, None], pred[:, None], proba]
    header = ["row", "predicted"] + [f"p{k}" for k in range(proba.shape[1])]
    fmt = ["%d", "%d"] + ["%.6f"] * proba.shape[1]
    if split.y is not None:
        cols.append(split.y.numpy()[:, None])
        header.append("label")
        fmt.append("%d")
    with atomic_path(out) as tmp:
        np.savetxt(tmp, np.concatenate(cols, 1), delimiter=",", header=",".join(header), comments="", fmt=fmt)
    msg = f"wrote {out} ({len(pred)} rows)"
    if split.y is not None and bool((split.y >= 0).any()):
        known = split.y.numpy() >= 0
        msg += f"; accuracy on the {int(known.sum())} labelled rows: {float((pred[known] == split.y.numpy()[known]).mean()):.4f}"
    print(msg)
    return 0


def cmd_list(args):
    from . import likelihoods, priors

    print("priors:")
    for line in priors.PRIORS.describe():
        print("  " + line)
    print("likelihoods:")
    for line in likelihoods.LIKELIHOODS.describe():
        print("  " + line)
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Train and use variational autoencoders written as Pyro programs.",
        epilog="Run `pyro-vae COMMAND --help` for each command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a YAML config and key=value overrides",
                       description="Train a VAE; writes a run directory (config, metrics, checkpoint, plots).",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML config file (optional: defaults + overrides are a complete run)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.add_argument("--out", help="run directory to write (default runs/<name>-<time>)")
    t.set_defaults(func=cmd_train)

    data_help = ("data to use instead of the run's test split: an array file (.npy/.npz/.csv, every row "
                 "scored in order) or data.* overrides such as name=fashion-mnist root=/path")
    e = sub.add_parser("evaluate", help="print test metrics of a run as JSON")
    e.add_argument("run_dir")
    e.add_argument("--data", nargs="+", help=data_help)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--iwae-samples", type=int, default=None,
                   help="importance samples for test_log_likelihood (e.g. 1000)")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="generate new data from the prior")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64, help="how many samples (default 64)")
    s.add_argument("--out", required=True, help="FILE.png (image grid) or FILE.npy (array)")
    s.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--interpolate", nargs=2, type=int, metavar=("I", "J"),
                   help="decode the line between the codes of test images I and J")
    s.add_argument("--traverse", action="store_true", help="vary each latent dimension in turn")
    s.add_argument("--traverse-from", type=int, default=None, metavar="I",
                   help="traverse around the code of test image I (default: z = 0)")
    s.add_argument("--steps", type=int, default=10, help="images per path (default 10)")
    s.add_argument("--range", type=float, default=3.0, help="traversal from -R to R (default 3)")
    s.add_argument("--max-dims", type=int, default=10, help="traverse this many dimensions, the most active first (default 10)")
    s.set_defaults(func=cmd_sample)

    sc = sub.add_parser("score", help="anomaly scores per example (-ELBO or -log p(x)) and AUROC")
    sc.add_argument("run_dir")
    sc.add_argument("--out", required=True, help="scores.csv: row, score, recon_error[, label]")
    sc.add_argument("--data", nargs="+", help=data_help)
    sc.add_argument("--split", default="test", choices=["train", "val", "test"])
    sc.add_argument("--iwae-samples", type=int, default=None,
                    help="score with -log p(x) from K importance samples instead of -ELBO")
    sc.add_argument("--anomaly-class", type=int, nargs="+", default=None,
                    help="print the AUROC of these classes vs the rest (default: the run's data.exclude_classes)")
    sc.set_defaults(func=cmd_score)

    c = sub.add_parser("encode", help="write latent codes (posterior means): dimensionality reduction")
    c.add_argument("run_dir")
    c.add_argument("--out", required=True, help="FILE.npy or FILE.csv (csv adds a label column when known)")
    c.add_argument("--data", nargs="+", help=data_help)
    c.add_argument("--split", default="test", choices=["train", "val", "test"])
    c.add_argument("--with-scale", action="store_true", help="also write the posterior scales")
    c.set_defaults(func=cmd_encode)

    k = sub.add_parser("classify", help="predict labels with a semi-supervised (model=ssvae) run")
    k.add_argument("run_dir")
    k.add_argument("--out", required=True, help="predictions.csv: row, predicted label, class probabilities[, label]")
    k.add_argument("--data", nargs="+", help=data_help)
    k.add_argument("--split", default="test", choices=["train", "val", "test"])
    k.set_defaults(func=cmd_classify)

    ls = sub.add_parser("list", help="show registered priors and likelihoods with their parameters")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options: `train cfg.yaml --out d a.b=1`
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    saved_show = warnings.showwarning  # warnings as one line each, without the source line
    warnings.showwarning = lambda msg, *a, **k: print(f"pyro-vae: warning: {msg}", file=sys.stderr)
    try:
        return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = saved_show


if __name__ == "__main__":
    sys.exit(main())
