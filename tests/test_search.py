"""The accuracy-aware search, measuring real int8 artifacts with the real converter and LiteRT."""

from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from edgec.convert import ConvertOptions, convert
from edgec.data import Dataset, demo_dataset
from edgec.pipeline import PassContext
from edgec.profiles import Quantization
from edgec.recipe import Step
from edgec.runtime import TFLiteModel
from edgec.search import Ladder, Measurement, Rung, default_ladder, search

ROW_KEYS = {
    "label",
    "passes",
    "bytes",
    "gzip_bytes",
    "params",
    "accuracy",
    "accuracy_drop",
    "host_latency_ms",
    "fits_budgets",
    "ok",
    "seconds",
    "error",
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return demo_dataset()


@pytest.fixture(scope="module")
def model(digits: Dataset):
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(digits.x_train, digits.y_train, epochs=10, verbose=0)
    return m


def _evaluator(digits: Dataset):
    def evaluate(keras_model, label: str) -> Measurement:
        content = convert(
            keras_model, ConvertOptions(quantization=Quantization.INT8), digits.calibration(100)
        )
        runner = TFLiteModel(content)
        start = time.perf_counter()
        pred = runner.predict(digits.x_val)
        ms = (time.perf_counter() - start) * 1000 / len(digits.x_val)
        acc = float(np.mean(pred.argmax(-1) == digits.y_val))
        return Measurement(
            bytes=len(content),
            gzip_bytes=len(gzip.compress(content, 9)),
            accuracy=acc,
            host_latency_ms=ms,
            payload=content,
        )

    return evaluate


def _ladder(*families: tuple[tuple[str, str, dict], ...], combine: bool = True) -> Ladder:
    return Ladder(
        families=tuple(
            tuple(Rung(label=label, steps=(Step(id=pid, params=p),)) for label, pid, p in fam)
            for fam in families
        ),
        combine=combine,
    )


def test_search_keeps_the_smallest_artifact_within_the_bound(model, digits) -> None:
    ladder = _ladder(
        (
            ("prune 60%", "prune", {"final_sparsity": 0.6}),
            ("prune 99%", "prune", {"final_sparsity": 0.99, "epochs": 0}),
        ),
        (("cluster k=16", "cluster", {"k": 16, "epochs": 0}),),
    )
    ctx = PassContext(data=digits, seed=0, epochs_scale=0.5)
    result = search(model, ctx, evaluate=_evaluator(digits), max_accuracy_drop=0.03, ladder=ladder)
    table = result.table
    labels = [row["label"] for row in table]
    assert labels[0] == "plain" and all(set(row) == ROW_KEYS for row in table)
    # 99% one-shot pruning breaks the bound and the family stops there.
    assert labels[:4] == ["plain", "prune 60%", "prune 99%", "cluster k=16"]
    rows = {row["label"]: row for row in table}
    assert rows["prune 99%"]["ok"] is False and rows["prune 99%"]["accuracy_drop"] > 0.03
    # The strongest passing rungs are combined.
    assert "prune 60% + cluster k=16" in rows
    plain = rows["plain"]
    assert result.met
    assert result.chosen.measurement.gzip_bytes <= plain["gzip_bytes"]
    assert result.chosen.label != "plain"  # pruning or clustering really did shrink the gzip
    assert result.chosen.accuracy_drop <= 0.03
    best_ok = min((r for r in table if r["ok"]), key=lambda r: (r["gzip_bytes"], r["bytes"]))
    assert result.chosen.label == best_ok["label"]
    assert isinstance(result.chosen.measurement.payload, bytes)  # the caller's artifact comes back
    assert result.to_dict()["chosen"] == result.chosen.label
    assert result.chosen.records and result.chosen.records[0]["id"] in ("prune", "cluster")


def test_no_candidate_within_bound_keeps_the_most_accurate(model, digits) -> None:
    ladder = _ladder(
        (
            ("cluster k=4", "cluster", {"k": 4, "epochs": 0}),
            ("cluster k=2", "cluster", {"k": 2, "epochs": 0}),
        )
    )
    ctx = PassContext(data=digits, seed=0)
    result = search(model, ctx, evaluate=_evaluator(digits), max_accuracy_drop=-1.0, ladder=ladder)
    assert not result.met
    assert [r["label"] for r in result.table] == ["plain", "cluster k=4"]  # stopped at a failure
    drops = {r["label"]: r["accuracy_drop"] for r in result.table}
    assert result.chosen.label == min(drops, key=drops.get)


def test_budgets_decide_too(model, digits) -> None:
    ladder = _ladder((("cluster k=16", "cluster", {"k": 16, "epochs": 0}),))
    ctx = PassContext(data=digits, seed=0)
    evaluate = _evaluator(digits)
    plain_gzip = evaluate(model, "probe").gzip_bytes
    # A gzip budget only the clustered model can meet.
    result = search(
        model,
        ctx,
        evaluate=evaluate,
        max_accuracy_drop=0.05,
        fits_budgets=lambda m: m.gzip_bytes < plain_gzip,
        ladder=ladder,
    )
    rows = {r["label"]: r for r in result.table}
    assert rows["plain"]["fits_budgets"] is False and rows["plain"]["ok"] is False
    assert result.met and result.chosen.label == "cluster k=16"
    # Nothing fits: met is False, and the smallest within the accuracy bound is kept.
    result = search(
        model,
        ctx,
        evaluate=evaluate,
        max_accuracy_drop=0.05,
        fits_budgets=lambda m: False,
        ladder=ladder,
    )
    assert not result.met and result.chosen.label == "cluster k=16"


def test_default_ladder_steps_strength_up() -> None:
    families = default_ladder().families
    prune = [r.steps[0].params["final_sparsity"] for r in families[1]]
    assert prune == sorted(prune) and prune[-1] >= 0.9
    ks = [r.steps[0].params["k"] for r in families[2]]
    assert ks == sorted(ks, reverse=True) and ks[0] == 64 and ks[-1] == 8
    for family in families:
        for rung in family:
            rung.steps[0].make_params()  # every rung is a valid recipe step
