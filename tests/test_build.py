"""Points 6, 7 and 8: artifacts with manifests, budgets, the CLI, and bad input end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgec.artifact import write_artifact


@pytest.fixture(scope="module")
def built(tmp_path_factory, cnn_keras_file, digits_npz, run_cli):
    out = tmp_path_factory.mktemp("out")
    code, stdout, stderr = run_cli(
        "build",
        cnn_keras_file,
        "--target",
        "rpi4",
        "--target",
        "phone",
        "--data",
        digits_npz,
        "--out",
        out,
        "--json",
    )
    assert code == 0, stderr
    return out / "tiny_cnn", json.loads(stdout), stderr


def test_build_writes_artifact_per_target(built):
    root, result, log = built
    assert result["ok"] and {t["target"] for t in result["targets"]} == {"rpi4", "phone"}
    rpi4 = root / "rpi4"
    assert {p.name for p in rpi4.iterdir()} >= {"model.tflite", "manifest.json"}
    assert (root / "phone" / "model.float16.tflite").is_file()
    assert "baseline float32" in log and "[rpi4] ok" in log


def test_manifest_records_everything(built, cnn_keras_file):
    root, _, _ = built
    manifest = json.loads((root / "rpi4" / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    content = (root / "rpi4" / "model.tflite").read_bytes()
    assert art["sha256"] == hashlib.sha256(content).hexdigest() and art["bytes"] == len(content)
    assert art["gzip_bytes"] > 0 and art["quantization"] == "int8"
    assert art["inputs"][0]["shape"] == [1, 8, 8, 1] and art["inputs"][0]["dtype"] == "float32"
    assert "CONV_2D" in art["ops"]
    metrics = art["metrics"]
    assert metrics["accuracy"] > 0.85 and abs(metrics["accuracy_drop"]) < 0.03
    assert (
        metrics["top1_agreement"] > 0.95
        and "max_abs_error" in metrics
        and "host_latency_ms" in metrics
    )
    assert manifest["model"]["sha256"] == hashlib.sha256(cnn_keras_file.read_bytes()).hexdigest()
    assert manifest["target"]["name"] == "rpi4" and manifest["target"]["threads"] == 4
    assert manifest["versions"]["tensorflow"].startswith("2.21")
    assert manifest["budgets"]["ok"] and manifest["baseline"]["bytes"] > art["bytes"]
    assert manifest["calibration"] == {
        "size": 300,
        "synthetic": False,
        "source": manifest["data"]["source"],
    }


def test_inspect_and_eval_cli(built, digits_npz, run_cli):
    root, _, _ = built
    model = root / "rpi4" / "model.tflite"
    code, out, _ = run_cli("inspect", model, "--json")
    info = json.loads(out)
    assert code == 0 and info["ops"]["CONV_2D"] == 1 and info["param_count"] > 1000
    assert info["macs"] == 8 * 8 * 8 * 9 + 512 * 32 + 32 * 10  # conv + two dense layers
    code, out, _ = run_cli("inspect", model)
    assert (
        code == 0
        and "FULLY_CONNECTED" in out
        and "scale" not in out.split("inputs:")[1].split("\n")[1]
    )
    code, out, _ = run_cli("eval", model, "--data", digits_npz, "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.85


def test_budget_failure_writes_nothing_unless_kept(tmp_path, cnn_keras_file, digits_npz, run_cli):
    profile = tmp_path / "tight.toml"
    profile.write_text('extends = "rpi4"\n[budgets]\nmodel_bytes = 1000\n')
    code, _, err = run_cli(
        "build", cnn_keras_file, "-t", profile, "-d", digits_npz, "-o", tmp_path / "o"
    )
    assert code == 5 and "model_bytes" in err and "exceeds 1,000 B" in err
    assert not (tmp_path / "o" / "tiny_cnn" / "tight").exists()
    code, _, _ = run_cli(
        "build",
        cnn_keras_file,
        "-t",
        profile,
        "-d",
        digits_npz,
        "-o",
        tmp_path / "o",
        "--keep-failed",
    )
    manifest = json.loads((tmp_path / "o" / "tiny_cnn" / "tight" / "manifest.json").read_text())
    assert (
        code == 5
        and manifest["budgets"]["ok"] is False
        and manifest["budgets"]["kept_despite_failure"]
    )


def test_artifact_write_is_atomic(tmp_path, real_build):
    from edgec.manifest import read_manifest

    manifest = read_manifest(real_build / "rpi4")
    target = tmp_path / "m" / "rpi4"
    write_artifact(target, {"model.tflite": b"old"}, manifest)

    def explode(_tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_artifact(target, {"model.tflite": b"new"}, manifest, finish=explode)
    assert (target / "model.tflite").read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["rpi4"]  # no temp folder left


def test_demo_builds_rpi4(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--epochs", "3", "--out", tmp_path, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "digits_cnn" and result["baseline"]["accuracy"] > 0.5
    assert (tmp_path / "digits_cnn" / "rpi4" / "model.tflite").is_file()


def _cli(*args, cwd: Path):
    exe = Path(sys.executable).with_name("edgec")
    return subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_bad_input_is_one_line_without_traceback(tmp_path, cnn_keras_file, digits, run_cli):
    import numpy as np

    (tmp_path / "corrupt.tflite").write_bytes(b"\x18\0\0\0TFL3" + bytes(range(256)) * 4)
    (tmp_path / "trunc.keras").write_bytes(cnn_keras_file.read_bytes()[:500])
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, x=digits.x_train, y=digits.y_train + 5)
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, x=digits.x_train[:, :4], y=digits.y_train)
    (tmp_path / "bad.toml").write_text("extends = 'rpi4'\nbogus = 1\n")
    cases = [
        (["inspect", tmp_path / "corrupt.tflite"], 3, "corrupt"),
        (["build", tmp_path / "trunc.keras"], 3, "not a valid .keras archive"),
        (["build", tmp_path / "missing.keras"], 3, "does not exist"),
        (["build", cnn_keras_file, "--data", bad_labels], 3, "labels go up to 14"),
        (["build", cnn_keras_file, "--data", wrong_shape], 3, "the model takes (8, 8, 1)"),
        (["build", cnn_keras_file, "--target", "rpi3"], 2, "unknown target 'rpi3'"),
        (["build", cnn_keras_file, "--target", tmp_path / "bad.toml"], 2, "unknown key 'bogus'"),
        # A failure inside a target's build names the target and the stage.
        (["build", cnn_keras_file, "--pass", "prune"], 3, "build rpi4: stage 'compress' failed: "),
        # A search without labels is refused before any work, not inside a stage.
        (["build", cnn_keras_file, "--search"], 3, "the accuracy-aware search needs labeled data"),
    ]
    for i, (args, code, needle) in enumerate(cases):
        if args[0] == "build":
            args = [*args, "--out", tmp_path / "out"]
        if i < 2:  # as a real process: the exit code and stderr a shell sees
            proc = _cli(*args, cwd=tmp_path)
            got, err = proc.returncode, proc.stderr
        else:
            got, _, err = run_cli(*args)
        lines = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
        assert got == code, (args, err)
        assert len(lines) == 1 and needle in lines[0], (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("model.tflite"))


def test_profile_default_recipe_runs_with_data(built):
    root, result, _ = built
    manifest = json.loads((root / "phone" / "manifest.json").read_text())
    assert [p["id"] for p in manifest["passes"]] == ["prune"]
    assert manifest["recipe"][0]["params"]["final_sparsity"] == 0.6
    assert manifest["passes"][0]["details"]["sparsity_pruned_layers"] >= 0.59
    phone = [a for t in result["targets"] if t["target"] == "phone" for a in t["artifacts"]]
    rpi4 = [a for t in result["targets"] if t["target"] == "rpi4" for a in t["artifacts"]]
    assert phone[0]["gzip_bytes"] < rpi4[0]["gzip_bytes"] * 0.8  # the zeros compress


def test_search_keeps_the_smallest_within_bound_and_ships_the_measured_bytes(
    tmp_path, cnn_keras_file, digits_npz
):
    """No second conversion after the search: model.tflite is the chosen candidate's bytes."""
    from edgec.build import BuildRequest, build
    from edgec.objective import Objective

    request = BuildRequest(
        model=cnn_keras_file,
        targets=("rpi4",),
        data=str(digits_npz),
        out=tmp_path,
        max_accuracy_drop=0.02,
        epochs_scale=0.1,
        objective=Objective.DOWNLOAD,  # rpi4's own is latency; this test is about gzip size
    )
    lines: list[str] = []
    result = build(request, log=lines.append)
    manifest = result.targets[0].manifest.to_dict()
    search = manifest["search"]
    plain = next(c for c in search["candidates"] if c["label"] == "plain")
    chosen = next(c for c in search["candidates"] if c["label"] == search["chosen"])
    assert len(search["candidates"]) >= 3 and search["met"] and result.ok
    assert chosen["gzip_bytes"] < plain["gzip_bytes"] and chosen["accuracy_drop"] <= 0.02
    within = [c for c in search["candidates"] if c["ok"]]
    assert chosen["gzip_bytes"] == min(c["gzip_bytes"] for c in within)
    assert [p["id"] for p in manifest["passes"]] == [p["id"] for p in search["chosen_passes"]]
    art = manifest["artifacts"][0]
    assert art["metrics"]["accuracy"] == chosen["accuracy"]  # the very bytes that were measured
    assert (tmp_path / "tiny_cnn" / "rpi4" / "report.html").is_file()
    # No second conversion: model.tflite is the chosen candidate's measured .tflite, byte for byte.
    from edgec.evaluate import gzip_size

    typed = result.targets[0].manifest.search
    assert typed is not None
    shipped = (tmp_path / "tiny_cnn" / "rpi4" / "model.tflite").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == typed.extra["chosen_sha256"]
    assert len(shipped) == chosen["bytes"] and gzip_size(shipped) == chosen["gzip_bytes"]


def test_epochs_scale_scales_every_pass_and_the_manifest_records_it(
    tmp_path, cnn_keras_file, digits_npz, run_cli
):
    args = ["build", cnn_keras_file, "-t", "rpi4", "-d", digits_npz, "-o", tmp_path]
    code, _, err = run_cli(*args, "--pass", "prune:final_sparsity=0.5", "--epochs-scale", "0.25")
    assert code == 0, err
    manifest = json.loads((tmp_path / "tiny_cnn" / "rpi4" / "manifest.json").read_text())
    assert manifest["replay"]["epochs_scale"] == 0.25
    assert manifest["passes"][0]["details"]["fine_tune"]["epochs"] == 2  # 8 epochs x 0.25
    code, _, err = run_cli(*args, "--epochs-scale", "0")
    assert code == 2 and "--epochs-scale" in err and "range x>0" in err
    replay = ["--from-manifest", tmp_path / "tiny_cnn" / "rpi4" / "manifest.json"]
    code, _, err = run_cli(*args[:2], "-d", digits_npz, *replay, "--epochs-scale", "1")
    assert code == 2 and "the manifest records those" in err


@pytest.mark.parametrize("target", ["cortex-m4", "rpi4"])
def test_build_from_manifest_is_byte_identical(real_build, tmp_path, target, run_cli):
    """`edgec build --from-manifest` replays profile, recipe, search, seed and calibration."""
    from edgec.manifest import read_manifest

    recorded = read_manifest(real_build / target)
    out = tmp_path / "again"
    run = _cli(
        "build",
        recorded.model.source,
        "--data",
        recorded.replay.data,
        "--from-manifest",
        real_build / target / "manifest.json",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    again = out / recorded.model.name / target
    assert (again / "model.tflite").read_bytes() == (
        real_build / target / "model.tflite"
    ).read_bytes()
    replayed = read_manifest(again)
    assert replayed.replay == recorded.replay and replayed.recipe == recorded.recipe
    if recorded.micro is not None:
        name = "firmware/model_data.cc"
        assert (again / name).read_bytes() == (real_build / target / name).read_bytes()
    # Other data than the manifest records is refused, naming both.
    other = tmp_path / "other.npz"
    other.write_bytes(Path(recorded.replay.data).read_bytes() + b"\0")
    # In this process: the replay above is the one that must run in a fresh process.
    code, _, err = run_cli(
        "build",
        recorded.model.source,
        "--data",
        other,
        "--from-manifest",
        real_build / target / "manifest.json",
        "--out",
        out,
    )
    assert code == 3 and "not the data the manifest records" in err
