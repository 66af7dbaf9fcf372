"""Benchmark for the int4 schemes: bytes, accuracy and TFLM arena against int8, in one run.

For the demo digits CNN and a Dense-heavy digits MLP it converts float32,
int8, int4 and mixed-int4 (per-layer choice within a 1-point bound), measures
accuracy through LiteRT on the validation split, and runs the int8 and int4
artifacts (int8 I/O, per-tensor dense) in the TFLM interpreter for cortex-m4:
measured arena with and without int4 weights (TFLM unpacks int4 into the
arena), and TFLM's agreement with LiteRT.

    python benchmarks/suite/int4.py [--out benchmarks/results/int4.json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common import host_facts, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(name: str, model, data, bound: float) -> dict:
    from edgec.convert import ConvertOptions, convert
    from edgec.evaluate import evaluate
    from edgec.loaders import from_keras
    from edgec.micro import fit_report
    from edgec.precision import choose_int4_layers
    from edgec.profiles import load_profile
    from edgec.schemes import IODtype, Quantization

    source = from_keras(model, name).convert_source
    calib = data.calibration(300)
    f32 = convert(source, ConvertOptions(quantization=Quantization.FLOAT32))
    base = evaluate(f32, data, latency=False).metrics["accuracy"]
    mixed_opts = ConvertOptions(quantization=Quantization.MIXED_INT4, int4_layers=())
    plan = choose_int4_layers(
        f32, mixed_opts, calib, data, reference_accuracy=base, max_accuracy_drop=bound
    )
    contents = {
        "float32": f32,
        "int8": convert(f32, ConvertOptions(quantization=Quantization.INT8), calib),
        "int4": convert(f32, ConvertOptions(quantization=Quantization.INT4), calib),
        "mixed-int4": convert(
            f32,
            ConvertOptions(quantization=Quantization.MIXED_INT4, int4_layers=plan.int4_layers),
            calib,
        ),
    }
    schemes = {}
    for scheme, content in contents.items():
        acc = evaluate(content, data, latency=False).metrics["accuracy"]
        schemes[scheme] = {
            "bytes": len(content),
            "accuracy": acc,
            "accuracy_drop": round(base - acc, 6),
        }
    m4 = load_profile("cortex-m4")
    tflm = {}
    for q in (Quantization.INT8, Quantization.INT4):
        opts = ConvertOptions(
            quantization=q,
            input_dtype=IODtype.INT8,
            output_dtype=IODtype.INT8,
            per_channel_dense=False,
        )
        content = convert(source, opts, calib)
        r = fit_report(content, m4, data.x_val[:32], trusted=True)
        tflm[str(q)] = {
            "bytes": len(content),
            "arena_required": r.arena_required,
            "arena_head": r.arena_head,
            "int4_unpack_scratch_bytes": r.int4_unpack_bytes,
            "ram_bytes": r.ram_bytes,
            "tflm_agrees_with_litert": bool(r.agreement and r.agreement.ok),
        }
    return {
        "model": name,
        "schemes": schemes,
        "mixed_int4_plan": plan.to_dict(),
        "size_ratio_int8_over_int4": round(schemes["int8"]["bytes"] / schemes["int4"]["bytes"], 3),
        "size_ratio_float32_over_int4": round(
            schemes["float32"]["bytes"] / schemes["int4"]["bytes"], 3
        ),
        "cortex_m4_tflm": tflm,
        "tflm_arena_ratio_int4_over_int8": round(
            tflm["int4"]["arena_required"] / tflm["int8"]["arena_required"], 3
        ),
    }


def digits_mlp(data):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_mlp",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=30, batch_size=64, verbose=0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int4.json"))
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01)
    args = parser.parse_args()
    host = host_facts()

    from edgec.data import demo_dataset
    from edgec.demo import train_demo_model

    digits = demo_dataset()
    results = [
        measure("digits_cnn", train_demo_model(digits), digits, args.max_accuracy_drop),
        measure("digits_mlp", digits_mlp(digits), digits, args.max_accuracy_drop),
    ]
    payload = {
        "benchmark": "int4",
        "method": "bytes of each .tflite; accuracy through LiteRT on this host on the digits "
        "validation split; arena measured by the TFLM interpreter (tflite-micro) on this "
        "64-bit host for cortex-m4, int8 I/O, per-tensor dense weights",
        "host": host,
        "results": results,
    }
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
