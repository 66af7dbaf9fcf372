"""The emulated Raspberry Pi 4 on the two MLPerf Tiny models, side by side with local (JSON).

For ResNet-8 and DS-CNN (the shared reference int8 .tflite files in
``shared/models/mlperf-tiny``), run through ``edgec bench``'s own code:

1. Output agreement: the emulated rpi4 (``--device emulated:rpi4``: the Debian
   arm64 python under ``qemu-aarch64-static -cpu cortex-a72``, ai-edge-litert)
   on ``--count`` fixed seeded inputs, against the host reference (LiteRT on
   this x86-64 machine, same inputs): max difference in quantization steps and
   top-1 agreement, with the tolerance edgec applies.
2. Overhead: the same bench (runs, threads, outputs check) on ``--device
   local`` and on the emulated board, interleaved for ``--rounds`` rounds:
   wall time of the whole bench, harness init and steady-state p50, reported
   as emulated/local ratios (medians over the rounds). The absolute times are
   this shared 2-core host's and are kept only beside their ratios.

Needs ``edgec device emulate rpi4`` (done here when missing).
Usage: python benchmarks/suite/emulated.py [--out FILE] [--rounds N] [--count N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from common import host_facts, mlperf_dir, write_result  # noqa: E402

MODELS = {"resnet8": "pretrainedResnet_quant.tflite", "ds_cnn": "kws_ref_model.tflite"}


def shared_models() -> Path:
    base = mlperf_dir()
    if not (base / MODELS["resnet8"]).is_file():
        sys.exit(f"the MLPerf Tiny models are not in {base}")
    return base


def bench_once(model: Path, device: str, *, runs: int, count: int) -> dict:
    from edgec.deploy.fleet import run_fleet
    from edgec.deploy.options import BenchOptions

    options = BenchOptions(
        runs=runs, warmup=1, threads=1, check_outputs=True, check_count=count, save=False
    )
    start = time.monotonic()
    (outcome,) = run_fleet(model, device=device, options=options)
    wall = time.monotonic() - start
    if outcome.error is not None:
        raise SystemExit(f"{device}: {outcome.error}")
    r = outcome.result
    assert r is not None
    return {
        "wall_s": wall,
        "init_ms": r.init_ms,
        "p50_ms": r.steady.p50_ms,
        "measured": r.measured.label,
        "runtime": f"{r.runtime} {r.runtime_version}",
        "outputs_check": r.outputs_check,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "emulated.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--count", type=int, default=100, help="seeded inputs of the outputs check")
    ap.add_argument("--runs", type=int, default=20, help="steady-state runs per bench")
    args = ap.parse_args()
    os.environ.setdefault("EDGEC_PROGRESS", "0")

    from edgec.deploy.emulate import prepare

    board = prepare("rpi4")
    base = shared_models()
    doc: dict = {
        "what": "emulated rpi4 (qemu-aarch64-static -cpu cortex-a72, Debian arm64, "
        "ai-edge-litert) vs this host: output agreement and harness overhead",
        "host": host_facts(),
        "board": {k: board.rootfs[k] for k in ("suite", "python", "glibc", "packages")},
        "method": {
            "rounds": args.rounds,
            "check_inputs": args.count,
            "runs": args.runs,
            "threads": 1,
            "interleaved": "local then emulated, per round",
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="edgec-emulated-") as tmp:
        for name, file in MODELS.items():
            model = Path(tmp) / name / file
            model.parent.mkdir()
            shutil.copy(base / file, model)
            rounds = []
            for i in range(args.rounds):
                local = bench_once(model, "local", runs=args.runs, count=args.count)
                emul = bench_once(model, "emulated:rpi4", runs=args.runs, count=args.count)
                rounds.append({"local": local, "emulated": emul})
                print(
                    f"{name} round {i + 1}: wall local {local['wall_s']:.1f} s, emulated "
                    f"{emul['wall_s']:.1f} s; p50 {local['p50_ms']:.2f} vs {emul['p50_ms']:.2f} ms",
                    flush=True,
                )

            def ratio(key: str, rounds: list = rounds) -> float:
                return statistics.median(r["emulated"][key] / r["local"][key] for r in rounds)

            check = rounds[-1]["emulated"]["outputs_check"]
            out0 = check["outputs"][0]
            doc["models"][name] = {
                "file": file,
                "agreement": {
                    "vs": "host LiteRT on x86-64, same seeded inputs",
                    "inputs": check["inputs"],
                    "max_steps": check["max_steps"],
                    "top1_agreement": check["top1_agreement"],
                    "decisive_top1": out0["decisive_top1"],
                    "decisive_rows": out0["decisive_rows"],
                    "tolerance": check["tolerance"],
                    "ok": check["ok"],
                    "device_runtime": check["device_runtime"],
                    "reference": check["reference"],
                },
                "overhead_emulated_over_local": {
                    "bench_wall": round(ratio("wall_s"), 2),
                    "harness_init": round(ratio("init_ms"), 2),
                    "steady_p50": round(ratio("p50_ms"), 2),
                },
                "measured_on": {
                    "local": rounds[-1]["local"]["measured"],
                    "emulated": rounds[-1]["emulated"]["measured"],
                },
                "rounds": [
                    {
                        side: {k: v for k, v in r[side].items() if k != "outputs_check"}
                        for side in ("local", "emulated")
                    }
                    for r in rounds
                ],
            }
    write_result(args.out, doc, show=doc["models"])
    for name, m in doc["models"].items():
        a, o = m["agreement"], m["overhead_emulated_over_local"]
        print(
            f"{name}: max {a['max_steps']} step(s) over {a['inputs']['count']} inputs, top-1 "
            f"{a['top1_agreement']:.0%}; emulated/local: wall {o['bench_wall']}x, "
            f"p50 {o['steady_p50']}x, init {o['harness_init']}x"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
