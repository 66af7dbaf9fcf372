"""Firmware output: the generated C++ compiles, links and holds exactly the model's bytes.

The generated sources are compiled with the system C++ compiler against a stub
``micro_mutable_op_resolver.h`` written here. The stub's ``Add…`` methods are
copied by hand from TFLM's real header (not from edgec's table), so a wrong
method name in edgec fails to compile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgec.errors import ConversionError
from edgec.firmware import TFLM_ADD_METHODS, resolver_calls, resolver_source, write_firmware
from edgec.micro import fit_report
from edgec.modelinfo import ModelInfo, Op, Tensor, read_model
from edgec.profiles import load_profile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Public Add…() methods of tflite::MicroMutableOpResolver in TFLM's
# tensorflow/lite/micro/micro_mutable_op_resolver.h (2025).
TFLM_HEADER_METHODS = """
AddAbs AddAdd AddAddN AddArgMax AddArgMin AddAssignVariable AddAveragePool2D AddBatchMatMul
AddBatchToSpaceNd AddBroadcastArgs AddBroadcastTo AddCallOnce AddCast AddCeil AddCircularBuffer
AddConcatenation AddConv2D AddCos AddCumSum AddDelay AddDepthToSpace AddDepthwiseConv2D
AddDequantize AddDetectionPostprocess AddDiv AddEmbeddingLookup AddEnergy AddElu AddEqual
AddEthosU AddExp AddExpandDims AddFftAutoScale AddFill AddFilterBank AddFilterBankLog
AddFilterBankSquareRoot AddFilterBankSpectralSubtraction AddFloor AddFloorDiv AddFloorMod
AddFramer AddFullyConnected AddGather AddGatherNd AddGreater AddGreaterEqual AddHardSwish AddIf
AddIrfft AddL2Normalization AddL2Pool2D AddLeakyRelu AddLess AddLessEqual AddLog AddLogicalAnd
AddLogicalNot AddLogicalOr AddLogistic AddLogSoftmax AddMaximum AddMaxPool2D AddMirrorPad AddMean
AddMinimum AddMul AddNeg AddNotEqual AddOverlapAdd AddPack AddPad AddPadV2 AddPCAN AddPrelu
AddQuantize AddReadVariable AddReduceMax AddReduceMin AddRelu AddRelu6 AddReshape
AddResizeBilinear AddResizeNearestNeighbor AddReverseV2 AddRfft AddRound AddRsqrt AddSelectV2
AddShape AddSin AddSlice AddSoftmax AddSpaceToBatchNd AddSpaceToDepth AddSplit AddSplitV
AddSqueeze AddSqrt AddSquare AddSquaredDifference AddStridedSlice AddStacker AddSub AddSum
AddSvdf AddTanh AddTransposeConv AddTranspose AddUnpack AddUnidirectionalSequenceLSTM
AddVarHandle AddWhile AddWindow AddZerosLike
""".split()  # noqa: SIM905 (a readable copy of the header)


def _stub_header() -> str:
    methods = "\n".join(
        f'  TfLiteStatus {m}() {{ return Add("{m}"); }}' for m in TFLM_HEADER_METHODS
    )
    return (
        textwrap.dedent(
            """\
        #pragma once
        #include <cstdio>
        typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
        namespace tflite {
        template <unsigned int tOpCount>
        class MicroMutableOpResolver {
         public:
          unsigned int count = 0;
          TfLiteStatus Add(const char* name) {
            if (count >= tOpCount) return kTfLiteError;  // the real resolver refuses too
            std::printf("op %s\\n", name);
            ++count;
            return kTfLiteOk;
          }
        """
        )
        + methods
        + "\n};\n}  // namespace tflite\n"
    )


_MAIN = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
#include "op_resolver.h"

static_assert(kTensorArenaSize % 16 == 0, "arena size is 16-byte aligned");
alignas(16) static uint8_t tensor_arena[kTensorArenaSize];

int main(int argc, char** argv) {
  if (reinterpret_cast<uintptr_t>(g_model) % 16 != 0) return 3;
  std::printf("len %u\n", g_model_len);
  std::printf("arena %u %u\n", kTensorArenaSize, (unsigned)sizeof(tensor_arena));
  ModelOpResolver fresh;
  if (RegisterModelOps(fresh) != kTfLiteOk) return 4;
  std::printf("registered %u of %u\n", fresh.count, kOpCount);
  // The shared resolver is filled once, however often it is asked for.
  ModelOpResolver& shared = GetModelOpResolver();
  if (&shared != &GetModelOpResolver() || shared.count != kOpCount) return 5;
  FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_model, 1, g_model_len, f);
  std::fclose(f);
  return 0;
}
"""


@pytest.fixture(scope="module")
def int8_model() -> bytes:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.DepthwiseConv2D(3, activation="relu", name="dw"),
            keras.layers.Conv2D(8, 1, activation="relu", name="pw"),
            keras.layers.AveragePooling2D(2, name="pool"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    rng = np.random.default_rng(0)
    calib = rng.random((32, 8, 8, 1), dtype=np.float32)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([row[None]] for row in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _compile(folder, extra: list[str]) -> None:
    inc = folder / "include" / "tensorflow" / "lite" / "micro"
    inc.mkdir(parents=True, exist_ok=True)
    (inc / "micro_mutable_op_resolver.h").write_text(_stub_header())
    cmd = ["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(folder / "include"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr


def test_firmware_compiles_links_and_holds_the_model(int8_model, tmp_path):
    assert shutil.which("g++"), "CI installs a C++ compiler"
    report = fit_report(int8_model, load_profile("cortex-m4"), trusted=True)
    fw = tmp_path / "firmware"
    files = write_firmware(fw, int8_model, report)
    assert sorted(p.name for p in files) == ["model_data.cc", "model_data.h", "op_resolver.h"]
    assert not [p for p in fw.iterdir() if p.name.startswith(".")]  # no temp files left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files)
    source = (fw / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model[] = {" in source
    assert f"const unsigned int g_model_len = {len(int8_model)};" in source
    resolver = (fw / "op_resolver.h").read_text()
    info = read_model(int8_model)
    n = len(info.op_counts)
    assert f"constexpr unsigned int kOpCount = {n};" in resolver
    assert "static tflite::MicroMutableOpResolver<kOpCount> resolver;" in resolver
    for call in ("AddConv2D", "AddDepthwiseConv2D", "AddAveragePool2D", "AddFullyConnected"):
        assert f"resolver.{call}()" in resolver
    header = (fw / "model_data.h").read_text()
    assert f"constexpr unsigned int kTensorArenaSize = {report.arena_recommended};" in header
    assert "10% margin" in header

    (fw / "main.cc").write_text(_MAIN)
    # the model source alone, as C++ (syntax and sizeof)
    check = fw / "size_check.cc"
    check.write_text(
        f'#include "model_data.cc"\nstatic_assert(sizeof(g_model) == {len(int8_model)}, "size");\n'
    )
    _compile(fw, ["-fsyntax-only", "size_check.cc"])
    _compile(fw, ["main.cc", "model_data.cc", "-o", "fw_test"])
    out = subprocess.run(
        [str(fw / "fw_test"), str(tmp_path / "dumped.tflite")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"len {len(int8_model)}" in out
    assert f"arena {report.arena_recommended} {report.arena_recommended}" in out
    assert f"registered {n} of {n}" in out
    registered = [ln.split()[1] for ln in out.splitlines() if ln.startswith("op ")]
    assert sorted(registered) == sorted(resolver_calls(info) * 2)  # fresh + shared resolver
    assert (tmp_path / "dumped.tflite").read_bytes() == int8_model  # byte-exact round trip


def _fake_info(op_names: list[str]) -> ModelInfo:
    t = Tensor(index=0, name="model/some_layer/op", shape=(1, 4), dtype="int8", constant=False)
    ops = tuple(Op(index=i, name=n, inputs=(0,), outputs=(0,)) for i, n in enumerate(op_names))
    return ModelInfo(size_bytes=0, tensors=(t,), ops=ops, inputs=(0,), outputs=(0,))


def test_every_mapped_op_compiles_against_the_tflm_method_list(tmp_path):
    # Every entry of edgec's table names a method TFLM's resolver really has.
    info = _fake_info(list(TFLM_ADD_METHODS))
    (tmp_path / "op_resolver.h").write_text(resolver_source(info))
    (tmp_path / "all.cc").write_text(
        '#include "op_resolver.h"\nint main() { ModelOpResolver r; return RegisterModelOps(r); }\n'
    )
    _compile(tmp_path, ["all.cc", "-o", "all"])
    proc = subprocess.run([str(tmp_path / "all")], capture_output=True, text=True)
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == len(set(TFLM_ADD_METHODS.values()))


def test_op_without_tflm_registration_is_refused(tmp_path):
    info = _fake_info(["CONV_2D", "GELU"])
    with pytest.raises(ConversionError, match=r"op GELU \(from layer 'some_layer'\)"):
        resolver_calls(info)


def test_bad_arena_size_and_nothing_half_written(int8_model, tmp_path):
    with pytest.raises(ConversionError, match="multiple of 16"):
        write_firmware(tmp_path / "firmware", int8_model, arena_bytes=1000)
    assert not (tmp_path / "firmware").exists()


# --- flash from a real link: the generated sources, cross-compiled and linked for the MCU ------

ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]

# A minimal firmware around firmware/: newlib's start-up (crt0, nosys stubs), a static arena
# of kTensorArenaSize in .bss, one initialised variable in .data, and a main that reads every
# byte of the model so nothing is discarded. No TFLM: no package carries its sources.
_FW_MAIN = r"""
#include <stdint.h>
#include "model_data.h"
alignas(16) uint8_t tensor_arena[kTensorArenaSize];
volatile uint32_t g_checksum = 1;
int main() {
  uint32_t sum = 0;
  for (unsigned int i = 0; i < g_model_len; ++i) sum += g_model[i];
  tensor_arena[sum % kTensorArenaSize] = 1;
  g_checksum = sum;
  return 0;
}
"""


def _link_firmware(fw, elf):
    """Cross-compile ``fw``'s model_data.cc and a small main for a Cortex-M4F, link ``elf``."""
    assert shutil.which("arm-none-eabi-gcc"), "CI installs gcc-arm-none-eabi"
    (fw / "fw_main.cc").write_text(_FW_MAIN)
    cmd = [
        "arm-none-eabi-gcc",
        *ARM_FLAGS,
        "-Os",
        "-std=c++17",
        "-fno-exceptions",
        "-fno-rtti",
        "-Wall",
        "-Werror",
        "--specs=nosys.specs",
        "-I",
        str(fw),
        str(fw / "fw_main.cc"),
        str(fw / "model_data.cc"),
        "-o",
        str(elf),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return elf


@pytest.fixture(scope="module")
def linked(int8_model, tmp_path_factory):
    """(fit report, ELF path) for int8_model, linked for cortex-m4."""
    tmp = tmp_path_factory.mktemp("link")
    report = fit_report(int8_model, load_profile("cortex-m4"), trusted=True)
    write_firmware(tmp / "firmware", int8_model, report)
    return report, _link_firmware(tmp / "firmware", tmp / "fw.elf")


def test_firmware_elf_sizes_are_what_the_linker_made(int8_model, linked):
    from elftools.elf.elffile import ELFFile

    from edgec.micro import read_elf

    report, path = linked
    elf = read_elf(path, arch="armv7e-m")
    assert elf.machine == "EM_ARM"
    # GNU size's Berkeley figures: text (code + read-only data), data, bss.
    berkeley = (
        subprocess.run(
            ["arm-none-eabi-size", str(path)], capture_output=True, text=True, check=True
        )
        .stdout.splitlines()[1]
        .split()
    )
    text, data, bss = (int(v) for v in berkeley[:3])
    assert (elf.text + elf.rodata, elf.data, elf.bss) == (text, data, bss)
    assert elf.flash_bytes == text + data and elf.static_ram_bytes == data + bss
    # Per section: GNU size's System V listing and pyelftools' own section headers agree.
    sysv = subprocess.run(
        ["arm-none-eabi-size", "-A", str(path)], capture_output=True, text=True, check=True
    ).stdout
    listed = {ln.split()[0]: int(ln.split()[1]) for ln in sysv.splitlines() if ln.startswith(".")}
    with path.open("rb") as f:
        own = ELFFile(f)
        for s in elf.sections:
            assert listed[s.name] == s.bytes == own.get_section_by_name(s.name)["sh_size"]
    assert {s.kind for s in elf.sections} == {"text", "rodata", "data", "bss"}
    # The model is in flash (rodata), the arena in bss, both found by symbol.
    assert elf.model_bytes == len(int8_model) <= elf.rodata
    assert elf.arena == ("tensor_arena", report.arena_recommended)
    assert elf.bss >= report.arena_recommended


def test_budgets_are_judged_on_the_measured_link(int8_model, linked, tmp_path):
    from edgec.errors import BudgetError, InputError
    from edgec.micro import read_elf

    _, path = linked
    elf = read_elf(path)
    r = fit_report(int8_model, load_profile("cortex-m4"), trusted=True, firmware_elf=path)
    assert r.measured and r.flash_source == "measured" and not r.runtime_code_estimated
    assert r.flash_bytes == elf.flash_bytes  # linked with this very model and arena
    assert r.ram_bytes == elf.static_ram_bytes
    assert r.runtime_code_bytes == elf.flash_bytes - len(int8_model)
    checks = {c["name"]: c for c in r.budget_checks()}
    assert checks["flash_bytes"]["measured"] and not checks["flash_bytes"]["estimate"]
    assert (
        checks["flash_bytes"]["source"] == "artifact"
        and checks["ram_bytes"]["source"] == "emulator"
    )
    assert checks["flash_bytes"]["value"] == elf.flash_bytes
    d = r.to_dict()
    assert d["flash"]["source"] == "measured" and d["ram"]["source"].startswith("measured")
    assert d["firmware_elf"]["text"] == elf.text and d["firmware_elf"]["bss"] == elf.bss
    assert "measured from fw.elf" in r.format_text()
    assert "(measured from fw.elf)" in r.summary_line()

    tight = tmp_path / "tight.toml"
    tight.write_text(
        f'extends = "cortex-m4"\n[budgets]\nflash_bytes = {elf.flash_bytes - 1}\n'
        f"ram_bytes = {elf.static_ram_bytes - 1}\n"
    )
    r = fit_report(int8_model, load_profile(tight), trusted=True, firmware_elf=path)
    with pytest.raises(BudgetError) as exc:
        r.raise_for_failures()
    msg = str(exc.value)
    assert f"flash {elf.flash_bytes:,} bytes > flash_bytes {elf.flash_bytes - 1:,}" in msg
    assert "(measured from fw.elf)" in msg
    assert f"static RAM {elf.static_ram_bytes:,} bytes" in msg and f"bss {elf.bss:,}" in msg

    # Wrong files: a host (x86-64) executable, and something that is not an ELF at all.
    with pytest.raises(InputError, match=r"built for EM_X86_64, .*'armv7e-m' needs EM_ARM"):
        read_elf(os.path.realpath(sys.executable), arch="armv7e-m")
    (tmp_path / "fw.bin").write_bytes(int8_model)
    with pytest.raises(InputError, match=r"fw\.bin: not a readable ELF file"):
        fit_report(
            int8_model, load_profile("cortex-m4"), trusted=True, firmware_elf=tmp_path / "fw.bin"
        )


def test_firmware_elf_from_the_command_line(int8_model, linked, tmp_path, run_cli):
    import json
    from pathlib import Path

    import keras

    from edgec.micro import read_elf

    _, path = linked
    elf = read_elf(path)
    edgec = str(Path(sys.executable).with_name("edgec"))

    def run(*args):
        return subprocess.run([edgec, *args], capture_output=True, text=True, cwd=tmp_path)

    (tmp_path / "m.tflite").write_bytes(int8_model)
    proc = run("inspect", "m.tflite", "-t", "cortex-m4", "--firmware-elf", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    fit = json.loads(proc.stdout)["fit"]
    assert fit["flash"]["source"] == "measured" and fit["flash"]["bytes"] == elf.flash_bytes
    proc = run("inspect", "m.tflite", "--firmware-elf", str(path))
    assert proc.returncode == 2 and "needs --target" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    # A build judged on that link: the ELF holds another model, so edgec puts its own in place.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(tmp_path / "tiny.keras")
    # The builds run the CLI in this process (TensorFlow is loaded once); `inspect` above ran
    # as a real process.
    code, _, err = run_cli(
        "build",
        tmp_path / "tiny.keras",
        "-t",
        "cortex-m4",
        "--firmware-elf",
        path,
        "--out",
        tmp_path / "out",
        "--calibration-size",
        "32",
    )
    assert code == 0, err
    folder = tmp_path / "out" / "tiny" / "cortex-m4"
    manifest = json.loads((folder / "manifest.json").read_text())
    shipped = (folder / "model.tflite").read_bytes()
    micro = manifest["micro"]
    assert micro["flash"]["source"] == "measured"
    assert micro["flash"]["bytes"] == elf.flash_bytes - len(int8_model) + len(shipped)
    assert micro["firmware_elf"]["model_symbol_bytes"] == len(int8_model) != len(shipped)
    assert any("g_model" in n and "in its place" in n for n in micro["notes"])
    flash = next(c for c in manifest["budgets"]["checks"] if c["name"] == "flash_bytes")
    assert flash["value"] == micro["flash"]["bytes"] and not flash["estimate"]
    code, _, err = run_cli(
        "build",
        tmp_path / "tiny.keras",
        "-t",
        "rpi4",
        "--firmware-elf",
        path,
        "--out",
        tmp_path / "o2",
    )
    assert code == 2 and "for microcontroller targets" in err
    assert not (tmp_path / "o2").exists()
