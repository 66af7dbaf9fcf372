"""edgec.manifest: the typed artifact, read back from what a real build wrote."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from edgec.manifest import SCHEMA_VERSION, Manifest, ManifestError, read_manifest


def test_a_real_manifest_round_trips_unchanged(real_build: Path) -> None:
    for target in ("rpi4", "cortex-m4"):
        raw = json.loads((real_build / target / "manifest.json").read_text())
        m = read_manifest(real_build / target)
        assert m.schema_version == SCHEMA_VERSION and m.target_name == target
        assert m.to_dict() == raw  # every key kept, the unknown ones too
        assert Manifest.from_dict(m.to_dict()) == m
        content = (real_build / target / "model.tflite").read_bytes()
        assert m.primary.sha256 == hashlib.sha256(content).hexdigest()
        assert m.profile().name == target


def test_typed_sections_hold_what_build_measured(real_build: Path) -> None:
    rpi4 = read_manifest(real_build / "rpi4")
    assert rpi4.search is not None and rpi4.search.candidates
    assert rpi4.search.candidates[0].label == "plain" and rpi4.search.chosen
    assert rpi4.replay.max_accuracy_drop == 0.2 and rpi4.replay.search
    assert rpi4.replay.data_sha256 == rpi4.data.extra["sha256"] is not None
    micro = read_manifest(real_build / "cortex-m4")
    assert micro.micro is not None and micro.micro.flash["bytes"] > micro.micro.model_bytes
    assert "agreement" in micro.micro.extra  # keys this module does not name pass through
    names = {c.name: c for c in micro.budgets.checks}
    assert names["flash_bytes"].estimate and names["flash_bytes"].source == "estimate"
    assert names["ram_bytes"].source == "emulator"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("schema_version"), "'schema_version' missing"),
        (lambda d: d.update(schema_version=99), "'schema_version' = 99"),
        (lambda d: d.update(schema="something/else"), "'schema'"),
        (lambda d: d["artifacts"][0].pop("sha256"), "'artifacts[0].sha256' missing"),
        (lambda d: d["budgets"].update(ok="yes"), "'budgets.ok'"),
        (lambda d: d["replay"].update(seed="zero"), "'replay.seed'"),
    ],
)
def test_old_or_foreign_manifests_are_one_line_errors(
    real_build: Path, tmp_path: Path, change, field: str, run_cli
) -> None:
    folder = tmp_path / "rpi4"
    shutil.copytree(real_build / "rpi4", folder)
    raw = json.loads((folder / "manifest.json").read_text())
    change(raw)
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=field.replace("[", r"\[").replace("]", r"\]")) as exc:
        read_manifest(folder)
    assert "\n" not in str(exc.value) and str(folder) in str(exc.value)
    code, _, err = run_cli("report", folder)
    assert code == 3 and field.split()[0] in err and "Traceback" not in err
