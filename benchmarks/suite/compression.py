"""Benchmark for the compression passes: each technique and the search, against float32.

On real labeled data available offline: the demo digits (scikit-learn, 8x8
images) with the demo CNN and a Dense-heavy MLP, and scikit-learn's bundled
Wisconsin breast-cancer table (569 rows, 30 features, 2 classes) with an MLP.
For every model it records the float32 and plain int8 artifacts, then pruning,
low-rank factorization, clustering, distillation and the accuracy-aware
search's choice, each converted to int8 (low-rank also to float32): bytes,
gzip bytes and parameters against the float32 baseline, the accuracy drop on
the validation split (LiteRT, the same runtime for every artifact), and the
host latency ratio (LiteRT, batch 1, same threads, interleaved rounds,
steady-state medians, measured side by side in one process).

Distillation is judged against the same student architecture trained alone on
hard labels with the same epochs and optimizer; both are averaged over seeds.

Structured pruning (``--part structured``, included in ``all``): a Conv2D CNN of
about 200k parameters on digits, and MobileNetV2 (weights=None, trained on
digits upscaled to 32x32 as in build_ratios.py; ``--mobilenet``), each as
float32, plain int8, and ``prune-channels`` (defaults: 50%, round_to 8) + int8.
It records the host latency of plain int8 over prune-channels + int8 (LiteRT,
``--threads``, interleaved medians, side by side) and on-device bytes against
float32, at the 1-point bound.

    python benchmarks/suite/compression.py [--out benchmarks/results/compression.json]
        [--threads 1] [--quick] [--part all|structured] [--mobilenet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_ratios import steady_median_ms

BOUND = 0.01  # the "at most 1 point"
SPARSITIES = (0.8, 0.85, 0.9)
DIGITS_DISTILL = {"temperature": 2.0, "alpha": 0.7, "mixup": 0.2}


def _data_breast_cancer(seed: int = 0):
    from sklearn.datasets import load_breast_cancer

    from edgec.data import Dataset, split_train_val

    raw = load_breast_cancer()
    x = raw.data.astype(np.float32)
    y = raw.target.astype(np.int64)
    x_train, y_train, x_val, y_val = split_train_val(x, y, 0.3, seed)
    # Standardize with the training split's statistics only.
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    return Dataset(
        x_train=(x_train - mean) / std,
        y_train=y_train,
        x_val=(x_val - mean) / std,
        y_val=y_val,
        source="scikit-learn breast cancer (Wisconsin diagnostic), 30 features, 2 classes, "
        "standardized",
        class_names=tuple(raw.target_names),
    )


def _mlp(inputs: tuple[int, ...], widths: tuple[int, ...], classes: int, name: str):
    import keras

    layers: list[Any] = [keras.Input(inputs)]
    if len(inputs) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(w, activation="relu") for w in widths]
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    return keras.Sequential(layers, name=name)


def _fit(model, data, epochs: int, seed: int, lr: float = 2e-3):
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


class Case:
    """One model on one data set: its artifacts, measured the same way."""

    def __init__(self, name: str, model, data, threads: int) -> None:
        from edgec.pipeline import count_params

        self.name, self.model, self.data, self.threads = name, model, data, threads
        self.rows: list[dict[str, Any]] = []
        self.contents: dict[str, bytes] = {}
        self.base_params = count_params(model)
        f32 = self.convert(model, "float32")
        self.base_bytes = len(f32)
        self.base_accuracy = self.accuracy(f32)
        self.add("float32 baseline", [], model, "float32", content=f32)

    def convert(self, model, quantization: str) -> bytes:
        from edgec.convert import ConvertOptions, convert
        from edgec.profiles import Quantization

        q = Quantization(quantization)
        calibration = self.data.calibration(300, 0) if q is Quantization.INT8 else None
        return convert(model, ConvertOptions(quantization=q), calibration)

    def accuracy(self, content: bytes) -> float:
        from edgec.evaluate import evaluate

        return float(
            evaluate(content, self.data, threads=self.threads, latency=False).metrics["accuracy"]
        )

    def add(
        self,
        label: str,
        passes: list[dict[str, Any]],
        model,
        quantization: str,
        content: bytes | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        from edgec.evaluate import gzip_size
        from edgec.pipeline import count_params

        content = content if content is not None else self.convert(model, quantization)
        acc = self.accuracy(content)
        params = count_params(model)
        row = {
            "label": label,
            "passes": passes,
            "quantization": quantization,
            "bytes": len(content),
            "gzip_bytes": gzip_size(content),
            "params": params,
            "accuracy": round(acc, 6),
            "accuracy_drop": round(self.base_accuracy - acc, 6),
            "float32_bytes_over_bytes": round(self.base_bytes / len(content), 3),
            "float32_bytes_over_gzip_bytes": round(self.base_bytes / gzip_size(content), 3),
            "float32_params_over_params": round(self.base_params / params, 3),
            **extra,
        }
        self.rows.append(row)
        self.contents[label] = content
        print(
            f"  {self.name}: {label}: {len(content)} B, gzip {row['gzip_bytes']} B, "
            f"params {params}, acc {acc:.4f} (drop {row['accuracy_drop']:+.4f})",
            flush=True,
        )
        return row

    def run_pass(self, pass_id: str, params: dict[str, Any], model=None, seed: int = 0):
        from edgec.pipeline import PassContext, PassManager
        from edgec.recipe import Step

        step = Step(id=pass_id, params=params)
        ctx = PassContext(data=self.data, seed=seed)
        new, records = PassManager([step.instantiate()]).run(model or self.model, ctx)
        return new, [step.resolved()], records[0].details

    def latency(self) -> None:
        # All of this case's artifacts side by side: interleaved rounds, one process, same threads.
        medians = steady_median_ms(self.contents, self.data.x_val, self.threads)
        base = medians["float32 baseline"]
        for row in self.rows:
            ms = medians[row["label"]]
            row["host_latency_ms"] = round(ms, 4)
            row["latency_ratio_vs_float32"] = round(ms / base, 3)

    def row(self, label: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["label"] == label)


def techniques(
    case: Case, *, prune_epochs: int, lowrank_fraction: float, lowrank_epochs: int
) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    case.add("plain int8", [], case.model, "int8")
    for sparsity in SPARSITIES:
        model, passes, details = case.run_pass(
            "prune", {"final_sparsity": sparsity, "epochs": prune_epochs}
        )
        case.add(
            f"prune {sparsity:.0%} + int8",
            passes,
            model,
            "int8",
            sparsity=details["sparsity_pruned_layers"],
        )
    model, passes, details = case.run_pass(
        "lowrank",
        {"param_fraction": lowrank_fraction, "epochs": lowrank_epochs, "min_params": 1024},
    )
    facts["lowrank_layers"] = details.get("layers", {})
    case.add("lowrank + float32", passes, model, "float32")
    case.add("lowrank + int8", passes, model, "int8")
    model, passes, details = case.run_pass("cluster", {"k": 16, "epochs": 2})
    case.add("cluster k=16 + int8", passes, model, "int8")
    # The best combination as one explicit recipe: low-rank, then pruning, then clustering.
    model, passes, _ = case.run_pass(
        "lowrank",
        {"param_fraction": lowrank_fraction, "epochs": lowrank_epochs, "min_params": 1024},
    )
    model, p2, _ = case.run_pass("prune", {"final_sparsity": 0.8, "epochs": prune_epochs}, model)
    model, p3, _ = case.run_pass("cluster", {"k": 16, "epochs": 2}, model)
    case.add("lowrank + prune 80% + cluster k=16 + int8", passes + p2 + p3, model, "int8")
    return facts


def searched(case: Case, quick: bool) -> dict[str, Any]:
    """The accuracy-aware search at the issue's bound, measuring int8 artifacts like a build."""
    from edgec.evaluate import gzip_size, host_latency_ms
    from edgec.pipeline import PassContext
    from edgec.search import Measurement, search

    def evaluate(model, label: str) -> Measurement:
        content = case.convert(model, "int8")
        return Measurement(
            bytes=len(content),
            gzip_bytes=gzip_size(content),
            accuracy=case.accuracy(content),
            host_latency_ms=host_latency_ms(content, case.data.x_val, threads=case.threads),
            payload=content,
        )

    scale = 0.25 if quick else 0.5  # every rung fine-tunes; half the default epochs keeps it short
    ctx = PassContext(data=case.data, seed=0, epochs_scale=scale)
    start = time.perf_counter()
    result = search(
        case.model,
        ctx,
        evaluate=evaluate,
        max_accuracy_drop=BOUND,
        reference_accuracy=case.base_accuracy,
    )
    seconds = time.perf_counter() - start
    chosen = result.chosen
    case.add(
        f"search choice ({chosen.label})",
        [s.resolved() for s in chosen.steps],
        result.model,
        "int8",
        content=chosen.measurement.payload,
    )
    return {
        "met": result.met,
        "chosen": chosen.label,
        "epochs_scale": scale,
        "seconds": round(seconds, 1),
        "chosen_gzip_bytes": chosen.measurement.gzip_bytes,
        "plain_int8_gzip_bytes": case.row("plain int8")["gzip_bytes"],
        "candidates": result.table,
    }


def distillation(
    case: Case,
    student_factory,
    *,
    epochs: int,
    seeds: tuple[int, ...],
    label: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Distilled student against the same student trained alone, averaged over ``seeds``."""
    from edgec.pipeline import PassContext, PassManager
    from edgec.recipe import Step

    teacher_acc = case.base_accuracy
    alone, distilled, last = [], [], None
    for seed in seeds:
        student = _fit(student_factory(seed), case.data, epochs, seed)
        alone.append(case.accuracy(case.convert(student, "float32")))
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgec-bench-student-{os.getpid()}.keras"
        student_factory(seed).save(path)
        # The same fresh student (same seed, same init) goes to the distill pass via a file.
        step = Step(id="distill", params={"student": str(path), "epochs": epochs, **params})
        model, _ = PassManager([step.instantiate()]).run(
            case.model, PassContext(data=case.data, seed=seed)
        )
        path.unlink(missing_ok=True)
        distilled.append(case.accuracy(case.convert(model, "float32")))
        last = (model, step)
        print(
            f"  {case.name}: distill seed {seed}: alone {alone[-1]:.4f}, distilled "
            f"{distilled[-1]:.4f}, teacher {teacher_acc:.4f}",
            flush=True,
        )
    model, step = last
    a, d = statistics.mean(alone), statistics.mean(distilled)
    gap = teacher_acc - a
    case.add(f"distilled student ({label}) + float32", [step.resolved()], model, "float32")
    case.add(f"distilled student ({label}) + int8", [step.resolved()], model, "int8")
    return {
        "student": label,
        "epochs": epochs,
        "params": params,
        "seeds": list(seeds),
        "teacher_accuracy": round(teacher_acc, 6),
        "student_alone_accuracy": [round(x, 6) for x in alone],
        "student_distilled_accuracy": [round(x, 6) for x in distilled],
        "student_alone_mean": round(a, 6),
        "student_distilled_mean": round(d, 6),
        "gap_alone": round(gap, 6),
        "gap_closed_fraction": round((d - a) / gap, 3) if gap > 0 else None,
    }


def _cnn_200k(name: str = "digits_cnn_200k"):
    """A plain Conv2D CNN of ~191k parameters for 8x8 digits."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(48, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name=name,
    )


def structured(case: Case, sparsities: tuple[float, ...]) -> dict[str, Any]:
    """prune-channels (defaults besides sparsity) + int8 against plain int8 and float32."""
    from edgec.modelinfo import read_model

    case.add("plain int8", [], case.model, "int8")
    labels = []
    for sparsity in sparsities:
        model, passes, details = case.run_pass("prune-channels", {"sparsity": sparsity})
        label = f"prune-channels {sparsity:.0%} + int8"
        case.add(label, passes, model, "int8", channels=details["channels_per_layer"])
        labels.append(label)
    case.latency()
    plain = case.row("plain int8")
    out: dict[str, Any] = {"plain_int8_macs": read_model(case.contents["plain int8"]).macs()}
    for label in labels:
        r = case.row(label)
        r["macs"] = read_model(case.contents[label]).macs()
        r["plain_int8_latency_over_latency"] = round(
            plain["host_latency_ms"] / r["host_latency_ms"], 3
        )
    return out


def structured_targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"prune_channels_50_latency_1_8x": [], "device_bytes_vs_float32": []}
    for c in cases:
        rows = {r["label"]: r for r in c["rows"]}
        r50 = rows.get("prune-channels 50% + int8")
        if r50 is not None:
            out["prune_channels_50_latency_1_8x"].append(
                {
                    "case": c["case"],
                    "plain_int8_latency_over_latency": r50["plain_int8_latency_over_latency"],
                    "accuracy_drop": r50["accuracy_drop"],
                    "met": r50["plain_int8_latency_over_latency"] >= 1.8
                    and r50["accuracy_drop"] <= BOUND,
                }
            )
        within = [r for r in c["rows"] if r["accuracy_drop"] <= BOUND]
        best = max(within, key=lambda r: r["float32_bytes_over_bytes"])
        need = 6.0 if "mobilenet" in c["case"] else 10.0
        out["device_bytes_vs_float32"].append(
            {
                "case": c["case"],
                "artifact": best["label"],
                "float32_bytes_over_bytes": best["float32_bytes_over_bytes"],
                "accuracy_drop": best["accuracy_drop"],
                "target": need,
                "met": best["float32_bytes_over_bytes"] >= need,
            }
        )
    return out


def structured_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgec.data import demo_dataset

    digits = demo_dataset()
    cases = []
    cnn = _fit(_cnn_200k(), digits, 8 if args.quick else 30, 0, lr=1e-3)
    case = Case("digits_cnn_200k", cnn, digits, args.threads)
    facts = structured(case, (0.5, 0.6, 0.7))
    cases.append({"case": case.name, "data": digits.describe(), **facts, "rows": case.rows})
    if args.mobilenet:
        from build_ratios import mobilenet_on_digits

        model, data = mobilenet_on_digits(3 if args.quick else 10)
        case = Case("mobilenet_v2_digits32", model, data, args.threads)
        facts = structured(case, (0.5,))
        cases.append({"case": case.name, "data": data.describe(), **facts, "rows": case.rows})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compression.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and seeds (smoke run)")
    parser.add_argument("--part", choices=("all", "structured"), default="all")
    parser.add_argument("--mobilenet", action="store_true", help="add MobileNetV2 (slow)")
    args = parser.parse_args()
    if args.part == "structured":
        import keras

        start = time.perf_counter()
        cases = structured_cases(args)
        payload = {
            "benchmark": "compression (structured part)",
            "quick": args.quick,
            "method": (
                "LiteRT on this host (edgec.runtime), validation split; latency batch 1, "
                "5 warm-up invokes discarded, 15 interleaved rounds of 20 invokes, medians, "
                f"{args.threads} thread(s), all artifacts of a case side by side; MACs from "
                "edgec.modelinfo (conv, depthwise, dense)."
            ),
            "bound": BOUND,
            "targets": structured_targets(cases),
            "cases": cases,
            "versions": {"keras": keras.__version__, "numpy": np.__version__},
            "seconds": round(time.perf_counter() - start, 1),
        }
        out = args.out.with_name(args.out.stem + "_structured.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(payload["targets"], indent=2))
        print(f"wrote {out}")
        return

    import keras

    from edgec.data import demo_dataset
    from edgec.demo import train_demo_model
    from edgec.passes.distill import derive_student

    quick = args.quick
    start = time.perf_counter()
    digits = demo_dataset()
    seeds = (0,) if quick else (0, 1, 2)
    cases: list[dict[str, Any]] = []

    # 1. The demo CNN on digits: pruning, clustering, distillation, search.
    cnn = train_demo_model(digits, epochs=8 if quick else 30)
    case = Case("digits_cnn", cnn, digits, args.threads)
    facts = techniques(
        case,
        prune_epochs=2 if quick else 15,
        lowrank_fraction=0.3,
        lowrank_epochs=2 if quick else 8,
    )
    facts["distillation"] = distillation(
        case,
        lambda seed: derive_student(cnn, 0.25, seed=seed),
        epochs=8 if quick else 60,
        seeds=seeds,
        label="teacher x width 0.25",
        params=DIGITS_DISTILL,
    )
    facts["search"] = searched(case, quick)
    case.latency()
    cases.append({"case": case.name, "data": digits.describe(), **facts, "rows": case.rows})

    # 2. A Dense-heavy MLP on digits: low-rank's target.
    flat = _flat(digits)
    mlp = _fit(_mlp((64,), (512, 256), 10, "digits_mlp"), flat, 8 if quick else 30, 0)
    case = Case("digits_mlp", mlp, flat, args.threads)
    facts = techniques(
        case,
        prune_epochs=2 if quick else 15,
        lowrank_fraction=0.25,
        lowrank_epochs=2 if quick else 8,
    )
    facts["search"] = searched(case, quick)
    case.latency()
    cases.append({"case": case.name, "data": flat.describe(), **facts, "rows": case.rows})

    # 3. Breast cancer: a second real data set, a Dense-heavy MLP.
    bc = _data_breast_cancer()
    model = _fit(
        _mlp((30,), (256, 128), 2, "breast_cancer_mlp"), bc, 10 if quick else 40, 0, lr=1e-3
    )
    case = Case("breast_cancer_mlp", model, bc, args.threads)
    facts = techniques(
        case,
        prune_epochs=2 if quick else 15,
        lowrank_fraction=0.25,
        lowrank_epochs=2 if quick else 8,
    )
    facts["distillation"] = distillation(
        case,
        lambda seed: _seeded(_mlp((30,), (4,), 2, "breast_cancer_student"), seed),
        epochs=10 if quick else 40,
        seeds=seeds,
        label="MLP 30-4-2",
        params={"temperature": 2.0, "alpha": 0.5},
    )
    facts["search"] = searched(case, quick)
    case.latency()
    cases.append({"case": case.name, "data": bc.describe(), **facts, "rows": case.rows})

    structured_part = structured_cases(args)
    payload = {
        "benchmark": "compression",
        "quick": quick,
        "method": (
            "Every artifact converted by edgec.convert and run by LiteRT (edgec.runtime) on the "
            "validation split; accuracy_drop = float32 baseline accuracy - artifact accuracy. "
            "Latency: batch 1, 5 warm-up invokes discarded, 15 interleaved rounds of 20 invokes "
            f"per artifact, medians, {args.threads} thread(s), all artifacts of a case side by side."
        ),
        "bound": BOUND,
        "targets": targets(cases),
        "structured_targets": structured_targets(structured_part),
        "cases": cases,
        "structured_cases": structured_part,
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload["targets"], indent=2))
    print(f"wrote {args.out}")


def _flat(data):
    from edgec.data import Dataset

    return Dataset(
        x_train=data.x_train.reshape(len(data.x_train), -1),
        y_train=data.y_train,
        x_val=data.x_val.reshape(len(data.x_val), -1),
        y_val=data.y_val,
        source=data.source + ", flattened to 64 features",
        class_names=data.class_names,
    )


def _seeded(model, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(model)  # fresh weights drawn under ``seed``


def targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's four targets, each with the figures that decide it, per case."""
    out: dict[str, Any] = {
        "prune_int8_gzip_10x": [],
        "lowrank_dense_2x_params": [],
        "distill_half_gap": [],
        "search_not_worse_than_plain_int8": [],
    }
    for c in cases:
        rows = {r["label"]: r for r in c["rows"]}
        for label in (f"prune {x:.0%} + int8" for x in SPARSITIES):
            r = rows[label]
            out["prune_int8_gzip_10x"].append(
                {
                    "case": c["case"],
                    "artifact": label,
                    "sparsity": r["sparsity"],
                    "float32_bytes_over_gzip_bytes": r["float32_bytes_over_gzip_bytes"],
                    "accuracy_drop": r["accuracy_drop"],
                    "met": r["float32_bytes_over_gzip_bytes"] >= 10 and r["accuracy_drop"] <= BOUND,
                }
            )
        r = rows["lowrank + float32"]
        out["lowrank_dense_2x_params"].append(
            {
                "case": c["case"],
                "float32_params_over_params": r["float32_params_over_params"],
                "accuracy_drop": r["accuracy_drop"],
                "met": r["float32_params_over_params"] >= 2 and r["accuracy_drop"] <= BOUND,
            }
        )
        if "distillation" in c:
            d = c["distillation"]
            frac = d["gap_closed_fraction"]
            out["distill_half_gap"].append(
                {
                    "case": c["case"],
                    "gap_closed_fraction": frac,
                    "gap_alone": d["gap_alone"],
                    "met": frac is not None and frac >= 0.5,
                }
            )
        s = c["search"]
        out["search_not_worse_than_plain_int8"].append(
            {
                "case": c["case"],
                "chosen": s["chosen"],
                "chosen_gzip_bytes": s["chosen_gzip_bytes"],
                "plain_int8_gzip_bytes": s["plain_int8_gzip_bytes"],
                "met": s["chosen_gzip_bytes"] <= s["plain_int8_gzip_bytes"],
            }
        )
    return out


if __name__ == "__main__":
    main()
