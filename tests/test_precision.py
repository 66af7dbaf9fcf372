"""Float fall-back where the runtime has float kernels, int4 weights where it has int4 kernels.

Real models built here: an audio-like classifier whose front end computes a
log-power spectrum (a fixed DFT, SQUARE, ADD, LOG, NEG: SQUARE and NEG have no
int8 kernel), and small digit classifiers for the int4 schemes. Builds run
the real converter, quantizer, LiteRT and (for cortex-m4) the TFLM interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.build import BuildRequest, build
from edgec.convert import ConvertOptions, convert
from edgec.errors import ConversionError
from edgec.micro import fit_report
from edgec.modelinfo import read_model
from edgec.profiles import load_profile
from edgec.schemes import IODtype, Quantization

EDGEC = str(Path(sys.executable).with_name("edgec"))
FRAMES, HOP, CLASSES = 8, 32, 4
# Calibration samples per conversion: the int4 quantizer calibrates in a Python loop, one
# sample at a time (about 10 ms each), and a mixed-int4 plan converts up to 9 times per
# target. What these tests check (which ops stay float, which layers go int4 and in what
# order, the arena) does not depend on how many samples set the int8 ranges.
CALIB = 64


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> tuple[Path, Path]:
    """A tone classifier on raw frames: log-magnitude DFT front end, then two Dense layers."""
    import keras
    from keras import ops

    rng = np.random.default_rng(0)
    n = 600
    t = np.arange(FRAMES * HOP) / 8000.0
    y = rng.integers(0, CLASSES, n)
    freq = 500 + 700 * y[:, None] + rng.normal(0, 30, (n, 1))
    x = np.sin(2 * np.pi * freq * t) * rng.uniform(0.3, 1.0, (n, 1))
    x = (x + rng.normal(0, 0.3, x.shape)).reshape(n, FRAMES, HOP).astype(np.float32)

    keras.utils.set_random_seed(0)
    k, m = np.arange(HOP // 2 + 1), np.arange(HOP)
    angle = 2 * np.pi * np.outer(m, k) / HOP
    dft_w = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)
    inp = keras.Input((FRAMES, HOP))
    dft = keras.layers.Dense(dft_w.shape[1], use_bias=False, trainable=False, name="dft")
    logmag = ops.negative(ops.log(ops.square(dft(inp)) + 1e-3))
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(logmag))
    model = keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax")(h), name="tones")
    dft.set_weights([dft_w])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:480], y[:480], epochs=10, batch_size=32, verbose=0)

    root = tmp_path_factory.mktemp("audio")
    np.savez(root / "tones.npz", x_train=x[:480], y_train=y[:480], x_val=x[480:], y_val=y[480:])
    model.save(root / "tones.keras")
    return root / "tones.keras", root / "tones.npz"


def test_litert_target_keeps_float_fallback_ops_and_a_microcontroller_refuses(audio, tmp_path):
    model, data = audio
    out = tmp_path / "out"
    # int8 power spectra lose a few points here (the float SQUARE's output is quantized
    # before LOG), so this board's accuracy bound is 10 points, not rpi4's 1.
    board = tmp_path / "rpi4-audio.toml"
    board.write_text('extends = "rpi4"\n[budgets]\nmax_accuracy_drop = 0.10\n')
    req = BuildRequest(
        model=model, targets=(str(board),), data=str(data), out=out, calibration_size=CALIB
    )
    result = build(req, _quiet)
    assert result.ok, result.targets[0].message
    art = result.targets[0].manifest.to_dict()["artifacts"][0]
    conv = art["conversion"]
    ops = {r["op"]: r for r in conv["float_fallback_ops"]}
    assert set(ops) == {"NEG", "SQUARE"}, ops
    # Elementwise ops do no MACs; their share of the compute is small but not zero.
    assert conv["float_fallback_macs_share"] == 0.0
    assert 0.0 < conv["float_fallback_compute_share"] < 0.1
    assert ops["SQUARE"]["compute"] == FRAMES * 2 * (HOP // 2 + 1)  # one per output element
    assert art["metrics"]["accuracy"] > 0.85
    written = json.loads((out / "tones" / "rpi4-audio" / "manifest.json").read_text())
    assert written["artifacts"][0]["conversion"] == conv
    assert written["target"]["float_fallback"] == "allow"
    report = (out / "tones" / "rpi4-audio" / "report.md").read_text()
    assert "keeps float fall-back ops (no int8 kernel): SQUARE x1, NEG x1" in report

    with pytest.raises(ConversionError, match=r"computes in float in ops NEG, SQUARE;"):
        build(
            BuildRequest(
                model=model, targets=("cortex-m4",), data=str(data), out=out, calibration_size=CALIB
            ),
            _quiet,
        )
    assert not (out / "tones" / "cortex-m4").exists()


def test_cli_quantization_overrides_the_profile_for_one_build(audio, tmp_path, run_cli):
    model, data = audio
    out = tmp_path / "out"
    board = tmp_path / "rpi4-audio.toml"
    board.write_text('extends = "rpi4"\n[budgets]\nmax_accuracy_drop = 0.10\n')
    args = ["-d", str(data), "--out", str(out), "--calibration-size", str(CALIB), "--quantization"]
    # The build through the real click CLI in this process (TensorFlow is already loaded);
    # the refusal below runs as a real process, as a user would see it.
    code, _, err = run_cli("build", model, "-t", board, *args, "int4", "--json")
    assert code == 0, err[-2000:]
    manifest = json.loads((out / "tones" / "rpi4-audio" / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["quantization"] == "int4" and manifest["target"]["quantization"] == "int4"
    # The dense layers' weights are int4; the fixed DFT is one of them.
    assert len(art["conversion"]["int4_weights"]) == 3
    # The quantizer's int8 policy has no LOG either, so LOG stays float here too.
    kept = {r["op"] for r in art["conversion"]["float_fallback_ops"]}
    assert kept == {"LOG", "NEG", "SQUARE"}, kept

    bad = subprocess.run(
        [EDGEC, "build", str(model), "-t", "cortex-m4", *args, "dynamic"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--quantization dynamic does not run on cortex-m4's runtime (tflm)" in bad.stderr
    assert not (out / "tones" / "cortex-m4").exists()


def test_mixed_int4_chooses_layers_by_measured_sensitivity_and_runs_on_each_target(
    cnn_keras_file, digits_npz, tmp_path
):
    out = tmp_path / "out"
    req = BuildRequest(
        model=cnn_keras_file,
        targets=("rpi4", "cortex-m4"),
        data=str(digits_npz),
        out=out,
        quantization=Quantization.MIXED_INT4,
        calibration_size=CALIB,
    )
    result = build(req, _quiet)
    assert result.ok, [t.message for t in result.targets]
    for t in result.targets:
        art = t.manifest.to_dict()["artifacts"][0]
        plan = art["conversion"]["precision"]
        bound = 0.01 if t.target == "rpi4" else 0.02
        assert plan["max_accuracy_drop"] == bound
        layers = plan["layers"]
        assert {x["op"] for x in layers} == {"CONV_2D", "FULLY_CONNECTED"} and len(layers) == 3
        # Tried least sensitive first; the int4 set is a prefix of that order.
        keys = [(x["sensitivity"], -x["weights"]) for x in layers]
        assert keys == sorted(keys)
        flags = [x["int4"] for x in layers]
        assert flags == sorted(flags, reverse=True) and flags[0], plan
        assert len(art["conversion"]["int4_weights"]) == sum(flags)
        # The plan's accuracy is within the bound of the float baseline, and it is the
        # accuracy the shipped artifact has.
        assert plan["reference_accuracy"] - plan["accuracy"] <= bound + 1e-9
        assert art["metrics"]["accuracy"] == pytest.approx(plan["accuracy"], abs=1e-6)
    micro = result.targets[1].manifest.to_dict()["micro"]
    # It ran in TFLM, agreeing with LiteRT, and the RAM report counts the int4 unpacking.
    assert micro["agreement"]["ok"]
    assert micro["ram"]["int4_unpack_scratch_bytes"] > 0
    assert any("unpacks each into an int8 scratch buffer" in n for n in micro["notes"])


def test_tflm_unpacks_int4_weights_into_the_arena(digits):
    """Arena with int8 against int4 weights, same model: the difference is the unpack buffer."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),  # 1024 x 64 = 65,536 weights
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    profile = load_profile("cortex-m4")
    reports = {}
    for q in (Quantization.INT8, Quantization.INT4):
        opts = ConvertOptions(
            quantization=q,
            input_dtype=IODtype.INT8,
            output_dtype=IODtype.INT8,
            per_channel_dense=False,
        )
        content = convert(model, opts, digits.calibration(CALIB))
        reports[q] = (len(content), fit_report(content, profile, digits.x_val[:16], trusted=True))
    (b8, r8), (b4, r4) = reports[Quantization.INT8], reports[Quantization.INT4]
    assert r8.agreement.ok and r4.agreement.ok  # both run in TFLM, matching LiteRT
    assert b4 < 0.6 * b8  # flash: the big dense layer at 4 bits
    assert r8.int4_unpack_bytes == 0 and r4.int4_unpack_bytes == 65_536
    # The head (activations and scratch) grows by about the largest unpacked layer.
    grown = r4.arena_head - r8.arena_head
    assert 0.9 * 65_536 <= grown <= 65_536 + 1024, (r8.arena_head, r4.arena_head)
    assert r4.ram_bytes > r8.ram_bytes + 60_000


def test_int4_artifact_weights_are_really_four_bit(cnn_model, digits):
    content = convert(
        cnn_model, ConvertOptions(quantization=Quantization.INT4), digits.calibration(CALIB)
    )
    info = read_model(content)
    packed = [t for t in info.tensors if t.constant and t.dtype == "int4"]
    assert packed and all(t.scales for t in packed)
