"""The whole-job speed benchmarks read what the CLI prints and render what they measured.

benchmarks/vae_speed.py and m2_speed.py parse `pyro-vae ... --profile`'s table from stderr;
a change of its layout must fail here, not leave the benchmark's breakdown silently empty.
"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


harness = _load("bench_harness", ROOT / "benchmarks" / "peers" / "harness.py")


def test_profile_table_round_trips_through_the_benchmark_parser():
    from pyro_vae.utils import Profile

    prof = Profile()
    prof.add("import torch + pyro, config", 2.5)
    prof.add("training epochs (steps)", 31.25)
    prof.add("plot: latent_map.png", 0.75)
    stderr = "some warning\nwhere the time went (wall seconds):\n" + prof.table() + "\nlater line\n"
    parsed = harness.parse_profile(stderr)
    assert parsed["training epochs (steps)"] == 31.25
    assert parsed["plot: latent_map.png"] == 0.75
    assert list(parsed)[:3] == ["import torch + pyro, config", "training epochs (steps)", "plot: latent_map.png"]
    assert list(parsed)[-1] == "total" and sum(k.startswith("the rest") for k in parsed) == 1
    assert "later line" not in parsed
    assert harness.parse_profile("no table here") == {}


def test_epoch_times_from_line_stamps_and_medians():
    lines = [
        (1.0, "[epoch 000]  average training loss: 300"),
        (1.5, "[epoch 000]  average test loss: 290"),
        (4.0, "[epoch 001]  average training loss: 280"),
        (6.0, "[epoch 002]  average training loss: 270"),
    ]
    assert harness.epoch_seconds_from_lines(lines, r"average training loss") == [3.0, 2.0]
    assert harness.median([3.0, None, 1.0, 2.0]) == 2.0
    assert harness.median([]) is None


def test_summary_speedups_and_the_rendered_speed_sections(monkeypatch):
    runs = [
        {
            "name": "ours-fp32",
            "rc": 0,
            "wall_seconds": 40.0,
            "test_loss": 250.0,
            "seconds_per_epoch": 3.0,
            "num_train": 60000,
            "profile": {"training epochs (steps)": 30.0, "test metrics": 1.0, "total": 38.0},
        },
        {"name": "pyro-vae.py", "rc": 0, "wall_seconds": 80.0, "test_loss": 251.0, "seconds_per_epoch": 7.0},
        {"name": "pythae", "rc": 1, "wall_seconds": 5.0, "error": "exit 1: boom"},
    ]
    summary, speedup = harness.summarise(
        runs, "test_loss", flops_per_row=6 * 687200, peak_gflops={"float32": 100.0}, default_rows=60000
    )
    assert speedup == {"pyro-vae.py / ours-fp32": 2.0}  # the failed peer gives no ratio
    assert summary["pythae"]["failed"] == 1
    assert summary["ours-fp32"]["gflop_per_epoch"] == 247.4
    assert summary["ours-fp32"]["percent_of_peak"] == 82.5  # 247.4 GFLOP / 3 s / 100 GFLOP/s
    assert summary["ours-fp32"]["wall_minus_profile_total"] == 2.0

    report = _load("bench_report", ROOT / "benchmarks" / "report.py")
    vae = {
        "summary": summary,
        "speedup": speedup,
        "epochs": 10,
        "threads": 2,
        "repeats": 1,
        "machine": {"cpu": "Test CPU", "cpu_flags": ["avx2"], "cpu_native_bf16": False},
        "matmul_peak": {"gflops": {"float32": 100.0}},
    }
    monkeypatch.setattr(report, "load", lambda name: vae if name == "vae_speed.json" else None)
    line = _readme_table(report, "speed")
    assert "Pyro's `examples/vae/vae.py` takes 2.00x as long" in line and "pythae" not in line
    text = report.results()
    assert "| training epochs (steps) | 60.0 | 30.00 | 75.0% |" in text
    assert "| **whole job** (wall, measured outside) | 77.7 | 40.00 | 100% |" in text
    assert "| Pyro's `examples/vae/vae.py` | 80.0 | 2.00x |" in text


def _readme_table(report, name):
    """The README's table ``name`` as report.py renders it now."""
    text = report.render_readme((ROOT / "README.md").read_text())
    return text.split(f"<!-- TABLE:{name} -->\n", 1)[1].split(f"<!-- /TABLE:{name} -->", 1)[0]


def test_readme_line_uses_the_precision_auto_picks(monkeypatch):
    report = _load("bench_report2", ROOT / "benchmarks" / "report.py")
    summary = {
        "ours-fp32": {"wall_seconds_median": 40.0},
        "ours-bf16": {"wall_seconds_median": 32.0},
        "pyro-vae.py": {"wall_seconds_median": 80.0},
    }
    speedup = {"pyro-vae.py / ours-fp32": 2.0, "pyro-vae.py / ours-bf16": 2.5}
    for native, want in ((True, "2.50x"), (False, "2.00x")):
        vae = {
            "summary": summary,
            "speedup": speedup,
            "epochs": 10,
            "threads": 2,
            "repeats": 1,
            "machine": {"cpu": "Test CPU", "cpu_native_bf16": native},
        }
        monkeypatch.setattr(report, "load", lambda name, vae=vae: vae if name == "vae_speed.json" else None)
        assert f"takes {want} as long" in _readme_table(report, "speed")


def test_the_floor_benchmarks_plain_torch_step_is_the_same_estimator_as_pyros():
    """speed_floor.py times a plain-torch loss as the floor under Pyro's: it must estimate the
    same -ELBO (else its speed says nothing). Averaged over many z draws, both agree."""
    import torch
    from pyro_vae.config import load_config
    from pyro_vae.data import load_data
    from pyro_vae.train import build_model
    from pyro_vae.training import plan_for

    floor = _load("speed_floor", ROOT / "benchmarks" / "speed_floor.py")
    cfg = load_config(None, ["data.name=digits", "latent_dim=4", "encoder.hidden=[32]", "decoder.hidden=[32]"])
    data = load_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.info())
    model.num_data = len(data.train)
    plan = plan_for(model, cfg)
    x = data.train.x[:64]
    plain = floor.torch_loss(model, torch)
    with torch.no_grad():
        a = torch.stack([plan.loss(x) for _ in range(400)])
        b = torch.stack([plain(x) for _ in range(400)])
    se = ((a.var() + b.var()) / 400).sqrt()
    assert abs(float(a.mean() - b.mean())) < 4 * float(se) + 1e-3 * abs(float(a.mean())), (a.mean(), b.mean(), se)
    # and it is a loss of the right size: the minibatch -ELBO scaled to the training rows
    per_datum = float(b.mean()) / model.num_data
    assert 10 < per_datum < 200


def test_breakdown_splits_the_steps_into_the_bare_step_and_lightning_and_cpu_ratios():
    vae = _load("bench_vae_speed", ROOT / "benchmarks" / "vae_speed.py")
    prof = {
        "import torch + pyro, config": 2.0,
        "import Lightning (the engine)": 3.0,
        "data": 1.0,
        harness.STEPS: 20.0,
        harness.LOOP: 2.0,
        "test metrics": 0.5,
        "plot: samples.png": 0.25,
        "plot: latent_map.png": 0.25,
        "the rest (interpreter start-up, the command's own work)": 0.5,
        "total": 29.5,
    }
    runs = [
        {"name": "ours-fp32", "rc": 0, "wall_seconds": 30.0, "cpu_seconds": 25.0, "profile": prof},
        {"name": "pyro-vae.py", "rc": 0, "wall_seconds": 75.0, "cpu_seconds": 75.0},
    ]
    summary, speedup = harness.summarise(runs, "test_loss")
    assert speedup == {"pyro-vae.py / ours-fp32": 2.5}
    assert summary["pyro-vae.py"]["cpu_speedup"] == {"ours-fp32": 3.0}
    assert harness.training_seconds(prof) == 22.0 and harness.training_seconds({"training epochs (steps)": 5}) == 5
    summary["ours-fp32"].update(steps_per_epoch=200, epochs=10)
    b = vae.breakdown(summary, {"ours-fp32": {"ms_per_step": 8.0}})["ours-fp32"]
    sec = b["seconds"]
    assert sec["training steps, the step alone"] == 16.0  # 2000 steps x 8 ms
    assert sec["training steps, Lightning's work inside each step"] == 4.0
    assert sec["the loop around the steps (next batch, hooks)"] == 2.0 and b["loop_ms_per_step"] == 1.0
    assert sec["start-up (interpreter, imports, config)"] == 6.0  # imports + the rest + exec/exit (0.5)
    assert sec["pictures"] == 0.5 and b["ms_per_step_in_job"] == 10.0
    assert abs(sum(sec.values()) - 30.0) < 1e-9  # every second of the wall clock lands in one group
