"""Benchmark for `edgec build`: float32 against full-int8, side by side in one run.

For the demo digits CNN and for a MobileNetV2 (keras.applications, weights=None,
>1M parameters) trained briefly on the same digits upscaled to 32x32, it writes
JSON with the float32/int8 size ratio, the float32/int8 host latency ratio
(same LiteRT runtime, same threads, steady-state medians of interleaved rounds)
and the accuracy drop on the validation split.

    python benchmarks/suite/build_ratios.py [--out benchmarks/results/build_ratios.json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from common import host_facts, write_result


def steady_median_ms(
    models: dict[str, bytes], x: np.ndarray, threads: int, rounds: int = 15, per_round: int = 20
) -> dict[str, float]:
    """Median invoke time per model, interleaving the models round by round."""
    from edgec.evaluate import interleaved_latency_ms

    return interleaved_latency_ms(models, x, threads=threads, rounds=rounds, per_round=per_round)


def measure(name: str, model, data, threads: int) -> dict:
    """float32 (the build's baseline) against the artifact ``build_target`` ships for int8."""
    import dataclasses

    from edgec.build import BuildRequest, build_target, float_baseline
    from edgec.loaders import from_keras
    from edgec.pipeline import count_params
    from edgec.profiles import load_profile

    loaded = from_keras(model, name)
    base = float_baseline(loaded, data)
    # rpi4's int8 artifact, with no variants or default passes: conversion alone is measured.
    profile = dataclasses.replace(load_profile("rpi4"), threads=threads, variants=(), passes=())
    request = BuildRequest(model=name, targets=(profile.name,), calibration_size=300)
    target = build_target(request, profile, loaded, data, base, log=lambda _: None, write=False)
    f32, i8 = base.content, target.files["model.tflite"]
    q = target.manifest.primary.metrics
    base_accuracy = base.evaluation.metrics["accuracy"]
    lat = steady_median_ms({"float32": f32, "int8": i8}, data.x_val, threads)
    return {
        "model": name,
        "params": count_params(model),
        "float32_bytes": len(f32),
        "int8_bytes": len(i8),
        "size_ratio_float32_over_int8": round(len(f32) / len(i8), 3),
        "float32_median_ms": round(lat["float32"], 4),
        "int8_median_ms": round(lat["int8"], 4),
        "latency_ratio_float32_over_int8": round(lat["float32"] / lat["int8"], 3),
        "float32_accuracy": base_accuracy,
        "int8_accuracy": q.accuracy,
        "accuracy_drop": q.accuracy_drop,
        "top1_agreement": q.top1_agreement,
        "threads": threads,
    }


def mobilenet_on_digits(epochs: int):
    import keras

    from edgec.data import Dataset, demo_dataset

    d = demo_dataset()

    def up(x):  # 8x8 -> 32x32 by pixel repetition: MobileNetV2's smallest input
        return np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)

    data = Dataset(
        x_train=up(d.x_train),
        y_train=d.y_train,
        x_val=up(d.x_val),
        y_val=d.y_val,
        source=d.source + ", upscaled to 32x32",
    )
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 1), weights=None, classes=10)
    for layer in model.layers:
        # Keras' default 0.99 needs thousands of steps before the inference-time statistics
        # are usable; a short training run on 1,348 images needs faster-moving ones.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/build_ratios.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mobilenet-epochs", type=int, default=8)
    args = parser.parse_args()
    host = host_facts()

    from edgec.data import demo_dataset
    from edgec.demo import train_demo_model

    digits = demo_dataset()
    results = [measure("digits_cnn", train_demo_model(digits), digits, args.threads)]
    mobilenet, data32 = mobilenet_on_digits(args.mobilenet_epochs)
    results.append(measure("mobilenet_v2_digits32", mobilenet, data32, args.threads))
    payload = {
        "benchmark": "build_ratios",
        "method": "LiteRT on this host, batch 1, 5 warm-up invokes discarded, 15 interleaved rounds "
        "of 20 invokes per model; medians. Accuracy on the digits validation split.",
        "host": host,
        "results": results,
    }
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
