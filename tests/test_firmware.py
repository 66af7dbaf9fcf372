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
