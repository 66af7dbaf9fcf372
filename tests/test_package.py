"""Point 1: one import name, a console script, and no TensorFlow for --help or targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _modules_after(code: str, cwd: Path) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_and_targets_do_not_import_tensorflow(tmp_path):
    for argv in (["--help"], ["targets"], ["targets", "show", "rpi4"]):
        code = (
            "import sys\nfrom edgec.cli import main\nsys.argv = ['edgec', *" + repr(argv) + "]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass"
        )
        loaded = _modules_after(code, tmp_path)
        assert "edgec.cli" in loaded
        assert not {"tensorflow", "keras", "ai_edge_litert"} & loaded, argv


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("edgec")
    out = subprocess.run([str(exe), "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("edgec, version ")


def test_only_edgec_is_importable_from_site_packages(tmp_path):
    code = (
        "import importlib.util, json\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None "
        "for n in ['edgec', 'edgec.targets', 'edgec.harness', 'toolchain', 'targets', 'benchmarks']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    assert found == {
        "edgec": True,
        "edgec.targets": True,
        "edgec.harness": True,
        "toolchain": False,
        "targets": False,
        "benchmarks": False,
    }
