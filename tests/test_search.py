"""The accuracy-aware search, measuring real int8 artifacts with the real converter and LiteRT."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from edgec.convert import ConvertOptions
from edgec.data import Dataset, demo_dataset
from edgec.executor import LocalExecutor
from edgec.objective import Objective
from edgec.passes.common import accuracy
from edgec.pipeline import count_params
from edgec.profiles import Quantization
from edgec.recipe import Step
from edgec.runtime import TFLiteModel
from edgec.search import (
    CandidateJob,
    Ladder,
    Rung,
    SearchShared,
    default_ladder,
    keras_from_bytes,
    keras_to_bytes,
    run_candidate,
    run_search,
)

ROW_KEYS = {
    "label",
    "passes",
    "bytes",
    "gzip_bytes",
    "params",
    "accuracy",
    "accuracy_drop",
    "host_latency_ms",
    "host_latency_timing",
    "arena_bytes",
    "arena_required_bytes",
    "objective_figures",
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


def _run(model, digits: Dataset, ladder: Ladder, bound: float, **kw):
    """A real search: int8 with the real converter, measured by LiteRT, local executor."""
    return run_search(
        model,
        digits,
        options=OPTIONS,
        calibration=digits.calibration(100),
        max_accuracy_drop=bound,
        reference_accuracy=accuracy(model, digits.x_val, digits.y_val),
        ladder=ladder,
        **kw,
    )


OPTIONS = ConvertOptions(quantization=Quantization.INT8)


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
    lines: list[str] = []
    result = _run(model, digits, ladder, 0.03, epochs_scale=0.5, log=lines.append)
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
    assert result.to_dict()["chosen"] == result.chosen.label
    assert result.chosen.records and result.chosen.records[0]["id"] in ("prune", "cluster")
    # The artifact handed back is the one measured: LiteRT gives the same accuracy on it.
    pred = TFLiteModel(result.content).predict(digits.x_val).argmax(-1)
    assert round(float(np.mean(pred == digits.y_val)), 6) == result.chosen.measurement.accuracy
    assert result.chosen.measurement.gzip_bytes == len(gzip.compress(result.content, 9, mtime=0))
    # Only the chosen row keeps its bytes; the chosen Keras model is the candidate's, loaded back.
    assert all(
        c.measurement.content is None
        for c in result.candidates
        if c is not result.chosen and c.measurement
    )
    assert count_params(result.model) == result.chosen.params
    # Progress: candidates done of total, with the best so far.
    assert lines[-1].startswith(f"search {len(table)}/{len(table)}: ")
    assert f"best so far {result.chosen.label!r}" in lines[-1]


def test_no_candidate_within_bound_keeps_the_most_accurate(model, digits) -> None:
    ladder = _ladder(
        (
            ("cluster k=4", "cluster", {"k": 4, "epochs": 0}),
            ("cluster k=2", "cluster", {"k": 2, "epochs": 0}),
        )
    )
    result = _run(model, digits, ladder, -1.0)
    assert not result.met
    assert [r["label"] for r in result.table] == ["plain", "cluster k=4"]  # stopped at a failure
    drops = {r["label"]: r["accuracy_drop"] for r in result.table}
    assert result.chosen.label == min(drops, key=drops.get)


def test_budgets_decide_too(model, digits) -> None:
    ladder = _ladder((("cluster k=16", "cluster", {"k": 16, "epochs": 0}),))
    shared = SearchShared(
        model=keras_to_bytes(model),
        data=digits,
        options=OPTIONS,
        calibration=digits.calibration(100),
    )
    plain_gzip = run_candidate(shared, CandidateJob(label="plain", steps=())).measurement.gzip_bytes
    # A gzip budget only the clustered model can meet.
    result = _run(model, digits, ladder, 0.05, fits_budgets=lambda m: m.gzip_bytes < plain_gzip)
    rows = {r["label"]: r for r in result.table}
    assert rows["plain"]["fits_budgets"] is False and rows["plain"]["ok"] is False
    assert result.met and result.chosen.label == "cluster k=16"
    # Nothing fits: met is False, and the smallest within the accuracy bound is kept.
    result = _run(model, digits, ladder, 0.05, fits_budgets=lambda m: False)
    assert not result.met and result.chosen.label == "cluster k=16"


class ReversedExecutor(LocalExecutor):
    """Runs the jobs last first: an executor whose completion order is not the job order."""

    name = "reversed"

    def map(self, fn, shared, jobs, *, resources=None):
        outcomes = list(super().map(fn, shared, list(reversed(jobs)), resources=resources))
        for i, outcome in outcomes:
            yield len(jobs) - 1 - i, outcome


def _raises_on_cluster8(shared: SearchShared, job: CandidateJob):
    if job.label.startswith("cluster k=8"):
        raise RuntimeError("injected failure in this one candidate")
    return run_candidate(shared, job)


def test_the_answer_does_not_depend_on_completion_order_and_a_failing_job_is_a_row(
    model, digits
) -> None:
    ladder = _ladder(
        (
            ("cluster k=32", "cluster", {"k": 32, "epochs": 0}),
            ("cluster k=8", "cluster", {"k": 8, "epochs": 0}),
        ),
        (("prune 50%", "prune", {"final_sparsity": 0.5, "epochs": 0}),),
        combine=False,
    )
    first = _run(model, digits, ladder, 0.05, job_fn=_raises_on_cluster8)
    again = _run(
        model, digits, ladder, 0.05, job_fn=_raises_on_cluster8, executor=ReversedExecutor()
    )
    assert again.executor == "reversed"

    def strip(table):
        # Timings differ run to run; everything measured about the artifact must not.
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "host_latency_ms")} for r in table
        ]

    assert strip(first.table) == strip(again.table)
    assert first.chosen.label == again.chosen.label
    assert first.content == again.content  # every job is seeded: the same bytes either way
    rows = {r["label"]: r for r in first.table}
    assert rows["cluster k=8"]["error"] == "RuntimeError: injected failure in this one candidate"
    assert rows["cluster k=8"]["ok"] is False and rows["cluster k=8"]["bytes"] is None
    assert rows["prune 50%"]["bytes"] is not None  # the search went on


def test_a_job_outcome_is_picklable_and_holds_no_keras_object(model, digits) -> None:
    shared = SearchShared(
        model=keras_to_bytes(model),
        data=digits,
        options=OPTIONS,
        calibration=digits.calibration(50),
    )
    job = CandidateJob(
        label="cluster k=16", steps=(Step(id="cluster", params={"k": 16, "epochs": 0}),)
    )
    outcome = run_candidate(pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(job)))
    back = pickle.loads(pickle.dumps(outcome))
    assert back.measurement.content == outcome.measurement.content
    assert back.measurement.bytes == len(outcome.measurement.content)
    assert keras_from_bytes(back.model).count_params() == outcome.params
    # A pass that fails is that job's error, not an exception out of the job.
    bad = CandidateJob(label="lowrank", steps=(Step(id="lowrank", params={"param_fraction": 0.5}),))
    failed = run_candidate(
        dataclasses.replace(shared, data=dataclasses.replace(digits, y_train=None)), bad
    )
    assert failed.measurement is None and "labeled training data" in failed.error


def test_default_ladder_steps_strength_up() -> None:
    families = default_ladder().families
    by_pass = {f[0].steps[0].id: f for f in families}
    prune = [r.steps[0].params["final_sparsity"] for r in by_pass["prune"]]
    assert prune == sorted(prune) and prune[-1] >= 0.9
    ks = [r.steps[0].params["k"] for r in by_pass["cluster"]]
    assert ks == sorted(ks, reverse=True) and ks[0] == 64 and ks[-1] == 8
    for family in families:
        for rung in family:
            rung.steps[0].make_params()  # every rung is a valid recipe step
            for step in rung.warm or ():
                step.make_params()
    # qat is the ladder's last candidate (it must end a recipe); a student is only a base.
    ladder = default_ladder()
    assert ladder.qat is not None and ladder.qat.id == "qat"
    ladder.qat.make_params()
    assert all(r.on_top is (r.steps[0].id != "distill") for f in families for r in f)


JOBS: list[CandidateJob] = []


def _recording(shared: SearchShared, job: CandidateJob):
    """The real job, noting what it was asked to run."""
    JOBS.append(job)
    return run_candidate(shared, job)


def test_families_stack_greedily_from_the_best_single_rung_without_rerunning_a_pass(
    model, digits
) -> None:
    # Bytes rank: only the narrower student and low-rank shrink the artifact, so one of
    # them is the base; pruning and clustering leave the bytes alone and stack on top.
    ladder = _ladder(
        (("distill width 0.5", "distill", {"width": 0.5, "epochs": 2}),),
        (("lowrank 50%", "lowrank", {"param_fraction": 0.5, "epochs": 0}),),
        (("prune 50%", "prune", {"final_sparsity": 0.5, "epochs": 0}),),
    )
    JOBS.clear()
    # Two epochs of distillation lose ~15 pt here: a loose bound keeps the test short.
    result = _run(model, digits, ladder, 0.25, objective=Objective.BYTES, job_fn=_recording)
    rows = {r["label"]: r for r in result.table}
    singles = ["distill width 0.5", "lowrank 50%", "prune 50%"]
    assert all(rows[s]["ok"] for s in singles)
    ranked = sorted(singles, key=lambda s: (rows[s]["bytes"], rows[s]["accuracy_drop"]))
    assert ranked[0] == "distill width 0.5"  # the smallest artifact: the base
    stacked = [r["label"] for r in result.table if r["label"] not in ("plain", *singles)]
    # One candidate per other family, best single first, each added to the last
    # combination that stayed within the bound; a combination runs in ladder order.
    order = {s: i for i, s in enumerate(singles)}
    expected, combo = [], [ranked[0]]
    for family in ranked[1:]:
        label = " + ".join(sorted([*combo, family], key=order.get))
        expected.append(label)
        if rows[label]["ok"]:
            combo = sorted([*combo, family], key=order.get)
    assert stacked == expected
    assert len(combo) >= 2  # something stacked within the bound
    # Every stacked job started from a measured model and ran only what it added: the
    # student is never distilled again, and no job repeats a pass its start already holds.
    for job in JOBS:
        if " + " in job.label:
            assert job.start is not None and job.done >= 1
            assert "distill" not in [s.id for s in job.steps[job.done :]]
    # The combination, as the manifest replays it from the input: the same artifact, cold.
    full = next(c for c in result.candidates if c.label == " + ".join(combo))
    ids = [rows[label]["passes"][0]["id"] for label in combo]
    assert [s.id for s in full.steps] == ids and [r["id"] for r in full.records] == ids
    cold = run_candidate(
        SearchShared(
            model=keras_to_bytes(model),
            data=digits,
            options=OPTIONS,
            calibration=digits.calibration(100),
        ),
        CandidateJob(label="cold", steps=full.steps),
    )
    assert cold.measurement.bytes == full.measurement.bytes
    assert cold.measurement.accuracy == full.measurement.accuracy


def _fails_first_stack(shared: SearchShared, job: CandidateJob):
    if " + " in job.label and not any(" + " in j.label for j in JOBS):
        JOBS.append(job)
        raise RuntimeError("this combination is out of the bound")
    return _recording(shared, job)


def test_a_family_that_takes_the_combination_out_of_the_bound_is_left_out(model, digits) -> None:
    ladder = _ladder(
        (("lowrank 50%", "lowrank", {"param_fraction": 0.5, "epochs": 0}),),
        (("prune 50%", "prune", {"final_sparsity": 0.5, "epochs": 0}),),
        (("cluster k=16", "cluster", {"k": 16, "epochs": 0}),),
    )
    JOBS.clear()
    result = _run(model, digits, ladder, 0.1, objective=Objective.BYTES, job_fn=_fails_first_stack)
    labels = [r["label"] for r in result.table]
    rows = {r["label"]: r for r in result.table}
    # Low-rank alone shrinks the bytes: it is the base. The first family added fails, so
    # it is left out and the next one is added to low-rank alone.
    first, second = sorted(
        ["prune 50%", "cluster k=16"], key=lambda s: (rows[s]["bytes"], rows[s]["accuracy_drop"])
    )
    assert labels[4:] == [f"lowrank 50% + {first}", f"lowrank 50% + {second}"]
    assert rows[f"lowrank 50% + {first}"]["bytes"] is None
    after = next(j for j in JOBS if j.label == f"lowrank 50% + {second}")
    assert [s.id for s in after.steps] == ["lowrank", second.split()[0]] and after.done == 1


def test_a_microcontroller_ram_budget_rules_out_candidates_during_the_search(
    tmp_path, monkeypatch
) -> None:
    """A cortex-m4 with little RAM: the smallest artifact keeps the big activations, so the
    search must judge each candidate's RAM (TFLM's arena + interpreter objects), not flash."""
    import edgec.search
    from edgec.build import BuildRequest, build, convert_options
    from edgec.micro import fit_report
    from edgec.profiles import load_profile

    rng = np.random.default_rng(0)
    x = rng.random((96, 16, 16, 4), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    np.savez(tmp_path / "d.npz", x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 4)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c2"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="d1"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="m",
    )
    model.save(tmp_path / "m.keras")
    # Narrow convs halve the activations (RAM); a low-rank dense cuts the most bytes.
    rungs = {
        "narrow convs": Step(
            id="prune-channels", params={"sparsity": 0.5, "exclude": ["d1"], "epochs": 0}
        ),
        "low-rank dense": Step(
            id="lowrank", params={"param_fraction": 0.1, "exclude": ["c1", "c2"], "epochs": 0}
        ),
    }
    ladder = Ladder(
        families=tuple((Rung(label=k, steps=(s,)),) for k, s in rungs.items()), combine=False
    )
    monkeypatch.setattr(edgec.search, "default_ladder", lambda: ladder)
    # Each candidate's RAM as the fit report (and so the build's budget check) counts it.
    m4 = load_profile("cortex-m4")
    shared = SearchShared(
        model=keras_to_bytes(model),
        data=Dataset(x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:], source="s"),
        options=convert_options(m4, m4.quantization),
        calibration=x[:32],
    )
    ram, size = {}, {}
    for label, steps in (("plain", ()), *((k, (s,)) for k, s in rungs.items())):
        content = run_candidate(shared, CandidateJob(label=label, steps=steps)).measurement.content
        ram[label] = fit_report(content, m4, x[64:72]).ram_bytes
        size[label] = len(content)
    assert size["low-rank dense"] < size["narrow convs"] < size["plain"]
    assert ram["narrow convs"] < min(ram["plain"], ram["low-rank dense"])
    limit = (ram["narrow convs"] + min(ram["plain"], ram["low-rank dense"])) // 2
    tight = tmp_path / "tight-m4.toml"
    tight.write_text(f'extends = "cortex-m4"\n\n[budgets]\nram_bytes = {limit}\n')
    result = build(
        BuildRequest(
            model=tmp_path / "m.keras",
            targets=(str(tight),),
            data=str(tmp_path / "d.npz"),
            out=tmp_path / "out",
            search=True,
            max_accuracy_drop=1.0,  # random labels: the budgets alone decide
        )
    )
    manifest = result.targets[0].manifest.to_dict()
    rows = {r["label"]: r for r in manifest["search"]["candidates"]}
    # Ranked by bytes alone low-rank would win; its RAM is over the budget, so it is out.
    assert rows["low-rank dense"]["fits_budgets"] is False
    assert rows["plain"]["fits_budgets"] is False
    assert rows["narrow convs"]["fits_budgets"] is True
    assert rows["narrow convs"]["arena_required_bytes"] >= rows["narrow convs"]["arena_bytes"]
    assert manifest["search"]["chosen"] == "narrow convs" and manifest["search"]["met"]
    # The build's own RAM check on the shipped artifact agrees: it fits.
    assert result.ok
    checks = {c["name"]: c for c in manifest["budgets"]["checks"]}
    assert checks["ram_bytes"]["ok"] and checks["ram_bytes"]["value"] == ram["narrow convs"]
