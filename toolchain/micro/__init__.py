"""Microcontroller fit: the real TFLM interpreter on the host, flash and RAM budgets.

For a microcontroller profile (``runtime = "tflm"``) this package answers "will it
run?" and "will it fit?" before anything is flashed. Its layers:

* ``costs``: what TFLM itself costs beside the model (code per kernel, RAM outside
  the arena), as data in ``targets/costs/*.toml``, loaded strictly;
* ``tflm``: the TFLM child runner (``run_tflm``), which measures the arena exactly;
* ``elf``: flash and static RAM measured from a linked firmware ELF (``--firmware-elf``);
* ``report``: ``fit_report`` and ``MicroReport``, the flash and RAM checks and TFLM's
  agreement with LiteRT on the same artifact;
* ``choose``: the converter choices for TFLM and the smallest that agrees and fits.

The names below are the package's public interface; import them from ``edgec.micro``.
"""

from edgec.micro.choose import Candidate, Choice, choose_smallest, micro_candidates
from edgec.micro.costs import CostTable, cost_table, load_cost_table, runtime_code
from edgec.micro.elf import ElfSizes, read_elf
from edgec.micro.report import (
    Agreement,
    Check,
    LowerBounds,
    MicroReport,
    fit_report,
    litert_raw_outputs,
    lower_bounds,
    measured_sizes,
    synthetic_inputs,
    tensor_bytes,
)
from edgec.micro.tflm import Allocation, TFLMRun, layer_of, recommended_arena, run_tflm

__all__ = [
    "Agreement",
    "Allocation",
    "Candidate",
    "Check",
    "Choice",
    "CostTable",
    "ElfSizes",
    "LowerBounds",
    "MicroReport",
    "TFLMRun",
    "choose_smallest",
    "cost_table",
    "fit_report",
    "layer_of",
    "litert_raw_outputs",
    "load_cost_table",
    "lower_bounds",
    "measured_sizes",
    "micro_candidates",
    "read_elf",
    "recommended_arena",
    "run_tflm",
    "runtime_code",
    "synthetic_inputs",
    "tensor_bytes",
]
