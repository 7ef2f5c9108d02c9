"""The README is documentation that works: its tables are what benchmarks/report.py renders
from benchmarks/*.json, it holds no benchmark journal, and every ```bash and ```python block
runs as written.

Blocks run in document order in one temporary folder (with `examples/` linked in), as a
user following the README from the repository root would: a later block may use the run
folder an earlier one wrote. `pyro-vae` is this interpreter's `-m pyro_vae.cli`. An HTML
comment on the lines just above a block marks it:

    <!-- needs: fashion-mnist -->   skipped when /usr/share/datasets/fashion-mnist is absent
    <!-- slow: ... -->              skipped unless PYRO_VAE_DOCS_SLOW=1 (benchmark reproductions)
    <!-- not-run: ... -->           never run here: installs packages (make, pip)
    <!-- file: NAME -->             the block is saved as NAME (e.g. a plugin), then run
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")
MAX_README_LINES = 300  # user documentation only: reference lives in `pyro-vae config` / `list`, records in benchmarks/
JOURNAL_PHRASES = ("next to try", "what was tried", "one seed", "exploration")


def _report():
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def readme_blocks(text=None):
    """[(line number, language, code, markers)] for every ```bash / ```python block."""
    lines = (text if text is not None else README.read_text()).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        markers, k = {}, start - 1
        while k >= 0 and lines[k].startswith("<!--"):
            mm = re.match(r"<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->", lines[k])
            if mm:
                markers[mm.group(1)] = mm.group(2)
            k -= 1
        if lang in ("bash", "python"):
            blocks.append((start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", markers))
        i = j + 1
    return blocks


BLOCKS = readme_blocks()


# ---------------------------------------------------------------- tables are up to date


def test_results_md_is_what_report_renders():
    report = _report()
    assert RESULTS.exists(), "benchmarks/RESULTS.md is missing: run `python benchmarks/report.py --write`"
    assert RESULTS.read_text() == report.results(), (
        "benchmarks/RESULTS.md is stale: run `python benchmarks/report.py --write`"
    )


def test_readme_tables_are_what_report_renders():
    report = _report()
    text = README.read_text()
    assert text == report.render_readme(text), "a README table is stale: run `python benchmarks/report.py --write`"
    for name in report.README_TABLES:
        if f"<!-- TABLE:{name} -->" in text:
            body = text.split(f"<!-- TABLE:{name} -->\n", 1)[1].split(f"<!-- /TABLE:{name} -->", 1)[0]
            assert body.strip(), f"README table {name} is empty: its benchmark JSON is missing"


def test_results_template_placeholders_blocks_rows_and_empty_paragraphs():
    report = _report()
    parts = {
        "rows": lambda: [{"a": 1, "b": None, "c": {"d": 2}}, {"a": 2.5, "c": {}}],
        "gone": lambda: "",
        "v": lambda: {"x": 2.5, "none": None, "in": {"k": "deep"}, "empty": []},
    }
    template = (
        "{{# a note for editors }}\n# Title\n\n| a | b | d |\n|---|---|---|\n{{ for rows }}| {a:.1f} | {b} | {c[d]} |\n"
        "\n{{ gone }}\n\n| a |\n|---|\n{{ for v.empty }}| {a} |\n{{ for gone.rows }}| {a} |\n\n{{ if gone }}\nhidden\n\n"
        "also\n{{ end }}\n\nx = {{ v.x:.2f }}{{ if v.none }} never{{ end }}{{ if v }}, {{ v.in.k }}"
        "{{ if v.in }} (nested){{ end }}{{ end }}.\n"
    )
    assert report.fill(template, parts) == (
        "# Title\n\n| a | b | d |\n|---|---|---|\n| 1.0 | - | 2 |\n| 2.5 | - | - |\n\nx = 2.50, deep (nested).\n"
    )


@pytest.mark.parametrize(
    "template,names,error",
    [
        ("{{ v.x }} {{ nobody }}", ["v"], r"no renderer for \['nobody'\], no placeholder for \[\]"),
        ("{{ v.x }}", ["v", "s"], r"no placeholder for \['s'\]"),
        ("{{ v.y }}", ["v"], r"v rendered no 'y'"),
        ("{{ v }}", ["v"], r"is a dict"),
        ("{{ s:.2f }}", ["s"], r"\{\{ s:.2f \}\}: Unknown format code"),
        ("{{ if v }}{{ v.x }}", ["v"], r"without its"),
        ("{{ for v.rows }}| {a} |", ["v"], r"v rendered no 'rows'"),
    ],
)
def test_results_template_errors_are_one_line(template, names, error):
    report = _report()
    parts = {"v": lambda: {"x": 1}, "s": lambda: "text"}
    with pytest.raises(ValueError, match=error) as e:
        report.fill(template, {n: parts[n] for n in names})
    assert "\n" not in str(e.value)


def test_readme_markers_and_readme_tables_must_match():
    report = _report()
    with pytest.raises(ValueError, match=r"no renderer for tables \['nope'\]"):
        report.render_readme(README.read_text() + "<!-- TABLE:nope -->\n<!-- /TABLE:nope -->\n")


# ---------------------------------------------------------------- documentation, not a journal


def test_readme_is_short_and_has_no_benchmark_journal():
    text = README.read_text()
    n = len(text.splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}); move detail to RESULTS.md"
    low = text.lower()
    found = [p for p in JOURNAL_PHRASES if p in low]
    assert not found, f"README.md reads like a benchmark journal ({found}); that belongs in benchmarks/RESULTS.md"


def test_block_extraction_reads_markers():
    text = (
        "intro\n<!-- needs: fashion-mnist -->\n<!-- slow: long -->\n```bash\npyro-vae list\n```\n"
        "```yaml\na: 1\n```\n<!-- file: p.py -->\n```python\nprint(1)\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b[1], b[2]) for b in blocks] == [("bash", "pyro-vae list\n"), ("python", "print(1)\n")]
    assert blocks[0][3] == {"needs": "fashion-mnist", "slow": "long"} and blocks[1][3] == {"file": "p.py"}


def test_readme_has_runnable_blocks():
    assert sum(lang == "bash" for _, lang, _, _ in BLOCKS) >= 3
    assert sum(lang == "python" for _, lang, _, _ in BLOCKS) >= 2


# ---------------------------------------------------------------- every block runs as written


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    (d / "examples").symlink_to(ROOT / "examples")
    return d


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    env["PYTHON"] = sys.executable
    return env


def _params():
    out = []
    for line, lang, code, markers in BLOCKS:
        marks = []
        out.append(pytest.param(line, lang, code, markers, id=f"README.md:{line}-{lang}", marks=marks))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("line,lang,code,markers", _params())
def test_readme_block_runs(line, lang, code, markers, workdir):
    if "not-run" in markers:
        pytest.skip(f"README.md:{line} is not run here: {markers['not-run']}")
    if markers.get("needs") == "fashion-mnist" or str(FASHION) in code:
        if not FASHION.is_dir():
            pytest.skip(f"README.md:{line} needs Fashion-MNIST in {FASHION}")
    if "slow" in markers and os.environ.get("PYRO_VAE_DOCS_SLOW") != "1":
        pytest.skip(f"README.md:{line} is slow ({markers['slow']}); PYRO_VAE_DOCS_SLOW=1 runs it")
    if lang == "python":
        name = markers.get("file", f"readme_block_{line}.py")
        (workdir / name).write_text(code)
        cmd = [sys.executable, name]
    else:
        script = 'set -euo pipefail\npyro-vae() { "$PYTHON" -m pyro_vae.cli "$@"; }\n' + code
        cmd = ["bash", "-c", script]
    p = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (
        f"README.md:{line} ({lang}) failed with exit code {p.returncode}:\n"
        f"{code}\n--- stdout ---\n{p.stdout[-3000:]}\n--- stderr ---\n{p.stderr[-3000:]}"
    )
