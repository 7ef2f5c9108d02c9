"""The fault battery: every fault case of the test suite run once, its outcome recorded.

    python benchmarks/faults.py

Runs ``tests/test_faults.py`` and the checkpoint / signal / resume tests of
``tests/test_engine.py`` (each case a test that fails unless the run keeps its last good
checkpoint and ends in one line), and writes ``benchmarks/faults.json``: one row per case
with its outcome and seconds, plus the versions it ran on. ``report.py`` renders the table.
"""

import json
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [
    "tests/test_faults.py",
    "tests/test_engine.py::test_last_ckpt_holds_every_epoch_with_and_without_validation",
    "tests/test_engine.py::test_kill_9_then_resume_gives_the_uninterrupted_run",
    "tests/test_engine.py::test_a_signal_mid_epoch_saves_a_checkpoint_and_says_how_to_resume",
    "tests/test_engine.py::test_a_damaged_checkpoint_is_a_one_line_error",
    "tests/test_engine.py::test_resume_of_a_folder_without_checkpoints_says_what_to_do",
]


def cases(junit: Path) -> list:
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "held"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED"
            elif child.tag == "skipped":
                outcome = f"skipped: {child.get('message', '')[:80]}"
        rows.append(
            {
                "case": f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}",
                "outcome": outcome,
                "seconds": round(float(case.get("time", 0)), 1),
            }
        )
    return rows


def main():
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *CASES],
            cwd=HERE.parent,
        )
        rows = cases(junit)
    import lightning
    import torch

    tried = [r for r in rows if not r["outcome"].startswith("skipped")]
    out = {
        "rows": rows,
        "tried": len(tried),
        "held": sum(r["outcome"] == "held" for r in tried),
        "versions": {
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
        },
        "command": "python benchmarks/faults.py",
    }
    (HERE / "faults.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['held']} of {out['tried']} fault cases held")
    return 0 if out["held"] == out["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
