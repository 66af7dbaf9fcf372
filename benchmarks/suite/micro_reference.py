"""Benchmark: edgec's cortex-m4 artifacts against the MLPerf Tiny reference int8 artifacts.

For ResNet-8 (``pretrainedResnet.h5``, Keras 2 .h5) and DS-CNN (``kws_ref_model/``,
SavedModel) it converts to full int8 with int8 I/O for ``cortex-m4``, tries the
converter choices of ``edgec.micro.micro_candidates`` (per-channel against
per-tensor fully connected weights), keeps the smallest that agrees, and records
next to the reference artifact in the same folder:

* model bytes, and the TFLM arena ("Arena allocation total", head, tail, and the
  smallest arena TFLM actually runs in), both measured by the real TFLM interpreter;
* the TFLM host invoke time ratio ours/reference: both loaded in one process and
  invoked alternately, the median of per-pair ratios (warm-up invokes discarded);
* top-1 agreement of ours with the reference artifact and with the float model.

It also checks that ResNet-8 fits cortex-m4 (256 KB RAM, 1 MB flash) and that a
profile extending cortex-m4 with ``ram_bytes = 32768`` is refused with the numbers,
and compares edgec's flash and RAM estimate for the reference artifact with a real
link of it into TFLM firmware for a Cortex-M4F (``RESNET8_LINK``).

No data sets are available here: calibration and test inputs are seeded random
rows spread over the reference artifact's input range, and the JSON says so.

    python benchmarks/suite/micro_reference.py [MLPERF_DIR] [--out benchmarks/results/micro_reference.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from common import host_facts, mlperf_dir, write_result

REPO = Path(__file__).resolve().parents[2]


MODELS = {
    "resnet8": {
        "source": "pretrainedResnet.h5",
        "reference": "pretrainedResnet_quant.tflite",
        "reference_figures": {"bytes": 98_496, "arena": 55_984},
    },
    "dscnn_kws": {
        "source": "kws_ref_model",
        "reference": "kws_ref_model.tflite",
        "reference_figures": {"bytes": 53_936, "arena": 24_272},
    },
}


def input_range(content: bytes) -> tuple[float, float]:
    """The float range the reference artifact's int8 input covers."""
    from edgec.modelinfo import read_model

    t = read_model(content).input_tensors[0]
    scale, zp = t.scales[0], t.zero_points[0]
    return (-128 - zp) * scale, (127 - zp) * scale


def invoke_ratio(ours: bytes, ref: bytes, x: np.ndarray, rounds: int, repeats: int) -> dict:
    """TFLM host invoke time of both models, side by side in one process, invoke by invoke.

    Both artifacts already ran in a TFLM child process (``fit_report``), so loading
    them here is safe. Invokes alternate ours/reference (the order flips every
    round), so machine load hits both alike; the ratio is the median of the
    per-pair ratios. Three warm-up invokes per model are discarded.
    """
    from tflite_micro.python.tflite_micro import runtime

    from edgec.runtime import TFLiteModel

    its = {}
    for name, content in (("ours", ours), ("ref", ref)):
        it = runtime.Interpreter.from_bytes(content, arena_size=4 << 20)
        it.set_input(TFLiteModel(content).quantize_input(x[:1]), 0)
        for _ in range(3):
            it.invoke()
        its[name] = it
    samples: dict[str, list[float]] = {"ours": [], "ref": []}
    ratios = []
    for r in range(rounds):
        for _ in range(repeats):
            pair = {}
            for name in ("ours", "ref") if r % 2 == 0 else ("ref", "ours"):
                t0 = time.perf_counter()
                its[name].invoke()
                pair[name] = (time.perf_counter() - t0) * 1e3
                samples[name].append(pair[name])
            ratios.append(pair["ours"] / pair["ref"])
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "ours_ms_median": med["ours"],
        "reference_ms_median": med["ref"],
        "ratio_ours_over_reference": statistics.median(ratios),
        "ratio_of_medians": med["ours"] / med["ref"],
        "rounds": rounds,
        "invokes_per_round": repeats,
        "samples_ms": {k: [round(s, 4) for s in v] for k, v in samples.items()},
    }


def first_conv_correlation(ours: bytes, ref: bytes) -> float:
    """Correlation of the dequantized first CONV_2D filters: are these the same weights?"""
    from ai_edge_litert.interpreter import Interpreter

    from edgec.modelinfo import read_model

    def weights(content: bytes) -> np.ndarray:
        info = read_model(content)
        op = next(o for o in info.ops if o.name == "CONV_2D")
        w = info.tensors[op.inputs[1]]
        it = Interpreter(model_content=content)
        it.allocate_tensors()
        arr = it.get_tensor(w.index).astype(np.float64)
        scales = np.array(w.scales or (1.0,)).reshape(-1, *([1] * (arr.ndim - 1)))
        return (arr * scales).ravel()

    return float(np.corrcoef(weights(ours), weights(ref))[0, 1])


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.reshape(len(a), -1).argmax(-1) == b.reshape(len(b), -1).argmax(-1)))


def measure(
    name: str, spec: dict, folder: Path, rounds: int, repeats: int, seed: int
) -> tuple[dict, bytes]:
    from edgec.convert import ConvertOptions, convert
    from edgec.loaders import load_model
    from edgec.micro import choose_smallest, fit_report, micro_candidates
    from edgec.profiles import Quantization, load_profile
    from edgec.runtime import TFLiteModel

    profile = load_profile("cortex-m4")
    ref = (folder / spec["reference"]).read_bytes()
    loaded = load_model(folder / spec["source"])
    lo, hi = input_range(ref)
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in loaded.input_shape)
    calib = rng.uniform(lo, hi, size=(200, *shape)).astype(np.float32)
    x = rng.uniform(lo, hi, size=(64, *shape)).astype(np.float32)

    t0 = time.perf_counter()
    candidates = micro_candidates(loaded.convert_source, profile, calib)
    convert_s = time.perf_counter() - t0
    float_model = convert(loaded.convert_source, ConvertOptions(quantization=Quantization.FLOAT32))
    float_out = TFLiteModel(float_model).predict(x)
    choice = choose_smallest(candidates, profile, x, reference_outputs=float_out)
    ours = choice.content
    ref_report = fit_report(ref, profile, x, where=spec["reference"])
    ours_report = choice.report
    timing = invoke_ratio(ours, ref, x, rounds, repeats)
    ref_out = TFLiteModel(ref).predict(x)
    ours_out = TFLiteModel(ours).predict(x)
    target = {
        "bytes_no_larger": len(ours) <= len(ref),
        "arena_no_larger": ours_report.arena_total <= ref_report.arena_total
        and ours_report.arena_required <= ref_report.arena_required,
    }
    return {
        "model": name,
        "source": spec["source"],
        "loader": loaded.loader,
        "loader_notes": list(loaded.notes),
        "kept": choice.label,
        "choices": choice.to_dict(),
        "ours": {
            "bytes": len(ours),
            "arena_total": ours_report.arena_total,
            "arena_head": ours_report.arena_head,
            "arena_tail": ours_report.arena_tail,
            "arena_required": ours_report.arena_required,
            "arena_recommended": ours_report.arena_recommended,
            "ops": ours_report.ops,
            "tflm_vs_litert": ours_report.agreement.to_dict() if ours_report.agreement else None,
            "top1_vs_float_model": top1(ours_out, float_out),
            "flash_bytes_estimate": ours_report.flash_bytes,
            "ram_bytes": ours_report.ram_bytes,
        },
        "reference": {
            "file": spec["reference"],
            "bytes": len(ref),
            "arena_total": ref_report.arena_total,
            "arena_head": ref_report.arena_head,
            "arena_tail": ref_report.arena_tail,
            "arena_required": ref_report.arena_required,
            "ops": ref_report.ops,
            "published_figures": spec["reference_figures"],
            "top1_vs_float_model": top1(ref_out, float_out),
            "flash_bytes_estimate": ref_report.flash_bytes,
            "ram_bytes_estimate": ref_report.ram_bytes,
        },
        "ratios": {
            "bytes_ours_over_reference": len(ours) / len(ref),
            "arena_ours_over_reference": ours_report.arena_total / ref_report.arena_total,
            "tflm_host_invoke_ours_over_reference": timing["ratio_ours_over_reference"],
        },
        "top1_ours_vs_reference": top1(ours_out, ref_out),
        # The reference artifact may not come from the same weights as the source model:
        # near 1.0 means same weights (differences are calibration), near 0 a different run.
        "first_conv_weight_correlation_ours_vs_reference": first_conv_correlation(ours, ref),
        "tflm_host_invoke": timing,
        "targets": target,
        "convert_seconds": round(convert_s, 2),
        "report": ours_report.to_dict(),
    }, ours


def fit_checks(content: bytes, seed: int) -> dict:
    """Our ResNet-8 fits cortex-m4; a cortex-m4 with 32 KB RAM refuses it with the numbers."""
    from edgec.errors import EdgecError
    from edgec.micro import fit_report
    from edgec.profiles import load_profile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "cortex-m4-32k.toml"
        small.write_text('extends = "cortex-m4"\n[budgets]\nram_bytes = 32768\n')
        for label, profile in (
            ("cortex-m4", load_profile("cortex-m4")),
            ("cortex-m4 with ram_bytes = 32768", load_profile(small)),
        ):
            r = None
            try:  # a model over a lower bound is refused before TFLM runs: no report
                r = fit_report(content, profile, where="ResNet-8 (edgec)", seed=seed)
                r.raise_for_failures()
                refused = None
            except EdgecError as exc:
                refused = f"{type(exc).__name__} (exit {int(exc.exit_code)}): {exc}"
            results[label] = {
                "fits": r is not None and r.ok,
                "ram_bytes": None if r is None else r.ram_bytes,
                "flash_bytes": None if r is None else r.flash_bytes,
                "refused_with": refused,
                "refused_before_tflm": r is None,
                "agreement": r.agreement.to_dict() if r and r.agreement else None,
            }
    return results


# A real link of the ResNet-8 reference artifact (98,496 B) into TFLM firmware for a Cortex-M4F:
# TFLM of 2026-08 with CMSIS-NN, arm-none-eabi-gcc 12.2, core -Os, kernels -O2, the default
# (all-type) kernel registrations, a 61,440 B static arena. Reported with issue 12.
RESNET8_LINK = {
    "text_plus_rodata": 210_472,
    "text_plus_rodata_int8_only_registrations": 181_004,
    "data": 116,
    "bss": 62_088,
    "arena_bytes": 61_440,
    "device_arena_used_bytes": 54_996,
}


def estimate_vs_link(resnet8: dict) -> dict:
    """edgec's estimate for the linked artifact against that link: flash and static RAM."""
    link = RESNET8_LINK
    flash = link["text_plus_rodata"] + link["data"]
    ram = link["data"] + link["bss"]
    ref = resnet8["reference"]
    return {
        "link": link,
        "link_flash_bytes": flash,
        "link_static_ram_bytes": ram,
        "estimate_flash_bytes": ref["flash_bytes_estimate"],
        "estimate_over_link_flash": ref["flash_bytes_estimate"] / flash,
        "estimate_covers_link_flash": ref["flash_bytes_estimate"] >= flash,
        # The estimate's arena is the host's (64-bit) figure plus the profile's margin.
        "estimate_ram_bytes": ref["ram_bytes_estimate"],
        "estimate_over_link_static_ram": ref["ram_bytes_estimate"] / ram,
        "host_arena_over_device_arena_used": ref["arena_total"] / link["device_arena_used_bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mlperf", nargs="?", default=str(mlperf_dir()))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/micro_reference.json"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=20, help="timed invoke pairs per round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    host = host_facts()
    folder = Path(args.mlperf)
    if not folder.is_dir():
        raise SystemExit(f"mlperf folder {folder} does not exist")
    from edgec.micro.tflm import _tflm_version
    from edgec.profiles import load_profile

    models, contents = {}, {}
    for n, s in MODELS.items():
        models[n], contents[n] = measure(n, s, folder, args.rounds, args.repeats, args.seed)
    resnet_fit = fit_checks(contents["resnet8"], args.seed)
    link = estimate_vs_link(models["resnet8"])
    result = {
        "benchmark": "micro_reference",
        "target": load_profile("cortex-m4").to_dict(),
        "data": "none available: calibration (200 rows) and test inputs (64 rows) are seeded random "
        f"uniform over each reference artifact's int8 input range (seed {args.seed}); accuracy "
        "is not measured, top-1 figures are agreements between models on those inputs",
        "method": "TFLM Python interpreter on the host; arena from the recording allocator "
        "(child process per model); host invoke: both models in one process, invoked "
        "alternately, median of per-pair ratios, warm-ups dropped",
        "models": models,
        "resnet8_fit": resnet_fit,
        "resnet8_estimate_vs_link": link,
        "notes": [
            f"{n}: the reference artifact's first conv weights correlate "
            f"{m['first_conv_weight_correlation_ours_vs_reference']:.2f} with ours: it was not "
            "quantized from this source model (a different training run), so output agreement "
            "with it is not meaningful; bytes and arena still compare like for like"
            for n, m in models.items()
            if m["first_conv_weight_correlation_ours_vs_reference"] < 0.9
        ],
        "targets_met": all(all(m["targets"].values()) for m in models.values())
        and resnet_fit["cortex-m4"]["fits"]
        and "BudgetError" in (resnet_fit["cortex-m4 with ram_bytes = 32768"]["refused_with"] or "")
        and link["estimate_covers_link_flash"],
        "versions": {"tflm": _tflm_version()},
        "host": host,
    }
    write_result(Path(args.out), result, show=result["targets_met"])
    for n, m in models.items():
        print(
            f"{n}: kept {m['kept']}: {m['ours']['bytes']:,} B (ref {m['reference']['bytes']:,}), "
            f"arena {m['ours']['arena_total']:,} (ref {m['reference']['arena_total']:,}), "
            f"invoke ratio {m['ratios']['tflm_host_invoke_ours_over_reference']:.3f}, "
            f"targets {m['targets']}"
        )
    print(
        f"resnet8 reference: flash estimate {link['estimate_flash_bytes']:,} B vs link "
        f"{link['link_flash_bytes']:,} B ({link['estimate_over_link_flash']:.3f}x); host arena "
        f"over device arena_used {link['host_arena_over_device_arena_used']:.3f}"
    )
    print(f"targets met: {result['targets_met']}")


if __name__ == "__main__":
    main()
