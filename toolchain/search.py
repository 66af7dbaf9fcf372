"""The accuracy-aware search: step compression up, measure each step, keep the best that fits.

The mission's "apply iteratively with careful monitoring" as an algorithm. A
``Ladder`` holds families of rungs of rising strength (a narrower distilled
student, channel pruning, low-rank parameter fraction, pruning sparsity, fewer
clusters). A family stops at its first rung that breaks the accuracy bound,
since stronger rungs only lose more. A warm rung (``Rung.warm``) continues from
the previous rung's fine-tuned model instead of the input, and its candidate's
recipe is the whole chain, so the manifest replays it from the input. Then the
strongest passing rung of each family are combined, each from the input, in
ladder order.

Every candidate is an independent job (``CandidateJob``: a label and a recipe)
that an ``edgec.executor`` runs: in this process by default, or on a Ray
cluster. ``run_candidate`` is the job: it loads the model from its ``.keras``
bytes (or a warm rung's starting model), runs the recipe's passes, converts,
measures through LiteRT (and TFLM's arena when the objective ranks by it) and
returns a picklable ``Outcome`` holding the measurement and the candidate's
``.tflite`` bytes, so the artifact the search measured is the one that ships.
Nothing closes over an in-memory Keras model, so a job can run in another process.

The answer does not depend on which job finished first: the ladder runs in
waves (wave 1: the plain model and every family's first rung; wave k: the next
rung of each family whose previous rung stayed within the bound; then the
combinations), the jobs of a wave are decided only by earlier waves, every job
is seeded the same way, and the choice is made over the candidates in plan
order. The plain model (no passes) is always a candidate. The chosen candidate
is the best by the ``edgec.objective`` (the profile's, or ``--objective``) among
those that meet both the accuracy bound and ``fits_budgets``; for the latency
objective those are first timed again side by side in this process, since
latencies timed in separate jobs do not compare. When none meets both, ``met``
is False and the result holds the best there is: the best by the objective
within the accuracy bound, else the most accurate. Every candidate tried is a
row of ``SearchResult.table``, with its objective figures.
"""

from __future__ import annotations

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
    content: bytes | None = None  # the .tflite measured; only the chosen candidate keeps it


@dataclass(frozen=True, kw_only=True)
class Rung:
    label: str
    steps: tuple[Step, ...]  # from the input model (how a combination applies this rung)
    # Warm start: the steps that take the previous rung's fine-tuned model to this rung
    # (params relative to it); None: the rung starts from the input model.
    warm: tuple[Step, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple) or not all(isinstance(s, Step) for s in self.steps):
            raise TypeError(f"rung {self.label!r}: steps must be a tuple of Step")


@dataclass(frozen=True, kw_only=True)
class Ladder:
    """Families of rungs, each family ordered from weakest to strongest."""

    families: tuple[tuple[Rung, ...], ...]
    combine: bool = True


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
    distill = tuple(_rung(f"distill width {w}", "distill", width=w) for w in (0.5, 0.25))
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
    return Ladder(families=(distill, tuple(channels), lowrank, tuple(prune), cluster))


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


def keras_from_bytes(content: bytes) -> Any:
    import keras

    with tempfile.TemporaryDirectory(prefix="edgec-model-") as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(content)
        return keras.saving.load_model(path, compile=False)


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

    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # a fresh worker process would otherwise print TF's start-up
    # NumPy's LAPACK (low-rank's SVD) sums in a different order with another thread count,
    # and a Ray worker gets OMP_NUM_THREADS=num_cpus: one thread everywhere, the same bytes.
    with threadpool_limits(limits=1):
        return _run_candidate(shared, job)


def _run_candidate(shared: SearchShared, job: CandidateJob) -> Outcome:
    from edgec.convert import convert
    from edgec.evaluate import evaluate, gzip_size
    from edgec.pipeline import PassContext, PassManager, count_params

    start = time.perf_counter()
    seed_everything(shared.seed)
    model = keras_from_bytes(shared.model if job.start is None else job.start)
    steps = job.steps[job.done :] if job.start is not None else job.steps
    records: list[dict[str, Any]] = []
    try:
        if steps:
            ctx = PassContext(
                data=shared.data,
                profile=shared.profile,
                seed=shared.seed,
                epochs_scale=shared.epochs_scale,
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
        arena = (
            tflm_arena_bytes(content, shared.data) if needs_arena(shared.objective, micro) else None
        )
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
            content=content,
        ),
        params=count_params(model),
        seconds=time.perf_counter() - start,
        records=records,
        model=keras_to_bytes(model) if job.steps else None,
    )


def tflm_arena_bytes(content: bytes, data: Dataset) -> int:
    """TFLM's arena total for ``content``: one load and invoke in the real TFLM interpreter.

    Only the figure the objective ranks by: no search for the smallest working arena and no
    agreement check (the chosen artifact gets the full fit report in the build).
    """
    from edgec.micro import run_tflm
    from edgec.runtime import TFLiteModel

    row = TFLiteModel(content).quantize_input(data.x_val[:1])
    return run_tflm(content, row, where="search candidate", find_required=False).arena_total


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
    order: tuple[int, int]  # (0, 0) plain; (f + 1, r) family f rung r; (len + 1, i) combinations
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
    model = kept.get(prev.order, (None, None))[1]
    if rung.warm is None or model is None:
        return _Planned(
            job=CandidateJob(label=rung.label, steps=rung.steps),
            order=order,
            family=family,
            rung=index,
        )
    chain = prev.job.steps
    return _Planned(
        job=CandidateJob(
            label=rung.label, steps=(*chain, *rung.warm), start=model, done=len(chain)
        ),
        order=order,
        family=family,
        rung=index,
        records_before=list(prev_candidate.records),
    )


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
            c = dataclasses.replace(c, measurement=dataclasses.replace(c.measurement, **timed))
        out.append((o, c))
    return out


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
) -> SearchResult:
    """Try the ladder on the Keras ``model``; return the most compressed candidate that fits.

    ``reference_accuracy`` is what drops are measured from (the float32
    baseline's accuracy). ``fits_budgets`` runs here, in the caller's process,
    on each measurement. ``objective`` ranks the candidates that meet both
    (default: the profile's; without a profile, the download size). ``job_fn`` is
    what each job runs (a module-level function, so a worker can import it); tests
    wrap ``run_candidate`` with it.
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
        strongest: dict[int, Rung] = {}  # family -> its strongest rung within the bound
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
                strongest[f] = families[f][r]
                if r + 1 < len(families[f]):
                    nxt.append(_next_rung(families[f][r + 1], planned, c, kept, f, r + 1))
            wave = nxt
        rungs = [strongest[f] for f in sorted(strongest)]
        room = max_candidates - len(tried)
        if ladder.combine and len(rungs) >= 2 and room > 0:
            combo = len(families) + 1
            tracker.add(1)
            (full,) = run_wave([_Planned(job=_combined(rungs), order=(combo, 0))])
            if not accurate(full) and len(rungs) > 2:
                # All of them together lose too much: try each family left out in turn.
                rest = [[r for r in rungs if r is not skip] for skip in rungs][: room - 1]
                tracker.add(len(rest))
                run_wave(
                    [
                        _Planned(job=_combined(group), order=(combo, i + 1))
                        for i, group in enumerate(rest)
                    ]
                )
    tried.sort(key=lambda t: t[0])
    latency_method = f"LiteRT on this host, {threads} thread(s), median of single invokes"
    if objective is Objective.LATENCY:
        # Timed in different jobs (maybe at once, on a busy host), latencies do not compare:
        # the eligible candidates are timed again here, side by side, before the choice.
        tried = _side_by_side(tried, kept, data.x_val, threads)
        latency_method += (
            "; candidates within the bound and budgets timed side by side in one process "
            "(interleaved rounds): a host figure that ranks them, not the device's latency"
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
        model=model if model_bytes is None else keras_from_bytes(model_bytes),
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


def _combined(rungs: Sequence[Rung]) -> CandidateJob:
    return CandidateJob(
        label=" + ".join(r.label for r in rungs), steps=tuple(s for r in rungs for s in r.steps)
    )


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
