"""Render the benchmark JSON files as the Markdown tables shown in the README.

    .venv/bin/python benchmarks/report.py
"""
import json
from pathlib import Path

HERE = Path(__file__).parent


def load(name):
    p = HERE / name
    return json.loads(p.read_text()) if p.exists() else None


def vae_speed():
    d = load("vae_speed.json")
    if not d:
        return ""
    ref = d["reference"]["pyro_examples_vae_py_seconds_per_epoch"]
    lines = ["| variant | s/epoch | speed-up vs Pyro's vae.py (6.6 s) | test loss after %d epochs (nats) |" % d["results"][0]["epochs"],
             "|---|---|---|---|"]
    for r in d["results"]:
        lines.append(f"| {r['variant']} | {r['seconds_per_epoch']:.2f} | {ref / r['seconds_per_epoch']:.1f}x | {r['test_loss']:.1f} |")
    return "\n".join(lines)


def priors_likelihoods():
    d = load("priors_likelihoods.json")
    if not d:
        return ""
    out = []
    for section, title in (("priors", "prior"), ("likelihoods", "likelihood")):
        rows = [r for r in d["rows"] if r["section"] == section]
        if not rows:
            continue
        out.append(f"| {title} | epochs | test loss (-ELBO) | test log-likelihood (IWAE) | active units | s/epoch |")
        out.append("|---|---|---|---|---|---|")
        for r in rows:
            ll = f"{r['test_log_likelihood']:.1f}" if "test_log_likelihood" in r else "-"
            out.append(f"| {r['name']} | {r['epochs']} | {r['test_loss']:.1f} | {ll} | {r.get('active_units', '-')} | {r['seconds_per_epoch']:.1f} |")
        out.append("")
    return "\n".join(out)


def _ssvae_setup(overrides):
    o = dict(x.split("=", 1) for x in overrides)
    clf = "conv" if o.get("ssvae.classifier_type") == "conv" else "MLP 500"
    if o.get("ssvae.classifier_activation"):
        clf += f" ({o['ssvae.classifier_activation']})"
    if float(o.get("ssvae.classifier_dropout", 0)):
        clf += f" + dropout {o['ssvae.classifier_dropout']}"
    if int(o.get("ssvae.augment_shift", 0)):
        clf += f" + shift {o['ssvae.augment_shift']} px"
    if o.get("ssvae.augment_flip", "false").lower() == "true":
        clf += " + flips"
    if o.get("ssvae.shift_unlabelled", "false").lower() == "true":
        clf += " (also in q(y|x) of the unlabelled term)"
    if float(o.get("ssvae.consistency_weight", 0)):
        clf += f" + consistency {o['ssvae.consistency_weight']}"
    if float(o.get("ssvae.vat_weight", 0)):
        clf += f" + VAT {o['ssvae.vat_weight']} (eps {o.get('ssvae.vat_eps', 0.3)})"
    if float(o.get("ssvae.entropy_weight", 0)):
        clf += f" + entropy {o['ssvae.entropy_weight']}"
    if "ssvae.aux_loss_multiplier" in o:
        clf += f", alpha {o['ssvae.aux_loss_multiplier']}"
    if o.get("ssvae.decoder_label", "first") != "first":
        clf += f", label in {o['ssvae.decoder_label']} decoder layer"
    if o.get("train.lr_schedule", "constant") != "constant":
        clf += f", {o['train.lr_schedule']} lr"
    # the rows with no overrides at all ran when the config's default was bf16-mixed;
    # every later row ran under the current default, 32-true, unless it says otherwise
    return f"{clf}, {o.get('trainer.precision', '32-true' if o else 'bf16-mixed')}"


def ssvae():
    d = load("ssvae.json")
    if not d or not d.get("summary"):
        return ""
    lines = ["| labels | q(y\\|x), precision | epochs | seeds | M2 test accuracy (mean ± sd) | "
             "same classifier, labels only | s/epoch |",
             "|---|---|---|---|---|---|---|"]
    for s in d["summary"]:
        lines.append(f"| {s['labels']} | {_ssvae_setup(s['overrides'])} | {s['epochs']} | {s['seeds']} | "
                     f"{s['ssvae_mean']:.3f} ± {s['ssvae_sd']:.3f} | "
                     f"{s['supervised_mean']:.3f} ± {s['supervised_sd']:.3f} | {s['seconds_per_epoch']} |")
    return "\n".join(lines)


def dimred():
    d = load("dimred.json")
    if not d:
        return ""
    lines = [f"| dimensions | k-NN accuracy on VAE latent means | k-NN accuracy on PCA | VAE epochs | active units |",
             "|---|---|---|---|---|"]
    for r in d["results"]:
        lines.append(f"| {r['dims']} | {r['knn_accuracy_vae']:.3f} | {r['knn_accuracy_pca']:.3f} | {r['epochs']} | {r['active_units']} |")
    k = d["results"][0]["k"]
    lines.append(f"\n(k={k} neighbours fitted on {d['train_subset_for_knn']} training codes, scored on the 10k test set.)")
    return "\n".join(lines)


def anomaly():
    d = load("anomaly.json")
    if not d:
        return ""
    rows = d if isinstance(d, list) else [d]
    lines = ["| held-out class | score | AUROC (score) | AUROC (reconstruction error) | epochs |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['excluded_class']} ({r['excluded_name']}) | {r['score']} | {r['auroc_score']:.3f} | "
                     f"{r['auroc_recon_error']:.3f} | {r['epochs']} |")
    return "\n".join(lines)


TABLES = {"vae_speed": vae_speed, "priors_likelihoods": priors_likelihoods, "ssvae": ssvae,
          "dimred": dimred, "anomaly": anomaly}


def write_readme(path):
    """Replace each <!-- TABLE:name --> ... <!-- /TABLE:name --> block of the README."""
    import re

    text = path.read_text()
    for name, fn in TABLES.items():
        body = fn()
        if body:
            text = re.sub(rf"(<!-- TABLE:{name} -->\n).*?(<!-- /TABLE:{name} -->)",
                          lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    import sys

    if "--write-readme" in sys.argv:
        write_readme(HERE.parent / "README.md")
    else:
        for name, fn in TABLES.items():
            print(f"### {name}\n\n{fn()}\n")
