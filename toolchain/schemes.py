"""Quantization schemes as one table: what each scheme is, how it is made, and what runs it.

Everything that depends on the scheme reads ``SCHEMES``: the profile schema
(``quantization``/``variants`` must name a scheme whose runtimes include the
profile's), conversion (``edgec.convert`` takes its converter or quantizer
settings from the entry and has no default branch), the microcontroller
candidates, the I/O types a build may ask for, and the report's stage order.
A new scheme is one entry here plus one row in ``tests/test_schemes.py``'s
runtime matrix (which converts a tiny model in every scheme and runs it in every
runtime the entry claims).

Two ways to make an artifact:

- ``converter``: TensorFlow's ``TFLiteConverter`` from the Keras model or
  SavedModel (float32, dynamic range, float16, full int8 with calibration).
- ``quantizer``: the LiteRT quantizer (``litert-quantizer``, imported as
  ``litert_quantizer``) on the float32 flatbuffer. It is the only path from a
  float ``.tflite`` input, and the only one that writes int4 weights.

Int4 weights, and where they run (read from the sources, then checked by
running every int4 artifact in each runtime, see ``tests/test_schemes.py``):

- litert-quantizer 0.11 ``default_policy.py``: the static ``static_wi4_ai8``
  config (int4 weights, int8 activations) is offered for ``FULLY_CONNECTED``
  and ``CONV_2D`` only; ``DEPTHWISE_CONV_2D`` keeps int8 weights.
- TFLM (tensorflow/tflite-micro ``tensorflow/lite/micro/kernels/``):
  ``fully_connected.cc`` and ``conv_common.cc`` (also ``depthwise_conv_common.cc``)
  accept an ``kTfLiteInt4`` filter with int8 input. Prepare requests a scratch
  buffer in the arena of the filter's element count
  (``RequestScratchBufferInArena(context, filter_size, ...)``) and Eval unpacks
  the packed nibbles into it with ``UnpackDenseInt4IntoInt8`` on every invoke:
  the weights are stored at 4 bits in flash but cost one byte per weight of
  arena RAM while the op runs (the largest such layer counts, as the arena
  planner reuses scratch space between ops). ``fully_connected_common.cc``
  refuses per-channel scales with int4 weights, so fully connected int4
  weights are per-tensor here.
- LiteRT / TFLite kernels (``tensorflow/lite/kernels/fully_connected.cc``,
  ``conv.cc``): int4 filters with int8 input are unpacked once at Prepare;
  checked here on ``ai-edge-litert`` 2.3 and ``tflite-runtime`` 2.14.

So int4 schemes run on every target: LiteRT boards (rpi4, rpi5, phone, x86-64)
and TFLM boards (cortex-m4, cortex-m7, esp32-s3), with the arena cost above on
TFLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Quantization(StrEnum):
    FLOAT32 = "float32"
    DYNAMIC = "dynamic"  # int8 weights, float activations
    FLOAT16 = "float16"
    INT8 = "int8"  # full integer, calibrated on a representative set
    INT4 = "int4"  # int4 weights where a kernel exists (conv, dense), int8 elsewhere
    MIXED_INT4 = "mixed-int4"  # int4 or int8 per layer, chosen by measured sensitivity


class IODtype(StrEnum):
    FLOAT32 = "float32"
    INT8 = "int8"
    UINT8 = "uint8"


class RuntimeName(StrEnum):
    """The interpreters an artifact may be run by (a profile names one of litert/tflm)."""

    LITERT = "litert"  # ai-edge-litert
    TFLITE_RUNTIME = "tflite-runtime"  # the older standalone package, common on boards
    TFLM = "tflm"  # TensorFlow Lite for Microcontrollers


class FloatFallback(StrEnum):
    """Whether an integer-only scheme's artifact may keep float ops that have no int8 kernel."""

    REFUSE = "refuse"  # the build fails naming the ops (microcontrollers)
    ALLOW = "allow"  # kept and named, with their share of the compute (LiteRT boards)


@dataclass(frozen=True, kw_only=True)
class ConverterSettings:
    """How ``TFLiteConverter`` is set up for a scheme."""

    optimize: bool  # tf.lite.Optimize.DEFAULT
    supported_types: tuple[str, ...] = ()  # tf dtype names, e.g. ("float16",)
    calibrated_int8: bool = False  # representative data, int8 builtins, I/O types applied


@dataclass(frozen=True, kw_only=True)
class QuantizerSettings:
    """How the LiteRT quantizer is set up for a scheme (on a float32 flatbuffer)."""

    static: bool  # int8 activations calibrated on representative data; else dynamic range
    int4_ops: tuple[str, ...] = ()  # TFLite ops whose weights become int4 (all of them)
    per_layer: bool = False  # int4 only on the layers the build chose (ConvertOptions.int4_layers)


@dataclass(frozen=True, kw_only=True)
class Scheme:
    name: Quantization
    summary: str
    weights: str
    activations: str
    # From a Keras model or SavedModel: the converter, or None to convert to
    # float32 first and hand the flatbuffer to the quantizer.
    converter: ConverterSettings | None
    # From a float32 flatbuffer: the quantizer, or None where it offers nothing
    # (float32 needs no quantizer; float16 is refused with ``no_quantizer``).
    quantizer: QuantizerSettings | None
    no_quantizer: str = ""  # why a .tflite input cannot be given this scheme
    integer_only: bool
    io_types: frozenset[IODtype]
    runtimes: frozenset[RuntimeName]
    # The report's size chart, left to right as the compiler goes (1 is the
    # "compressed" float stage between float32 and the first scheme).
    stage_order: int

    @property
    def calibrated(self) -> bool:
        """Needs a representative (calibration) set."""
        if self.converter is not None and self.converter.calibrated_int8:
            return True
        return self.quantizer is not None and self.quantizer.static

    @property
    def per_layer_int4(self) -> bool:
        return self.quantizer is not None and self.quantizer.per_layer

    def runs_on(self, runtime: str) -> bool:
        return RuntimeName(runtime) in self.runtimes


_ALL_IO = frozenset(IODtype)
_FLOAT_IO = frozenset({IODtype.FLOAT32})
# The LiteRT quantizer makes float or int8 edges; uint8 edges only come from the converter.
_QUANTIZER_IO = frozenset({IODtype.FLOAT32, IODtype.INT8})
_EVERY_RUNTIME = frozenset(RuntimeName)
_OS_RUNTIMES = frozenset({RuntimeName.LITERT, RuntimeName.TFLITE_RUNTIME})
# The ops litert-quantizer's static_wi4_ai8 policy covers (see the module docstring).
INT4_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")

_TABLE = (
    Scheme(
        name=Quantization.FLOAT32,
        summary="float32 weights and activations (the baseline)",
        weights="float32",
        activations="float32",
        converter=ConverterSettings(optimize=False),
        quantizer=None,
        integer_only=False,
        io_types=_FLOAT_IO,
        runtimes=_EVERY_RUNTIME,
        stage_order=0,
    ),
    Scheme(
        name=Quantization.FLOAT16,
        summary="float16 weights, dequantized to float32 at load",
        weights="float16",
        activations="float32",
        converter=ConverterSettings(optimize=True, supported_types=("float16",)),
        quantizer=None,
        no_quantizer="float16 from a .tflite input is not offered by the LiteRT quantizer; "
        "give the Keras model or SavedModel instead, or use 'dynamic' or 'int8'",
        integer_only=False,
        io_types=_FLOAT_IO,
        # TFLM's DEQUANTIZE has no float16 input, and TFLM runs no hybrid ops.
        runtimes=_OS_RUNTIMES,
        stage_order=2,
    ),
    Scheme(
        name=Quantization.DYNAMIC,
        summary="int8 weights, float activations quantized on the fly (hybrid kernels)",
        weights="int8",
        activations="float32",
        converter=ConverterSettings(optimize=True),
        quantizer=QuantizerSettings(static=False),
        integer_only=False,
        io_types=_FLOAT_IO,
        # "Hybrid models are not supported on TFLite Micro"; and TF 2.21's converter
        # writes FULLY_CONNECTED version 12 for hybrid ops, which tflite-runtime 2.14
        # cannot register (found by tests/test_schemes.py).
        runtimes=frozenset({RuntimeName.LITERT}),
        stage_order=3,
    ),
    Scheme(
        name=Quantization.INT8,
        summary="int8 weights and activations, calibrated",
        weights="int8",
        activations="int8",
        converter=ConverterSettings(optimize=True, calibrated_int8=True),
        quantizer=QuantizerSettings(static=True),
        integer_only=True,
        io_types=_ALL_IO,
        runtimes=_EVERY_RUNTIME,
        stage_order=4,
    ),
    Scheme(
        name=Quantization.MIXED_INT4,
        summary="int4 weights on the conv/dense layers that cost least accuracy, "
        "int8 on the rest; int8 activations",
        weights="int4/int8 per layer",
        activations="int8",
        converter=None,
        quantizer=QuantizerSettings(static=True, int4_ops=INT4_WEIGHT_OPS, per_layer=True),
        integer_only=True,
        io_types=_QUANTIZER_IO,
        runtimes=_EVERY_RUNTIME,
        stage_order=5,
    ),
    Scheme(
        name=Quantization.INT4,
        summary="int4 weights on every conv/dense layer, int8 on the rest; int8 activations",
        weights="int4 (conv, dense) / int8",
        activations="int8",
        converter=None,
        quantizer=QuantizerSettings(static=True, int4_ops=INT4_WEIGHT_OPS),
        integer_only=True,
        io_types=_QUANTIZER_IO,
        runtimes=_EVERY_RUNTIME,
        stage_order=6,
    ),
)

SCHEMES: Mapping[Quantization, Scheme] = MappingProxyType({s.name: s for s in _TABLE})
assert set(SCHEMES) == set(Quantization), "every Quantization member needs a table entry"


def scheme(name: Quantization | str) -> Scheme:
    """The table entry for ``name`` (a ``Quantization`` or its string)."""
    return SCHEMES[Quantization(name)]


def names() -> list[str]:
    return [str(q) for q in Quantization]


def stage_order() -> dict[str, int]:
    """Scheme name -> position in the report's size chart."""
    return {str(s.name): s.stage_order for s in _TABLE}
