"""Benchmark for compression as the device pays for it: the artifact's bytes, latency and accuracy.

Every figure is measured on the ARTIFACT: the ``.tflite`` each recipe and
scheme gives (``edgec.convert``), run by LiteRT on this host (``edgec.runtime``,
``--threads``, default 1). Accuracy is on the validation split; the drop is
against the float32 ``.tflite`` of the same original model. Latency is batch 1,
5 warm-up invokes discarded, 15 interleaved rounds of 20 invokes per artifact,
medians, every artifact of a case in one process side by side (the host is
shared, so only these ratios mean something, never the absolute times).

Part ``device`` (the issue's bytes and latency figures), one case per model:

- ``digits_cnn_200k``: a Conv2D CNN of about 191k parameters on scikit-learn's
  digits (8x8);
- ``chirps_conv1d_200k``: a Conv1D CNN of about 177k parameters on synthetic
  noisy chirps (``unseen_defaults.signal_data``);
- ``mobilenet_v2_digits32``: keras.applications MobileNetV2, weights=None,
  trained on digits upscaled to 32x32 as in ``build_ratios.py``.

Each case has float32, plain int8, int4 and ``prune-channels`` at its defaults
(50%, round_to 8) + int8 and + int4; the two CNNs also prune-channels 70% and
``mixed-int4`` (per-layer choice within the bound); the digits CNN also
``distill`` at its defaults (width 0.5) and the unstructured passes at their
defaults (``prune`` 80%, ``lowrank``, ``cluster`` k=16) + int8, whose gain is
mostly in the gzip column (the download: pruned and clustered ``.tflite`` files
keep every tensor's size).

Part ``unseen`` (``unseen_defaults.measure``): every pass at its defaults on
data sets the defaults were not tuned on, the drop as Keras float and as the
int8 artifact through LiteRT.

``targets`` says met/missed per figure: on-device bytes against float32 at a
drop of at most 1 point (>= 10x for the ~200k CNNs, >= 6x for MobileNetV2),
prune-channels 50% + int8 against plain int8 (>= 1.8x faster host latency at
<= 1 point) and every pass's default drop (<= 1 point, float and int8).
The best row per case is picked on the same validation split that measures it
(as the build's search picks), so it is an optimistic pick among the rows.

    python benchmarks/suite/compression.py [--quick] [--part all|device|unseen]
        [--skip-mobilenet] [--threads 1] [--out benchmarks/results/compression.json]

The full run (``--part all``, no ``--skip-mobilenet``) writes compression.json and
unseen_defaults.json; any other run writes to the temporary folder unless
``--out`` is given, so a smoke run never replaces the recorded figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_ratios import steady_median_ms
from common import RESULTS, host_facts, write_result

BOUND = 0.01  # the "at most 1 point"
BYTES_TARGET = {"digits_cnn_200k": 10.0, "chirps_conv1d_200k": 10.0, "mobilenet_v2_digits32": 6.0}
LATENCY_TARGET = 1.8
PRUNE_CHANNELS_DEFAULT = 0.5  # the figure the issue asks for: prune-channels at 50%


class Case:
    """One model on one data set: its artifacts, all measured the same way."""

    def __init__(self, name: str, model, data, *, threads: int, epochs_scale: float) -> None:
        from edgec.pipeline import count_params

        self.name, self.model, self.data = name, model, data
        self.threads, self.epochs_scale = threads, epochs_scale
        self.rows: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.contents: dict[str, bytes] = {}
        self.base_params = count_params(model)
        f32 = self.convert(model, "float32")
        self.base_bytes = len(f32)
        self.base_accuracy = self.accuracy(f32)
        self.add("float32", [], model, "float32", content=f32)

    def convert(self, model, quantization: str, int4_layers: tuple[str, ...] | None = None):
        from edgec.convert import ConvertOptions, convert
        from edgec.schemes import Quantization

        q = Quantization(quantization)
        opts = ConvertOptions(quantization=q, int4_layers=int4_layers)
        calibration = self.data.calibration(300, 0) if opts.scheme.calibrated else None
        return convert(model, opts, calibration)

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
        from edgec.errors import EdgecError
        from edgec.evaluate import gzip_size
        from edgec.modelinfo import read_model
        from edgec.pipeline import count_params

        start = time.perf_counter()
        try:
            content = content if content is not None else self.convert(model, quantization)
        except EdgecError as exc:  # one scheme failing (say int4 on some op) is a figure too
            self.failures.append({"label": label, "error": str(exc)})
            print(f"  {self.name}: {label}: FAILED: {exc}", flush=True)
            return {}
        acc = self.accuracy(content)
        params, gz = count_params(model), gzip_size(content)
        row = {
            "label": label,
            "recipe": passes,
            "scheme": quantization,
            "bytes": len(content),
            "gzip_bytes": gz,
            "params": params,
            "macs": read_model(content, label).macs(),
            "accuracy": round(acc, 6),
            "accuracy_drop": round(self.base_accuracy - acc, 6),
            "float32_bytes_over_bytes": round(self.base_bytes / len(content), 3),
            "float32_bytes_over_gzip_bytes": round(self.base_bytes / gz, 3),
            "float32_params_over_params": round(self.base_params / params, 3),
            **extra,
        }
        self.rows.append(row)
        self.contents[label] = content
        print(
            f"  {self.name}: {label}: {len(content):,} B ({row['float32_bytes_over_bytes']}x), "
            f"gzip {gz:,} B, params {params:,}, acc {acc:.4f} (drop {row['accuracy_drop']:+.4f}) "
            f"[{time.perf_counter() - start:.0f}s convert+eval]",
            flush=True,
        )
        return row

    def run_pass(self, pass_id: str, params: dict[str, Any], model=None):
        from edgec.pipeline import PassContext, PassManager
        from edgec.recipe import Step

        start = time.perf_counter()
        step = Step(id=pass_id, params=params)
        ctx = PassContext(data=self.data, seed=0, epochs_scale=self.epochs_scale)
        new, records = PassManager([step.instantiate()]).run(model or self.model, ctx)
        print(f"  {self.name}: {pass_id} {params}: {time.perf_counter() - start:.0f}s", flush=True)
        return new, [step.resolved()], records[0].details

    def add_mixed_int4(self, label: str, passes: list[dict[str, Any]], model) -> None:
        """mixed-int4: layers at int4 by measured sensitivity, the drop bounded against float32."""
        from edgec.convert import ConvertOptions
        from edgec.precision import choose_int4_layers
        from edgec.schemes import Quantization

        f32 = self.convert(model, "float32")
        plan = choose_int4_layers(
            f32,
            ConvertOptions(quantization=Quantization.MIXED_INT4, int4_layers=()),
            self.data.calibration(300, 0),
            self.data,
            reference_accuracy=self.base_accuracy,
            max_accuracy_drop=BOUND,
            threads=self.threads,
        )
        content = self.convert(model, "mixed-int4", plan.int4_layers)
        self.add(label, passes, model, "mixed-int4", content=content, int4_layers=plan.to_dict())

    def latency(self) -> None:
        # Every artifact of the case side by side: interleaved rounds, one process, same threads.
        medians = steady_median_ms(self.contents, self.data.x_val, self.threads)
        plain = medians["plain int8"]
        for row in self.rows:
            ms = medians[row["label"]]
            row["host_latency_ms"] = round(ms, 4)
            row["plain_int8_latency_over_latency"] = round(plain / ms, 3)

    def to_dict(self, **facts: Any) -> dict[str, Any]:
        return {
            "case": self.name,
            "data": self.data.describe(),
            "float32_bytes": self.base_bytes,
            "float32_accuracy": round(self.base_accuracy, 6),
            "params": self.base_params,
            **facts,
            "rows": self.rows,
            "failures": self.failures,
        }


def rungs(case: Case, *, sparsities: tuple[float, ...], mixed: bool, others: bool) -> None:
    """Every recipe and scheme of a case, at the passes' defaults unless a row says otherwise."""
    case.add("plain int8", [], case.model, "int8")
    case.add("int4", [], case.model, "int4")
    if mixed:
        case.add_mixed_int4("mixed-int4", [], case.model)
    for sparsity in sparsities:
        default = sparsity == PRUNE_CHANNELS_DEFAULT
        params = {} if default else {"sparsity": sparsity}
        model, passes, details = case.run_pass("prune-channels", params)
        name = f"prune-channels {passes[0]['params']['sparsity']:.0%}"
        if default:
            name += " (default)"
        channels = details.get("channels_per_layer")
        case.add(f"{name} + int8", passes, model, "int8", channels=channels)
        case.add(f"{name} + int4", passes, model, "int4")
        if mixed and default:
            case.add_mixed_int4(f"{name} + mixed-int4", passes, model)
    if not others:
        return
    model, passes, details = case.run_pass("distill", {})
    case.add(
        f"distill (default, width {passes[0]['params']['width']}) + int8", passes, model, "int8"
    )
    # The unstructured passes: the .tflite keeps its tensor sizes, the gzip (download) shrinks.
    model, passes, details = case.run_pass("prune", {})
    case.add(
        f"prune {passes[0]['params']['final_sparsity']:.0%} (default) + int8",
        passes,
        model,
        "int8",
        sparsity=details.get("sparsity_pruned_layers"),
    )
    model, passes, details = case.run_pass("lowrank", {})
    case.add("lowrank (default) + int8", passes, model, "int8", layers=details.get("layers"))
    model, passes, _ = case.run_pass("cluster", {})
    case.add(f"cluster k={passes[0]['params']['k']} (default) + int8", passes, model, "int8")


def _fit(model, data, epochs: int, seed: int = 0, lr: float = 1e-3):
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def cnn_200k():
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
        name="digits_cnn_200k",
    )


def device_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    from build_ratios import mobilenet_on_digits
    from unseen_defaults import signal_cnn, signal_data

    from edgec.data import demo_dataset

    scale = 0.25 if args.quick else 1.0
    out = []
    digits = demo_dataset()
    cnn = _fit(cnn_200k(), digits, 6 if args.quick else 30)
    case = Case("digits_cnn_200k", cnn, digits, threads=args.threads, epochs_scale=scale)
    rungs(case, sparsities=(0.5, 0.7), mixed=True, others=True)
    case.latency()
    out.append(case.to_dict())

    chirps = signal_data()
    conv1d_200k = signal_cnn((64, 128, 192), (7, 5, 5), name="chirps_conv1d_200k")
    model = _fit(conv1d_200k, chirps, 4 if args.quick else 20)
    case = Case("chirps_conv1d_200k", model, chirps, threads=args.threads, epochs_scale=scale)
    rungs(case, sparsities=(0.5, 0.7), mixed=True, others=False)
    case.latency()
    out.append(case.to_dict())

    if not args.skip_mobilenet:
        epochs = 2 if args.quick else args.mobilenet_epochs
        model, data32 = mobilenet_on_digits(epochs)
        case = Case(
            "mobilenet_v2_digits32", model, data32, threads=args.threads, epochs_scale=scale
        )
        # Every MobileNetV2 fine-tune is minutes on a shared host: the default rung only.
        rungs(case, sparsities=(0.5,), mixed=False, others=False)
        case.latency()
        out.append(case.to_dict(trained_epochs=epochs))
    return out


def targets(cases: list[dict[str, Any]], unseen: dict[str, Any] | None) -> dict[str, Any]:
    """Each of the issue's figures with what decides it, and met/missed."""
    out: dict[str, Any] = {"device_bytes_vs_float32": [], "prune_channels_50_latency": []}
    for c in cases:
        rows = {r["label"]: r for r in c["rows"]}
        need = BYTES_TARGET[c["case"]]
        within = [r for r in c["rows"] if r["accuracy_drop"] <= BOUND]
        best = max(within, key=lambda r: r["float32_bytes_over_bytes"])
        default = rows["prune-channels 50% (default) + int8"]
        out["device_bytes_vs_float32"].append(
            {
                "case": c["case"],
                "best_within_bound": best["label"],
                "recipe": best["recipe"],
                "scheme": best["scheme"],
                "bytes": best["bytes"],
                "float32_bytes": c["float32_bytes"],
                "float32_bytes_over_bytes": best["float32_bytes_over_bytes"],
                "accuracy_drop": best["accuracy_drop"],
                "prune_channels_default_int8_ratio": default["float32_bytes_over_bytes"],
                "plain_int8_ratio": rows["plain int8"]["float32_bytes_over_bytes"],
                "target": need,
                "met": best["float32_bytes_over_bytes"] >= need,
            }
        )
        out["prune_channels_50_latency"].append(
            {
                "case": c["case"],
                "artifact": default["label"],
                "plain_int8_latency_over_latency": default["plain_int8_latency_over_latency"],
                "plain_int8_macs_over_macs": round(rows["plain int8"]["macs"] / default["macs"], 3),
                "accuracy_drop": default["accuracy_drop"],
                "target": LATENCY_TARGET,
                "met": default["plain_int8_latency_over_latency"] >= LATENCY_TARGET
                and default["accuracy_drop"] <= BOUND,
            }
        )
    if unseen is not None:
        out["unseen_default_drops"] = unseen["targets"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    parser.add_argument("--part", choices=("all", "device", "unseen"), default="all")
    parser.add_argument("--skip-mobilenet", action="store_true", help="leave MobileNetV2 out")
    parser.add_argument("--mobilenet-epochs", type=int, default=10)
    args = parser.parse_args()
    host = host_facts()
    full = args.part == "all" and not args.quick and not args.skip_mobilenet
    folder = RESULTS if full else Path(tempfile.gettempdir())
    out = args.out or folder / ("compression.json" if full else "compression-partial.json")

    import unseen_defaults

    start = time.perf_counter()
    unseen = None
    if args.part in ("all", "unseen"):
        unseen_host = host_facts()
        unseen = unseen_defaults.measure(threads=args.threads, quick=args.quick)
        write_result(
            folder / "unseen_defaults.json",
            {
                "benchmark": "unseen_defaults",
                "quick": args.quick,
                "code": unseen_defaults.code_version(),
                **unseen,
                "host": unseen_host,
            },
            show=unseen["targets"],
        )
    cases = device_cases(args) if args.part in ("all", "device") else []
    payload = {
        "benchmark": "compression",
        "quick": args.quick,
        "part": args.part,
        "code": unseen_defaults.code_version(),
        "method": (
            "Every artifact converted by edgec.convert and run by LiteRT (edgec.runtime) on this "
            "host; accuracy on the validation split, accuracy_drop = float32 .tflite accuracy - "
            "artifact accuracy; latency batch 1, 5 warm-up invokes discarded, 15 interleaved "
            f"rounds of 20 invokes per artifact, medians, {args.threads} thread(s), all artifacts "
            "of a case side by side; MACs from edgec.modelinfo (conv, depthwise, dense); bytes "
            "are the .tflite's (what the device stores), gzip_bytes its download."
        ),
        "bound": BOUND,
        "dropped": (
            "The previous run's cases (the demo digits CNN, a digits MLP and a breast-cancer MLP "
            "with prune sparsity sweeps, a lowrank+prune+cluster combination, distillation over "
            "seeds and the search) are gone: prune, lowrank and cluster now run at their "
            "defaults on the CNNs here (gzip column kept) and on the MLPs of the unseen part; "
            "distillation's gap against a student trained alone is item 4's (helper distill's "
            "benchmarks/suite/distill.py); the search ranks by the profile's objective now, not "
            "gzip, and is not benchmarked here."
        ),
        "targets": targets(cases, unseen),
        "device_cases": cases,
        "unseen_defaults": unseen,
        "seconds": round(time.perf_counter() - start, 1),
        "host": host,
    }
    write_result(out, payload, show=payload["targets"])


if __name__ == "__main__":
    main()
