"""The accuracy-aware search: step compression up, measure each step, keep the best that fits.

The mission's "apply iteratively with careful monitoring" as an algorithm. A
``Ladder`` holds families of rungs of rising strength (a narrower distilled
student, channel pruning, low-rank parameter fraction, pruning sparsity, fewer
clusters). A family stops at its first rung that breaks the accuracy bound,
since stronger rungs only lose more. A warm rung (``Rung.warm``) continues from
the previous rung's fine-tuned model instead of the input, and its candidate's
recipe is the whole chain, so the manifest replays it from the input.

Then the families are stacked greedily: from the best single-family rung (by the
objective), each other family's strongest passing rung is added in turn (best
single first); a family whose addition leaves the accuracy bound is left out
and the next one is tried on the last combination that held. A combination's
passes run in ladder order, the order passes may follow each other (a later
pass's fine-tuning would undo an earlier one's zeros or shared values), so an
addition continues, warm, from the longest measured combination that is a
prefix of the new one and runs the rest on top. Every single rung is such a
prefix, so a distilled student (first in the ladder; ``Rung.on_top`` false: it
never runs on another family's model) is a base others stack on, never
distilled again.

Last, when post-training int8 lost accuracy on the candidate the search would
choose (more than ``QAT_WORTH`` of the bound, or it misses the bound),
``Ladder.qat`` is tried on top of it, warm from its model: qat must end a
recipe. Each stacking step and the qat candidate is one job that starts from a
measured model, so none re-runs distillation and the added wall time stays a
few passes.

Every candidate is an independent job (``CandidateJob``: a label and a recipe)
that an ``edgec.executor`` runs: in this process by default, or on a Ray
cluster. ``run_candidate`` is the job: it loads the model from its ``.keras``
bytes (or a warm rung's starting model), runs the recipe's passes, converts,
measures through LiteRT (and TFLM's arena when the objective ranks by it or a
microcontroller's RAM budget judges it) and
returns a picklable ``Outcome`` holding the measurement and the candidate's
``.tflite`` bytes, so the artifact the search measured is the one that ships.
Nothing closes over an in-memory Keras model, so a job can run in another process.

The answer does not depend on which job finished first: the ladder runs in
waves (wave 1: the plain model and every family's first rung; wave k: the next
rung of each family whose previous rung stayed within the bound; then one wave
per stacking step, then qat), the jobs of a wave are decided only by earlier
waves and by figures that do not depend on timing (``_plan_key``: never host
latency), every job is seeded the same way, and the choice is made over the
candidates in plan order. The plain model (no passes) is always a candidate. The chosen candidate
is the best by the ``edgec.objective`` (the profile's, or ``--objective``) among
those that meet both the accuracy bound and ``fits_budgets``; for the latency
objective those are first timed again side by side in this process, since
latencies timed in separate jobs do not compare. When none meets both, ``met``
is False and the result holds the best there is: the best by the objective
within the accuracy bound, else the most accurate. Every candidate tried is a
row of ``SearchResult.table``, with its objective figures.
"""

from __future__ import annotations

import builtins
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgec.errors import EdgecError, InputError
from edgec.executor import Executor, JobFailure, LocalExecutor, Resources
from edgec.objective import (
    DESCRIPTIONS,
    LATENCY_MARGIN,
    RANKING_THREADS,
    Objective,
    figures,
    needs_arena,
    objective_key,
    ranking,
)
from edgec.recipe import Step

if TYPE_CHECKING:
    import numpy as np

    from edgec.convert import ConvertOptions
    from edgec.data import Dataset
    from edgec.profiles import Profile

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One candidate's artifact as measured: sizes, accuracy, host latency, and its bytes."""

    bytes: int
    gzip_bytes: int
    accuracy: float
    host_latency_ms: float | None = None
    # TFLM's arena total, run on the host in the real TFLM interpreter; measured only when
    # the objective ranks by it (edgec.objective.needs_arena), else None.
    arena_bytes: int | None = None
    # How host_latency_ms was timed: "alone" in its job, or "side by side" with the others.
    latency_timing: str = "alone"
    # The smallest arena TFLM loads and runs the candidate in (>= arena_bytes: init may need
    # temporaries); measured only when a RAM budget judges the candidate, else None.
    arena_required_bytes: int | None = None
    # The .tflite measured; only the chosen candidate keeps it (builtins: the field above
    # named ``bytes`` shadows the type in this class's namespace).
    content: builtins.bytes | None = None


@dataclass(frozen=True, kw_only=True)
class Rung:
    label: str
    steps: tuple[Step, ...]  # from the input model (how a combination applies this rung)
    # Warm start: the steps that take the previous rung's fine-tuned model to this rung
    # (params relative to it); None: the rung starts from the input model.
    warm: tuple[Step, ...] | None = None
    # Whether the rung can be stacked on another family's model. A distilled student is
    # trained afresh from its teacher: it is a base that others stack on, never on top.
    on_top: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple) or not all(isinstance(s, Step) for s in self.steps):
            raise TypeError(f"rung {self.label!r}: steps must be a tuple of Step")


@dataclass(frozen=True, kw_only=True)
class Ladder:
    """Families of rungs, each family ordered from weakest to strongest.

    The families' order is the order passes may be stacked in (a structural change
    before weight sparsity, clustering last: a later pass's fine-tuning would undo an
    earlier pass's zeros or shared values). ``combine``: stack families greedily after
    the ladder; ``qat``: the step of a last quantization-aware candidate (None: none).
    """

    families: tuple[tuple[Rung, ...], ...]
    combine: bool = True
    qat: Step | None = None


def _rung(label: str, pass_id: str, *, warm: dict[str, Any] | None = None, **params: Any) -> Rung:
    """One step of ``pass_id``; ``warm``: its params on the previous rung's model."""
    return Rung(
        label=label,
        steps=(Step(id=pass_id, params=params),),
        warm=None if warm is None else (Step(id=pass_id, params=warm),),
    )


# prune-channels removes this cumulative fraction of the channels at each rung.
CHANNEL_SPARSITIES = (0.25, 0.5, 0.75)


def default_ladder() -> Ladder:
    """Every family the search knows, weakest rung first, in the order combinations apply them.

    Warm rungs continue from the previous rung's fine-tuned model: magnitude pruning and
    clustering have absolute targets (a sparsity of the kernel, a number of clusters), so
    the same params hold on a warm model; ``prune-channels`` removes a fraction of the
    channels *left*, so each warm rung removes what brings the total to the rung's label.
    Distillation trains a fresh student from the input (a warm start would make the weaker
    student the teacher) and low-rank would factorize its own factors, so neither is warm.
    """
    distill = tuple(
        dataclasses.replace(_rung(f"distill width {w}", "distill", width=w), on_top=False)
        for w in (0.5, 0.25)
    )
    channels = []
    for i, total in enumerate(CHANNEL_SPARSITIES):
        kept = 1.0 - CHANNEL_SPARSITIES[i - 1] if i else 1.0  # what the previous rung kept
        removed = round(1.0 - (1.0 - total) / kept, 6)  # of those
        channels.append(
            _rung(
                f"prune-channels {total:.0%}",
                "prune-channels",
                warm={"sparsity": removed} if i else None,
                sparsity=total,
            )
        )
    lowrank = tuple(
        _rung(f"lowrank {f:.0%} params", "lowrank", param_fraction=f) for f in (0.5, 0.3, 0.2)
    )
    prune = []
    sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    for i, s in enumerate(sparsities):
        # Warm, the schedule starts where the previous rung ended.
        warm = {"initial_sparsity": sparsities[i - 1], "final_sparsity": s} if i else None
        prune.append(
            _rung(
                f"prune {s:.0%}", "prune", warm=warm, initial_sparsity=min(0.5, s), final_sparsity=s
            )
        )
    cluster = tuple(
        _rung(f"cluster k={k}", "cluster", warm={"k": k} if i else None, k=k)
        for i, k in enumerate((64, 32, 16, 8))
    )
    return Ladder(
        families=(distill, tuple(channels), lowrank, tuple(prune), cluster),
        qat=Step(id="qat", params={}),
    )


# ---------------------------------------------------------------- the job
@dataclass(frozen=True, kw_only=True)
class SearchShared:
    """What every candidate job needs, sent to a worker once per search."""

    model: bytes  # the input Keras model, .keras serialisation
    data: Dataset
    options: ConvertOptions
    calibration: np.ndarray | None
    profile: Profile | None = None
    seed: int = 0
    epochs_scale: float = 1.0
    threads: int = 1  # LiteRT threads for measuring, as the profile's runtime uses
    objective: Objective = Objective.DOWNLOAD
    # A microcontroller RAM budget judges each candidate: measure its TFLM arena (and the
    # smallest one it runs in) even when the objective does not rank by it.
    measure_arena: bool = False
    # --trust-model: the model may carry code (a Lambda layer); loaded without safe mode.
    trust_model: bool = False


@dataclass(frozen=True, kw_only=True)
class CandidateJob:
    """One candidate: a rung or a combination of rungs, as its label and whole recipe.

    A warm-started rung carries ``start``, the previous rung's fine-tuned model
    (``.keras``), which the first ``done`` of ``steps`` produced: the job runs only the
    rest on it. ``steps`` stays the whole recipe, so the manifest replays it from the input.
    """

    label: str
    steps: tuple[Step, ...]
    start: bytes | None = field(default=None, repr=False)
    done: int = 0


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a job hands back: picklable, no Keras objects."""

    measurement: Measurement | None  # None when the passes failed or changed nothing
    params: int | None
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # PassRecord.to_dict() each
    model: bytes | None = None  # the candidate's Keras model (.keras); None for plain
    error: str = ""
    exception: EdgecError | None = None  # kept so the plain candidate's error surfaces as is


def keras_to_bytes(model: Any) -> bytes:
    """A Keras model as its ``.keras`` archive (Keras writes that format only to a path)."""
    import keras

    with tempfile.TemporaryDirectory(prefix="edgec-model-") as tmp:
        path = Path(tmp) / "model.keras"
        keras.saving.save_model(model, path)
        return path.read_bytes()


def keras_from_bytes(content: bytes, *, trust: bool = False) -> Any:
    """A ``.keras`` archive as a model; ``trust`` (``--trust-model``) allows code in it."""
    import keras

    from edgec.passes.qat import fake_quant_layer

    fake_quant_layer()  # registers edgec's FakeQuant, which a qat candidate's model holds
    with tempfile.TemporaryDirectory(prefix="edgec-model-") as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(content)
        return keras.saving.load_model(path, compile=False, safe_mode=not trust)


def seed_everything(seed: int) -> None:
    """Every job starts from the same state, whatever its process ran before.

    The seeds (Python, NumPy, TensorFlow, Keras), and Keras's layer-name counters:
    an auto-named layer (say a rebuilt model's ``input_layer_7``) names tensors in
    the .tflite, so a worker that built more models before would ship other bytes.
    """
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(int(seed))


def run_candidate(shared: SearchShared, job: CandidateJob) -> Outcome:
    """Load, run the job's passes, convert and measure: the search's job, in any process."""
    from threadpoolctl import threadpool_limits

    from edgec.loaders import code_allowed
    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # a fresh worker process would otherwise print TF's start-up
    seed_everything(shared.seed)  # it clears Keras's global state, so before the scope below
    # NumPy's LAPACK (low-rank's SVD) sums in a different order with another thread count,
    # and a Ray worker gets OMP_NUM_THREADS=num_cpus: one thread everywhere, the same bytes.
    # A trusted model's Lambda layers are rebuilt by every pass's clone: allowed, in this job.
    with threadpool_limits(limits=1), code_allowed(shared.trust_model):
        return _run_candidate(shared, job)


def _run_candidate(shared: SearchShared, job: CandidateJob) -> Outcome:
    from edgec.convert import convert
    from edgec.evaluate import evaluate, gzip_size
    from edgec.pipeline import PassContext, PassManager, count_params

    start = time.perf_counter()
    model = keras_from_bytes(
        shared.model if job.start is None else job.start, trust=shared.trust_model
    )
    steps = job.steps[job.done :] if job.start is not None else job.steps
    records: list[dict[str, Any]] = []
    try:
        if steps:
            ctx = PassContext(
                data=shared.data,
                profile=shared.profile,
                seed=shared.seed,
                epochs_scale=shared.epochs_scale,
                trust_model=shared.trust_model,
            )
            model, recs = PassManager([s.instantiate() for s in steps]).run(model, ctx)
            records = [r.to_dict() for r in recs]
            if not any(r.changed for r in recs):
                return Outcome(
                    measurement=None,
                    params=count_params(model),
                    seconds=time.perf_counter() - start,
                    records=records,
                    error="the passes changed nothing",
                )
        content = convert(model, shared.options, shared.calibration)
        metrics = evaluate(content, shared.data, threads=shared.threads).metrics
        micro = shared.profile is not None and shared.profile.is_micro
        arena = required = None
        if shared.measure_arena or needs_arena(shared.objective, micro):
            arena, required = tflm_arena(content, shared.data, find_required=shared.measure_arena)
    except EdgecError as exc:
        return Outcome(
            measurement=None,
            params=None,
            seconds=time.perf_counter() - start,
            records=records,
            error=str(exc),
            exception=exc,
        )
    return Outcome(
        measurement=Measurement(
            bytes=len(content),
            gzip_bytes=gzip_size(content),
            accuracy=float(metrics["accuracy"]),
            host_latency_ms=metrics.get("host_latency_ms"),
            arena_bytes=arena,
            arena_required_bytes=required,
            content=content,
        ),
        params=count_params(model),
        seconds=time.perf_counter() - start,
        records=records,
        model=keras_to_bytes(model) if job.steps else None,
    )


def tflm_arena(
    content: bytes, data: Dataset, *, find_required: bool = False
) -> tuple[int, int | None]:
    """TFLM's arena total for ``content``, and with ``find_required`` the smallest arena it
    runs in: one load and invoke in the real TFLM interpreter (more loads to find the least).

    No agreement check: the chosen artifact gets the full fit report in the build.
    """
    from edgec.micro import run_tflm
    from edgec.runtime import TFLiteModel

    row = TFLiteModel(content).quantize_input(data.x_val[:1])
    run = run_tflm(content, row, where="search candidate", find_required=find_required)
    return run.arena_total, run.arena_required if find_required else None


# ---------------------------------------------------------------- results
@dataclass(frozen=True, kw_only=True)
class Candidate:
    label: str
    steps: tuple[Step, ...]
    measurement: Measurement | None  # None when the passes failed
    accuracy_drop: float | None
    fits_budgets: bool
    ok: bool
    params: int | None
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # PassRecord.to_dict() each
    error: str = ""

    def row(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "label": self.label,
            "passes": [s.resolved() for s in self.steps],
            "bytes": m.bytes if m else None,
            "gzip_bytes": m.gzip_bytes if m else None,
            "params": self.params,
            "accuracy": None if m is None else round(m.accuracy, 6),
            "accuracy_drop": None if self.accuracy_drop is None else round(self.accuracy_drop, 6),
            "host_latency_ms": None
            if m is None or m.host_latency_ms is None
            else round(m.host_latency_ms, 4),
            "host_latency_timing": m.latency_timing if m else None,
            "arena_bytes": m.arena_bytes if m else None,
            "arena_required_bytes": m.arena_required_bytes if m else None,
            "fits_budgets": self.fits_budgets,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    chosen: Candidate
    model: Any  # the chosen Keras model (the input model itself when plain wins)
    met: bool  # the chosen candidate meets the accuracy bound and the budgets
    reference_accuracy: float
    max_accuracy_drop: float
    candidates: tuple[Candidate, ...]
    executor: str = "local"
    objective: Objective = Objective.DOWNLOAD
    latency_method: str = ""  # how host_latency_ms was measured, for the manifest

    @property
    def content(self) -> bytes:
        """The chosen candidate's .tflite, exactly as the search measured it."""
        assert self.chosen.measurement is not None and self.chosen.measurement.content is not None
        return self.chosen.measurement.content

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per candidate, with the figures the objective ranked it by."""
        return [
            {
                **c.row(),
                "objective_figures": None
                if c.measurement is None
                else figures(self.objective, c.measurement),
            }
            for c in self.candidates
        ]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``search`` section."""
        return {
            "met": self.met,
            "chosen": self.chosen.label,
            "chosen_passes": [s.resolved() for s in self.chosen.steps],
            "reference_accuracy": round(self.reference_accuracy, 6),
            "max_accuracy_drop": self.max_accuracy_drop,
            "objective": {
                "name": str(self.objective),
                "ranks_by": DESCRIPTIONS[self.objective],
                "host_latency": self.latency_method,
            },
            "candidates": self.table,  # the report charts these against the chosen one
        }


def candidate_key(c: Candidate, objective: Objective) -> tuple[float, ...]:
    """``objective``'s figures of ``c``, then its accuracy drop: smaller is better."""
    assert c.measurement is not None
    return objective_key(objective, c.measurement, c.accuracy_drop or 0.0)


def choose(
    candidates: Sequence[Candidate],
    max_accuracy_drop: float,
    objective: Objective = Objective.DOWNLOAD,
) -> tuple[Candidate, bool]:
    """The best candidate by ``objective`` that is ok, else the best fallback; and if it is ok.

    ``candidates`` come in plan order, so ties go the same way whatever finished first.
    """
    measured = [c for c in candidates if c.measurement is not None]
    if not measured:
        raise EdgecError("the search measured no candidate: every one failed (see the table)")
    ok = [c for c in measured if c.ok]
    if ok:
        # Ranked together: host latencies within the objective's noise margin are tied.
        key = ranking(objective, [c.measurement for c in ok if c.measurement is not None])
        return min(ok, key=lambda c: key(c.measurement, c.accuracy_drop or 0.0)), True

    # Within the accuracy bound but over a budget beats any accuracy failure.
    def fallback(c: Candidate) -> tuple[float, ...]:
        drop = c.accuracy_drop or 0.0
        if drop <= max_accuracy_drop + 1e-9:
            return (0.0, *candidate_key(c, objective))
        return (1.0, drop, *candidate_key(c, objective)[:-1])

    return min(measured, key=fallback), False


# ---------------------------------------------------------------- the search
@dataclass(kw_only=True)
class _Planned:
    """A job of the plan, with where it sits (family, rung) for ordering and for the ladder."""

    job: CandidateJob
    # (0, 0) plain; (f + 1, r) family f rung r; (F + 1, i) stacking step i; (F + 2, 0) qat
    order: tuple[int, int]
    family: int | None = None
    rung: int | None = None
    records_before: list[dict[str, Any]] = field(default_factory=list)  # warm: the chain's


def _next_rung(
    rung: Rung,
    prev: _Planned,
    prev_candidate: Candidate,
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]],
    family: int,
    index: int,
) -> _Planned:
    """The job for ``rung``: warm from ``prev``'s fine-tuned model when the rung says how."""
    order = (family + 1, index)
    if rung.warm is None or kept.get(prev.order, (None, None))[1] is None:
        return _Planned(
            job=CandidateJob(label=rung.label, steps=rung.steps),
            order=order,
            family=family,
            rung=index,
        )
    planned = _continued(prev, prev_candidate, kept, label=rung.label, steps=rung.warm, order=order)
    return dataclasses.replace(planned, family=family, rung=index)


def _continued(
    prev: _Planned,
    prev_candidate: Candidate,
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]],
    *,
    label: str,
    steps: tuple[Step, ...],
    order: tuple[int, int],
) -> _Planned:
    """The job that runs ``steps`` on ``prev``'s model: warm from its fine-tuned model.

    Its recipe is ``prev``'s whole chain and then ``steps``, so it replays from the input
    (the plain candidate's chain is empty: then it simply starts from the input).
    """
    chain = prev.job.steps
    model = kept.get(prev.order, (None, None))[1]
    if model is None:
        return _Planned(job=CandidateJob(label=label, steps=(*chain, *steps)), order=order)
    return _Planned(
        job=CandidateJob(label=label, steps=(*chain, *steps), start=model, done=len(chain)),
        order=order,
        records_before=list(prev_candidate.records),
    )


def _plan_key(c: Candidate, objective: Objective) -> tuple[float, ...]:
    """``candidate_key`` without host latency, for the choices made *during* the search.

    Latencies timed alone in separate jobs (maybe at once, on a busy host) do not compare;
    planning on them would make the candidates tried depend on timing. Bytes stand in.
    """
    assert c.measurement is not None
    key = candidate_key(c, objective)
    if objective is Objective.LATENCY:
        return key[1:]  # (bytes, accuracy drop)
    return key


def _qat_job(
    step: Step,
    tried: Sequence[tuple[tuple[int, int], Candidate]],
    plans: dict[tuple[int, int], _Planned],
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]],
    *,
    model: Any,
    data: Dataset,
    max_accuracy_drop: float,
    objective: Objective,
    trust_model: bool,
    order: tuple[int, int],
) -> _Planned | None:
    """The last candidate: ``step`` (qat) on the one the search would choose now (by
    ``_plan_key``), when post-training int8 lost accuracy on it: its Keras model beats its
    artifact by more than ``QAT_WORTH`` of the bound, or by anything when it misses the
    bound. None when that is not so (or it holds qat already)."""
    from edgec.passes.common import accuracy

    measured = [(o, c) for o, c in tried if c.measurement is not None]
    if not measured:
        return None
    ok = [(o, c) for o, c in measured if c.ok]
    if ok:
        base, c = min(ok, key=lambda t: (_plan_key(t[1], objective), t[0]))
    else:
        # As ``choose`` falls back: the best within the accuracy bound, else the most accurate.
        def fallback(t: tuple[tuple[int, int], Candidate]) -> tuple[Any, ...]:
            drop = t[1].accuracy_drop or 0.0
            key = _plan_key(t[1], objective)
            if drop <= max_accuracy_drop + 1e-9:
                return (0.0, *key, t[0])
            return (1.0, drop, *key[:-1], t[0])

        base, c = min(measured, key=fallback)
    if any(s.id == step.id for s in c.steps):
        return None
    # The Keras model's accuracy, measured here in the caller for this one candidate.
    model_bytes = kept[base][1]
    keras_model = model if model_bytes is None else keras_from_bytes(model_bytes, trust=trust_model)
    assert c.measurement is not None
    lost = accuracy(keras_model, data.x_val, data.y_val) - c.measurement.accuracy
    missed = (c.accuracy_drop or 0.0) > max_accuracy_drop + 1e-9
    if lost <= 0 or not (missed or lost > QAT_WORTH * max_accuracy_drop):
        return None
    prev = plans[base]
    label = step.id if base == (0, 0) else f"{prev.job.label} + {step.id}"
    return _continued(prev, c, kept, label=label, steps=(step,), order=order)


# A qat candidate is tried when int8 loses more than this share of the accuracy bound.
QAT_WORTH = 0.25


def _side_by_side(
    tried: list[tuple[tuple[int, int], Candidate]],
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]],
    x: np.ndarray,
    threads: int,
) -> list[tuple[tuple[int, int], Candidate]]:
    """``tried`` with the ok candidates' host latency re-timed together, interleaved."""
    from edgec.evaluate import interleaved_latency_ms

    ok = {o: kept[o][0] for o, c in tried if c.ok and o in kept}
    if len(ok) < 2:
        return tried
    ms = interleaved_latency_ms(
        {o: m.content for o, m in ok.items() if m.content is not None}, x, threads=threads
    )
    out = []
    for o, c in tried:
        if o in ms:
            timed = {"host_latency_ms": round(ms[o], 4), "latency_timing": "side by side"}
            kept[o] = (dataclasses.replace(kept[o][0], **timed), kept[o][1])
            assert c.measurement is not None  # only measured candidates are timed
            c = dataclasses.replace(c, measurement=dataclasses.replace(c.measurement, **timed))
        out.append((o, c))
    return out


def _stack(
    strongest: dict[int, tuple[_Planned, Candidate]],
    families: Sequence[tuple[Rung, ...]],
    objective: Objective,
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]],
    run_wave: Callable[[list[_Planned]], list[Candidate]],
    tracker: _Progress,
    accurate: Callable[[Candidate], bool],
    room: Callable[[], int],
) -> None:
    """Greedy stacking of the families' strongest passing rungs (see the module docstring).

    From the best single-family rung, the other families are added one at a time, best
    single first; a family that takes the combination out of the bound is left out. A
    combination's passes run in ladder order, so adding a family continues from the
    longest measured combination that is a prefix of the new one (every single rung is
    one, so a distilled student is never distilled again) and runs the rest on top.
    """
    rung_of = {f: families[f][p.rung or 0] for f, (p, _) in strongest.items()}
    ranked = sorted(strongest, key=lambda f: (_plan_key(strongest[f][1], objective), f))
    # Combinations measured within the bound (families in ladder order) -> job, candidate.
    measured: dict[tuple[int, ...], tuple[_Planned, Candidate]] = {
        (f,): strongest[f] for f in strongest
    }
    combo: tuple[int, ...] = (ranked[0],)
    for i, g in enumerate(ranked[1:]):
        if room() <= 0:
            break
        new = tuple(sorted((*combo, g)))
        if not all(rung_of[f].on_top for f in new[1:]):
            continue  # it would have to run on another family's model
        k = max(n for n in range(1, len(new) + 1) if new[:n] in measured)
        prev = measured[new[:k]]
        planned = _continued(
            *prev,
            kept,
            label=" + ".join(rung_of[f].label for f in new),
            steps=tuple(s for f in new[k:] for s in rung_of[f].steps),
            order=(len(families) + 1, i),
        )
        tracker.add(1)
        (c,) = run_wave([planned])
        if accurate(c):
            combo = new
            measured[new] = (planned, c)


def run_search(
    model: Any,
    data: Dataset,
    *,
    options: ConvertOptions,
    calibration: np.ndarray | None,
    max_accuracy_drop: float,
    reference_accuracy: float,
    profile: Profile | None = None,
    fits_budgets: Callable[[Measurement], bool] | None = None,
    seed: int = 0,
    epochs_scale: float = 1.0,
    threads: int = 1,
    executor: Executor | None = None,
    ladder: Ladder | None = None,
    max_candidates: int = 24,
    objective: Objective | None = None,
    resources: Resources | None = None,
    log: Log = lambda message: None,
    job_fn: Callable[[SearchShared, CandidateJob], Outcome] = run_candidate,
    trust_model: bool = False,
) -> SearchResult:
    """Try the ladder on the Keras ``model``; return the most compressed candidate that fits.

    ``reference_accuracy`` is what drops are measured from (the float32
    baseline's accuracy). ``fits_budgets`` runs here, in the caller's process,
    on each measurement. ``objective`` ranks the candidates that meet both
    (default: the profile's; without a profile, the download size). ``job_fn`` is
    what each job runs (a module-level function, so a worker can import it); tests
    wrap ``run_candidate`` with it. ``trust_model`` (``--trust-model``) lets every job
    load a model that carries code (a Lambda layer).
    """
    if data.y_val is None or data.y_train is None:
        raise InputError("the accuracy-aware search needs labeled data; give --data")
    executor = executor or LocalExecutor()
    ladder = ladder or default_ladder()
    fits = fits_budgets or (lambda m: True)
    if objective is None:
        objective = profile.objective if profile is not None else Objective.DOWNLOAD
    shared = SearchShared(
        model=keras_to_bytes(model),
        data=data,
        options=options,
        calibration=calibration,
        profile=profile,
        seed=seed,
        epochs_scale=epochs_scale,
        threads=threads,
        objective=objective,
        measure_arena=profile is not None
        and profile.is_micro
        and profile.budgets.ram_bytes is not None,
        trust_model=trust_model,
    )
    resources = resources or candidate_resources()
    # The candidate cap is spent up front, in ladder order, so it never depends on timing.
    room = max(0, max_candidates - 1)
    families: list[tuple[Rung, ...]] = []
    for family in ladder.families:
        families.append(family[:room])
        room -= len(families[-1])
    tracker = _Progress(total=1 + sum(len(f) for f in families), log=log, objective=objective)
    tried: list[tuple[tuple[int, int], Candidate]] = []
    # Plan order -> the candidate's artifact and Keras model, until the choice is made.
    kept: dict[tuple[int, int], tuple[Measurement, bytes | None]] = {}
    plans: dict[tuple[int, int], _Planned] = {}  # plan order -> the job run there

    def accurate(c: Candidate) -> bool:
        return c.measurement is not None and (c.accuracy_drop or 0.0) <= max_accuracy_drop + 1e-9

    def run_wave(wave: list[_Planned]) -> list[Candidate]:
        jobs = [p.job for p in wave]
        results: list[Candidate | None] = [None] * len(jobs)
        for i, outcome in executor.map(job_fn, shared, jobs, resources=resources):
            if wave[i].order == (0, 0) and isinstance(outcome, Outcome) and outcome.exception:
                # The plain model failing to convert is the caller's (model, data, profile).
                raise outcome.exception
            c = _candidate(wave[i], outcome, reference_accuracy, max_accuracy_drop, fits)
            if wave[i].records_before:
                c = dataclasses.replace(c, records=[*wave[i].records_before, *c.records])
            if isinstance(outcome, Outcome) and outcome.measurement is not None:
                kept[wave[i].order] = (outcome.measurement, outcome.model)
            results[i] = c
            plans[wave[i].order] = wave[i]
            tracker.done(c)
        out = [c for c in results if c is not None]
        tried.extend(zip((p.order for p in wave), out, strict=True))
        return out

    with tracker:
        wave = [_Planned(job=CandidateJob(label="plain", steps=()), order=(0, 0))]
        wave += [
            _Planned(
                job=CandidateJob(label=f[0].label, steps=f[0].steps),
                order=(i + 1, 0),
                family=i,
                rung=0,
            )
            for i, f in enumerate(families)
            if f
        ]
        # family -> the job and candidate of its strongest rung within the bound
        strongest: dict[int, tuple[_Planned, Candidate]] = {}
        while wave:
            candidates = run_wave(wave)
            nxt: list[_Planned] = []
            for planned, c in zip(wave, candidates, strict=True):
                if planned.family is None:
                    continue
                f, r = planned.family, planned.rung or 0
                if not accurate(c):
                    tracker.skip(len(families[f]) - r - 1)  # stronger rungs would lose more
                    continue
                strongest[f] = (planned, c)
                if r + 1 < len(families[f]):
                    nxt.append(_next_rung(families[f][r + 1], planned, c, kept, f, r + 1))
            wave = nxt
        if ladder.combine and len(strongest) >= 2:
            _stack(
                strongest,
                families,
                objective,
                kept,
                run_wave,
                tracker,
                accurate,
                room=lambda: max_candidates - len(tried),
            )
        if ladder.qat is not None and len(tried) < max_candidates:
            qat = _qat_job(
                ladder.qat,
                tried,
                plans,
                kept,
                model=model,
                data=data,
                max_accuracy_drop=max_accuracy_drop,
                objective=objective,
                trust_model=trust_model,
                order=(len(families) + 2, 0),
            )
            if qat is not None:
                tracker.add(1)
                run_wave([qat])
    tried.sort(key=lambda t: t[0])
    latency_method = f"LiteRT on this host, {threads} thread(s), median of single invokes"
    if objective is Objective.LATENCY:
        # Timed in different jobs (maybe at once, on a busy host), latencies do not compare:
        # the eligible candidates are timed again here, side by side, before the choice; at
        # one thread, since more fight the host's other work and swamp the differences
        # (edgec.objective.LATENCY_MARGIN says what was measured).
        tried = _side_by_side(tried, kept, data.x_val, RANKING_THREADS)
        latency_method += (
            f"; candidates within the bound and budgets timed again side by side at "
            f"{RANKING_THREADS} thread in one process (interleaved rounds), those within "
            f"{LATENCY_MARGIN:.0%} of the fastest tied: a host figure that ranks them, not "
            "the device's latency"
        )
    in_order = [c for _, c in tried]
    chosen, met = choose(in_order, max_accuracy_drop, objective)
    order = next(o for o, c in tried if c is chosen)
    measurement, model_bytes = kept[order]
    chosen = dataclasses.replace(chosen, measurement=measurement)
    # Only the chosen candidate keeps its artifact (one each would add up for big models).
    slim = tuple(
        chosen
        if o == order
        else c
        if c.measurement is None
        else dataclasses.replace(c, measurement=dataclasses.replace(c.measurement, content=None))
        for o, c in tried
    )
    return SearchResult(
        chosen=chosen,
        model=model if model_bytes is None else keras_from_bytes(model_bytes, trust=trust_model),
        met=met,
        reference_accuracy=float(reference_accuracy),
        max_accuracy_drop=max_accuracy_drop,
        candidates=slim,
        executor=executor.name,
        objective=objective,
        latency_method=latency_method,
    )


def candidate_resources() -> Resources:
    """One CPU per candidate, and a GPU when TensorFlow here sees one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return Resources(num_cpus=1.0, num_gpus=1.0 if gpus else 0.0)


def _candidate(
    planned: _Planned,
    outcome: Outcome | JobFailure,
    reference_accuracy: float,
    max_accuracy_drop: float,
    fits: Callable[[Measurement], bool],
) -> Candidate:
    job = planned.job
    if isinstance(outcome, JobFailure):
        outcome = Outcome(measurement=None, params=None, seconds=0.0, error=outcome.reason)
    m = outcome.measurement
    if m is None:
        return Candidate(
            label=job.label,
            steps=job.steps,
            measurement=None,
            accuracy_drop=None,
            fits_budgets=False,
            ok=False,
            params=outcome.params,
            seconds=outcome.seconds,
            records=outcome.records,
            error=outcome.error,
        )
    drop = float(reference_accuracy) - float(m.accuracy)
    fit = bool(fits(m))
    return Candidate(
        label=job.label,
        steps=job.steps,
        # Rows carry no artifact: the chosen one gets its bytes back at the end.
        measurement=dataclasses.replace(m, content=None),
        accuracy_drop=drop,
        fits_budgets=fit,
        ok=drop <= max_accuracy_drop + 1e-9 and fit,
        params=outcome.params,
        seconds=outcome.seconds,
        records=outcome.records,
    )


class _Progress:
    """Candidates done of total, with the best so far: a bar on a terminal, a log line each."""

    def __init__(self, *, total: int, log: Log, objective: Objective) -> None:
        self.objective = objective
        self.total = total
        self.count = 0
        self.log = log
        self.best: Candidate | None = None
        self._cm: Any = None
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        from edgec.progress import progress

        self._cm = progress("search", total=self.total, unit="candidates")
        self._bar = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def add(self, n: int) -> None:
        self.total += n
        self._bar.update(total=self.total)

    def skip(self, n: int) -> None:
        self.total -= n
        self._bar.update(total=self.total)

    def done(self, c: Candidate) -> None:
        self.count += 1
        if c.ok and (
            self.best is None
            or candidate_key(c, self.objective) < candidate_key(self.best, self.objective)
        ):
            self.best = c
        if c.measurement is None:
            what = f"failed: {c.error}"
        else:
            what = (
                f"{c.measurement.bytes:,} B, gzip {c.measurement.gzip_bytes:,} B, "
                f"accuracy drop {100 * (c.accuracy_drop or 0.0):+.2f} pt, ok {c.ok}"
            )
        best = "none yet" if self.best is None else repr(self.best.label)
        self.log(f"search {self.count}/{self.total}: {c.label}: {what}; best so far {best}")
        self._bar.update(completed=self.count, description=f"search (best so far: {best})")
