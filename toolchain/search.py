"""The accuracy-aware search: step compression up, measure each step, keep the best that fits.

The mission's "apply iteratively with careful monitoring" as an algorithm. A
``Ladder`` holds families of rungs of rising strength (pruning sparsity, low-rank
parameter fraction, fewer clusters). A family stops at its first rung that
breaks the accuracy bound, since stronger rungs only lose more. Then the
strongest passing rung of each family are combined (low-rank, then pruning,
then clustering).

Every candidate is an independent job (``CandidateJob``: a label and a recipe)
that an ``edgec.executor`` runs: in this process by default, or on a Ray
cluster. ``run_candidate`` is the job: it loads the model from its ``.keras``
bytes, runs the recipe's passes, converts, measures through LiteRT and returns
a picklable ``Outcome`` holding the measurement and the candidate's ``.tflite``
bytes, so the artifact the search measured is the one that ships. Nothing
closes over an in-memory Keras model, so a job can run in another process.

The answer does not depend on which job finished first: the ladder runs in
waves (wave 1: the plain model and every family's first rung; wave k: the next
rung of each family whose previous rung stayed within the bound; then the
combinations), the jobs of a wave are decided only by earlier waves, every job
is seeded the same way, and the choice is made over the candidates in plan
order. The plain model (no passes) is always a candidate, so the choice is
never worse on size than plain quantization at the same bound. The chosen
candidate is the smallest (gzip bytes, then bytes) that meets both the
accuracy bound and ``fits_budgets``; when none does, ``met`` is False and the
result holds the best there is: the smallest within the accuracy bound, else
the most accurate. Every candidate tried is a row of ``SearchResult.table``.
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
    content: bytes | None = None  # the .tflite measured; only the chosen candidate keeps it


@dataclass(frozen=True, kw_only=True)
class Rung:
    label: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class Ladder:
    """Families of rungs, each family ordered from weakest to strongest."""

    families: tuple[tuple[Rung, ...], ...]
    combine: bool = True


def _rung(label: str, pass_id: str, **params: Any) -> Rung:
    return Rung(label=label, steps=(Step(id=pass_id, params=params),))


def default_ladder() -> Ladder:
    prune = tuple(
        _rung(f"prune {s:.0%}", "prune", initial_sparsity=min(0.5, s), final_sparsity=s)
        for s in (0.5, 0.7, 0.8, 0.9, 0.95)
    )
    lowrank = tuple(
        _rung(f"lowrank {f:.0%} params", "lowrank", param_fraction=f) for f in (0.5, 0.3, 0.2)
    )
    cluster = tuple(_rung(f"cluster k={k}", "cluster", k=k) for k in (64, 32, 16, 8))
    return Ladder(families=(lowrank, prune, cluster))


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


# One job is one candidate: a rung (its label and recipe), or a combination of rungs.
CandidateJob = Rung


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
    """Python, NumPy, TensorFlow and Keras seeds: every job starts from the same state."""
    import keras

    keras.utils.set_random_seed(int(seed))


def run_candidate(shared: SearchShared, job: CandidateJob) -> Outcome:
    """Load, run the job's passes, convert and measure: the search's job, in any process."""
    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # a fresh worker process would otherwise print TF's start-up
    from edgec.convert import convert
    from edgec.evaluate import evaluate, gzip_size
    from edgec.pipeline import PassContext, PassManager, count_params

    start = time.perf_counter()
    seed_everything(shared.seed)
    model = keras_from_bytes(shared.model)
    records: list[dict[str, Any]] = []
    try:
        if job.steps:
            ctx = PassContext(
                data=shared.data,
                profile=shared.profile,
                seed=shared.seed,
                epochs_scale=shared.epochs_scale,
            )
            model, recs = PassManager([s.instantiate() for s in job.steps]).run(model, ctx)
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
            content=content,
        ),
        params=count_params(model),
        seconds=time.perf_counter() - start,
        records=records,
        model=keras_to_bytes(model) if job.steps else None,
    )


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

    @property
    def content(self) -> bytes:
        """The chosen candidate's .tflite, exactly as the search measured it."""
        assert self.chosen.measurement is not None and self.chosen.measurement.content is not None
        return self.chosen.measurement.content

    @property
    def table(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``search`` section."""
        return {
            "met": self.met,
            "chosen": self.chosen.label,
            "chosen_passes": [s.resolved() for s in self.chosen.steps],
            "reference_accuracy": round(self.reference_accuracy, 6),
            "max_accuracy_drop": self.max_accuracy_drop,
            "candidates": self.table,  # the report charts these against the chosen one
        }


def _size_key(c: Candidate) -> tuple[float, float, float]:
    m = c.measurement
    assert m is not None
    return (m.gzip_bytes, m.bytes, c.accuracy_drop or 0.0)


def choose(candidates: Sequence[Candidate], max_accuracy_drop: float) -> tuple[Candidate, bool]:
    """The smallest candidate that is ok, else the best fallback; and whether it is ok.

    ``candidates`` come in plan order, so ties go the same way whatever finished first.
    """
    measured = [c for c in candidates if c.measurement is not None]
    if not measured:
        raise EdgecError("the search measured no candidate: every one failed (see the table)")
    ok = [c for c in measured if c.ok]
    if ok:
        return min(ok, key=_size_key), True

    # Within the accuracy bound but over a budget beats any accuracy failure.
    def fallback(c: Candidate) -> tuple[float, ...]:
        drop = c.accuracy_drop or 0.0
        if drop <= max_accuracy_drop + 1e-9:
            return (0.0, *_size_key(c))
        return (1.0, drop, *_size_key(c)[:2])

    return min(measured, key=fallback), False


# ---------------------------------------------------------------- the search
@dataclass(kw_only=True)
class _Planned:
    """A job of the plan, with where it sits (family, rung) for ordering and for the ladder."""

    job: CandidateJob
    order: tuple[int, int]  # (0, 0) plain; (f + 1, r) family f rung r; (len + 1, i) combinations
    family: int | None = None
    rung: int | None = None


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
    resources: Resources | None = None,
    log: Log = lambda message: None,
    job_fn: Callable[[SearchShared, CandidateJob], Outcome] = run_candidate,
) -> SearchResult:
    """Try the ladder on the Keras ``model``; return the most compressed candidate that fits.

    ``reference_accuracy`` is what drops are measured from (the float32
    baseline's accuracy). ``fits_budgets`` runs here, in the caller's process,
    on each measurement. ``job_fn`` is what each job runs (a module-level
    function, so a worker can import it); tests wrap ``run_candidate`` with it.
    """
    if data.y_val is None or data.y_train is None:
        raise InputError("the accuracy-aware search needs labeled data; give --data")
    executor = executor or LocalExecutor()
    ladder = ladder or default_ladder()
    fits = fits_budgets or (lambda m: True)
    shared = SearchShared(
        model=keras_to_bytes(model),
        data=data,
        options=options,
        calibration=calibration,
        profile=profile,
        seed=seed,
        epochs_scale=epochs_scale,
        threads=threads,
    )
    resources = resources or candidate_resources()
    # The candidate cap is spent up front, in ladder order, so it never depends on timing.
    room = max(0, max_candidates - 1)
    families: list[tuple[Rung, ...]] = []
    for family in ladder.families:
        families.append(family[:room])
        room -= len(families[-1])
    tracker = _Progress(total=1 + sum(len(f) for f in families), log=log)
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
            _Planned(job=f[0], order=(i + 1, 0), family=i, rung=0)
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
                    nxt.append(
                        _Planned(job=families[f][r + 1], order=(f + 1, r + 1), family=f, rung=r + 1)
                    )
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
    in_order = [c for _, c in tried]
    chosen, met = choose(in_order, max_accuracy_drop)
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

    def __init__(self, *, total: int, log: Log) -> None:
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
        if c.ok and (self.best is None or _size_key(c) < _size_key(self.best)):
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
