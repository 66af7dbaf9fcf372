"""Distillation at equal epochs: how much of the student/teacher gap the ``distill`` pass closes.

For each data set and seed a teacher is trained (its own, longer budget, seeded),
then the width-``w`` student is trained from it by the ``distill`` pass itself,
so every condition has the same optimizer (Adam, cosine decay to a tenth), the
same epochs, batch size and best-epoch choice on held-out training rows:

- ``alone_random``: labels only (``alpha = 0``, no mixup), fresh initialization;
- ``alone_teacher_init``: labels only, started from the teacher's sliced channels
  (``init = teacher``), the fair baseline for the defaults, which start there too;
- ``distilled_random_init``: the pass's defaults but a fresh student (logits alone);
- ``distilled``: the pass's defaults;
- ``distilled_no_mixup``: the defaults without mixup (``mixup = 0``), to weigh it.

``gap_closed`` = (distilled - alone) / (teacher - alone), on the means over seeds
(teachers included), for each baseline. Kernels are deterministic, so a run
repeats exactly on the same CPU and versions (the ``host`` block), in any process:
``--merge`` combines runs, and the conditions of one case only where its teachers
are equal. Accuracy is Keras float32 top-1 on the validation split, on the
host. The defaults were tuned on ``digits_cnn`` only (``role: tuned``); the other
data sets (``role: judged``) never fed a choice of default. ``shapes_cnn`` and
``hastie_mlp`` were added after the first four had been used to compare mixup
variants (none was adopted), as sets no choice had looked at; ``waveforms_conv1d``
after early-stopped distillation had been tried on all six, to judge it.

    python benchmarks/suite/distill.py [--seeds 0 1 2] [--only digits_cnn] [--set alpha=0.9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from common import (
    RESULTS,
    classification_table,
    host_facts,
    last_rows_held_out,
    shells_table,
    standardized_table,
    write_result,
)

WIDTH = 0.25  # the search ladder's narrower rung, where a narrow student has a real gap


def _digits(seed: int) -> tuple[Any, Any, int]:
    from edgec.data import demo_dataset
    from edgec.demo import train_demo_model

    data = demo_dataset()
    return data, train_demo_model(data, epochs=30, seed=seed), 30


def _signal(seed: int) -> tuple[Any, Any, int]:
    """Noisy chirps, 8 classes a cycle apart, 4,000 rows: 1,000 validation rows, 0.1 pt each."""
    import keras

    rng = np.random.default_rng(3)
    n, length = 4000, 128
    t = np.linspace(0, 1, length, dtype=np.float32)
    y = rng.integers(0, 8, n)
    f0 = 2.0 + 1.0 * y[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    x = amp * np.sin(2 * np.pi * (f0 * t + 2 * t**2) + phase) + rng.standard_normal((n, length))
    x = x[..., None].astype(np.float32)
    data = last_rows_held_out(x, y, 1000, "synthetic chirps: 8 classes, noise sigma 1, seeded")
    model = keras.Sequential(
        [
            keras.Input((length, 1)),
            keras.layers.Conv1D(32, 7, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(64, 5, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(8, activation="softmax"),
        ],
        name="signal_cnn",
    )
    return data, _fit(model, data, 30), 30


def _waveforms(seed: int) -> tuple[Any, Any, int]:
    """Which waveform (sine, square, triangle, sawtooth) at a random 1.5-5 cycles, phase and
    amplitude, noise sigma 0.4, 96 samples, 6,000 rows, 1,500 validation rows; a Conv1D."""
    import keras

    rng = np.random.default_rng(13)
    n, length = 6000, 96
    t = np.linspace(0, 1, length, endpoint=False, dtype=np.float32)
    y = rng.integers(0, 4, n)
    cycles, phase = rng.uniform(1.5, 5.0, (n, 1)), rng.uniform(0, 1, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    u = (cycles * t + phase) % 1.0
    waves = np.stack(
        [np.sin(2 * np.pi * u), np.sign(np.sin(2 * np.pi * u)), 4 * np.abs(u - 0.5) - 1, 2 * u - 1]
    )
    x = amp * waves[y, np.arange(n)] + 0.4 * rng.standard_normal((n, length))
    x = x[..., None].astype(np.float32)
    data = last_rows_held_out(x, y, 1500, "synthetic waveforms: 4 shapes, noise sigma 0.4, seeded")
    model = keras.Sequential(
        [
            keras.Input((length, 1)),
            keras.layers.Conv1D(32, 5, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(64, 5, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ],
        name="waveforms_cnn",
    )
    return data, _fit(model, data, 30), 30


def _tabular(seed: int) -> tuple[Any, Any, int]:
    """scikit-learn make_classification: 6,000 rows, 8 classes, 1,500 validation rows."""
    return _table_mlp(classification_table(), "tabular_mlp")


def _shells(seed: int) -> tuple[Any, Any, int]:
    """scikit-learn make_gaussian_quantiles: 6 nested shells in 12 dimensions, 6,000 rows,
    1,500 validation rows; a radial boundary, unlike make_classification's clusters."""
    return _table_mlp(shells_table(), "shells_mlp")


def _shapes(seed: int) -> tuple[Any, Any, int]:
    """Noisy 16x16 outlines of four shapes (ring, square, triangle, cross) at random places
    and sizes, 6,000 rows, 1,500 validation rows, and a small Conv2D teacher (30 epochs)."""
    import keras

    rng = np.random.default_rng(11)
    n, size = 6000, 16
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    y = rng.integers(0, 4, n)
    x = np.empty((n, size, size), np.float32)
    for i, label in enumerate(y):
        r = rng.uniform(3.0, 6.0)
        cy, cx = rng.uniform(r, size - 1 - r, 2)
        dy, dx = yy - cy, xx - cx
        if label == 0:
            shape = np.abs(np.hypot(dy, dx) - r) < 0.8
        elif label == 1:
            shape = np.abs(np.maximum(np.abs(dy), np.abs(dx)) - r) < 0.8
        elif label == 2:
            shape = _triangle(dy, dx, r) & ~_triangle(dy, dx, r - 1.5)
        else:
            bar_y, bar_x = np.abs(dy) < 0.8, np.abs(dx) < 0.8
            shape = (bar_y & (np.abs(dx) <= r)) | (bar_x & (np.abs(dy) <= r))
        x[i] = rng.uniform(0.5, 1.0) * shape + 0.4 * rng.standard_normal((size, size))
    source = "synthetic shape outlines 16x16: 4 classes, noise sigma 0.4, seeded"
    data = last_rows_held_out(x[..., None], y, 1500, source)
    model = keras.Sequential(
        [
            keras.Input((size, size, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ],
        name="shapes_cnn",
    )
    return data, _fit(model, data, 30), 30


def _triangle(dy: Any, dx: Any, s: float) -> Any:
    """The pixels of a filled triangle of size ``s`` around the offsets (dy, dx) from its centre."""
    return (dy <= 0.6 * s) & (dy >= -s) & (np.abs(dx) <= 0.6 * (dy + s))


def _hastie(seed: int) -> tuple[Any, Any, int]:
    """scikit-learn make_hastie_10_2: 10 Gaussian features, two classes split by the radius
    (chi-squared median), 6,000 rows, 1,500 validation rows."""
    from sklearn.datasets import make_hastie_10_2

    x, y = make_hastie_10_2(n_samples=6000, random_state=9)
    y = (y > 0).astype(np.int64)
    return _table_mlp(standardized_table(x, y, "scikit-learn make_hastie_10_2"), "hastie_mlp")


def _table_mlp(data: Any, name: str) -> tuple[Any, Any, int]:
    """A table's 256-128 MLP teacher (40 epochs)."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((data.x_train.shape[1],)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(int(data.y_train.max()) + 1, activation="softmax"),
        ],
        name=name,
    )
    return data, _fit(model, data, 40), 40


def _fit(model: Any, data: Any, epochs: int) -> Any:
    """Train a teacher; the caller has seeded Keras (its initial weights and shuffles)."""
    import keras

    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


# name -> (builder, role). Only digits_cnn was used to choose the pass's defaults.
CASES = {
    "digits_cnn": (_digits, "tuned"),
    "signal_conv1d": (_signal, "judged"),
    "tabular_mlp": (_tabular, "judged"),
    "shells_mlp": (_shells, "judged"),
    "shapes_cnn": (_shapes, "judged"),
    "hastie_mlp": (_hastie, "judged"),
    "waveforms_conv1d": (_waveforms, "judged"),
}
CONDITIONS: dict[str, dict[str, Any]] = {
    "alone_random": {"alpha": 0.0, "mixup": 0.0, "init": "random"},
    "alone_teacher_init": {"alpha": 0.0, "mixup": 0.0, "init": "teacher"},
    "distilled_random_init": {"init": "random"},
    "distilled": {},
    "distilled_no_mixup": {"mixup": 0.0},
}


def _accuracy(model: Any, data: Any) -> float:
    pred = model.predict(data.x_val, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(pred, -1) == data.y_val))


def run_case(
    name: str, seeds: list[int], overrides: dict[str, Any], conditions: list[str]
) -> dict[str, Any]:
    import keras

    from edgec.passes.distill import DistillParams, DistillPass
    from edgec.pipeline import PassContext, PassManager, count_params

    build, role = CASES[name]
    start = time.perf_counter()
    base = {"width": WIDTH, **overrides}
    # One teacher per seed (its initial weights and shuffles), each student seeded alike: a
    # result then holds across teachers, not for one teacher's quirks (one teacher's
    # accuracy moved by 2 pt with its seed, and the students' gains with it).
    teachers, accs = [], {cond: [] for cond in conditions}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        data, teacher, teacher_epochs = build(seed)
        teachers.append(_accuracy(teacher, data))
        for cond in conditions:
            step = DistillPass(DistillParams(**{**base, **CONDITIONS[cond]}))
            student, records = PassManager([step]).run(teacher, PassContext(data=data, seed=seed))
            accs[cond].append(_accuracy(student, data))
            print(
                f"{name} {cond} seed {seed}: {accs[cond][-1]:.4f} (teacher {teachers[-1]:.4f})",
                flush=True,
            )
    teacher_acc = statistics.mean(teachers)
    out: dict[str, Any] = {
        "role": role,
        "data": data.describe(),
        "validation_rows": len(data.y_val),
        "one_row_pt": round(100 / len(data.y_val), 3),
        "teacher_params": count_params(teacher),
        "student_params": count_params(student),
        "teacher_epochs": teacher_epochs,
        "teacher_accuracy": round(teacher_acc, 4),
        "teacher_accuracy_per_seed": [round(a, 4) for a in teachers],
        "params": {**DistillParams(**base).__dict__, "init": str(DistillParams(**base).init)},
        "conditions": {
            cond: {
                "overrides": CONDITIONS[cond],
                "accuracy": [round(a, 4) for a in accs[cond]],
                "mean": round(statistics.mean(accs[cond]), 4),
                "stdev": round(statistics.stdev(accs[cond]), 4) if len(seeds) > 1 else 0.0,
                "epochs": records[0].details["epochs"],
            }
            for cond in conditions
        },
    }
    out["seconds"] = round(time.perf_counter() - start, 1)
    return _with_gaps(out)


def _with_gaps(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` with its ``gap_*`` figures (re)computed from the condition means."""
    case = {k: v for k, v in case.items() if not k.startswith("gap_")}
    c, teacher_acc = case["conditions"], case["teacher_accuracy"]
    for alone in ("alone_random", "alone_teacher_init"):
        for dist in (cond for cond in CONDITIONS if not cond.startswith("alone_")):
            if alone in c and dist in c:
                gap = teacher_acc - c[alone]["mean"]
                frac = (c[dist]["mean"] - c[alone]["mean"]) / gap if gap > 0 else None
                case[f"gap_closed_{dist}_vs_{alone}"] = None if frac is None else round(frac, 3)
    case["gap_pt_alone_teacher_init"] = (
        round(100 * (teacher_acc - c["alone_teacher_init"]["mean"]), 2)
        if "alone_teacher_init" in c
        else None
    )
    return case


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The cases of earlier runs' JSON. A case in several runs gets the conditions of all of
    them (where two measured one condition, the first file's), which needs the same teachers:
    equal per-seed accuracies, as deterministic kernels give in any process."""
    cases: dict[str, Any] = {}
    for part in reversed(parts):  # the last file first, so an earlier file's condition wins
        for name, case in part["cases"].items():
            if name in cases:
                if cases[name]["teacher_accuracy_per_seed"] != case["teacher_accuracy_per_seed"]:
                    raise SystemExit(
                        f"--merge: {name} has other teachers in another run "
                        f"({cases[name]['teacher_accuracy_per_seed']} against "
                        f"{case['teacher_accuracy_per_seed']}); its conditions cannot be combined"
                    )
                case = {
                    **case,
                    "conditions": {**cases[name]["conditions"], **case["conditions"]},
                    "seconds": round(cases[name]["seconds"] + case["seconds"], 1),
                }
            cases[name] = _with_gaps(case)
    return cases


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _met(cases: dict[str, Any]) -> bool:
    """Half the same-init gap closed on every judged set; where labels alone from the teacher
    init already reach the teacher there is no gap, and the distilled mean must reach it too."""
    judged = [c for c in cases.values() if c["role"] == "judged"]
    ok = []
    for c in judged:
        frac = c.get("gap_closed_distilled_vs_alone_teacher_init")
        if c.get("gap_pt_alone_teacher_init") is not None and c["gap_pt_alone_teacher_init"] <= 0:
            ok.append(c["conditions"]["distilled"]["mean"] >= c["teacher_accuracy"])
        else:
            ok.append(frac is not None and frac >= 0.5)
    return bool(judged) and all(ok)


def _summary(cases: dict[str, Any]) -> dict[str, Any]:
    return {
        n: {k: v for k, v in c.items() if k.startswith("gap") or k == "teacher_accuracy"}
        | {k: v["mean"] for k, v in c["conditions"].items()}
        for n, c in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument(
        "--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS)
    )
    parser.add_argument("--set", nargs="*", default=[], help="pass overrides KEY=VALUE (tuning)")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine earlier runs' JSON into --out: their cases, and for a case measured in "
        "several runs with the same teachers its conditions (the first file's win)",
    )
    args = parser.parse_args()
    if args.merge:
        import json

        parts = [json.loads(path.read_text()) for path in args.merge]
        payload = {**parts[0], "cases": _merged(parts)}
        payload["seconds"] = sum(p["seconds"] for p in parts)
        payload["runs"] = [  # an earlier merge brings its own runs
            run
            for p in parts
            for run in p.get("runs", [{"cases": list(p["cases"]), "host": p["host"]}])
        ]
        payload["met_on_judged"] = _met(payload["cases"])
        write_result(args.out, payload, show=_summary(payload["cases"]))
        return
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    import tensorflow as tf

    # Seeded and deterministic kernels: the teacher and every student are the same in every
    # run, so runs with different --set are comparable (the teacher moved by 2 pt without).
    tf.config.experimental.enable_op_determinism()
    host = host_facts()
    start = time.perf_counter()
    cases = {name: run_case(name, args.seeds, overrides, args.conditions) for name in args.only}
    payload = {
        "benchmark": "distill",
        "method": (
            "host, Keras float32 top-1 on each validation split; students trained by the distill "
            "pass (same epochs, optimizer, schedule and best-epoch rule in every condition), "
            f"width {WIDTH}, seeds {args.seeds}, one teacher per seed"
        ),
        "overrides": overrides,
        "target": (
            "distilled closes >= half the gap on every judged data set, against the student "
            "trained on labels alone from the same (teacher) initialization"
        ),
        "met_on_judged": _met(cases),
        "cases": cases,
        "seconds": round(time.perf_counter() - start, 1),
        "host": host,
    }
    write_result(args.out, payload, show=_summary(cases))


if __name__ == "__main__":
    main()
