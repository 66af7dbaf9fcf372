"""The microcontroller fit check, with the real TFLM interpreter (never skipped).

Tiny Keras models on the scikit-learn digits are converted to full int8 by the
real converter and run in TFLM and LiteRT.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from edgec.convert import ConvertOptions, convert
from edgec.data import demo_dataset
from edgec.errors import BudgetError, ConversionError, ExitCode, InputError
from edgec.micro import (
    choose_smallest,
    cost_table,
    fit_report,
    micro_candidates,
    recommended_arena,
)
from edgec.modelinfo import read_model
from edgec.profiles import IODtype, Quantization, load_profile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INT8 = ConvertOptions(
    quantization=Quantization.INT8, input_dtype=IODtype.INT8, output_dtype=IODtype.INT8
)


@pytest.fixture(scope="module")
def digits():
    return demo_dataset()


def _conv_model(dense_units: int = 16):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv_a"),
            keras.layers.MaxPooling2D(name="pool_a"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(dense_units, activation="relu", name="dense_hidden"),
            keras.layers.Dense(10, activation="softmax", name="dense_out"),
        ]
    )


@pytest.fixture(scope="module")
def int8_model(digits) -> bytes:
    model = _conv_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    return convert(model, INT8, digits.calibration(100))


@pytest.fixture(scope="module")
def report(int8_model, digits):
    return fit_report(
        int8_model, load_profile("cortex-m4"), digits.x_val[:60], trusted=True, max_rows=48
    )


def test_fit_report_measures_the_arena_and_agrees_with_litert(report, int8_model):
    info = read_model(int8_model)
    assert report.arena_total == report.arena_head + report.arena_tail > 0
    assert report.arena_required >= report.arena_total
    assert report.arena_recommended == recommended_arena(report.arena_required, 0.10)
    assert report.arena_recommended % 16 == 0
    assert report.arena_recommended >= report.arena_required * 1.10
    assert report.arena_verified
    names = {a.name for a in report.persistent}
    assert "NodeAndRegistration struct" in names
    assert sum(a.bytes for a in report.persistent) <= report.arena_tail
    assert report.ops == info.op_counts
    assert report.agreement is not None and report.agreement.ok
    assert report.agreement.rows == 48
    assert report.agreement.top1_agreement >= 0.99
    assert report.agreement.decisive_rows > 24 and report.agreement.decisive_top1_agreement == 1.0
    assert report.agreement.max_diff_steps <= 2
    assert report.agreement.optimized_top1_agreement is not None  # LiteRT's default kernels too
    assert report.inputs_source == "given"


def test_disagreement_with_litert_fails_the_build(report):
    from dataclasses import replace

    ag = replace(report.agreement, ok=False, decisive_top1_agreement=0.5)
    bad = replace(report, agreement=ag)
    assert not bad.ok
    with pytest.raises(ConversionError, match=r"TFLM and LiteRT .* disagree .* 50\.00% over"):
        bad.raise_for_failures()


def test_arena_figure_is_exact_in_tflm(report, int8_model):
    # The required arena is the real minimum: 16 bytes less does not load.
    from tflite_micro.python.tflite_micro import runtime

    ok = runtime.Interpreter.from_bytes(int8_model, arena_size=report.arena_required)
    ok.invoke()
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(int8_model, arena_size=report.arena_required - 16)


def test_flash_and_ram_budgets(report, int8_model):
    info = read_model(int8_model)
    table = cost_table()
    kernels = sum(table.kernels.get(op, table.default_kernel_code_bytes) for op in info.op_counts)
    assert report.runtime_code_estimated
    raw = table.base_code_bytes + kernels
    assert report.runtime_code_bytes == math.ceil(raw * (1 + table.code_margin)) > raw
    assert report.flash_bytes == len(int8_model) + report.runtime_code_bytes
    assert report.ram_bytes == report.arena_recommended + report.interpreter_ram_bytes
    checks = {c.name: c for c in report.checks}
    assert checks["flash_bytes"].limit == 1_048_576 and checks["flash_bytes"].ok
    assert checks["ram_bytes"].limit == 262_144 and checks["ram_bytes"].ok
    assert report.ok
    report.raise_for_failures()  # fits: no error
    d = json.loads(json.dumps(report.to_dict()))
    assert d["arena"]["recommended"] == report.arena_recommended
    assert d["flash"]["runtime_code_source"].startswith("estimate")
    text = report.format_text()
    assert "estimate" in text and "kTensorArenaSize" in text and "10% margin" in text
    assert f"kTensorArenaSize {report.arena_recommended:,}" in report.summary_line()
    bc = {c["name"]: c for c in report.budget_checks()}
    assert bc["flash_bytes"]["estimate"] and bc["flash_bytes"]["source"] == "estimate"
    assert bc["ram_bytes"]["estimate"] and bc["ram_bytes"]["source"] == "emulator"
    figures = report.figures()  # the budget model's figures, as edgec.budgets judged them
    assert figures.flash_bytes.value == report.flash_bytes and figures.flash_bytes.is_estimate
    assert figures.ram_bytes.value == report.ram_bytes and figures.ram_bytes.source == "emulator"
    assert bc["ram_bytes"]["value"] == report.ram_bytes and not bc["ram_bytes"]["detail"]


def test_too_little_ram_is_refused_with_numbers(int8_model, digits, tmp_path, report):
    small = tmp_path / "tiny-mcu.toml"
    small.write_text('extends = "cortex-m4"\n[budgets]\nram_bytes = 2048\n')
    r = fit_report(int8_model, load_profile(small), digits.x_val[:8], trusted=True)
    assert not r.ok
    with pytest.raises(BudgetError) as exc:
        r.raise_for_failures()
    msg = str(exc.value)
    assert exc.value.exit_code == ExitCode.BUDGET
    assert "ram_bytes 2,048" in msg and f"{r.ram_bytes:,}" in msg
    assert f"{r.arena_total:,}" in msg
    assert "largest activations" in msg and "\n" not in msg
    # the largest activation is named
    assert r.largest_activations[0][0].split("/")[0] in msg
    ram = next(c for c in r.budget_checks() if c["name"] == "ram_bytes")
    assert not ram["ok"] and ram["limit"] == 2048 and ram["detail"] == msg


def test_profile_runtime_code_override(int8_model, digits, tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('extends = "cortex-m4"\n[micro]\nruntime_code_bytes = 12345\n')
    r = fit_report(int8_model, load_profile(p), digits.x_val[:4], trusted=True)
    assert not r.runtime_code_estimated
    assert r.flash_bytes == len(int8_model) + 12345
    small = tmp_path / "small-flash.toml"
    small.write_text('extends = "cortex-m4"\n[budgets]\nflash_bytes = 20000\n')
    r = fit_report(int8_model, load_profile(small), digits.x_val[:4], trusted=True)
    with pytest.raises(BudgetError, match=r"flash .* > flash_bytes 20,000 .*largest weights"):
        r.raise_for_failures()


def test_synthetic_inputs_when_none_given(int8_model):
    r = fit_report(int8_model, load_profile("esp32-s3"))
    assert r.inputs_source.startswith("synthetic")
    assert r.agreement is not None and r.agreement.ok


def test_op_tflm_cannot_run_names_op_and_layer(digits):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="gelu", name="dense_gelu"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    content = convert(model, INT8, digits.calibration(32))
    assert "GELU" in read_model(content).op_counts
    with pytest.raises(ConversionError, match=r"op GELU .*dense_gelu") as exc:
        fit_report(content, load_profile("cortex-m4"), digits.x_val[:4])
    assert exc.value.exit_code == ExitCode.CONVERSION


def test_corrupt_file_is_an_input_error(int8_model):
    with pytest.raises(InputError):
        fit_report(b"not a model at all", load_profile("cortex-m4"))
    truncated = int8_model[: len(int8_model) // 2]
    with pytest.raises((InputError, ConversionError)):
        fit_report(truncated, load_profile("cortex-m4"))


def test_choose_smallest_keeps_per_tensor_dense_when_it_agrees(digits, tmp_path):
    model = _conv_model(dense_units=64)  # a wide dense layer: per-channel scales cost bytes
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    profile = load_profile("cortex-m4")
    cands = micro_candidates(model, profile, digits.calibration(100))
    assert set(cands) == {"per-channel dense", "per-tensor dense"}
    pc, pt = cands["per-channel dense"], cands["per-tensor dense"]
    assert len(pt) < len(pc)
    fc_w = [
        info.tensors[op.inputs[1]]
        for info in [read_model(pt)]
        for op in info.ops
        if op.name == "FULLY_CONNECTED"
    ]
    assert all(len(t.scales) == 1 for t in fc_w)
    x = digits.x_val[:64]
    choice = choose_smallest(cands, profile, x, reference_outputs=model.predict(x, verbose=0))
    rows = {c.label: c for c in choice.table}
    assert rows["per-tensor dense"].model_bytes == len(pt)
    assert rows["per-channel dense"].model_bytes == len(pc)
    agreeing = [c for c in choice.table if c.agrees]
    assert choice.label == min(agreeing, key=lambda c: c.model_bytes).label
    assert choice.content == cands[choice.label]
    assert [c.label for c in choice.table if c.kept] == [choice.label]
    assert choice.report.model_bytes == len(choice.content)
    text = choice.format_text()
    assert "per-tensor dense" in text and "per-channel dense" in text
    json.dumps(choice.to_dict())
    # No candidate can fit at all: the smallest one's lower bounds are the error.
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('extends = "cortex-m4"\n[budgets]\nflash_bytes = 1000\n')
    with pytest.raises(BudgetError, match=r"\(per-tensor dense\): too big .* before TFLM runs"):
        choose_smallest(cands, load_profile(tiny), x)


def test_cost_table_is_data_checked_strictly(tmp_path):
    from edgec.errors import ProfileError
    from edgec.micro import load_cost_table

    table = cost_table()
    assert table.file == "targets/costs/tflm-cortex-m.toml"
    assert table.kernels["CONV_2D"] > table.kernels["RESHAPE"] > 0
    good = (
        'description = "d"\nsource = "s"\narches = ["armv7e-m"]\n[runtime]\nbase_code_bytes = 1\n'
        "default_kernel_code_bytes = 2\ncode_margin = 0.5\nuncertainty = 0.25\n[ram]\ninterpreter_bytes = 3\nresolver_bytes_per_op = 4\n"
    )
    (tmp_path / "ok.toml").write_text(good + "[kernels]\nCONV_2D = 5\n")
    assert load_cost_table(tmp_path / "ok.toml").kernel_code({"CONV_2D": 2, "ADD": 1}) == {
        "ADD": 2,
        "CONV_2D": 5,
    }
    bad = {
        "typo.toml": (good + "[kernels]\nCONV2D = 5\n", r"'kernels.CONV2D' is not an op TFLM"),
        "neg.toml": (good + "[kernels]\nADD = -1\n", r"'kernels.ADD' = -1 must be a whole number"),
        "key.toml": ("margn = 1\n" + good, r"unknown key .margn."),
        "arch.toml": (
            good.replace('arches = ["armv7e-m"]', "arches = []"),
            r"'arches' must be a list",
        ),
        "sub.toml": (
            good.replace("base_code", "basecode"),
            r"unknown key 'runtime.basecode_bytes'",
        ),
    }
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ProfileError, match=msg):
            load_cost_table(tmp_path / name)


def test_flash_estimate_says_when_its_table_is_a_stand_in_for_another_core(int8_model, report):
    # cortex-m4 is one of the cores the table was derived for; ESP32-S3's Xtensa is not.
    stand_in = "no TFLM cost table exists for xtensa-lx7"
    assert not any(stand_in in n for n in report.notes)
    esp = fit_report(int8_model, load_profile("esp32-s3"), trusted=True)
    assert any(stand_in in n and "tflm-cortex-m.toml" in n for n in esp.notes)
    assert esp.flash_bytes == report.flash_bytes  # the same table, so the same estimate


def test_too_big_for_the_board_is_a_budget_error_before_tflm_runs(int8_model, report, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from edgec.micro import lower_bounds

    info = read_model(int8_model)
    bounds = lower_bounds(int8_model, info)
    # pool_a reads conv_a's 6x6x8 int8 output and writes 3x3x8: both live at once (conv_a
    # itself holds 8x8x1 + 6x6x8, less).
    assert (bounds.op, bounds.ram_bytes) == ("MAX_POOL_2D", 6 * 6 * 8 + 3 * 3 * 8)
    assert bounds.flash_bytes == len(int8_model)
    # A lower bound: TFLM's measured activations (the arena head) are never smaller.
    assert bounds.ram_bytes <= report.arena_head
    tiny = tmp_path / "tiny-board.toml"
    tiny.write_text('extends = "cortex-m4"\n[budgets]\nflash_bytes = 1000\nram_bytes = 256\n')
    with pytest.raises(BudgetError) as exc:
        fit_report(int8_model, load_profile(tiny), trusted=True)
    msg = str(exc.value)
    assert exc.value.exit_code == ExitCode.BUDGET
    assert "before TFLM runs" in msg
    assert f"model alone is {len(int8_model):,} bytes > flash_bytes 1,000" in msg
    assert f"op MAX_POOL_2D alone holds {bounds.ram_bytes:,} bytes" in msg
    assert "> ram_bytes 256" in msg

    # As a user meets it: edgec inspect --target exits 5 with one line.
    (tmp_path / "m.tflite").write_bytes(int8_model)
    edgec = str(Path(sys.executable).with_name("edgec"))
    proc = subprocess.run(
        [edgec, "inspect", str(tmp_path / "m.tflite"), "--target", str(tiny)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == ExitCode.BUDGET, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "before TFLM runs" in lines[0] and "ram_bytes 256" in lines[0]


def test_code_estimate_covers_the_measured_resnet8_link():
    # A real link of the MLPerf Tiny ResNet-8 int8 firmware (Cortex-M4F, TFLM + CMSIS-NN, gcc
    # 12.2, default registrations): text + rodata + data besides the model was 112,092 B, and
    # 764 B of static RAM besides the 61,440 B arena (data 116 + bss 62,088, 6 ops).
    table = cost_table()
    ops = dict.fromkeys(
        ["CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"], 1
    )
    assert table.code_bytes(ops) >= 112_092 * 1.1  # covered with room, not only just
    assert table.interpreter_ram(ops) >= 764
    assert 0 < table.uncertainty < 1 and table.code_margin > 0
