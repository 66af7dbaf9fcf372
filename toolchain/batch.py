"""Batch builds: many models x targets, each (model, target) one job on an executor.

``edgec batch builds.toml`` reads a TOML list of builds (``load_batch``: checked
strictly, paths relative to the file, before any work) and ``run_batch`` runs
every (model, target) pair as one job on an ``edgec.executor``: one after
another in this process, or as Ray tasks on a cluster.

What travels: each model's file bytes and each data set (loaded once here) are
``Executor.share``d once and the jobs carry the handles, so a worker fetches
only its own model and data, never shared files. A job (``run_build_job``) runs
the build's stages up to ``budgets`` (``edgec.build.STAGES``) from a clear Keras
session with one BLAS thread, as the search's jobs do, and hands back the
target's context without Keras objects; this process then runs the ``write``
stage, so artifacts are written atomically by the driver, with the manifest
recording this machine's paths, exactly as ``edgec build`` writes them. A job's
search runs its candidates inside the job.

Faults: a job that raises (a stage's ``EdgecError``, anything else) or whose
worker dies is one row with its reason; the other jobs finish and are written.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.build import STAGES, BuildRequest, TargetContext, run_stages, target_profile
from edgec.errors import EdgecError, ExitCode, InputError, UsageError
from edgec.executor import Executor, JobFailure, LocalExecutor, fetch
from edgec.objective import Objective
from edgec.profiles import Profile, load_profile
from edgec.schemes import Quantization

Log = Callable[[str], None]

# key -> (type check, what a valid value is); "model" only in [[build]].
_PATH, _FLAG = "a path (string, relative to the batch file)", "true or false"
KEYS: dict[str, str] = {
    "model": _PATH,
    "data": f"{_PATH} or 'demo'",
    "targets": "a list of target names or profile .toml paths",
    "recipe": _PATH,
    "passes": 'a list of "ID:KEY=VALUE,..." overrides, as --pass',
    "search": _FLAG,
    "max_accuracy_drop": "a number >= 0",
    "objective": ", ".join(o.value for o in Objective),
    "quantization": ", ".join(q.value for q in Quantization),
    "calibration_size": "an integer >= 1",
    "seed": "an integer",
    "epochs_scale": "a number > 0",
    "keep_failed": _FLAG,
    "trust_model": _FLAG,
}


class BatchFailed(EdgecError):
    """Some builds of a batch failed: the exit code is the first failed build's."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(code)


@dataclass(frozen=True, kw_only=True)
class BatchBuild:
    """One ``[[build]]`` of the file: its request (paths resolved) and its profiles."""

    where: str  # "builds.toml: build 2", for errors
    request: BuildRequest
    profiles: tuple[Profile, ...]


# ---------------------------------------------------------------- the file
def load_batch(path: Path, *, out: Path = Path("out")) -> list[BatchBuild]:
    """The builds of a batch file, every key, path, target and recipe checked; no TensorFlow."""
    from edgec.recipe import resolve_recipe

    path = Path(path)
    if not path.is_file():
        raise InputError(f"batch file {path} does not exist; give a .toml file of [[build]] tables")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"batch file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"defaults", "build"})
    if unknown:
        raise UsageError(f"{path}: unknown top-level key {unknown[0]!r}; valid: build, defaults")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{path}: defaults must be a table ([defaults])")
    if "model" in defaults:
        raise UsageError(f"{path}: defaults: 'model' belongs in each [[build]]")
    entries = raw.get("build")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise UsageError(f'{path}: no builds; add [[build]] tables, each with model = "..."')
    _check_keys(defaults, f"{path}: defaults")
    builds: list[BatchBuild] = []
    seen: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: build {i}"
        _check_keys(entry, where)
        table = {**defaults, **entry}
        if "model" not in table:
            raise UsageError(f'{where}: no model; give model = "a path to .keras, .h5, ..."')
        build = _build(table, where, path.parent, out)
        for profile in build.profiles:  # a bad recipe fails here, not in a job
            try:
                resolve_recipe(profile, build.request.recipe, build.request.overrides)
            except EdgecError as exc:
                raise type(exc)(f"{where}: {exc}") from None
        name = Path(build.request.model).stem
        for profile in build.profiles:
            pair = (name, profile.name)
            if pair in seen:
                raise UsageError(
                    f"{where}: model {name!r} for target {profile.name!r} is also {seen[pair]}; "
                    f"both would write {out / name / profile.name}"
                )
            seen[pair] = f"build {i}"
        builds.append(build)
    return builds


def _check_keys(table: dict[str, Any], where: str) -> None:
    for key in table:
        if key not in KEYS:
            raise UsageError(f"{where}: unknown key {key!r}; valid: {', '.join(KEYS)}")


def _typed(table: dict[str, Any], key: str, where: str, ok: Callable[[Any], bool]) -> Any:
    value = table.get(key)
    if value is not None and not ok(value):
        raise UsageError(f"{where}: {key} = {value!r}; give {KEYS[key]}")
    return value


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _build(table: dict[str, Any], where: str, base: Path, out: Path) -> BatchBuild:
    def path_of(key: str) -> Path | None:
        value = _typed(table, key, where, lambda v: isinstance(v, str) and v != "")
        if value is None:
            return None
        p = Path(value) if Path(value).is_absolute() else base / value
        if not p.exists():
            raise InputError(f"{where}: {key} {p} does not exist; give {KEYS[key]}")
        return p

    model = path_of("model")
    data = table.get("data")
    data_spec = data if data == "demo" else (None if data is None else str(path_of("data")))
    recipe = path_of("recipe")
    targets = _typed(table, "targets", where, lambda v: _strings(v) and len(v) > 0) or ["rpi4"]
    passes = _typed(table, "passes", where, _strings) or []
    flag = lambda key: bool(_typed(table, key, where, lambda v: isinstance(v, bool)))  # noqa: E731
    drop = _typed(table, "max_accuracy_drop", where, lambda v: _number(v) and v >= 0)
    objective = _typed(table, "objective", where, lambda v: v in set(Objective))
    quantization = _typed(table, "quantization", where, lambda v: v in set(Quantization))
    size = _typed(table, "calibration_size", where, lambda v: type(v) is int and v >= 1)
    seed = _typed(table, "seed", where, lambda v: type(v) is int)
    scale = _typed(table, "epochs_scale", where, lambda v: _number(v) and v > 0)
    search = flag("search")
    if objective is not None and not (search or drop is not None):
        raise UsageError(
            f"{where}: objective = {objective!r} ranks the search's candidates; "
            "set search = true or max_accuracy_drop too"
        )
    given = {  # a key the file leaves out keeps BuildRequest's default, as edgec build's does
        "max_accuracy_drop": None if drop is None else float(drop),
        "objective": None if objective is None else Objective(objective),
        "quantization": None if quantization is None else Quantization(quantization),
        "calibration_size": size,
        "seed": seed,
        "epochs_scale": None if scale is None else float(scale),
    }
    request = BuildRequest(
        model=model,
        targets=tuple(targets),
        data=data_spec,
        out=out,
        recipe=recipe,
        overrides=tuple(passes),
        search=search,
        keep_failed=flag("keep_failed"),
        trust_model=flag("trust_model"),
        **{k: v for k, v in given.items() if v is not None},
    )
    profiles = []
    for t in targets:
        # A profile file is relative to the batch file; a bare name is a built-in.
        name = str(base / t) if t.endswith(".toml") and not Path(t).is_absolute() else t
        try:
            profiles.append(target_profile(load_profile(name), request))
        except EdgecError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    return BatchBuild(where=where, request=request, profiles=tuple(profiles))


# ---------------------------------------------------------------- the job
@dataclass(frozen=True, kw_only=True)
class BuildJob:
    """One (model, target): the request as the worker runs it, and handles on its inputs."""

    label: str  # "model/target"
    request: BuildRequest
    profile: Profile
    model_path: Path  # as given here: what the manifest records
    model_files: Any  # share()d {relative path: bytes} of the model file or folder
    data: Any  # share()d Dataset


@dataclass(frozen=True, kw_only=True)
class BuildOutcome:
    """What a job hands back: the target's context without Keras objects, or its error."""

    context: TargetContext | None
    seconds: float
    log: list[str] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0


def run_build_job(shared: Any, job: BuildJob) -> BuildOutcome:
    """Every stage of one (model, target) up to ``budgets``, in any process."""
    from threadpoolctl import threadpool_limits

    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    # As the search's jobs: the same bytes whatever process (or thread count) runs it.
    with threadpool_limits(limits=1):
        return _run_build_job(job)


def _run_build_job(job: BuildJob) -> BuildOutcome:
    from edgec.build import float_baseline
    from edgec.loaders import load_model
    from edgec.search import seed_everything

    start = time.perf_counter()
    lines: list[str] = []
    try:
        seed_everything(job.request.seed)
        with tempfile.TemporaryDirectory(prefix="edgec-batch-") as tmp:
            where = Path(tmp) / job.model_path.name
            for rel, content in fetch(job.model_files).items():
                target = where / rel if rel else where
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            model = load_model(where, trust=job.request.trust_model)
            model = dataclasses.replace(model, path=job.model_path)
            data = fetch(job.data)
            ctx = TargetContext(
                req=job.request,
                profile=job.profile,
                model=model,
                data=data,
                base=float_baseline(model, data),
                log=lines.append,
            )
            run_stages(ctx, STAGES[:-1])
    except EdgecError as exc:
        return BuildOutcome(
            context=None,
            seconds=time.perf_counter() - start,
            log=lines,
            error=str(exc),
            exit_code=int(exc.exit_code),
        )
    c = ctx.compression
    assert c is not None
    # Keras objects, closures and the data stay behind; write() gets them from the driver.
    portable = dataclasses.replace(
        ctx,
        model=dataclasses.replace(model, keras=None, convert_source=None),
        data=None,
        log=None,
        finish=None,
        compression=dataclasses.replace(c, source=None),
    )
    return BuildOutcome(context=portable, seconds=time.perf_counter() - start, log=lines)


# ---------------------------------------------------------------- the batch
@dataclass(frozen=True, kw_only=True)
class BatchRow:
    model: str
    source: str
    target: str
    ok: bool
    directory: Path | None = None
    exit_code: int = 0
    message: str = ""  # why it failed: the job's error, or the budgets that failed
    artifacts: tuple[dict[str, Any], ...] = ()
    seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.model}/{self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "directory": None if self.directory is None else str(self.directory),
            "exit_code": self.exit_code,
            "message": self.message,
            "artifacts": list(self.artifacts),
            "seconds": None if self.seconds is None else round(self.seconds, 2),
        }


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    rows: tuple[BatchRow, ...]
    executor: str

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def summary(self) -> str:
        failed = [r for r in self.rows if not r.ok]
        if not failed:
            return f"batch: {len(self.rows)} of {len(self.rows)} builds ok"
        first = failed[0]
        return (
            f"batch: {len(failed)} of {len(self.rows)} builds failed "
            f"({', '.join(r.label for r in failed)}); first: {first.label}: {first.message}"
        )

    def check(self) -> None:
        """Raise the one-line summary, with the first failed build's exit code, if any failed."""
        failed = [r for r in self.rows if not r.ok]
        if failed:
            raise BatchFailed(self.summary(), failed[0].exit_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "executor": self.executor,
            "summary": self.summary(),
            "builds": [r.to_dict() for r in self.rows],
        }


def _files_of(path: Path) -> dict[str, bytes]:
    """A model file's bytes ({"": bytes}), or a SavedModel folder's, by relative path."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def run_batch(
    builds: Sequence[BatchBuild],
    *,
    executor: Executor | None = None,
    log: Log = print,
    job_fn: Callable[[Any, BuildJob], BuildOutcome] = run_build_job,
) -> BatchResult:
    """Run every (model, target) of ``builds`` as one job on ``executor``; write what succeeds.

    Every model and data set is loaded here first (a bad one fails before any job
    starts). ``job_fn`` is what each job runs (a module-level function); tests wrap
    ``run_build_job`` with it.
    """
    from edgec.build import _check_labels
    from edgec.data import load_dataset
    from edgec.loaders import load_model
    from edgec.quiet import import_tensorflow_quietly
    from edgec.search import candidate_resources

    import_tensorflow_quietly()
    executor = executor or LocalExecutor()
    models: dict[Path, Any] = {}  # path -> (LoadedModel, shared handle)
    datasets: dict[tuple[str | None, tuple[Any, ...]], Any] = {}  # -> (Dataset, handle)
    jobs: list[BuildJob] = []
    inputs: list[tuple[BuildRequest, Any, Any]] = []  # per job: the driver's request, model, data
    for b in builds:
        req = b.request
        path = Path(req.model)
        try:
            if path not in models:
                loaded = load_model(path, trust=req.trust_model)
                models[path] = (loaded, executor.share(_files_of(path)))
            loaded, model_handle = models[path]
            key = (req.data, tuple(loaded.input_shape))
            if key not in datasets:
                data = load_dataset(req.data, loaded.input_shape, seed=req.seed)
                datasets[key] = (data, executor.share(data))
            data, data_handle = datasets[key]
            _check_labels(loaded, data)
            if (req.search or req.max_accuracy_drop is not None) and not data.labeled:
                raise InputError("the accuracy-aware search needs labeled data: give data = ...")
        except EdgecError as exc:
            raise type(exc)(f"{b.where}: {exc}") from None
        for note in loaded.notes:
            log(f"note: {b.where}: {note}")
        for profile in b.profiles:
            job_req = _job_request(req, profile)
            jobs.append(
                BuildJob(
                    label=f"{loaded.name}/{profile.name}",
                    request=job_req,
                    profile=profile,
                    model_path=path,
                    model_files=model_handle,
                    data=data_handle,
                )
            )
            inputs.append((req, loaded, data))
    rows: list[BatchRow | None] = [None] * len(jobs)
    log(f"batch: {len(jobs)} builds ({len(builds)} models x targets) on {executor.name}")
    from edgec.progress import progress

    with progress("batch", total=len(jobs), unit="builds") as bar:
        outcomes = executor.map(job_fn, None, jobs, resources=candidate_resources())
        for done, (i, outcome) in enumerate(outcomes, start=1):
            job = jobs[i]
            row = _finish(job, outcome, *inputs[i], log=log)
            rows[i] = row
            if row.ok:
                what = f"done: {_artifact_line(row)} -> {row.directory}"
            elif row.directory is not None:
                what = f"FAILED budgets (kept): {row.message} -> {row.directory}"
            else:
                what = f"FAILED: {row.message}"
            log(f"batch {done}/{len(jobs)}: {job.label} {what}")
            bar.update(completed=done)
    from edgec.report import render_build_summary

    for folder in sorted({r.directory.parent for r in rows if r and r.directory is not None}):
        render_build_summary(folder)
    return BatchResult(rows=tuple(r for r in rows if r is not None), executor=executor.name)


def _job_request(req: BuildRequest, profile: Profile) -> BuildRequest:
    """The request as a worker runs it: nothing read from this machine's files."""
    from edgec.recipe import resolve_recipe

    steps = None
    if req.recipe is not None or req.overrides:
        # The recipe file is read here; the job gets its steps as data.
        steps = tuple(resolve_recipe(profile, req.recipe, req.overrides).to_list())
    return dataclasses.replace(
        req,
        recipe=None,
        overrides=(),
        recipe_steps=steps,
        executor="local",  # a job's search runs its candidates inside the job
        ray_address=None,
    )


def _finish(
    job: BuildJob,
    outcome: BuildOutcome | JobFailure,
    req: BuildRequest,
    model: Any,
    data: Any,
    *,
    log: Log,
) -> BatchRow:
    """The job's row; for a job that got through its budgets, its artifact written here."""
    name, target, source = model.name, job.profile.name, str(job.model_path)
    if isinstance(outcome, JobFailure):
        # Raised outside edgec's errors (a bug: 1), or the worker died (the cluster: 6).
        code = ExitCode.DEVICE if outcome.reason.startswith("worker died") else ExitCode.INTERNAL
        return BatchRow(
            model=name, source=source, target=target, ok=False, exit_code=code,
            message=outcome.reason,
        )  # fmt: skip
    for line in outcome.log:
        log(f"  {job.label}: {line}")
    if outcome.context is None:
        return BatchRow(
            model=name, source=source, target=target, ok=False, exit_code=outcome.exit_code,
            message=outcome.error, seconds=outcome.seconds,
        )  # fmt: skip
    stages = dict(STAGES)
    ctx = dataclasses.replace(outcome.context, req=req, model=model, data=data, log=lambda _: None)
    try:
        # "fit" again, quietly, for what the write stage needs that could not travel (the
        # firmware writer, a closure): it only reads the TFLM report the job measured.
        run_stages(ctx, (("fit", stages["fit"]),))
        ctx.log = lambda line: log(f"  {job.label}: {line}")
        run_stages(ctx, (("write", stages["write"]),))
    except EdgecError as exc:
        return BatchRow(
            model=name, source=source, target=target, ok=False, exit_code=int(exc.exit_code),
            message=str(exc), seconds=outcome.seconds,
        )  # fmt: skip
    result = ctx.result
    assert result is not None
    return BatchRow(
        model=name,
        source=source,
        target=target,
        ok=result.ok,
        directory=result.directory,
        exit_code=0 if result.ok else int(ExitCode.BUDGET),
        message=result.message,
        artifacts=tuple(a.to_dict() for a in result.manifest.artifacts),
        seconds=outcome.seconds,
    )


def _artifact_line(row: BatchRow) -> str:
    if not row.artifacts:
        return "no artifact"
    a = row.artifacts[0]
    metrics = a.get("metrics", {})
    acc, drop = metrics.get("accuracy"), metrics.get("accuracy_drop")
    text = f"{a['bytes']:,} B"
    if acc is not None:
        text += f", accuracy {100 * acc:.2f}%"
    if drop is not None:
        text += f" (drop {100 * drop:+.2f} pt)"
    return text
