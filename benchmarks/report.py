"""Render the benchmark JSON files as Markdown: benchmarks/RESULTS.md and the README tables.

    python benchmarks/report.py            # print RESULTS.md
    python benchmarks/report.py --write    # write benchmarks/RESULTS.md and the README tables
    python benchmarks/report.py --check    # exit 1 when RESULTS.md or a README table is stale

RESULTS.md is the benchmark record. Its prose (what was tried, how long it took, on which
machine) lives in benchmarks/RESULTS.template.md; the renderers here (the functions marked
``@part``, each named as its placeholder) compute tables and values from benchmarks/*.json,
and ``fill`` puts them into the template:

    {{ name }}                  the text renderer ``name`` returns (a table, a sentence)
    {{ name.key.key }}          a value inside the dict renderer ``name`` returns,
    {{ name.key:.2f }}          ... optionally formatted: format(value, ".2f")
    {{ if name }}...{{ end }}   the text between, kept when ``name`` (or ``name.key``) renders
                                something non-empty; blocks nest, and a line break right after
                                ``{{ if ... }}`` or right before ``{{ end }}`` is not output
    {{# comment }}              dropped

Paragraphs (text between blank lines) left empty are dropped, so a renderer returns "" when
its JSON file is missing and its paragraphs go with it. A placeholder that names no renderer,
a renderer no placeholder names, or a key a renderer did not return is an error.

The README holds user documentation and, per capability, one short table of what the
defaults achieve, between ``<!-- TABLE:name -->`` and ``<!-- /TABLE:name -->`` markers,
rendered by the README_TABLES functions here.
"""

import functools
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
RESULTS = HERE / "RESULTS.md"
TEMPLATE = HERE / "RESULTS.template.md"
PARTS = {}  # placeholder name -> renderer, filled by @part


def load(name):
    p = HERE / name
    return json.loads(p.read_text()) if p.exists() else None


def reads(name=None, need=None, into=None):
    """Call the decorated renderer with the JSON file ``name`` (if any); render "" when the file is
    missing or its key ``need`` is empty. ``into``: a dict to register the renderer in, by its name."""

    def wrap(fn):
        @functools.wraps(fn)
        def render():
            if name is None:
                return fn()
            d = load(name)
            return fn(d) if d and (need is None or d.get(need)) else ""

        if into is not None:
            into[fn.__name__] = render
        return render

    return wrap


def part(name=None, need=None):
    """``reads``, registering the renderer for the template's placeholders named as the function."""
    return reads(name, need, into=PARTS)


def table(head, rows):
    """A Markdown table: a line of column titles, then a line per row of cells (a cell of None
    is written `| |`, one of "" `|  |`)."""

    def line(cells):
        return "|" + "".join(" |" if c is None else f" {c} |" for c in cells)

    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _pair(a, b, key, spec):
    """The value of ``key`` in two runs, "a / b"."""
    return f"{_fmt(a.get(key), spec)} / {_fmt(b.get(key), spec)}"


def _pm(s, key, spec=".3f"):
    """A summary row's ``key_mean ± key_sd``."""
    return f"{s[key + '_mean']:{spec}} ± {s[key + '_sd']:{spec}}"


def _n(k, word):
    return f"{k} {word}" + ("" if k == 1 else "s")


def _yes(flag):
    return "yes" if flag else "no"


def _met(ok):
    return "met" if ok else "**not met**"


def _code(options, sep=" "):
    return sep.join(f"`{o}`" for o in options)


def _options(overrides):
    return dict(x.split("=", 1) for x in overrides)


def _runs(name):
    return (load(name) or {}).get("runs", [])


def _key(r):
    return r["data"], r["labels"], r["seed"]


def _digits_first(key):
    return key[0] != "digits", *key[1:]


# ---------------------------------------------------------------- default VAE setting


def _winner(d):
    w = d.get("winner")
    return next((s for s in d["summary"] if s["overrides"] == w), None)


def _short(overrides):
    """A grid setting as a short label: meanfield, lr 3e-3, batch 64, z 8, hidden [400], no warm-up."""
    o = _options(overrides)
    parts = [
        o.get("train.elbo", "?"),
        f"lr {o.get('train.lr', '?')}",
        f"batch {o.get('train.batch_size', '?')}",
        f"z {o.get('latent_dim', '?')}",
        f"hidden {o.get('encoder.hidden', '?')}",
    ]
    w = o.get("train.kl_warmup_epochs", "0")
    parts.append("no warm-up" if w == "0" else f"warm-up {w}")
    return ", ".join(parts)


@part("defaults.json", need="summary")
def defaults_summary(d):
    e = d.get("fashion_epochs", 3)
    head = [
        "setting",
        "digits test loss, 20 epochs (mean ± sd)",
        "seeds",
        "digits s/epoch",
        f"Fashion-MNIST, reference shape: test loss, {e} epochs",
        "s/epoch",
        f"Fashion-MNIST, whole setting: test loss, {e} epochs",
        "s/epoch",
        "Fashion-MNIST s/epoch, whole setting, timed back to back",
    ]
    fashion = (
        "fashion_test_loss",
        "fashion_seconds_per_epoch",
        "fashion_plain_test_loss",
        "fashion_plain_seconds_per_epoch",
        "fashion_seconds_per_epoch_back_to_back",
    )
    return table(
        head,
        [
            [
                ("**chosen:** " if s["overrides"] == d.get("winner") else "")
                + ("previous defaults: " if i == 0 else "")
                + _short(s["overrides"]),
                _pm(s, "digits_test_loss", ".2f"),
                s["digits_seeds"],
                f"{s['digits_seconds_per_epoch']:.2f}",
                *(_fmt(s.get(k), ".1f") for k in fashion),
            ]
            for i, s in enumerate(d["summary"])
        ],
    )


@part("defaults.json")
def defaults_screen(d):
    rows = sorted((r for r in d["rows"] if r["stage"] == "screen"), key=lambda r: r["test_loss"])
    if not rows:
        return ""
    best = table(
        ["rank", "setting", "test loss (nats)", "active units", "s/epoch"],
        [
            [
                i,
                _short(r["overrides"]),
                f"{r['test_loss']:.2f}",
                r.get("active_units", "-"),
                f"{r['seconds_per_epoch']:.2f}",
            ]
            for i, r in enumerate(rows[:16], 1)
        ],
    )
    return (
        f"{best}\n\n({len(rows)} settings screened on seed 0; {sum(r['test_loss'] > 26.5 for r in rows)} of them "
        "end above 26.5 nats, on the collapsed plateau. Every row is in `benchmarks/defaults.json`.)"
    )


@reads("defaults.json", need="summary")
def vae_defaults(d):
    """README: what `pyro-vae train` with no other key gives on the digits and on Fashion-MNIST."""
    w = _winner(d)
    if w is None:
        return ""
    rows = [
        [
            "digits (8x8)",
            20,
            w["digits_seeds"],
            _pm(w, "digits_test_loss", ".2f"),
            f"{w['digits_seconds_per_epoch']:.2f}",
        ]
    ]
    if w.get("fashion_plain_test_loss") is not None:
        sec = w.get("fashion_seconds_per_epoch_back_to_back") or w["fashion_plain_seconds_per_epoch"]
        rows.append(
            [
                "Fashion-MNIST (28x28)",
                d.get("fashion_epochs", 3),
                1,
                f"{w['fashion_plain_test_loss']:.1f}",
                f"{sec:.1f}",
            ]
        )
    return table(["data", "epochs", "seeds", "test loss (-ELBO, nats per image)", "s/epoch (a 2-core CPU VM)"], rows)


# ---------------------------------------------------------------- speed

# issue 18's `pyro-vae train` before the whole-job work (the template's "Before" paragraphs):
# 10 epochs on a 2-core AMD EPYC with AVX2 only, the whole process 77.7 s, 6.0 s per training epoch
SPEED_BEFORE = {"epochs": 10, "wall": 77.7, "epoch": 6.0}
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


def _machine_line(d):
    m = d["machine"]
    peaks = _peaks((d.get("matmul_peak") or {}).get("gflops") or {})
    peer = ", ".join(f"{k} {v}" for k, v in (m.get("peer_env") or {}).items() if v)
    return (
        f"{m['cpu']} ({', '.join(m.get('cpu_flags', [])) or 'flags unknown'}; oneDNN native bf16: "
        f"{_yes(m.get('cpu_native_bf16'))}), {_n(d['threads'], 'thread')} for every command"
        + (f", matrix-product peak {peaks} GFLOP/s" if peaks else "")
        + f"; torch {m.get('torch')}, pyro-ppl {m.get('pyro')}"
        + (f"; peers: {peer}" if peer else "")
        + f". {_n(d['repeats'], 'round')} of the commands, interleaved; medians."
    )


def _command(name, s):
    return SPEED_LABELS.get(name, name) + (f" ({s['failed']} failed)" if s.get("failed") else "")


@part("vae_speed.json", need="summary")
def speed_whole_jobs(d):
    """The reference VAE: whole-job wall time, test loss, s/epoch and % of peak per command."""
    rows = []
    for name, s in d["summary"].items():
        ups = [d["speedup"].get(f"{name} / {o}") for o in ("ours-fp32", "ours-bf16")]
        up = " / ".join(f"{u:.2f}x" for u in ups if u is not None) or "-"
        pct = s.get("percent_of_peak")
        rows.append(
            [
                _command(name, s),
                _fmt(s["wall_seconds_median"], ".1f"),
                "-" if name.startswith("ours") else up,
                _fmt(s.get("test_loss"), ".1f"),
                _fmt(s.get("seconds_per_epoch"), ".2f"),
                _fmt(s.get("gflops_achieved"), ".0f"),
                _fmt(pct, ".0f") + ("%" if pct else ""),
            ]
        )
    return f"Reference VAE, {_n(d['epochs'], 'epoch')}. {_machine_line(d)}\n\n" + table(
        [
            "command",
            "whole job (s)",
            "speed-up of `pyro-vae train` (fp32 / bf16)",
            "test loss (nats)",
            "s/epoch (training)",
            "GFLOP/s",
            "% of matmul peak",
        ],
        rows,
    )


@part("m2_speed.json", need="summary")
def speed_whole_jobs_m2(d):
    """M2 in Pyro's setup: whole-job wall time, test accuracy and s/epoch per command, and our settings."""
    rows = []
    for name, s in d["summary"].items():
        up = d["speedup"].get(f"{name} / ours-pyro-setup")
        rows.append(
            [
                _command(name, s),
                _fmt(s["wall_seconds_median"], ".1f"),
                _fmt(up, ".2f") + ("x" if up else ""),
                _fmt(s.get("test_accuracy"), ".3f"),
                _fmt(s.get("seconds_per_epoch"), ".2f"),
            ]
        )
    settings = f"`pyro-vae train`, Pyro's setup: {_code(d['ours_pyro_setup'])}."
    if d.get("ours_defaults_overrides"):
        settings += f" M2 defaults: {_code(d['ours_defaults_overrides'])} (the script's split), nothing else."
    return "\n\n".join(
        [
            f"M2, 3000 labels, {_n(d['epochs'], 'epoch')}. {_machine_line(d)}",
            table(
                ["command", "whole job (s)", "speed-up of `pyro-vae train`, Pyro's setup", "test accuracy", "s/epoch"],
                rows,
            ),
            settings,
        ]
    )


def _default_ours(d):
    """Our command as trainer.precision=auto runs it on the benchmark's machine: bf16-mixed where
    the CPU has native bf16 (or on a GPU), fp32 elsewhere."""
    bf16 = d["machine"].get("cpu_native_bf16") or d.get("device") == "cuda"
    return "ours-bf16" if bf16 and "ours-bf16" in d["summary"] else "ours-fp32"


@part("vae_speed.json", need="summary")
def speed_precision(d):
    return "bf16-mixed" if _default_ours(d) == "ours-bf16" else "fp32"


@part("vae_speed.json", need="summary")
def speed_breakdown(d):
    """Where the wall time of `pyro-vae train` (reference VAE, default precision) goes, before and after."""
    s = d["summary"].get(_default_ours(d), {})
    prof = dict(s.get("profile_median") or {})
    if not prof:
        return ""
    b, wall, steps = SPEED_BEFORE, s["wall_seconds_median"], prof.get("training epochs (steps)", 0.0)
    prof.pop("total", None)
    rows = [
        [
            k,
            f"{b['epoch'] * b['epochs']:.1f}" if k == "training epochs (steps)" else "",
            f"{v:.2f}",
            f"{100 * v / wall:.1f}%",
        ]
        for k, v in prof.items()
    ]
    if s.get("wall_minus_profile_total") is not None:
        v = s["wall_minus_profile_total"]
        rows.append(
            ["outside the process's own clock (exec, interpreter exit)", None, f"{v:.2f}", f"{100 * v / wall:.1f}%"]
        )
    rows += [
        [
            "**everything but the training steps**",
            f"{b['wall'] - b['epoch'] * b['epochs']:.1f}",
            f"{wall - steps:.2f}",
            f"{100 * (wall - steps) / wall:.1f}%",
        ],
        ["**whole job** (wall, measured outside)", f"{b['wall']:.1f}", f"{wall:.2f}", "100%"],
    ]
    return table(
        [
            "phase",
            f"before: {_n(b['epochs'], 'epoch')} (s)",
            f"after: {_n(d['epochs'], 'epoch')} (s)",
            "after (% of the whole job)",
        ],
        rows,
    )


@part("speed_floor.json")
def speed_floor(d):
    """The floors of a whole job on this machine (imports, eager steps, compile) and the bound they set."""
    label = {
        "pyro": "Pyro's `Trace_ELBO` on the VAE (this project's loss)",
        "torch": "the same estimator in plain torch (no Pyro)",
    }
    steps = []
    for k, s in d["steps"].items():
        what, precision = k.split(" ", 1)
        steps.append(
            [
                f"{label[what]}, {precision}",
                f"{s['ms_per_step']:.2f}",
                f"{2350 * s['ms_per_step'] / 1000:.1f}",
                f"{s['gflops']:.0f}",
                f"{s['percent_of_peak']:.0f}%",
            ]
        )
    c = d["torch_compile"]
    if "error" in c:
        steps.append(["`torch.compile` of the Pyro loss, float32", f"failed: {c['error']}", None, None, None])
    else:
        steps.append(
            [
                f"`torch.compile` of the Pyro loss, float32 (first step: {c['first_step_seconds']:.0f} s of compiling)",
                f"{c['ms_per_step']:.2f}",
                f"{2350 * c['ms_per_step'] / 1000:.1f}",
                f"{d['gflop_per_step'] / c['ms_per_step'] * 1000:.0f}",
                None,
            ]
        )
    j, b, m2 = d["jit_trace_elbo"], d["bound"], d.get("m2_step_ms")
    f32, p32 = d["steps"].get("torch float32"), d["steps"].get("pyro float32")
    if m2:
        m2 = {
            "float32": m2["float32 convolutions"],
            "bf16": m2["bf16 convolutions"],
            "less": 100 * (1 - m2["bf16 convolutions"] / m2["float32 convolutions"]),
        }
    return {
        **d,
        "native_bf16": _yes(d["machine"].get("cpu_native_bf16")),
        "threads": _n(d["threads"], "thread"),
        "peak": _peaks(d["matmul_peak"]["gflops"]),
        "imports": table(
            ["`python -c`", "wall (s)"],
            [
                [f"`{'pass' if k == 'python' else 'import ' + k.replace(' + ', ', ')}`", f"{v:.2f}"]
                for k, v in d["imports_seconds"].items()
            ],
        ),
        "steps": table(
            [
                "training step (batch 256, fused Adam)",
                "ms/step",
                "s per 10 epochs (2350 steps)",
                "GFLOP/s",
                "% of matmul peak (same precision)",
            ],
            steps,
        ),
        "jit": (
            "runs on the model."
            if j["runs"]
            else f"does not run on the model's `PyroModule` parameters (`{j['error']}`)."
        ),
        "dynamo_import": d["imports_seconds"]["torch + pyro + torch._dynamo"],
        "m2": m2,
        "ours": "ours_wall_seconds" in b
        and "peer_wall_seconds" in b
        and {
            "ratio": b["peer_wall_seconds"] / b["ours_wall_seconds"],
            "above_floor": b["ours_wall_seconds"] - b["floor_seconds_with_pyro_loss"],
        },
        "float32": f32 and p32 and {"torch": f32["percent_of_peak"], "pyro": p32["percent_of_peak"]},
    }


@reads("vae_speed.json", need="summary")
def speed_readme(d):
    """README: the whole-job ratios, one line (empty until the whole-job benchmarks have run)."""
    d2 = load("m2_speed.json")
    up, ours = d["speedup"], _default_ours(d)
    peers = [
        f"{label} {up[k]:.2f}x as long"
        for k, label in (
            (f"pyro-vae.py / {ours}", "Pyro's `examples/vae/vae.py` takes"),
            (f"pythae / {ours}", "pythae's VAE"),
        )
        if k in up
    ]
    if not peers:
        return ""
    text = (
        f"Whole commands, timed side by side on one CPU ({d['machine']['cpu']}, {_n(d['threads'], 'thread')}): "
        f"against `pyro-vae train examples/configs/fashion_vae.yaml` ({_n(d['epochs'], 'epoch')}), " + ", ".join(peers)
    )
    if d2 and "summary" in d2 and "pyro-ss_vae_M2 / ours-pyro-setup" in d2["speedup"]:
        text += (
            f"; for M2 in `ss_vae_M2.py`'s setup ({_n(d2['epochs'], 'epoch')}) that script takes "
            f"{d2['speedup']['pyro-ss_vae_M2 / ours-pyro-setup']:.2f}x as long"
        )
    return text + " (`benchmarks/RESULTS.md`)."


# ---------------------------------------------------------------- priors and likelihoods


@part("priors_likelihoods.json")
def priors_likelihoods(d):
    out = []
    for section, title in (("priors", "prior"), ("likelihoods", "likelihood")):
        rows = [
            [
                r["name"],
                r["epochs"],
                f"{r['test_loss']:.1f}",
                _fmt(r.get("test_log_likelihood"), ".1f"),
                r.get("active_units", "-"),
                f"{r['seconds_per_epoch']:.1f}",
            ]
            for r in d["rows"]
            if r["section"] == section
        ]
        if rows:
            out.append(
                table(
                    [title, "epochs", "test loss (-ELBO)", "test log-likelihood (IWAE)", "active units", "s/epoch"],
                    rows,
                )
            )
    return "\n\n".join(out)


# ---------------------------------------------------------------- M2


def _ssvae_setup(overrides):
    """A row of the M2 exploration as its q(y|x) setting and precision (its overrides use the
    option names of the time, ssvae.*)."""
    o = _options(overrides)
    clf = "conv" if o.get("ssvae.classifier_type") == "conv" else "MLP 500"
    if o.get("ssvae.classifier_activation"):
        clf += f" ({o['ssvae.classifier_activation']})"
    if float(o.get("ssvae.classifier_dropout", 0)):
        clf += f" + dropout {o['ssvae.classifier_dropout']}"
    if int(o.get("ssvae.augment_shift", 0)):
        clf += f" + shift {o['ssvae.augment_shift']} px"
    if o.get("ssvae.augment_flip", "false").lower() == "true":
        clf += " + flips"
    if float(o.get("ssvae.consistency_weight", 0)):
        clf += f" + consistency {o['ssvae.consistency_weight']}"
    if "ssvae.aux_loss_multiplier" in o:
        clf += f", alpha {o['ssvae.aux_loss_multiplier']}"
    if o.get("train.lr_schedule", "constant") != "constant":
        clf += f", {o['train.lr_schedule']} lr"
    # the rows with no overrides at all ran when the config's default was bf16-mixed;
    # every later row ran under the current default, 32-true, unless it says otherwise
    return f"{clf}, {o.get('trainer.precision', '32-true' if o else 'bf16-mixed')}"


def _is_default(s):
    return s.get("config") == "defaults"


@part("ssvae.json", need="summary")
def ssvae(d):
    return table(
        [
            "labels",
            "q(y\\|x), precision",
            "epochs",
            "seeds",
            "M2 test accuracy (mean ± sd)",
            "same classifier, labels only",
            "s/epoch",
        ],
        [
            [
                s["labels"],
                _ssvae_setup(s["overrides"]),
                s["epochs"],
                s["seeds"],
                _pm(s, "ssvae"),
                _pm(s, "supervised"),
                s["seconds_per_epoch"],
            ]
            for s in d["summary"]
            if not _is_default(s)
        ],
    )


def _epochs(s):
    return f"{s['m1_epochs']} + {s['epochs']}" if "m1_epochs" in s else str(s["epochs"])


def _speed(s):
    return f"{s['m1_seconds_per_epoch']} / {s['m2_seconds_per_epoch']}" if "m1_epochs" in s else s["seconds_per_epoch"]


def _seeds(s):
    return ", ".join(map(str, s.get("seed_list", []))) or s["seeds"]


def _defaults_rows(every=False):
    """The summary rows of a model kind's defaults (``every``: also those run with a default changed
    since, such as M2 without pseudo-labels, ``model.pseudo_label_weight=0``)."""
    d = load("ssvae.json")
    rows = [s for s in (d or {}).get("summary", []) if _is_default(s) and (every or not s["overrides"])]
    order = {"digits": 0, "fashion-mnist": 1}
    return sorted(rows, key=lambda s: (order.get(s["data"], 2), s["labels"], s["model"] != "m1m2", s["overrides"]))


def _kind(s):
    name = "M1+M2" if s["model"] == "m1m2" else "M2"
    return name + (" without pseudo-labels" if "model.pseudo_label_weight=0" in s["overrides"] else "")


@part()
def ssvae_m1m2():
    """Every row run with a model kind's defaults (no overrides but the data)."""
    rows = _defaults_rows(every=True)
    return (
        table(
            [
                "data",
                "labels",
                "model",
                "epochs (M1 + M2)",
                "seeds",
                "test accuracy (mean ± sd)",
                "M2's classifier, labels only",
                "s/epoch (M1 / M2 stage)",
                "train s",
            ],
            [
                [
                    s["data"],
                    s["labels"],
                    _kind(s),
                    _epochs(s),
                    _seeds(s),
                    _pm(s, "ssvae"),
                    _pm(s, "supervised"),
                    _speed(s),
                    s.get("train_seconds", round(s["seconds_per_epoch"] * s["epochs"])),
                ]
                for s in rows
            ],
        )
        if rows
        else ""
    )


@reads("ssvae.json", need="summary")
def ssvae_defaults(d):
    """README: the defaults of model=m1m2 and model=ssvae per data set and label count."""
    rows = _defaults_rows()
    return (
        table(
            [
                "data",
                "labels",
                "model",
                "test accuracy (mean ± sd)",
                "M2's classifier on the labels alone",
                "seeds",
                "epochs (M1 + M2)",
            ],
            [
                [s["data"], s["labels"], _kind(s), _pm(s, "ssvae"), _pm(s, "supervised"), _seeds(s), _epochs(s)]
                for s in rows
            ],
        )
        if rows
        else ""
    )


@part("ssvae_m1m2_explore.json", need="pseudo_labels_on_codes")
def m1m2_pseudo_labels(d):
    """M2's pseudo-label term moved onto M1+M2's codes (not kept): the accuracies per seed."""
    runs = d["pseudo_labels_on_codes"]
    return {
        k: " / ".join(f"{a:.3f}" for a in runs[k]["test_accuracy"])
        for k in ("strong_augment", "code_sample", "defaults_same_code")
    }


@part()
def ssvae_goals():
    """Issue 16's goals against the default rows (ssvae.json), the side-by-side speed run
    (m2_speed.json) and M1+M2's cost per epoch (m1m2_cost.json)."""
    rows = {(s["data"], s["labels"], s["model"]): s for s in _defaults_rows()}
    f100, f3000 = rows.get(("fashion-mnist", 100, "ssvae")), rows.get(("fashion-mnist", 3000, "ssvae"))
    if not f100 or not f3000:
        return ""
    lead = f100["ssvae_mean"] - f100["supervised_mean"]
    return {
        "f100": f100,
        "f3000": f3000,
        "lead": lead,
        "met_100": _met(f100["ssvae_mean"] >= 0.80 and lead >= 0.06),
        "met_3000": _met(f3000["ssvae_mean"] >= 0.89),
        "digits": _goal_digits(),
        "speed": _goal_speed(),
        "cost": _goal_cost(),
    }


def _goal_digits():
    """M1+M2 against M2 and the classifier alone on the digits with 50 labels, on the seeds both ran."""
    by = {}
    for r in _runs("ssvae.json"):
        if r.get("config") == "defaults" and not r["overrides"] and r["data"] == "digits" and r["labels"] == 50:
            by.setdefault(r["seed"], {})[r["model"]] = r
    seeds = sorted(k for k, v in by.items() if {"m1m2", "ssvae"} <= set(v))
    if not seeds:
        return None

    def per_seed(model, key="test_accuracy"):
        return " / ".join(f"{by[k][model][key]:.3f}" for k in seeds)

    ok = all(
        by[k]["m1m2"]["test_accuracy"] > max(by[k]["ssvae"]["test_accuracy"], by[k]["m1m2"]["supervised_only_accuracy"])
        for k in seeds
    )
    return {
        "met": _met(ok),
        "seeds": " / ".join(map(str, seeds)),
        "m1m2": per_seed("m1m2"),
        "m2": per_seed("ssvae"),
        "alone": per_seed("ssvae", "supervised_only_accuracy"),
    }


def _goal_speed():
    """M2's defaults against Pyro's `ss_vae_M2.py`, seconds per epoch, with and without our validation pass."""
    d = load("m2_speed.json")
    if not d or "summary" not in d:
        return None
    ours, peer = d["summary"]["ours-defaults"], d["summary"]["pyro-ss_vae_M2"]
    r, same = peer["seconds_per_epoch"] / ours["seconds_per_epoch"], d.get("ours_defaults_overrides")
    out = {
        "ours": ours,
        "peer": peer,
        "ratio": r,
        "epochs": d["epochs"],
        "epochs_n": _n(d["epochs"], "epoch"),
        "repeats": d["repeats"],
        "split": same and _code(same, ", "),
        "verdict": _met(r >= 1),
        "validation": None,
    }
    with_val = [
        x["seconds_per_epoch_with_validation"]
        for x in d["runs"]
        if x["name"] == "ours-defaults" and x.get("seconds_per_epoch_with_validation")
    ]
    if same and with_val:
        v = statistics.median(with_val)
        rv = peer["seconds_per_epoch"] / v
        out.update(
            validation={"seconds": v, "ratio": rv}, verdict="even" if min(r, rv) < 1 <= max(r, rv) else _met(rv >= 1)
        )
    return out


def _goal_cost():
    """M1+M2's stages against M2 on the pixels, seconds per epoch (m1m2_cost.json)."""
    cost = load("m1m2_cost.json")
    if not cost:
        return None
    k = {r["kind"]: r for r in cost["rows"]}
    return {
        **cost,
        "m1": k["m1"],
        "m2": k["m2"],
        "stage": k["m1m2-m2"],
        "met": _met(k["m1m2-m2"]["seconds_per_epoch"] < k["m2"]["seconds_per_epoch"]),
    }


def _pseudo_pairs():
    """{(data, labels, seed): {"on": run, "off": run}}: M2's default runs (pseudo-labels) and the same
    runs without them (on the digits, the bf16-convolution runs: the same conv precision)."""
    by = {}
    for r in _runs("ssvae.json"):
        if r.get("model") == "ssvae" and r.get("config") == "defaults" and r.get("epochs") == 20:
            key = "off" if r["overrides"] == ["model.pseudo_label_weight=0"] else "on" if not r["overrides"] else None
            if key:
                by.setdefault(_key(r), {})[key] = r
    for r in _runs("ssvae_bf16_convs.json"):
        if r["data"] == "digits" and _key(r) in by:
            by[_key(r)]["off"] = r
    return {k: v for k, v in by.items() if len(v) == 2}


@part()
def ssvae_pseudo_default():
    """M2's defaults (with the pseudo-label term) against the same runs without it, per seed."""
    pairs = sorted(_pseudo_pairs().items(), key=lambda kv: _digits_first(kv[0]))
    return (
        table(
            [
                "data",
                "labels",
                "seed",
                "M2's defaults (pseudo-labels)",
                "without pseudo-labels",
                "difference",
                "classifier alone",
                "s/epoch: with / without",
            ],
            [
                [
                    *k,
                    f"{v['on']['test_accuracy']:.3f}",
                    f"{v['off']['test_accuracy']:.3f}",
                    f"{v['on']['test_accuracy'] - v['off']['test_accuracy']:+.3f}",
                    f"{v['on']['supervised_only_accuracy']:.3f}",
                    f"{v['on']['seconds_per_epoch']:.1f} / {v['off']['seconds_per_epoch']:.1f}",
                ]
                for k, v in pairs
            ],
        )
        if pairs
        else ""
    )


@part()
def ssvae_pseudo_findings():
    """Per label count, how often and by how much the pseudo-label default beat M2 without it."""
    by = {}
    for (data, n, _), v in _pseudo_pairs().items():
        by.setdefault((data, n), []).append(v["on"]["test_accuracy"] - v["off"]["test_accuracy"])
    parts = [
        f"{data} {n} labels {sum(x > 0 for x in d)} of {len(d)} seeds ahead, {sum(d) / len(d):+.3f} on average"
        for (data, n), d in sorted(by.items(), key=lambda kv: _digits_first(kv[0]))
    ]
    return ("With pseudo-labels against without, same seeds: " + "; ".join(parts) + ".") if parts else ""


@part("ssvae_bf16_convs.json", need="runs")
def ssvae_bf16_convs(d):
    """M2's defaults with the convolutions in bf16 (native bf16 CPUs) beside the same rows run with
    them in float32 (the default runs at batch 64 before convolutions followed autocast)."""
    old = {
        _key(r): r
        for r in _runs("ssvae.json") + _runs("ssvae_batch.json")
        if r.get("config") == "defaults"
        and r.get("model") == "ssvae"
        and r.get("epochs") == 20
        and r.get("batch_size", 64) == 64
        and r.get("convolutions") != "bf16"
    }
    return table(
        [
            "data",
            "labels",
            "seed",
            "M2 test accuracy: bf16 / float32 convolutions",
            "classifier alone: bf16 / float32",
            "s/epoch: bf16 / float32",
        ],
        [
            [
                *_key(r),
                *(
                    _pair(r, old.get(_key(r), {}), k, f)
                    for k, f in (
                        ("test_accuracy", ".3f"),
                        ("supervised_only_accuracy", ".3f"),
                        ("seconds_per_epoch", ".1f"),
                    )
                ),
            ]
            for r in sorted(d["runs"], key=_key)
        ],
    )


@part("ssvae_batch.json", need="runs")
def ssvae_batch(d):
    """M2's defaults at batch 64 and 128, the same data, labels and seeds side by side."""
    by = {}
    for r in d["runs"]:
        by.setdefault(_key(r), {})[r["batch_size"]] = r
    return table(
        [
            "data",
            "labels",
            "seed",
            "M2 test accuracy: batch 64 / 128",
            "classifier alone (its run of each)",
            "best epoch: 64 / 128",
            "s/epoch: 64 / 128",
        ],
        [
            [
                *k,
                *(
                    _pair(rs.get(64, {}), rs.get(128, {}), key, f)
                    for key, f in (
                        ("test_accuracy", ".3f"),
                        ("supervised_only_accuracy", ".3f"),
                        ("best_epoch", ""),
                        ("seconds_per_epoch", ".1f"),
                    )
                ),
            ]
            for k, rs in sorted(by.items(), key=lambda kv: _digits_first(kv[0]))
        ],
    )


@part("ssvae_adgm.json", need="runs")
def ssvae_adgm(d):
    """M2 with Maaloe et al.'s auxiliary variable (ADGM) against M2's defaults, the digits."""
    ref = {_key(r): r for r in _runs("ssvae_bf16_convs.json")}
    return table(
        ["data", "labels", "seed", "ADGM test accuracy", "M2 (defaults)", "classifier alone", "ADGM s/epoch"],
        [
            [
                *_key(r),
                f"{r['test_accuracy']:.3f}",
                _fmt(ref.get(_key(r), {}).get("test_accuracy"), ".3f"),
                f"{r['supervised_only_accuracy']:.3f}",
                f"{r['seconds_per_epoch']:.1f}",
            ]
            for r in sorted(d["runs"], key=_key)
        ],
    )


def _pl_setting(overrides):
    o = _options(overrides)
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


def _variant_pairs():
    """[(run, the defaults' run with the same pseudo-label setting, data, labels and seed, or {})] for
    the runs of ssvae_pseudo_label.json, ordered by setting, data, labels and seed."""
    ref = {
        (*_key(r), "model.pseudo_label_weight=0" in r["overrides"]): r
        for r in _runs("ssvae.json")
        if r.get("model") == "ssvae" and r.get("config") == "defaults"
    }
    out = []
    runs = _runs("ssvae_pseudo_label.json")
    for r in sorted(runs, key=lambda r: (_pl_setting(r["overrides"]), *_digits_first(_key(r)))):
        off = not float(_options(r["overrides"]).get("model.pseudo_label_weight", 1))
        out.append((r, ref.get((*_key(r), off), {})))
    return out


@part()
def ssvae_pseudo_label():
    """M2 variants (32 labelled rows a step, a cosine learning rate, ...), without and with
    pseudo-labels, against the run of the defaults with the same pseudo-label setting at the same
    data, labels and seed (ssvae.json)."""
    pairs = _variant_pairs()
    return (
        table(
            [
                "data",
                "labels",
                "seed",
                "setting",
                "test accuracy",
                "the defaults (same pseudo-label setting)",
                "difference",
                "classifier alone",
                "best epoch: setting / defaults",
                "s/epoch",
            ],
            [
                [
                    *_key(r),
                    _pl_setting(r["overrides"]),
                    f"{r['test_accuracy']:.3f}",
                    _fmt(o.get("test_accuracy"), ".3f"),
                    f"{r['test_accuracy'] - o['test_accuracy']:+.3f}" if o else "-",
                    f"{r['supervised_only_accuracy']:.3f}",
                    f"{r['best_epoch']} / {o.get('best_epoch', '-')}",
                    f"{r['seconds_per_epoch']:.1f}",
                ]
                for r, o in pairs
            ],
        )
        if pairs
        else ""
    )


@part()
def ssvae_variant_findings():
    """Per variant of ssvae_pseudo_label.json and label count, seeds ahead of the defaults."""
    by = {}
    for r, o in _variant_pairs():
        if o:
            by.setdefault((_pl_setting(r["overrides"]), r["data"], r["labels"]), []).append(
                r["test_accuracy"] - o["test_accuracy"]
            )
    parts = [
        f"{setting}, {data} {n} labels: {sum(x > 0 for x in v)} of {len(v)} seeds ahead, {sum(v) / len(v):+.3f} "
        "on average"
        for (setting, data, n), v in sorted(by.items(), key=lambda kv: (kv[0][0], *_digits_first(kv[0][1:])))
    ]
    return ("Against the defaults, same seeds: " + "; ".join(parts) + ".") if parts else ""


# ---------------------------------------------------------------- uses


@part("dimred.json")
def dimred(d):
    return (
        table(
            ["dimensions", "k-NN accuracy on VAE latent means", "k-NN accuracy on PCA", "VAE epochs", "active units"],
            [
                [
                    r["dims"],
                    f"{r['knn_accuracy_vae']:.3f}",
                    f"{r['knn_accuracy_pca']:.3f}",
                    r["epochs"],
                    r["active_units"],
                ]
                for r in d["results"]
            ],
        )
        + f"\n\n(Fashion-MNIST; k={d['results'][0]['k']} neighbours fitted on {d['train_subset_for_knn']} "
        "training codes, scored on the 10k test set.)"
    )


@part("ddp.json")
def ddp(d):
    return table(
        ["processes", "threads each", "global batch", "steps/epoch", "s/epoch", "whole command (s)", "test loss"],
        [
            [
                r["processes"],
                2 if r["processes"] == 1 else 1,
                r["global_batch"],
                r["steps_per_epoch"],
                f"{r['seconds_per_epoch']:.2f}",
                f"{r['whole_command_seconds']:.1f}",
                f"{r['test_loss']:.1f}",
            ]
            for r in d["rows"]
        ],
    )


@part("sparse_memory.json")
def sparse_memory(d):
    return table(
        [
            "rows x columns",
            "non-zeros",
            "input",
            "CSR (MB)",
            "dense would be (MB)",
            "peak RSS (MB)",
            "peak - imports (MB)",
            "train_is_sparse",
        ],
        [
            [
                f"{r['rows']:,} x {r['columns']:,} ({r['density']:.0%})",
                f"{r['nnz'] / 1e6:.0f}M",
                r["input"],
                f"{r['csr_mb']:,.0f}",
                f"{r['dense_mb']:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['peak_rss_mb'] - r['rss_after_imports_mb']:,.0f}",
                _yes(r["train_is_sparse"]),
            ]
            for r in d["rows"]
        ],
    )


@part("image_cache.json")
def image_cache(d):
    loads = table(
        ["load of the folder", "median (s)", "each run (s)"],
        [[r["load"], f"{r['median_seconds']:.1f}", ", ".join(f"{v:.1f}" for v in r["seconds"])] for r in d["loads"]],
    )
    pools = table(
        ["decoding alone", "median (s)", "each run (s)"],
        [
            [r["pool"], f"{r['median_seconds']:.1f}", ", ".join(f"{v:.1f}" for v in r["seconds"])]
            for r in d["decode_only"]
        ],
    )
    return (
        f"{d['images']:,} images of {'x'.join(map(str, d['image_shape']))} (`{d['root']}`), "
        f"`{d['command']}`; load average after the runs: {d['machine']['load_average_after'][0]}.\n\n"
        f"{loads}\n\n{pools}"
    )


@reads("anomaly.json", need="summary")
def anomaly(d):
    """README: the default score against -ELBO and the reconstruction error, over the ten held-out classes."""
    from pyro_vae.scores import DEFAULT_SCORE

    return table(
        ["score", "mean AUROC (10 held-out classes)", "worst class", "classes >= 0.8", "epochs"],
        [
            [
                f"`{name}` (default)" if name == DEFAULT_SCORE else f"`{name}`",
                f"{r['mean_auroc']:.3f}",
                f"{r['min_auroc']:.3f}",
                r["classes"] - r["classes_below_0.8"],
                d["epochs"],
            ]
            for name, r in ((n, d["summary"][n]) for n in (DEFAULT_SCORE, "recon_error", "neg_elbo"))
        ],
    )


@part("anomaly.json", need="held_out")
def anomaly_full(d):
    """benchmarks/anomaly.py's own rendering of its JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_anomaly", HERE / "anomaly.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.render(d)


@part("anomaly_explore.json", need="fashion_mnist_10_epochs")
def anomaly_explore(d):
    """The latent-space variants of benchmarks/anomaly_explore.py, Fashion-MNIST and digits."""
    f, g = d["fashion_mnist_10_epochs"], d.get("digits")
    fs, gs = f["summary"], (g or {}).get("summary", {})
    cls = {r["held_out_class"]: r["aurocs"] for r in f["held_out"]}
    out = [
        f"Fashion-MNIST ({f['epochs']} epochs, one class held out at a time, columns 0-9 = the held-out "
        f"class) and the default digits VAE (each digit held out, seeds {', '.join(map(str, g['seeds']))}: "
        "mean and worst of the 30 runs); best Fashion-MNIST mean first."
        if g
        else "",
        table(
            ["variant", "F-MNIST mean", "F-MNIST min", *map(str, sorted(cls)), "digits mean", "digits min"],
            [
                [
                    n,
                    f"{fs[n]['mean_auroc']:.3f}",
                    f"{fs[n]['min_auroc']:.3f}",
                    *(f"{cls[c][n]:.2f}" for c in sorted(cls)),
                    *((f"{gs[n]['mean_auroc']:.3f}", f"{gs[n]['min_auroc']:.3f}") if n in gs else ("-", "-")),
                ]
                for n in sorted(fs, key=lambda n: -fs[n]["mean_auroc"])
            ],
        ),
    ]
    checks = sorted((v for key, v in d.items() if key.endswith("_epochs_k_by_bank_seed")), key=lambda v: v["epochs"])
    if checks:
        seeds = list(checks[0]["summary"]["1"])
        out += [
            f"Plain code kNN by k over three random banks of {checks[0]['bank_rows']} training codes "
            "(Fashion-MNIST, mean / worst class AUROC over the classes measured):",
            table(
                ["epochs", "classes", "k", *(f"bank seed {s}" for s in seeds)],
                [
                    [
                        c["epochs"],
                        len(c["classes"]),
                        k,
                        *(f"{m['mean_auroc']:.3f} / {m['min_auroc']:.3f}" for m in v.values()),
                    ]
                    for c in checks
                    for k, v in sorted(c["summary"].items(), key=lambda kv: int(kv[0]))
                ],
            ),
        ]
    return "\n\n".join(out)


def _counts_setting(side, r):
    if side == "scvi":
        return ", ".join(f"{k}={v}" for k, v in r["setting"].items())
    skip = ("trainer.", "seed=", "train.epochs", "train.batch_size")
    return " ".join(o for o in r["setting"] if not o.startswith(skip))


@part("counts.json", need="variants")
def counts(d):
    v = d["variants"]
    first = next(iter(v.values()))
    data = first["data"]
    lo, hi = data["library_p2_5_p97_5"]
    head = (
        f"{data['cells']} cells x {data['genes']} genes, {data['cell_types']} cell types, "
        f"{data['zeros']:.0%} zeros, library sizes median {data['library_median']:.0f} "
        f"(95% within {lo:.0f}-{hi:.0f}); 20% of the cells held out. Log-likelihood: nats per held-out "
        f"cell, higher is better, importance-weighted with K={first.get('pyro_vae', {}).get('iwae_samples', '?')} "
        "samples on both sides."
    )
    rows = [
        [
            name,
            r["library"],
            _counts_setting(side, r),
            r["epochs"],
            f"{r['test_log_likelihood']:.1f}",
            f"{r['knn5_accuracy']:.3f}",
            f"{r['seconds_per_epoch']:.2f}",
            f"{r['fit_wall_seconds']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for name, variant in v.items()
        for side in ("pyro_vae", "scvi")
        if (r := variant.get(side))
    ]
    return (
        head
        + "\n\n"
        + table(
            [
                "variant",
                "library",
                "setting",
                "epochs",
                "held-out log p(x) per cell",
                "5-NN accuracy",
                "s/epoch",
                "fit wall s",
                "peak RSS MB",
            ],
            rows,
        )
    )


def counts_readme():
    """README, one line (the README is near its length limit): the defaults against scvi-tools."""
    r = (load("counts.json") or {}).get("variants", {}).get("default")
    if not r or "scvi" not in r or "pyro_vae" not in r:
        return ""
    p, s = r["pyro_vae"], r["scvi"]
    return (
        f'Against scvi-tools\' `SCVI(gene_likelihood="zinb")` on synthetic counts ({r["data"]["cells"]} cells x '
        f"{r['data']['genes']} genes, same network shape, {p['epochs']} epochs, 1 thread; `benchmarks/counts.py`): "
        f"held-out log p(x) {p['test_log_likelihood']:.1f} vs {s['test_log_likelihood']:.1f} nats per cell, "
        f"5-NN cell-type accuracy {p['knn5_accuracy']:.3f} vs {s['knn5_accuracy']:.3f}, "
        f"{p['seconds_per_epoch']:.1f} vs {s['seconds_per_epoch']:.1f} s/epoch."
    )


# ---------------------------------------------------------------- reliability


@part("faults.json")
def faults(d):
    v = d["versions"]
    return (
        f"{d['held']} of {d['tried']} cases held (`{d['command']}`; torch {v['torch']}, Lightning "
        f"{v['lightning']}, Python {v['python']}).\n\n"
        + table(
            ["case", "outcome", "seconds"],
            [
                [
                    r["case"].split("::", 1)[1].replace("test_", "", 1).replace("_", " "),
                    r["outcome"],
                    f"{r['seconds']:.0f}",
                ]
                for r in d["rows"]
            ],
        )
    )


@part("soak.json")
def soak(d):
    return {
        **d,
        "at_start_up": sum(r.get("when") == "start-up" for r in d["log"] if r["signal"]),
        "stops_ended_as_signalled": d.get("stops_ended_as_signalled", "?"),
        "every_epoch_once": "yes" if d["every_epoch_once"] else "NO",
    }


README_TABLES = {
    "vae_defaults": vae_defaults,
    "ssvae_defaults": ssvae_defaults,
    "dimred": dimred,
    "anomaly": anomaly,
    "speed": speed_readme,
    "counts": counts_readme,
}


# ---------------------------------------------------------------- filling the template and the README

PLACEHOLDER = re.compile(r"\{\{ ([\w.]+)(?::([^{}]*?))? \}\}")
IF_BLOCK = re.compile(r"\{\{ if ([\w.]+) \}\}\n?((?:(?!\{\{ if ).)*?)\n?\{\{ end \}\}", re.S)


def fill(template, parts):
    """The template with its {{ if }} blocks resolved and its placeholders rendered by ``parts``
    (the syntax is in the module's docstring)."""
    text = re.sub(r"\{\{#.*?\}\}\n?", "", template, flags=re.S).strip()
    named = {m.group(1).split(".")[0] for m in re.finditer(r"\{\{ (?:if )?([\w.]+)[ :]", text)} - {"end"}
    if named != set(parts):
        raise ValueError(
            f"{TEMPLATE.name}: no renderer for {sorted(named - set(parts))}, "
            f"no placeholder for {sorted(set(parts) - named)}"
        )
    cache = {}

    def value(path, strict=True):
        name, *keys = path.split(".")
        if name not in cache:
            cache[name] = parts[name]() or ""
        v = cache[name]
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                if strict:
                    raise ValueError(f"{TEMPLATE.name}: {{{{ {path} }}}}: {name} rendered no {k!r}")
                return None
            v = v[k]
        return v

    def render(m):
        v = value(m.group(1))
        if isinstance(v, dict):
            raise ValueError(f"{TEMPLATE.name}: {{{{ {m.group(1)} }}}} is a dict; name one of its keys")
        try:
            return format(v, m.group(2) or "")
        except (TypeError, ValueError) as e:
            raise ValueError(f"{TEMPLATE.name}: {{{{ {m.group(0)[3:-3]} }}}}: {e}") from e

    while m := IF_BLOCK.search(text):
        text = text[: m.start()] + (m.group(2) if value(m.group(1), strict=False) else "") + text[m.end() :]
    if re.search(r"\{\{ (if [\w.]+|end) \}\}", text):
        raise ValueError(f"{TEMPLATE.name}: an {{{{ if }}}} without its {{{{ end }}}}, or the reverse")
    paragraphs = (PLACEHOLDER.sub(render, p) for p in text.split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p) + "\n"


def results():
    """The whole of benchmarks/RESULTS.md."""
    return fill(TEMPLATE.read_text(), PARTS)


def render_readme(text):
    """The README text with every <!-- TABLE:name --> block re-rendered."""
    marked = set(re.findall(r"<!-- TABLE:(\w+) -->", text))
    if marked != set(README_TABLES):
        raise ValueError(
            f"README: no renderer for tables {sorted(marked - set(README_TABLES))}, "
            f"no table for {sorted(set(README_TABLES) - marked)}"
        )
    for name, fn in README_TABLES.items():
        body = fn()
        text = re.sub(
            rf"(<!-- TABLE:{name} -->\n).*?(<!-- /TABLE:{name} -->)",
            lambda m: m.group(1) + (body + "\n" if body else "") + m.group(2),
            text,
            flags=re.S,
        )
    return text


def main(argv):
    if "--check" in argv:
        stale = [
            p.name
            for p, want in ((RESULTS, results()), (README, render_readme(README.read_text())))
            if not p.exists() or p.read_text() != want
        ]
        if stale:
            print("stale (run `python benchmarks/report.py --write`):", ", ".join(stale))
            return 1
        return 0
    if "--write" in argv:
        RESULTS.write_text(results())
        README.write_text(render_readme(README.read_text()))
        return 0
    print(results(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
