"""Render the benchmark JSON files as Markdown: benchmarks/RESULTS.md and the README tables.

    python benchmarks/report.py            # print RESULTS.md
    python benchmarks/report.py --write    # write benchmarks/RESULTS.md and the README tables
    python benchmarks/report.py --check    # exit 1 when RESULTS.md or a README table is stale

The words live in two templates beside this file: RESULTS.template.md (the whole of RESULTS.md:
what was tried, how long it took, on which machine, and each table's titles and row layout) and
README.template.md (a block per README table, rendered between the README's ``<!-- TABLE:name -->``
and ``<!-- /TABLE:name -->`` markers). The renderers here (the functions marked ``@part``, each
named as its placeholder) compute values and table rows from benchmarks/*.json; ``fill``
(markdown_template.py, which describes the templates' syntax) puts them into a template.
"""

import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from markdown_template import fill, names  # noqa: E402
from peers import harness as H  # noqa: E402

README = HERE.parent / "README.md"
RESULTS = HERE / "RESULTS.md"
TEMPLATE = HERE / "RESULTS.template.md"
README_TEMPLATE = HERE / "README.template.md"
README_TABLES = dict(re.findall(r"<!-- TABLE:(\w+) -->\n(.*?)<!-- /TABLE:\1 -->", README_TEMPLATE.read_text(), re.S))
PARTS = {}  # placeholder name -> renderer, filled by @part


def load(name):
    p = HERE / name
    return json.loads(p.read_text()) if p.exists() else None


def part(name=None, need=None):
    """Register the decorated renderer under its name; with ``name``, call it with that JSON file, and
    render "" when the file is missing or its key ``need`` is empty."""

    def wrap(fn):
        def render():
            d = load(name) if name else None
            return fn() if not name else fn(d) if d and (need is None or d.get(need)) else ""

        PARTS[fn.__name__] = render
        return render

    return wrap


def _n(k, word):
    return f"{k} {word}" + ("" if k == 1 else "s")


def _met(ok):
    return "met" if ok else "**not met**"


def _code(options, sep=" "):
    return sep.join(f"`{o}`" for o in options)


def _options(overrides):
    return dict(x.split("=", 1) for x in overrides)


def _runs(name, keep=lambda r: True):
    return [r for r in (load(name) or {}).get("runs", []) if keep(r)]


def _key(r):
    return r["data"], r["labels"], r["seed"]


def _against(runs, ref, key=_key):
    """Each run, ordered by ``key`` (data, labels, seed), with ``b``: the run of ``ref`` at its key, or {}."""
    ref = {key(r): r for r in ref}
    return [dict(r, b=ref.get(key(r), {})) for r in sorted(runs, key=key)]


def _ahead(rows, label):
    """Per ``label(row)``, how many of its rows' seeds were ahead (``gain`` > 0) and by how much on average."""
    by = {}
    for r in rows:
        by.setdefault(label(r), []).append(r["gain"])
    return "; ".join(
        f"{k} {sum(x > 0 for x in v)} of {len(v)} seeds ahead, {sum(v) / len(v):+.3f} on average" for k, v in by.items()
    )


# ---------------------------------------------------------------- default VAE setting

COLLAPSED = 26.5  # nats: a digits test loss above it is the plateau where every latent unit stays on the prior


def _short(overrides):
    """A grid setting as a short label: meanfield, lr 3e-3, batch 64, z 8, hidden [400], no warm-up."""
    o = _options(overrides)
    keys = ("train.elbo", "train.lr", "train.batch_size", "latent_dim", "encoder.hidden")
    elbo, lr, batch, z, hidden = (o.get(k, "?") for k in keys)
    w = o.get("train.kl_warmup_epochs", "0")
    return f"{elbo}, lr {lr}, batch {batch}, z {z}, hidden {hidden}, " + ("no warm-up" if w == "0" else f"warm-up {w}")


@part("defaults.json")
def defaults(d):
    """The candidates (the previous defaults first, the chosen one marked), the screen's best, and
    the chosen setting on the digits and (the whole setting) on Fashion-MNIST for the README."""
    summary, e = d.get("summary", []), d.get("fashion_epochs", 3)
    w = next((s for s in summary if s["overrides"] == d.get("winner")), None)
    for i, s in enumerate(summary):
        s["setting"] = (
            ("**chosen:** " if s is w else "") + ("previous defaults: " if i == 0 else "") + _short(s["overrides"])
        )
    screen = sorted((r for r in d["rows"] if r["stage"] == "screen"), key=lambda r: r["test_loss"])
    fashion = w and w.get("fashion_plain_test_loss") is not None
    seconds = fashion and (w.get("fashion_seconds_per_epoch_back_to_back") or w["fashion_plain_seconds_per_epoch"])
    return {
        "summary": summary,
        "fashion_epochs": e,
        "best": [dict(r, rank=i, setting=_short(r["overrides"])) for i, r in enumerate(screen[:16], 1)],
        "screened": len(screen),
        "collapsed": sum(r["test_loss"] > COLLAPSED for r in screen),
        "plateau": COLLAPSED,
        "chosen": [w] if w else [],
        "fashion": [dict(w, epochs=e, seconds=seconds)] if fashion else [],
    }


# ---------------------------------------------------------------- speed

# issue 18's `pyro-vae train` (10 epochs) before the whole-job work: the one phase it timed apart, s; the
# template holds its totals
BEFORE = {"training epochs (steps)": "60.0", H.STEPS: "60.0 (with the loop)"}
SPEED_LABELS = {
    "ours-fp32": "`pyro-vae train`, fp32",
    "ours-bf16": "`pyro-vae train`, bf16-mixed",
    "pyro-vae.py": "Pyro's `examples/vae/vae.py`",
    "pythae": "pythae's `VAE` + `TrainingPipeline`",
    "ours-pyro-setup": "`pyro-vae train`, Pyro's setup",
    "ours-defaults": "`pyro-vae train`, M2 defaults",
    "pyro-ss_vae_M2": "Pyro's `examples/vae/ss_vae_M2.py`",
}


def _peaks(gflops):
    return ", ".join(f"{'fp32' if k == 'float32' else 'bf16'} {v:.0f}" for k, v in gflops.items())


def _whole_jobs(d, ours):
    """A whole-job benchmark's epochs, machine line and rows: each command's label and (a peer's) how many
    times as long it took as the commands ``ours``."""
    m, up = d["machine"], d["speedup"]
    peaks = _peaks((d.get("matmul_peak") or {}).get("gflops") or {})
    peer = ", ".join(f"{k} {v}" for k, v in (m.get("peer_env") or {}).items() if v)
    machine = (
        f"{m['cpu']} ({', '.join(m.get('cpu_flags', [])) or 'flags unknown'}; oneDNN native bf16: "
        f"{'yes' if m.get('cpu_native_bf16') else 'no'}), {_n(d['threads'], 'thread')} for every command"
        + (f", matrix-product peak {peaks} GFLOP/s" if peaks else "")
        + f"; torch {m.get('torch')}, pyro-ppl {m.get('pyro')}"
        + (f"; peers: {peer}" if peer else "")
        + f". {_n(d['repeats'], 'round')} of the commands, interleaved; medians."
    )
    commands = []
    for n, s in d["summary"].items():
        ups = [f"{up[k]:.2f}x" for k in (f"{n} / {o}" for o in ours) if k in up]
        label = SPEED_LABELS.get(n, n) + (f" ({s['failed']} failed)" if s.get("failed") else "")
        commands.append(dict(s, command=label, up="-" if n.startswith("ours") else " / ".join(ups) or "-"))
    out = {"epochs": _n(d["epochs"], "epoch"), "cpu": m["cpu"], "threads": _n(d["threads"], "thread")}
    return dict(out, machine=machine, commands=commands)


@part("vae_speed.json", need="summary")
def vae_speed(d):
    """The reference VAE: per command the whole job, test loss, s/epoch and % of peak; where the wall
    time of `pyro-vae train` at its default precision goes; and its speed-ups (the README's line)."""
    # trainer.precision=auto: bf16-mixed where the CPU has native bf16 (or on a GPU), fp32 elsewhere
    bf16 = (d["machine"].get("cpu_native_bf16") or d.get("device") == "cuda") and "ours-bf16" in d["summary"]
    ours, up = "ours-bf16" if bf16 else "ours-fp32", d["speedup"]
    out = _whole_jobs(d, ("ours-fp32", "ours-bf16"))
    for c in out["commands"]:
        c["peak"] = "-" if c.get("percent_of_peak") is None else f"{c['percent_of_peak']:.0f}%"
    out.update(precision="bf16-mixed" if bf16 else "fp32", vs_pyro=up.get(f"pyro-vae.py / {ours}"))
    out["vs_pythae"] = up.get(f"pythae / {ours}")
    s = d["summary"].get(ours, {})
    prof, wall = s.get("profile_median") or {}, s.get("wall_seconds_median")
    if prof:

        def time(phase, v):
            return {"phase": phase, "before": BEFORE.get(phase, ""), "seconds": v, "share": 100 * v / wall}

        out["phases"] = [time(k, v) for k, v in prof.items() if k != "total"]
        out["outside"] = [time("", v) for v in [s.get("wall_minus_profile_total")] if v is not None]
        out.update(rest=time("", wall - prof.get(H.STEPS, prof.get("training epochs (steps)", 0.0))), wall=wall)
    b = (d.get("breakdown") or {}).get(ours)
    if b:
        out["breakdown"] = [
            {"part": k, "seconds": v, "share": b["share"][k], "per_step": "", "cpu": ""}
            for k, v in b["seconds"].items()
        ]
        for row in out["breakdown"]:
            if row["part"].startswith("training steps, the step alone"):
                row["per_step"] = f"{b['bare_step']['ms_per_step']:.2f}"
            elif row["part"].startswith("training steps, Lightning"):
                row["per_step"] = f"{b['ms_per_step_in_job'] - b['bare_step']['ms_per_step']:.2f}"
            elif row["part"].startswith("the loop around"):
                row["per_step"] = f"{b['loop_ms_per_step']:.2f}"
        out["breakdown_of"] = {
            "steps": b["steps"],
            "cpu": b.get("cpu_seconds"),
            "wall": b["wall_seconds"],
            "bare_cpu": b["bare_step"]["cpu_ms_per_step"],
        }
        # the job with nothing but its start-up and the bare steps: the most any cut around the steps can give
        floor = b["seconds"]["start-up (interpreter, imports, config)"] + b["seconds"]["training steps, the step alone"]
        peers = {n: d["summary"][n]["wall_seconds_median"] for n in ("pyro-vae.py", "pythae") if n in d["summary"]}
        out["floor"] = {
            "seconds": floor,
            "ratios": "; ".join(f"{SPEED_LABELS[n]} {w / floor:.2f}x" for n, w in peers.items() if w) or "no peer ran",
        }
    la = d.get("load_average")
    out["load"] = (
        f"{la['start']} at the start, {la['end']} at the end, on {la['cores']} cores" if la else "not recorded"
    )
    cpu = [
        f"{SPEED_LABELS.get(n, n)} {r[ours]:.2f}x"
        for n, r in ((n, s.get("cpu_speedup") or {}) for n, s in d["summary"].items())
        if ours in r
    ]
    out["cpu_speedups"] = "; ".join(cpu) if cpu else ""
    return out


@part("m2_speed.json", need="summary")
def m2_speed(d):
    """M2 in Pyro's setup: per command the whole job, test accuracy and s/epoch, and our settings."""
    out = _whole_jobs(d, ("ours-pyro-setup",))
    out.update(pyro_setup=_code(d["ours_pyro_setup"]), defaults=_code(d.get("ours_defaults_overrides") or []))
    cpu = (d.get("machine") or {}).get("cpu", "")
    return dict(out, vs_script=d["speedup"].get("pyro-ss_vae_M2 / ours-pyro-setup"), cpu=cpu)


@part("speed_floor.json")
def speed_floor(d):
    """The floors of a whole job on this machine (imports, eager steps, compile) and the bound they set."""
    label = {
        "pyro": "Pyro's `Trace_ELBO` on the VAE, eager (`train.compile=none`)",
        "pyro jit": "the same Pyro loss recorded once and replayed (`train.compile=jit`)",
        "torch": "the same estimator in plain torch (no Pyro)",
    }
    c, b, m2 = d["torch_compile"], d["bound"], d.get("m2_step_ms") or {}
    f32, p32 = d["steps"].get("torch float32"), d["steps"].get("pyro float32")
    f, h = m2.get("float32 convolutions"), m2.get("bf16 convolutions")
    if "error" not in c:
        c = dict(c, ten_epochs=2350 * c["ms_per_step"] / 1000, gflops=d["gflop_per_step"] / c["ms_per_step"] * 1000)
    return {
        **d,
        "native_bf16": "yes" if d["machine"].get("cpu_native_bf16") else "no",
        "threads": _n(d["threads"], "thread"),
        "peak": _peaks(d["matmul_peak"]["gflops"]),
        "imports": [
            {"what": "pass" if k == "python" else "import " + k.replace(" + ", ", "), "seconds": v}
            for k, v in d["imports_seconds"].items()
        ],
        "eager": [
            dict(
                s,
                what=label[k.rsplit(" ", 1)[0]],
                precision=k.rsplit(" ", 1)[1],
                ten_epochs=2350 * s["ms_per_step"] / 1000,
                vs_torch=s.get("vs_torch", float("nan")),
            )
            for k, s in d["steps"].items()
        ],
        "jit": "; ".join(
            f"in {k.rsplit(' ', 1)[1]} {s['vs_torch']:.2f}x the plain-torch step ({s['cpu_vs_torch']:.2f}x in CPU time; "
            f"{s['ms_per_step'] / d['steps']['pyro ' + k.rsplit(' ', 1)[1]]['ms_per_step']:.2f}x the eager Pyro step)"
            for k, s in d["steps"].items()
            if k.startswith("pyro jit") and "cpu_vs_torch" in s
        ),
        "compiled": [] if "error" in c else [c],
        "compile_failed": [c] if "error" in c else [],
        "dynamo_import": d["imports_seconds"]["torch + pyro + torch._dynamo"],
        "m2": m2 and {"float32": f, "bf16": h, "less": 100 * (1 - h / f)},
        "ours": "ours_wall_seconds" in b
        and "peer_wall_seconds" in b
        and {
            "ratio": b["peer_wall_seconds"] / b["ours_wall_seconds"],
            "above_floor": b["ours_wall_seconds"] - b["floor_seconds_with_pyro_loss"],
        },
        "float32": f32 and p32 and {"torch": f32["percent_of_peak"], "pyro": p32["percent_of_peak"]},
    }


@part("priors_likelihoods.json")
def priors_likelihoods(d):
    return {section: [r for r in d["rows"] if r["section"] == section] for section in ("priors", "likelihoods")}


# ---------------------------------------------------------------- M2

# the q(y|x) options of the M2 exploration (named as at the time, ssvae.*): when a row's value shows, and how
SETUP = (
    ("ssvae.classifier_activation", bool, " ({})"),
    ("ssvae.classifier_dropout", float, " + dropout {}"),
    ("ssvae.augment_shift", int, " + shift {} px"),
    ("ssvae.augment_flip", lambda v: v.lower() == "true", " + flips"),
    ("ssvae.consistency_weight", float, " + consistency {}"),
    ("ssvae.aux_loss_multiplier", lambda v: True, ", alpha {}"),
    ("train.lr_schedule", lambda v: v != "constant", ", {} lr"),
)


def _is_default(s, model=None, epochs=None):
    """A run (or summary row) of a model kind's defaults (and of ``model``, ``epochs``, when given)."""
    return s.get("config") == "defaults" and model in (None, s.get("model")) and epochs in (None, s.get("epochs"))


def _setup(overrides):
    """A row of the M2 exploration as its q(y|x) setting and precision."""
    o = _options(overrides)
    clf = "conv" if o.get("ssvae.classifier_type") == "conv" else "MLP 500"
    clf += "".join(text.format(o[k]) for k, shows, text in SETUP if k in o and shows(o[k]))
    # the rows with no overrides at all ran when the config's default was bf16-mixed;
    # every later row ran under the current default, 32-true, unless it says otherwise
    return f"{clf}, {o.get('trainer.precision', '32-true' if o else 'bf16-mixed')}"


def _defaults_rows(every=False):
    """The summary rows of a model kind's defaults (``every``: also those run with a default changed
    since, such as M2 without pseudo-labels, ``model.pseudo_label_weight=0``), with their labels."""
    order = {"digits": 0, "fashion-mnist": 1}
    rows = [
        s for s in (load("ssvae.json") or {}).get("summary", []) if _is_default(s) and (every or not s["overrides"])
    ]
    rows.sort(key=lambda s: (order.get(s["data"], 2), s["labels"], s["model"] != "m1m2", s["overrides"]))
    for s in rows:
        m1 = "m1_epochs" in s
        s["kind"] = ("M1+M2" if s["model"] == "m1m2" else "M2") + (
            " without pseudo-labels" if "model.pseudo_label_weight=0" in s["overrides"] else ""
        )
        s["stages"] = f"{s['m1_epochs']} + {s['epochs']}" if m1 else str(s["epochs"])
        s["speed"] = f"{s['m1_seconds_per_epoch']} / {s['m2_seconds_per_epoch']}" if m1 else s["seconds_per_epoch"]
        s["seeds_run"] = ", ".join(map(str, s.get("seed_list", []))) or s["seeds"]
        s["train"] = s.get("train_seconds", round(s["seconds_per_epoch"] * s["epochs"]))
    return rows


@part("ssvae.json", need="summary")
def ssvae(d):
    """Every row run with a model kind's defaults (``readme``: with no overrides but the data), and
    the exploration's rows."""
    explore = [dict(s, setup=_setup(s["overrides"])) for s in d["summary"] if not _is_default(s)]
    return {"defaults": _defaults_rows(every=True), "readme": _defaults_rows(), "explore": explore}


@part("ssvae_m1m2_explore.json", need="pseudo_labels_on_codes")
def m1m2_pseudo_labels(d):
    """M2's pseudo-label term moved onto M1+M2's codes (not kept): the accuracies per seed."""
    runs = {k: v for k, v in d["pseudo_labels_on_codes"].items() if isinstance(v, dict)}  # beside "setup", a note
    return {k: " / ".join(f"{a:.3f}" for a in v["test_accuracy"]) for k, v in runs.items()}


@part()
def ssvae_goals():
    """Issue 16's goals against the default rows (ssvae.json), M1+M2 against M2 on the digits' seeds,
    the side-by-side speed run (m2_speed.json) and M1+M2's cost per epoch (m1m2_cost.json)."""
    rows = {(s["data"], s["labels"], s["model"]): s for s in _defaults_rows()}
    f100, f3000 = rows.get(("fashion-mnist", 100, "ssvae")), rows.get(("fashion-mnist", 3000, "ssvae"))
    if not f100 or not f3000:
        return ""
    lead = f100["ssvae_mean"] - f100["supervised_mean"]
    out = {"f100": f100, "f3000": f3000, "lead": lead, "met_100": _met(f100["ssvae_mean"] >= 0.80 and lead >= 0.06)}
    out["met_3000"] = _met(f3000["ssvae_mean"] >= 0.89)
    # the digits, 50 labels: M1+M2 against M2 (``b``) and the classifier alone, on the seeds both ran
    digits = _runs("ssvae.json", lambda r: _is_default(r) and not r["overrides"] and r["data"] == "digits")
    m1m2, m2 = ([r for r in digits if r["labels"] == 50 and r["model"] == m] for m in ("m1m2", "ssvae"))
    pairs = [r for r in _against(m1m2, m2) if r["b"]]
    ahead = all(r["test_accuracy"] > max(r["b"]["test_accuracy"], r["supervised_only_accuracy"]) for r in pairs)
    out["digits"] = pairs and {
        "met": _met(ahead),
        "seeds": " / ".join(str(r["seed"]) for r in pairs),
        "m1m2": " / ".join(f"{r['test_accuracy']:.3f}" for r in pairs),
        "m2": " / ".join(f"{r['b']['test_accuracy']:.3f}" for r in pairs),
        "alone": " / ".join(f"{r['b']['supervised_only_accuracy']:.3f}" for r in pairs),
    }
    cost = load("m1m2_cost.json")
    if cost:
        k = {r["kind"]: r for r in cost["rows"]}
        met = _met(k["m1m2-m2"]["seconds_per_epoch"] < k["m2"]["seconds_per_epoch"])
        cost = dict(cost, m1=k["m1"], m2=k["m2"], stage=k["m1m2-m2"], met=met)
    return dict(out, speed=_goal_speed(), cost=cost)


def _goal_speed():
    """M2's defaults against Pyro's `ss_vae_M2.py`, seconds per epoch, with and without our validation pass."""
    d = load("m2_speed.json")
    if not d or "summary" not in d:
        return None
    ours, peer, same = d["summary"]["ours-defaults"], d["summary"]["pyro-ss_vae_M2"], d.get("ours_defaults_overrides")
    r = peer["seconds_per_epoch"] / ours["seconds_per_epoch"]
    with_val = [
        x["seconds_per_epoch_with_validation"]
        for x in d["runs"]
        if x["name"] == "ours-defaults" and x.get("seconds_per_epoch_with_validation")
    ]
    v = same and with_val and statistics.median(with_val)
    rv = v and peer["seconds_per_epoch"] / v
    return {
        "epochs": d["epochs"],
        "repeats": d["repeats"],
        "ours": ours,
        "peer": peer,
        "ratio": r,
        "epochs_n": _n(d["epochs"], "epoch"),
        "split": same and _code(same, ", "),
        # ahead or not on the training steps; where counting our validation pass flips it, even
        "verdict": _met(r >= 1) if not v else "even" if min(r, rv) < 1 <= max(r, rv) else _met(rv >= 1),
        "validation": v and {"seconds": v, "ratio": rv},
    }


@part()
def ssvae_pseudo_default():
    """M2's default runs (pseudo-labels) against the same runs without them, ``b`` (on the digits, the
    bf16-convolution runs: the same conv precision), per seed and per label count."""
    on = _runs("ssvae.json", lambda r: _is_default(r, "ssvae", 20) and not r["overrides"])
    off = _runs(
        "ssvae.json", lambda r: _is_default(r, "ssvae", 20) and r["overrides"] == ["model.pseudo_label_weight=0"]
    )
    off += _runs("ssvae_bf16_convs.json", lambda r: r["data"] == "digits")
    rows = [dict(r, gain=r["test_accuracy"] - r["b"]["test_accuracy"]) for r in _against(on, off) if r["b"]]
    return rows and {"rows": rows, "findings": _ahead(rows, lambda r: f"{r['data']} {r['labels']} labels")}


@part("ssvae_bf16_convs.json", need="runs")
def ssvae_bf16_convs(d):
    """M2's defaults with the convolutions in bf16 (native bf16 CPUs) beside the same rows run with
    them in float32, ``b`` (the default runs at batch 64 before convolutions followed autocast)."""

    def old(r):
        return _is_default(r, "ssvae", 20) and r.get("batch_size", 64) == 64 and r.get("convolutions") != "bf16"

    return _against(d["runs"], _runs("ssvae.json", old) + _runs("ssvae_batch.json", old))


@part("ssvae_batch.json", need="runs")
def ssvae_batch(d):
    """M2's defaults at batch 64 and 128 (``b``), the same data, labels and seeds side by side."""
    return _against([r for r in d["runs"] if r["batch_size"] == 64], [r for r in d["runs"] if r["batch_size"] == 128])


@part("ssvae_adgm.json", need="runs")
def ssvae_adgm(d):
    """M2 with Maaloe et al.'s auxiliary variable (ADGM) against M2's defaults, ``b``, the digits."""
    return _against(d["runs"], _runs("ssvae_bf16_convs.json"))


def _pl_setting(o):
    parts = [f"{o['model.labelled_batch']} labelled rows a step"] if "model.labelled_batch" in o else []
    if "train.lr_schedule" in o:
        parts.append(f"{o['train.lr_schedule']} learning rate")
    w = float(o.get("model.pseudo_label_weight", 1))
    parts.append("no pseudo-labels" if not w else "pseudo-labels" if w == 1 else f"pseudo-labels weighted {w:g}")
    if "model.pseudo_label_threshold" in o:
        parts[-1] += f" at confidence {o['model.pseudo_label_threshold']}"
    if "experiment.distribution_alignment" in o:  # an experiment whose code was not kept
        parts[-1] += f" with distribution alignment (running mean {o['experiment.distribution_alignment']})"
    return ", ".join(parts)


@part()
def ssvae_pseudo_label():
    """M2 variants (32 labelled rows a step, a cosine learning rate, ...), without and with
    pseudo-labels, against the run of the defaults with the same pseudo-label setting at the same
    data, labels and seed, ``b`` (ssvae.json); per variant and label count, the seeds ahead of it."""

    def key(r):
        return (*_key(r), not float(_options(r["overrides"]).get("model.pseudo_label_weight", 1)))

    rows = _against(_runs("ssvae_pseudo_label.json"), _runs("ssvae.json", lambda r: _is_default(r, "ssvae")), key)
    for r in rows:
        gain = r["test_accuracy"] - r["b"]["test_accuracy"] if r["b"] else None
        r.update(setting=_pl_setting(_options(r["overrides"])), gain=gain)
    rows.sort(key=lambda r: (r["setting"], *_key(r)))
    findings = _ahead([r for r in rows if r["b"]], lambda r: f"{r['setting']}, {r['data']} {r['labels']} labels:")
    return rows and {"rows": rows, "findings": findings}


# ---------------------------------------------------------------- uses


@part("dimred.json")
def dimred(d):
    return dict(d, k=d["results"][0]["k"])


@part("ddp.json")
def ddp(d):
    return [dict(r, threads=2 if r["processes"] == 1 else 1) for r in d["rows"]]


@part("sparse_memory.json")
def sparse_memory(d):
    for r in d["rows"]:
        r.update(mnz=r["nnz"] / 1e6, growth=r["peak_rss_mb"] - r["rss_after_imports_mb"])
        r["sparse"] = "yes" if r["train_is_sparse"] else "no"
    return d["rows"]


@part("memory.json")
def memory(d):
    """Peak anonymous memory of in-memory loading against the array's size, before and after."""
    rows = []
    for label in ("before", "after"):
        for r in (d.get(label) or {}).get("rows", []):
            rows.append(dict(r, measured=label, growth=r["peak_anon_mb"] - r["anon_after_imports_mb"]))
    after = [r for r in rows if r["measured"] == "after"]
    out = {"rows": rows, "largest_after": max(after, key=lambda r: r["array_mb"]) if after else {}}
    images = d.get("images") or {}
    out["images"] = dict(images, runs=[])
    for r in images.get("runs", []):
        growth = r["peak_anon_mb"] - r["anon_after_imports_mb"]
        out["images"]["runs"].append(dict(r, growth=growth, over_pixels=growth / images["pixels_mb"]))
    by = {r["storage"]: r for r in out["images"]["runs"]}
    if "memory (float32)" in by and "memory" in by:
        out["images"]["less"] = 1 - by["memory"]["growth"] / by["memory (float32)"]["growth"]
    return out


@part("bigdata.json")
def bigdata(d):
    """Streamed against in-memory speed, the chunk size's effect, and the large file's run."""
    out = {}
    if d.get("speed"):
        runs = d["speed"]["runs"]
        base = runs["memory"]["rows_per_second"]
        out["speed"] = dict(
            d["speed"],
            table=[
                dict(
                    v,
                    name=k,
                    ratio=base / v["rows_per_second"],
                    cpu_ratio=(
                        runs["memory"]["rows_per_cpu_second"] / v["rows_per_cpu_second"]
                        if "rows_per_cpu_second" in v
                        else None
                    ),
                )
                for k, v in runs.items()
            ],
        )
    if d.get("chunks"):
        table = []
        for file, runs in d["chunks"]["files"].items():
            exact = runs["exact"]["test_loss_mean"]
            for label, r in runs.items():
                table.append(
                    dict(
                        r,
                        file=file,
                        setting="exact shuffle" if label == "exact" else f"chunks of {label} rows",
                        losses=", ".join(f"{v:.2f}" for v in r["test_loss"]),
                        delta=r["test_loss_mean"] - exact,
                    )
                )
        out["chunks"] = dict(d["chunks"], table=table, seeds_n=len(d["chunks"]["seeds"]))
        notes = []
        for file, runs in d["chunks"]["files"].items():
            spread = max(runs["exact"]["test_loss"]) - min(runs["exact"]["test_loss"])
            gap = max(abs(r["test_loss_mean"] - runs["exact"]["test_loss_mean"]) for r in runs.values())
            notes.append(
                f"{file}: seed spread of the exact shuffle {spread:.2f}, largest gap of a chunk size {gap:.2f}"
            )
        out["chunks_note"] = "Test loss in nats per image; " + "; ".join(notes) + "."
    if d.get("backed"):
        b = d["backed"]
        table = []
        for name, key in (("sparse .h5ad on disk", "disk"), ("its first cells in memory", "memory_subset")):
            r = b[key]
            table.append(dict(r, name=name, growth=r["peak_anon_mb"] - r["anon_after_imports_mb"]))
        out["backed"] = dict(
            b,
            table=table,
            density_pct=f"{100 * b['density']:.1f}%",
            subset_rows=b["memory_subset"]["rows"],
            ratio=b["memory_subset"]["rows_per_second"] / b["disk"]["rows_per_second"],
            cpu_ratio=b["memory_subset"]["rows_per_cpu_second"] / b["disk"]["rows_per_cpu_second"],
        )
    out["machine_memory"] = f"{d['machine']['memory_gb']:.0f}"
    out["big"] = []
    for key in ("big", "huge"):
        if d.get(key):
            b = d[key]
            disk, mem = b["disk"], b["memory_subset"]
            out["big"].append(
                dict(
                    b,
                    share=b["file_gb"] * 1e9 / (d["machine"]["memory_gb"] * 2**30),
                    disk_growth=disk["peak_anon_mb"] - disk["anon_after_imports_mb"],
                    ratio=mem["rows_per_second"] / disk["rows_per_second"],
                    cpu_ratio=(
                        mem["rows_per_cpu_second"] / disk["rows_per_cpu_second"]
                        if "rows_per_cpu_second" in disk
                        else None
                    ),
                )
            )
    return out


@part("images.json")
def images(d):
    """Mean (and sd over seeds) of each data set x network x epochs: the default network first."""
    groups = {}
    for r in d["runs"]:
        groups.setdefault((r["data"], r["net"], r["epochs"]), []).append(r)
    rows = []
    for (data, net, epochs), rs in sorted(
        groups.items(), key=lambda g: (g[0][0] != "digits", g[0][0], g[0][1] != "resnet")
    ):
        losses = [r["test_loss"] for r in rs]
        rows.append(
            {
                "data": {"digits": "digits (8x8)", "fashion": "Fashion-MNIST (28x28)"}.get(data, data),
                "network": "`resnet` (default)" if net == "resnet" else f"`{net}`",
                "epochs": epochs,
                "seeds": len(rs),
                "loss": statistics.mean(losses),
                "sd": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "knn": statistics.mean(r["knn5_test_codes"] for r in rs),
                "seconds": statistics.mean(r["s_per_epoch"] for r in rs),
            }
        )
    return {"rows": rows, "cpu": d["machine"]["cpu"]}


def _ll_stats(rs):
    """Over the seeds of one setting: the IWAE-K test log-likelihood and the test ELBO (mean, sd), the K and the
    rows it was scored on, the active units."""
    ll, loss = [r["test_log_likelihood"] for r in rs], [r["test_loss"] for r in rs]
    return {
        "seeds": len(rs),
        "ll": statistics.mean(ll),
        "ll_sd": statistics.stdev(ll) if len(ll) > 1 else 0.0,
        "eval_k": rs[0]["eval_k"],
        "eval_rows": rs[0]["eval_rows"],
        "loss": statistics.mean(loss),
        "loss_sd": statistics.stdev(loss) if len(loss) > 1 else 0.0,
        "units": statistics.mean(r["active_units"] for r in rs),
    }


@part("iwae.json")
def iwae(d):
    """Per data set and objective: the IWAE-K test log-likelihood and the test ELBO (mean, sd over seeds);
    per data set, how many seeds iwae training was ahead on and by how much."""
    groups, by_seed = {}, {}
    for r in d["runs"]:
        groups.setdefault((r["data"], r["elbo"], r["k"], r["epochs"]), []).append(r)
        by_seed[(r["data"], r["epochs"], r["seed"], r["elbo"])] = r
    rows = []
    for (data, elbo, k, epochs), rs in sorted(
        groups.items(), key=lambda g: (g[0][0] != "digits", g[0][0], g[0][1] != "meanfield")
    ):
        rows.append(
            {
                "data": {"digits": "digits (8x8)", "fashion": "Fashion-MNIST (28x28)"}.get(data, data),
                "objective": f"`{elbo}`" + (" (default)" if elbo == "meanfield" else f", K={k}"),
                "epochs": epochs,
                **_ll_stats(rs),
                "seconds": statistics.mean(r["s_per_epoch"] for r in rs),
            }
        )
    gains = [
        {
            "data": data,
            "gain": r["test_log_likelihood"] - by_seed[(data, epochs, seed, "meanfield")]["test_log_likelihood"],
        }
        for (data, epochs, seed, elbo), r in sorted(by_seed.items())
        if elbo == "iwae" and (data, epochs, seed, "meanfield") in by_seed
    ]
    names = {"digits": "digits", "fashion": "Fashion-MNIST"}
    summary = _ahead(gains, lambda r: names.get(r["data"], r["data"]) + ":")
    measured = sorted({g["data"] for g in gains})
    behind = [names.get(x, x) for x in measured if not all(g["gain"] > 0 for g in gains if g["data"] == x)]
    verdict = (
        f"ahead on every seed of the {_n(len(measured), 'data set')} measured"
        if not behind
        else f"not ahead on every seed of {', '.join(behind)}"
    )
    seconds = {}
    for r in d["runs"]:
        seconds.setdefault(r["data"], {}).setdefault(r["elbo"], []).append(r["s_per_epoch"])
    cost = ", ".join(
        f"{names.get(x, x)} {statistics.mean(v['iwae']) / statistics.mean(v['meanfield']):.1f}x"
        for x, v in sorted(seconds.items())
        if "iwae" in v and "meanfield" in v
    )
    return {
        "rows": rows,
        "cost": cost,
        "summary": f"iwae training against meanfield, test log-likelihood: {summary} (nats per image)",
        "verdict": verdict,
        "k": next(r["k"] for r in d["runs"] if r["elbo"] == "iwae"),
        "cpu": d["machine"]["cpu"].strip("\t :"),
    }


@part("hvae.json")
def hvae(d):
    """Per data set and model: the IWAE-K test log-likelihood, test ELBO, parameters and seconds per epoch
    (mean, sd over seeds); per data set, how many seeds the hierarchical VAE was ahead on and by how much."""
    groups, by_seed = {}, {}
    for r in d["runs"]:
        groups.setdefault((r["data"], r["networks"], r["epochs"], r["model"]), []).append(r)
        by_seed[(r["data"], r["networks"], r["epochs"], r["seed"], r["model"])] = r
    names = {"digits": "digits (8x8)", "fashion": "Fashion-MNIST (28x28)"}
    rows = []
    for (data, networks, epochs, model), rs in sorted(
        groups.items(), key=lambda g: (g[0][0] != "digits", g[0][0], g[0][1], g[0][2], g[0][3] != "vae")
    ):
        rows.append(
            {
                "data": names.get(data, data),
                "networks": "defaults (resnet)" if networks == "defaults" else _code(networks.split()),
                "model": f"`{model}`",
                "epochs": epochs,
                **_ll_stats(rs),
                "params": rs[0]["parameters"],
                "seconds": statistics.mean(r["s_per_epoch"] for r in rs),
            }
        )
    gains = [
        {"data": data, "gain": r["test_log_likelihood"] - by_seed[(data, net, ep, seed, "vae")]["test_log_likelihood"]}
        for (data, net, ep, seed, model), r in sorted(by_seed.items())
        if model == "hvae" and (data, net, ep, seed, "vae") in by_seed
    ]
    # the control: a VAE whose code has as many dimensions as all of the hvae's layers (networks + latent_dim=...)
    wide = [
        {"data": data, "gain": r["test_log_likelihood"] - w["test_log_likelihood"], "z": w["overrides"]}
        for (data, net, ep, seed, model), r in sorted(by_seed.items())
        if model == "hvae"
        for (d2, net2, ep2, seed2, model2), w in sorted(by_seed.items())
        if model2 == "vae" and (d2, ep2, seed2) == (data, ep, seed) and net2.startswith(net + " latent_dim=")
    ]
    ratios = {}
    for (data, net, ep, seed, model), r in by_seed.items():
        if model == "hvae" and (data, net, ep, seed, "vae") in by_seed:
            vae = by_seed[(data, net, ep, seed, "vae")]
            ratios.setdefault(data, []).append(r["s_per_epoch"] / vae["s_per_epoch"])
    short = {"digits": "digits", "fashion": "Fashion-MNIST"}
    return {
        "rows": rows,
        "summary": _ahead(gains, lambda r: short.get(r["data"], r["data"]) + ":"),
        "wide": _ahead(wide, lambda r: short.get(r["data"], r["data"]) + ":"),
        "cost": ", ".join(
            f"{short.get(x, x)} {statistics.median(v):.1f}x" for x, v in sorted(ratios.items(), key=lambda i: i[0])
        ),
        "verdict": d.get("note", ""),
        "cpu": d["machine"]["cpu"].strip("\t :"),
    }


@part("dimred_resnet.json")
def dimred_resnet(d):
    """The default image network's codes at two learning rates, with the largest rise of the train loss."""
    for r in d["fashion"]:
        h = r["train_loss_per_epoch"]
        r["jump"] = max([0.0] + [b - a for a, b in zip(h, h[1:])])
    return d


@part("cifar.json")
def cifar(d):
    return d


@part("anomaly_defaults.json", need="held_out")
def anomaly_defaults(d):
    """The held-out classes measured with the default (resnet) VAE, beside the reference MLP's AUROC."""
    mlp = {r["held_out_class"]: r["scores"] for r in (load("anomaly.json") or {}).get("held_out", [])}
    rows = []
    for r in d["held_out"]:
        c, ref = r["held_out_class"], mlp.get(r["held_out_class"], {})
        row = {"cls": c, "name": r["held_out_name"], "train_s": r.get("train_seconds")}
        for n in ("latent_knn", "recon_error", "neg_elbo"):
            row[n] = r["scores"][n]["auroc"]
            row["mlp_" + n] = ref.get(n, {}).get("auroc")
        rows.append(row)
    return {"rows": rows, "epochs": d["epochs"], "classes": len(rows)}


@part()
def m1m2_conv():
    """M1+M2 with the default (resnet) M1 beside the earlier MLP-M1 and M2 rows of ssvae.json."""
    old = {
        (s["data"], s["labels"], s["model"]): s
        for s in _summary("ssvae.json")
        if s.get("config") == "defaults" and not s.get("overrides")
    }
    rows = [
        dict(s, mlp_m1=old.get((s["data"], s["labels"], "m1m2"), {}).get("ssvae_mean"))
        | {"m2": old.get((s["data"], s["labels"], "ssvae"), {}).get("ssvae_mean")}
        for name in ("ssvae_conv_m1_digits.json", "ssvae_conv_m1_fashion.json")
        for s in _summary(name)
    ]
    return {"rows": rows} if rows else ""


def _summary(name):
    return (load(name) or {}).get("summary", [])


def _sig3(v):
    try:
        return f"{float(v):.3g}"
    except ValueError:
        return v


@part("tune_defaults.json")
def tune_defaults(d):
    """Each study's trials by state, its best trial, and the defaults against the tuned setting on the test split."""
    rows = []
    for name in ("vae", "m2"):
        s = d.get(name)
        if not s:
            continue
        c, m = s["compare"], s["metric"]
        best = ", ".join(f"`{k}={_sig3(s['best'][k])}`" for k in s["best"] if "." in k or k == "latent_dim")
        sign = 1 if m["mode"] == "max" else -1
        pairs = zip(c["tuned"]["runs"], c["defaults"]["runs"])
        wins = sum(sign * (t["test"] - d_["test"]) > 0 for t, d_ in pairs)
        rows.append(
            {
                "study": f"digits {'VAE' if name == 'vae' else 'M2, 50 labels'}",
                "trials": len(s["trials"]),
                "states": ", ".join(f"{v} {k.lower()}" for k, v in s["states"].items() if v),
                "minutes": s["study_seconds"] / 60,
                "selection": m["selection"],
                "reported": m["reported"],
                "best": best,
                "best_value": float(s["best"][m["selection"]]),
                "defaults": f"{c['defaults']['test_mean']:.4f} ± {c['defaults']['test_sd']:.4f}",
                "tuned": f"{c['tuned']['test_mean']:.4f} ± {c['tuned']['test_sd']:.4f}",
                "spaces": "; ".join(f"`{x}`" for x in s["spaces"]),
                "wins": f"{wins} of {len(c['tuned']['runs'])}",
            }
        )
    return {"rows": rows, "machine": d.get("machine", "")} if rows else ""


@part("image_cache.json")
def image_cache(d):
    for r in d["loads"] + d["decode_only"]:
        r["each"] = ", ".join(f"{v:.1f}" for v in r["seconds"])
    shape = "x".join(map(str, d["image_shape"]))
    return dict(d, shape=shape, load_average=d["machine"]["load_average_after"][0])


@part("anomaly.json", need="summary")
def anomaly(d):
    """benchmarks/anomaly.py's own rendering of its JSON, and the README's rows: the default score
    against the reconstruction error and -ELBO, over the ten held-out classes."""
    from pyro_vae.scores import DEFAULT_SCORE as default

    spec = importlib.util.spec_from_file_location("benchmarks_anomaly", HERE / "anomaly.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scores = [
        dict(d["summary"][n], name=f"`{n}`" + (" (default)" if n == default else ""))
        for n in (default, "recon_error", "neg_elbo")
    ]
    for r in scores:
        r.update(good=r["classes"] - r["classes_below_0.8"], epochs=d["epochs"])
    return {"full": d.get("held_out") and mod.render(d), "scores": scores}


def _bank(m):
    return f"{m['mean_auroc']:.3f} / {m['min_auroc']:.3f}"


@part("anomaly_explore.json", need="fashion_mnist_10_epochs")
def anomaly_explore(d):
    """The latent-space variants of benchmarks/anomaly_explore.py on Fashion-MNIST (AUROC per held-out
    class) and the digits (``b``), and plain code kNN by k and bank seed."""
    f, g = d["fashion_mnist_10_epochs"], d.get("digits") or {}
    cls = sorted((r["held_out_class"], r["aurocs"]) for r in f["held_out"])
    checks = sorted((v for k, v in d.items() if k.endswith("_epochs_k_by_bank_seed")), key=lambda v: v["epochs"])
    return {
        "epochs": f["epochs"],
        "digits_seeds": ", ".join(map(str, g.get("seeds", []))),
        "variants": [
            dict(s, name=n, b=g.get("summary", {}).get(n, {}), by_class=" | ".join(f"{a[n]:.2f}" for _, a in cls))
            for n, s in sorted(f["summary"].items(), key=lambda kv: -kv[1]["mean_auroc"])
        ],
        "bank_rows": checks and checks[0]["bank_rows"],
        "by_k": [
            dict(epochs=c["epochs"], classes=len(c["classes"]), k=k, banks=" | ".join(map(_bank, v.values())))
            for c in checks
            for k, v in sorted(c["summary"].items(), key=lambda kv: int(kv[0]))
        ],
    }


@part("counts.json", need="variants")
def counts(d):
    v = d["variants"]
    first, default = next(iter(v.values())), v.get("default", {})
    lo, hi = first["data"]["library_p2_5_p97_5"]
    skip = ("trainer.", "seed=", "train.epochs", "train.batch_size")

    def setting(side, r):
        if side == "scvi":
            return ", ".join(f"{k}={v}" for k, v in r["setting"].items())
        return " ".join(o for o in r["setting"] if not o.startswith(skip))

    return {
        **first["data"],
        "library_range": f"{lo:.0f}-{hi:.0f}",
        "iwae_samples": first.get("pyro_vae", {}).get("iwae_samples", "?"),
        "rows": [
            dict(r, name=name, setting=setting(side, r))
            for name, x in v.items()
            for side in ("pyro_vae", "scvi")
            if (r := x.get(side))
        ],
        "default": {"pyro_vae", "scvi"} <= set(default) and default,
    }


@part("cvae.json", need="runs")
def cvae(d):
    names = {
        "vae": "pyro_vae VAE (no batch)",
        "cvae": "pyro_vae CVAE, data.batch_key",
        "scvi": "scvi-tools SCVI(batch_key)",
        "scvi_kl_warmup_off": "scvi-tools SCVI(batch_key), KL warm-up off",
    }
    rows = [dict(r, name=names.get(k, k)) for k, r in d["runs"].items()]
    return {
        **d["data"],
        "library_medians": ", ".join(f"{v:.0f}" for v in d["data"]["library_median_per_batch"]),
        "epochs": d["epochs"],
        "batch_size": d["batch_size"],
        "rows": rows,
        "machine": d["machine"]["cpu"],
    }


# ---------------------------------------------------------------- reliability


@part("faults.json")
def faults(d):
    for r in d["rows"]:  # the case: its test's name, in words
        r["case"] = r["case"].split("::", 1)[1].replace("test_", "", 1).replace("_", " ")
    return d


@part("soak.json")
def soak(d):
    d["at_start_up"] = sum(r.get("when") == "start-up" for r in d["log"] if r["signal"])
    d["every_epoch_once"] = "yes" if d["every_epoch_once"] else "NO"
    return dict(d, stops_ended_as_signalled=d.get("stops_ended_as_signalled", "?"))


def results():
    """The whole of benchmarks/RESULTS.md."""
    return fill(TEMPLATE.read_text(), PARTS, TEMPLATE.name)


def render_readme(text):
    """The README text with every <!-- TABLE:name --> block rendered from its block in README.template.md."""
    marked = set(re.findall(r"<!-- TABLE:(\w+) -->", text))
    unknown, unused = sorted(marked - set(README_TABLES)), sorted(set(README_TABLES) - marked)
    if unknown or unused:
        raise ValueError(f"README: no renderer for tables {unknown}, no table for {unused}")
    for name, block in README_TABLES.items():
        body = fill(block, {n: PARTS[n] for n in names(block) & set(PARTS)}, README_TEMPLATE.name).strip("\n")
        start, end = f"<!-- TABLE:{name} -->\n", f"<!-- /TABLE:{name} -->"
        head, _, rest = text.partition(start)
        text = head + start + (body and body + "\n") + rest[rest.index(end) :]
    return text


def main(argv):
    want = {RESULTS: results(), README: render_readme(README.read_text())}
    stale = [p.name for p, text in want.items() if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        if stale:
            print("stale (run `python benchmarks/report.py --write`):", ", ".join(stale))
        return 1 if stale else 0
    for p, text in want.items() if "--write" in argv else ():
        p.write_text(text)
    if "--write" not in argv:
        print(want[RESULTS], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
