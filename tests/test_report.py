"""Reports: report.html / report.md per artifact and per build, rendered from stored JSON.

``make_build`` (also used by test_release, test_report_browser and
test_cli_finish) copies the session's real build (conftest ``real_build``):
what ``edgec build`` wrote for two targets, a low-rank pass and the real
search's candidates included, and results/ written by the real on-device
harness run locally.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = "digits_tiny"
TARGETS = ("rpi4", "cortex-m4")


def make_build(dest: Path, real_build: Path) -> Path:
    """A copy of the session's real build (conftest ``real_build``) at ``dest/digits_tiny``."""
    out = dest / MODEL
    shutil.copytree(real_build, out)
    return out


def _pngs(html_text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    ]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, real_build: Path) -> Path:
    return make_build(tmp_path_factory.mktemp("report"), real_build)


def test_artifact_report_has_every_chart_and_table(build: Path) -> None:
    from edgec.report import render_reports

    written = render_reports(build / "rpi4")
    assert [p.name for p in written] == ["report.html", "report.md"]
    text = (build / "rpi4" / "report.html").read_text()
    # Five charts, each a real PNG, and nothing fetched from outside the file.
    for name in ("sizes", "accuracy-size", "pareto", "latency", "memory"):
        assert f'id="chart-{name}"' in text
    pngs = _pngs(text)
    assert len(pngs) == 5 and all(
        p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs
    )
    assert not re.search(r'(src|href)="(?!data:)', text)
    manifest = json.loads((build / "rpi4" / "manifest.json").read_text())
    assert f"{manifest['artifacts'][0]['bytes'] / 1024:.1f} KiB" in text
    assert "lowrank" in text and f"{manifest['search']['chosen']} (chosen)" in text
    md = (build / "rpi4" / "report.md").read_text()
    assert md.startswith("# edgec report: digits_tiny for rpi4")
    assert "| model.tflite | int8 |" in md and "## On-device benchmarks" in md
    assert "local-litert" in md
    # Each budget check says what measured its figure.
    assert re.search(r"^\| max_accuracy_drop \| [^|]+ \| 0\.2 \| host \| ok \|$", md, re.M), md
    assert re.search(r"^\| model_bytes \| [^|]+ \| [^|]+ \| artifact \| ok \|$", md, re.M)


def test_size_stages_go_float_compressed_quantized(build: Path) -> None:
    from edgec.report import ESTIMATE_LABEL, load_artifact, size_stages

    stages = dict(size_stages(load_artifact(build / "rpi4")))
    first, compressed = list(stages)[:2]
    # No float32 file of the compressed model is written: its bar is an estimate, labelled so,
    # and with the fixed part kept it no longer undercuts the int8 file of the same model.
    assert first == "float32" and compressed == ESTIMATE_LABEL
    assert stages["float32"] > stages[compressed] > stages["int8"]
    assert stages["float16"] > stages["int8"]
    # No pass ran for the microcontroller: float32 straight to int8.
    assert list(dict(size_stages(load_artifact(build / "cortex-m4")))) == [
        "float32",
        "int8",
        "int8 gzip",
    ]


def test_estimated_bytes_keeps_the_flatbuffers_fixed_part() -> None:
    """The estimate against real conversions: a narrower model's float32, a plain int8 model."""
    import keras
    import numpy as np

    from edgec.convert import ConvertOptions, convert
    from edgec.pipeline import count_params
    from edgec.report import estimated_bytes
    from edgec.schemes import Quantization

    def net(width: int):
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(width, 3, activation="relu"),
                keras.layers.Conv2D(2 * width, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(4 * width, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    def f32(model) -> int:
        return len(convert(model, ConvertOptions(quantization=Quantization.FLOAT32)))

    big, small = net(16), net(4)
    big_bytes, big_params, small_params = f32(big), count_params(big), count_params(small)
    # A model a quarter as wide, as a pass would leave it: within 3% of its real float32 file,
    # where scaling the file by the parameter count alone misses it by more than 15%.
    real = f32(small)
    assert estimated_bytes(big_bytes, big_params, small_params) == pytest.approx(real, rel=0.03)
    assert big_bytes * small_params / big_params < 0.85 * real
    # At 1 B a weight, the plain int8 file (38k weights) within 10%: int8 keeps int32 biases
    # and per-channel scales the parameter count does not see, so it is a little larger.
    calibration = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype(np.float32)
    int8 = len(convert(big, ConvertOptions(quantization=Quantization.INT8), calibration))
    estimate = estimated_bytes(big_bytes, big_params, big_params, 1)
    assert estimate == pytest.approx(int8, rel=0.10) and estimate < int8


def test_bench_results_in_both_formats(build: Path) -> None:
    from edgec.report import load_artifact

    run = load_artifact(build / "rpi4").runs[0]
    assert run.device == "local-litert" and len(run.samples) >= 40
    assert run.latency["p50"] == pytest.approx(sorted(run.samples)[len(run.samples) // 2], rel=0.5)
    assert run.memory["peak_rss"] >= run.memory["rss_before_load"] > 0
    assert run.measured_on.startswith(os.uname().machine)  # what measured it
    # One reader (results.BenchResult): a foreign document is named as unreadable.
    other = build / "rpi4" / "results" / "bench-pi.json"
    other.write_text(json.dumps({"device": "pi", "latency_ms": {"p50": 2.0}}))
    try:
        runs = {r.file: r for r in load_artifact(build / "rpi4").runs}
        foreign = runs["results/bench-pi.json"]
        assert foreign.result is None and "field 'schema'" in foreign.error
    finally:
        other.unlink()


def test_corrupt_results_are_reported_not_fatal(build: Path) -> None:
    from edgec.report import render_reports

    bad = build / "cortex-m4" / "results" / "bench-broken.json"
    bad.write_bytes(b'{"device": "x", "latency_ms": {"samp')
    try:
        render_reports(build / "cortex-m4")
        md = (build / "cortex-m4" / "report.md").read_text()
        assert "Unreadable:" in md and "bench-broken.json" in md
        assert "local-tflm" in md  # the good run is still there
    finally:
        bad.unlink()


def test_corrupt_manifest_is_one_clear_error(tmp_path: Path) -> None:
    from edgec.errors import InputError
    from edgec.report import render_reports

    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest"):
        render_reports(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_build_summary_covers_all_targets(build: Path) -> None:
    from edgec.report import render_build_summary

    render_build_summary(build)
    text = (build / "report.html").read_text()
    assert "2 targets" in text and len(_pngs(text)) == 5  # the Pareto chart: rpi4's search
    md = (build / "report.md").read_text()
    for target in TARGETS:
        assert f"| {target} |" in md
    assert "rpi4 · local-litert" in text or "rpi4 · local-litert" in md or "local-tflm" in md


def test_render_dir_rerenders_from_json_deterministically(build: Path) -> None:
    from edgec.report import render_dir

    written = render_dir(build)
    assert len(written) == 6  # two per target plus the build summary
    before = {p: p.read_bytes() for p in written}
    render_dir(build)
    assert {p: p.read_bytes() for p in written} == before


def test_reports_without_results_or_search(tmp_path: Path, build: Path) -> None:
    from edgec.report import render_reports

    art = tmp_path / "bare"
    shutil.copytree(build / "cortex-m4", art)
    shutil.rmtree(art / "results")
    render_reports(art)
    text = (art / "report.html").read_text()
    assert 'id="chart-sizes"' in text and 'id="chart-latency"' not in text
    assert "No benchmark results yet" in (art / "report.md").read_text()


def test_chart_files_for_docs(build: Path, tmp_path: Path) -> None:
    """docs/make_charts.py regenerates the README's charts from a build folder."""
    script = Path(__file__).resolve().parents[1] / "docs" / "make_charts.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(build), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "chart-accuracy-size.png",
        "chart-latency.png",
        "chart-memory.png",
        "chart-pareto.png",
        "chart-sizes.png",
    ]


def test_keras_progress_callback_trains_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    import keras
    import numpy as np

    from edgec.progress import keras_progress, progress_enabled

    assert not progress_enabled()  # stderr is captured, not a terminal
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x = np.zeros((8, 4), np.float32)
    hist = model.fit(
        x,
        np.zeros((8, 2), np.float32),
        epochs=3,
        verbose=0,
        callbacks=[keras_progress("fine-tuning", 3)],
    )
    assert len(hist.history["loss"]) == 3
    assert "fine-tuning" not in capfd.readouterr().err
