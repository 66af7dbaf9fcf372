"""Measuring an artifact on the host: accuracy, agreement with the float model, error, latency.

Every model, the float32 baseline included, is measured the same way: through
the TFLite runtime on the validation inputs, so differences come from the
compression and quantization, not from two different executors.
"""

from __future__ import annotations

import gzip
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.data import Dataset
from edgec.files import sha256_bytes
from edgec.runtime import TFLiteModel


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    outputs: np.ndarray  # float outputs on the validation inputs
    metrics: dict[str, Any]


def gzip_size(content: bytes) -> int:
    """Bytes after gzip -9: how well weight sparsity and sharing compress for download."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def size_facts(content: bytes) -> dict[str, Any]:
    return {
        "bytes": len(content),
        "gzip_bytes": gzip_size(content),
        "sha256": sha256_bytes(content),
    }


def host_latency_ms(
    content: bytes, x: np.ndarray, *, threads: int = 1, warmup: int = 3, runs: int = 20
) -> float:
    """Steady-state median of single-sample invokes on this host (a guide, not the device's)."""
    model = TFLiteModel(content, threads=threads, batch=1)
    it = model.interpreter
    idx = it.get_input_details()[0]["index"]
    it.set_tensor(idx, model.quantize_input(x[:1]))
    for _ in range(warmup):
        it.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        it.invoke()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1e3, 4)


def interleaved_latency_ms(
    models: dict[Any, bytes],
    x: np.ndarray,
    *,
    threads: int = 1,
    warmup: int = 5,
    rounds: int = 10,
    per_round: int = 10,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> dict[Any, float]:
    """Median single-sample invoke time per model on this host, the models timed side by side.

    Round by round each model runs ``per_round`` timed invokes, so drift in the host's load
    reaches every model alike: the medians compare (as ratios), unlike ones timed apart.
    ``statistic`` replaces the median (benchmarks/suite/scaleout.py compares estimators).
    """
    loaded = {}
    for key, content in models.items():
        m = TFLiteModel(content, threads=threads, batch=1)
        idx = m.interpreter.get_input_details()[0]["index"]
        m.interpreter.set_tensor(idx, m.quantize_input(x[:1]))
        for _ in range(warmup):  # discarded
            m.interpreter.invoke()
        loaded[key] = m
    samples: dict[Any, list[float]] = {key: [] for key in models}
    for _ in range(rounds):
        for key, m in loaded.items():
            for _ in range(per_round):
                start = time.perf_counter()
                m.interpreter.invoke()
                samples[key].append(time.perf_counter() - start)
    return {key: statistic(s) * 1e3 for key, s in samples.items()}


def evaluate(
    content: bytes,
    data: Dataset,
    *,
    reference: np.ndarray | None = None,
    threads: int = 1,
    latency: bool = True,
) -> Evaluation:
    """Run ``content`` on ``data.x_val``; compare with labels and with ``reference`` outputs."""
    model = TFLiteModel(content, threads=threads)
    out = model.predict(data.x_val)
    metrics: dict[str, Any] = {"samples": len(data.x_val)}
    flat = out.reshape(len(out), -1)
    if data.y_val is not None:
        metrics["accuracy"] = round(float(np.mean(flat.argmax(axis=1) == data.y_val)), 6)
    if reference is not None:
        ref = reference.reshape(len(reference), -1)
        metrics["top1_agreement"] = round(float(np.mean(flat.argmax(1) == ref.argmax(1))), 6)
        diff = np.abs(flat - ref)
        metrics["max_abs_error"] = round(float(diff.max()), 6)
        metrics["mean_abs_error"] = round(float(diff.mean()), 6)
    if latency:
        metrics["host_latency_ms"] = host_latency_ms(content, data.x_val, threads=threads)
    return Evaluation(outputs=out, metrics=metrics)
