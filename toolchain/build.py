"""``edgec build``: one model and its data become a verified artifact per target profile.

``build(request)`` loads the model and the data once, converts and measures
the float32 baseline, checks every target's profile and recipe (before any
artifact is written), then runs ``build_target`` per target. ``build_target``
is the public back half, a short list of ``STAGES`` over one ``TargetContext``:

    compress   the recipe's passes, then the accuracy-aware search when asked
    convert    the profile's quantization and variants (for a microcontroller,
               the converter choice that fits TFLM best; after a search, the
               candidate the search measured, byte for byte: no second conversion)
    evaluate   every artifact against the float32 baseline through LiteRT
    fit        microcontrollers: TFLM agreement and the firmware sources
    budgets    every budget, through ``edgec.budgets``
    write      the artifact folder, atomically, with its typed ``Manifest``

A stage that fails raises its own ``EdgecError`` class (so its exit code),
its message prefixed ``build <target>: stage '<name>' failed: ``.

``BuildRequest.replay`` (``edgec build --from-manifest``) rebuilds an artifact
from a manifest's recorded profile, recipe, seed, calibration size and
``epochs_scale``, after checking that the model and data are the ones it records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec import __version__
from edgec.agreement import REFERENCE_FILE, build_reference
from edgec.artifact import library_versions, write_artifact
from edgec.budgets import (
    BudgetCheck,
    BudgetReport,
    Figure,
    Measurements,
    Source,
    check_budgets,
    fits,
    flash_figure,
)
from edgec.convert import ConvertOptions, conversion_facts, convert
from edgec.data import DEMO, Dataset, load_dataset
from edgec.errors import ConversionError, EdgecError, InputError, UnsupportedModelError, UsageError
from edgec.evaluate import Evaluation, evaluate, size_facts
from edgec.files import sha256_bytes, sha256_path
from edgec.loaders import LoadedModel, code_allowed, load_model
from edgec.manifest import (
    SCHEMA,
    SCHEMA_VERSION,
    ArtifactEntry,
    Baseline,
    BudgetSection,
    Calibration,
    DataFacts,
    Manifest,
    MicroSection,
    ModelFacts,
    Replay,
    SearchSection,
    read_manifest,
)
from edgec.modelinfo import read_model
from edgec.objective import Objective
from edgec.profiles import (
    IODtype,
    Profile,
    Quantization,
    load_profile,
    with_objective,
    with_quantization,
)
from edgec.schemes import scheme

Log = Callable[[str], None]

__all__ = [
    "STAGES",
    "BudgetCheck",
    "BuildRequest",
    "BuildResult",
    "FloatBaseline",
    "TargetContext",
    "TargetResult",
    "build",
    "build_target",
    "convert_options",
    "demo",
    "float_baseline",
    "run_stages",
]


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    model: str | Path
    targets: tuple[str, ...]
    out: Path = Path("out")
    data: str | None = None
    recipe: Path | None = None
    overrides: tuple[str, ...] = ()
    max_accuracy_drop: float | None = None
    search: bool = False
    keep_failed: bool = False
    calibration_size: int = 300
    seed: int = 0
    epochs_scale: float = 1.0
    quantization: Quantization | None = None  # replaces every profile's scheme for this build
    objective: Objective | None = None  # replaces every profile's search objective (--objective)
    firmware_elf: Path | None = None  # a linked firmware: micro flash and RAM are measured
    # Allow model files that carry code (Lambda layers, custom objects): --trust-model.
    trust_model: bool = False
    executor: str = "local"  # where the search's candidates run: local | ray (edgec.executor)
    ray_address: str | None = None
    replay: Path | None = None  # a manifest.json: rebuild exactly what it records
    # Set from a replayed manifest: the recipe that ran (before the search's steps).
    recipe_steps: tuple[dict[str, Any], ...] | None = None
    # Set from a replayed manifest: its search section; the chosen candidate is run again as
    # the same job instead of searching again (a choice by host latency would not repeat).
    search_choice: dict[str, Any] | None = None


@dataclass(kw_only=True)
class TargetResult:
    target: str
    directory: Path | None
    manifest: Manifest
    ok: bool
    message: str = ""
    files: dict[str, bytes] = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class BuildResult:
    model: str
    baseline: dict[str, Any]
    targets: list[TargetResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)

    def table(self) -> list[dict[str, Any]]:
        rows = [
            {
                "target": "float32 (baseline)",
                "file": "",
                "bytes": self.baseline["bytes"],
                "accuracy": self.baseline.get("accuracy"),
                "drop": None,
                "ok": True,
            }
        ]
        for t in self.targets:
            for a in t.manifest.artifacts:
                rows.append(
                    {
                        "target": t.target,
                        "file": a.file,
                        "bytes": a.bytes,
                        "accuracy": a.metrics.accuracy,
                        "drop": a.metrics.accuracy_drop,
                        "ok": t.ok,
                    }
                )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "baseline": self.baseline,
            "targets": [
                {
                    "target": t.target,
                    "directory": str(t.directory) if t.directory else None,
                    "ok": t.ok,
                    "message": t.message,
                    "artifacts": [a.to_dict() for a in t.manifest.artifacts],
                }
                for t in self.targets
            ],
        }


@dataclass(frozen=True, kw_only=True)
class FloatBaseline:
    """The float32 conversion of the input, measured once and shared by every target."""

    content: bytes
    evaluation: Evaluation

    def to_dict(self) -> dict[str, Any]:
        return {**size_facts(self.content), **self.evaluation.metrics}


def float_baseline(model: LoadedModel, data: Dataset) -> FloatBaseline:
    content = convert(model.convert_source, ConvertOptions(quantization=Quantization.FLOAT32))
    return FloatBaseline(content=content, evaluation=evaluate(content, data))


def build(req: BuildRequest, log: Log = print) -> BuildResult:
    replayed: Manifest | None = None
    if req.replay is not None:
        replayed = read_manifest(_manifest_folder(req.replay))
        req, profiles = _replay_request(req, replayed)
    else:
        # Every profile checked before any work.
        profiles = [target_profile(load_profile(t), req) for t in req.targets]
    if not profiles:
        raise InputError("no target given; use --target (see `edgec targets`)")
    if req.objective is not None and not (req.search or req.max_accuracy_drop is not None):
        raise UsageError(
            f"--objective {req.objective} ranks the search's candidates; "
            "give --search or --max-accuracy-drop too"
        )
    if req.firmware_elf is not None and not any(p.is_micro for p in profiles):
        raise UsageError("--firmware-elf is for microcontroller targets (e.g. -t cortex-m4)")
    for profile in profiles:  # and every recipe, so a bad one fails before anything is written
        _recipe(req, profile)
    model = load_model(req.model, trust=req.trust_model)
    if replayed is not None:
        _check_replay_inputs(req, replayed, model)
    for note in model.notes:
        log(f"note: {note}")
    data = load_dataset(req.data, model.input_shape, seed=req.seed)
    _check_labels(model, data)
    if (req.search or req.max_accuracy_drop is not None) and not data.labeled:
        raise InputError("the accuracy-aware search needs labeled data: give --data")
    if data.synthetic:
        log(
            "note: no data given: calibration uses seeded random inputs, and accuracy cannot be measured"
        )
    log(f"model {model.name}: {model.loader}; data: {data.source}")

    base = float_baseline(model, data)
    baseline = {**base.to_dict(), "file": None}
    log(f"baseline float32: {baseline['bytes']:,} bytes, accuracy {_pct(baseline.get('accuracy'))}")

    result = BuildResult(model=model.name, baseline=baseline)
    for profile in profiles:
        result.targets.append(build_target(req, profile, model, data, base, log=log))
    if any(t.directory is not None for t in result.targets):
        from edgec.report import render_build_summary

        render_build_summary(req.out / model.name)
    return result


def target_profile(profile: Profile, req: BuildRequest) -> Profile:
    """The profile as this build uses it: ``--quantization`` and ``--objective`` replace its own."""
    if req.objective is not None:
        profile = with_objective(profile, req.objective)
    if req.quantization is None:
        return profile
    return with_quantization(profile, req.quantization)


def _accuracy_bound(req: BuildRequest, profile: Profile) -> float:
    if req.max_accuracy_drop is not None:
        return req.max_accuracy_drop
    b = profile.budgets.max_accuracy_drop
    return b if b is not None else 0.01


def _check_labels(model: LoadedModel, data: Dataset) -> None:
    classes = model.output_shape[-1] if model.output_shape else None
    if data.num_classes is not None and classes is not None and data.num_classes > classes:
        raise InputError(
            f"data {data.source}: labels go up to {data.num_classes - 1}, but the model has "
            f"{classes} outputs; labels must be class indices 0..{classes - 1}"
        )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- replay
def _manifest_folder(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.name.endswith(".json") else path


def _replay_request(req: BuildRequest, m: Manifest) -> tuple[BuildRequest, list[Profile]]:
    """The request and profile a manifest records; the model and data stay the caller's."""
    r = m.replay
    profile = m.profile()
    replayed = dataclasses.replace(
        req,
        targets=(profile.name,),
        quantization=None,  # the recorded profile already has the scheme that was used
        recipe=None,
        overrides=(),
        recipe_steps=tuple(r.recipe),
        search_choice=None if m.search is None else m.search.to_dict(),
        search=r.search,
        max_accuracy_drop=r.max_accuracy_drop,
        calibration_size=r.calibration_size,
        seed=r.seed,
        epochs_scale=r.epochs_scale,
        data=req.data if req.data is not None else r.data,
    )
    return replayed, [profile]


def _check_replay_inputs(req: BuildRequest, m: Manifest, model: LoadedModel) -> None:
    where = f"--from-manifest {req.replay}"
    if model.sha256 != m.replay.model_sha256:
        raise InputError(
            f"{where}: model {model.path} has sha256 {model.sha256[:12]}..., the manifest "
            f"records {m.replay.model_sha256[:12]}...; give the model it was built from"
        )
    digest = _data_sha256(req.data)
    if digest != m.replay.data_sha256 or (digest is None and req.data != m.replay.data):
        raise InputError(
            f"{where}: data {req.data!r} is not the data the manifest records "
            f"({m.replay.data!r}, sha256 {m.replay.data_sha256 or 'n/a'}); give that file"
        )


def _data_sha256(spec: str | None) -> str | None:
    if spec is None or str(spec) == DEMO or not Path(spec).exists():
        return None
    return sha256_path(Path(spec))


# --------------------------------------------------------------------------- stages
@dataclass(frozen=True, kw_only=True)
class Compression:
    """What the middle of the pipeline hands the back end for one target."""

    source: Any  # what convert() takes: the compressed Keras model, or the input as loaded
    recipe: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    search: dict[str, Any] | None = None
    search_met: bool = True
    content: bytes | None = None  # the search's measured artifact, shipped as model.tflite


@dataclass(kw_only=True)
class TargetContext:
    """Everything the stages of one target share; each stage fills in its part."""

    req: BuildRequest
    profile: Profile
    model: LoadedModel
    data: Dataset
    base: FloatBaseline
    log: Log
    write: bool = True
    calibration: Any = None
    base_recipe: list[dict[str, Any]] = field(default_factory=list)
    compression: Compression | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    schemes: list[Quantization] = field(default_factory=list)
    precision: list[dict[str, Any] | None] = field(default_factory=list)  # mixed-int4 plans
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    choice: Any = None  # edgec.micro.Choice
    micro: MicroSection | None = None
    finish: Callable[[Path], None] | None = None
    budgets: BudgetReport | None = None
    checks: list[BudgetCheck] = field(default_factory=list)
    result: TargetResult | None = None


def _stage_compress(ctx: TargetContext) -> None:
    ctx.calibration = ctx.data.calibration(ctx.req.calibration_size, ctx.req.seed)
    ctx.compression = _compress(ctx)


def _stage_convert(ctx: TargetContext) -> None:
    c = ctx.compression
    assert c is not None
    ctx.schemes = [ctx.profile.quantization, *ctx.profile.variants]
    for i, quantization in enumerate(ctx.schemes):
        name = "model.tflite" if i == 0 else f"model.{quantization}.tflite"
        extra, precision = _precision(ctx, quantization, c.source)
        ctx.precision.append(precision)
        searched = i == 0 and c.content is not None and not extra
        if searched and ctx.profile.is_micro:
            # The bytes the search measured, through the TFLM fit as they are.
            assert c.content is not None
            ctx.choice = _micro_choice(c.source, ctx, candidates={"searched": c.content})
            content = ctx.choice.content
        elif searched:
            assert c.content is not None
            content = c.content  # what the search measured: no second conversion
        elif i == 0 and ctx.profile.is_micro:
            ctx.choice = _micro_choice(c.source, ctx, **extra)
            content = ctx.choice.content
        else:
            options = convert_options(ctx.profile, quantization, **extra)
            content = convert(c.source, options, ctx.calibration)
        ctx.files[name] = content


def _stage_evaluate(ctx: TargetContext) -> None:
    base = ctx.base.evaluation
    items = zip(ctx.files.items(), ctx.schemes, ctx.precision, strict=True)
    for (name, content), quantization, precision in items:
        ev = evaluate(content, ctx.data, reference=base.outputs, threads=ctx.profile.threads)
        entry = _artifact_entry(
            name, quantization, content, ev, base.metrics.get("accuracy"), precision
        )
        ctx.artifacts.append(entry)
        m = entry.metrics
        ctx.log(
            f"[{ctx.profile.name}] {name}: {len(content):,} bytes, accuracy {_pct(m.accuracy)}, "
            f"agreement {_pct(m.top1_agreement)}"
        )
        conversion = entry.extra["conversion"]
        fallback = conversion["float_fallback_ops"]
        if fallback:
            ctx.log(
                f"[{ctx.profile.name}] {name}: float fall-back ops kept (no int8 kernel): "
                + ", ".join(f"{r['op']} x{r['count']}" for r in fallback)
                + f"; {100 * conversion['float_fallback_compute_share']:.2f}% "
                "of the compute (estimate)"
            )


def _stage_fit(ctx: TargetContext) -> None:
    if ctx.choice is None:
        return
    report = ctx.choice.report
    ctx.log(f"[{ctx.profile.name}] TFLM: {report.summary_line()}")
    if not report.agreement.ok:
        from edgec.errors import ConversionError

        raise ConversionError(
            f"{ctx.profile.name}: TFLM's outputs disagree with LiteRT's on the same artifact "
            f"({report.agreement.to_dict()}); the artifact would not behave as measured"
        )
    ctx.micro = MicroSection.from_dict(
        {**report.to_dict(), "choice": ctx.choice.to_dict()}, "micro"
    )
    content = ctx.choice.content

    def finish(tmp: Path) -> None:
        from edgec.firmware import FIRMWARE_DIR, write_firmware

        write_firmware(tmp / FIRMWARE_DIR, content, report)

    ctx.finish = finish


def _stage_budgets(ctx: TargetContext) -> None:
    primary = ctx.artifacts[0]
    ctx.budgets = check_budgets(
        ctx.profile.budgets,
        measurements(primary, ctx.choice.report if ctx.choice is not None else None),
        max_accuracy_drop=ctx.req.max_accuracy_drop,
    )
    ctx.checks = list(ctx.budgets.checks)
    c = ctx.compression
    assert c is not None
    if c.search is not None:
        ctx.checks.append(
            BudgetCheck(
                name="search",
                limit=c.search["max_accuracy_drop"],
                value=primary.metrics.accuracy_drop or 0.0,
                ok=c.search_met,
                detail=""
                if c.search_met
                else "no search candidate met the accuracy bound and the budgets "
                f"(kept the best: {c.search['chosen']})",
            )
        )


def _stage_write(ctx: TargetContext) -> None:
    req, profile, c = ctx.req, ctx.profile, ctx.compression
    assert c is not None and ctx.budgets is not None
    checks = ctx.checks
    ok = all(x.ok for x in checks)
    # The search keeps its best artifact even when nothing met the bound (and says so).
    keep = req.keep_failed or all(x.name == "search" for x in checks if not x.ok)
    reference = None
    if ctx.write:
        # The host's outputs on fixed seeded inputs, so `edgec bench --check-outputs`
        # catches a device (or a model changed since the build) that computes otherwise.
        data, reference = build_reference(
            ctx.files["model.tflite"], micro=profile.is_micro, threads=profile.threads or 1
        )
        ctx.files[REFERENCE_FILE] = data
    manifest = Manifest(
        schema=SCHEMA,
        schema_version=SCHEMA_VERSION,
        edgec_version=__version__,
        model=ModelFacts.from_dict(ctx.model.describe(), "model"),
        data=DataFacts.from_dict({**ctx.data.describe(), "sha256": _data_sha256(req.data)}, "data"),
        target=profile.to_dict(),
        recipe=c.recipe,
        passes=c.passes,
        baseline=Baseline.from_dict(ctx.base.to_dict()),
        artifacts=tuple(ctx.artifacts),
        budgets=BudgetSection(
            checks=tuple(checks),
            ok=ok,
            kept_despite_failure=not ok and keep,
            notes=list(ctx.budgets.notes),
        ),
        calibration=Calibration(
            size=len(ctx.calibration), synthetic=ctx.data.synthetic, source=ctx.data.source
        ),
        replay=Replay(
            seed=req.seed,
            calibration_size=req.calibration_size,
            epochs_scale=req.epochs_scale,
            model_sha256=ctx.model.sha256,
            data_sha256=_data_sha256(req.data),
            data=None if req.data is None else str(req.data),
            recipe=ctx.base_recipe,
            search=c.search is not None,
            max_accuracy_drop=req.max_accuracy_drop,
        ),
        versions=library_versions(),
        micro=ctx.micro,
        search=None if c.search is None else SearchSection.from_dict(c.search, "search"),
        reference_outputs=reference,
    )
    failed = [x for x in checks if not x.ok]
    message = "; ".join(x.message() for x in failed)
    directory = req.out / ctx.model.name / profile.name
    if not ctx.write or (failed and not keep):
        if ctx.write:
            ctx.log(
                f"[{profile.name}] FAILED budgets: {message}; no artifact written "
                "(--keep-failed keeps it)"
            )
        ctx.result = TargetResult(
            target=profile.name,
            directory=None,
            manifest=manifest,
            ok=ok,
            message=message,
            files=ctx.files,
        )
        return
    write_artifact(directory, ctx.files, manifest, finish=_with_reports(ctx.finish))
    status = "ok" if ok else f"FAILED budgets (kept): {message}"
    ctx.log(f"[{profile.name}] {status} -> {directory}")
    ctx.result = TargetResult(
        target=profile.name,
        directory=directory,
        manifest=manifest,
        ok=ok,
        message=message,
        files=ctx.files,
    )


Stage = tuple[str, Callable[[TargetContext], None]]

STAGES: tuple[Stage, ...] = (
    ("compress", _stage_compress),
    ("convert", _stage_convert),
    ("evaluate", _stage_evaluate),
    ("fit", _stage_fit),
    ("budgets", _stage_budgets),
    ("write", _stage_write),
)


def build_target(
    req: BuildRequest,
    profile: Profile,
    model: LoadedModel,
    data: Dataset,
    base: FloatBaseline | None = None,
    *,
    log: Log = print,
    write: bool = True,
) -> TargetResult:
    """Run ``STAGES`` for one target; ``write=False`` keeps the files in memory only."""
    ctx = TargetContext(
        req=req,
        profile=profile,
        model=model,
        data=data,
        base=base if base is not None else float_baseline(model, data),
        log=log,
        write=write,
    )
    log(f"[{profile.name}] {profile.description}")
    run_stages(ctx, STAGES)
    assert ctx.result is not None
    return ctx.result


def run_stages(ctx: TargetContext, stages: tuple[Stage, ...]) -> None:
    """Run ``stages`` on ``ctx``; a failing stage's error names the target and the stage.

    A batch build (``edgec.batch``) runs all but ``write`` in a job and ``write`` here.
    """
    for name, stage in stages:
        try:
            stage(ctx)
        except EdgecError as exc:
            prefix = f"build {ctx.profile.name}: stage {name!r} failed: "
            # The same class (so the exit code), a new message: subclasses' __init__
            # signatures differ, so the instance is made without calling theirs.
            kind: Any = type(exc)
            wrapped = kind.__new__(kind)
            EdgecError.__init__(wrapped, prefix + str(exc))
            raise wrapped from exc


# --------------------------------------------------------------------------- compress
def _recipe(req: BuildRequest, profile: Profile) -> Any:
    from edgec.recipe import Recipe, resolve_recipe, steps_from_tables

    if req.recipe_steps is not None:
        steps = steps_from_tables(list(req.recipe_steps), f"--from-manifest {req.replay}")
        return Recipe(steps=steps, name="replayed", source=f"manifest {req.replay}")
    return resolve_recipe(profile, req.recipe, req.overrides)


def _compress(ctx: TargetContext) -> Compression:
    """Run the target's recipe, then the accuracy-aware search when asked."""
    req, profile, model, data, log = ctx.req, ctx.profile, ctx.model, ctx.data, ctx.log
    search = req.search or req.max_accuracy_drop is not None
    plain = Compression(source=model.convert_source, recipe=[], passes=[])
    if (
        req.recipe is None
        and not req.overrides
        and req.recipe_steps is None
        and not profile.passes
        and not search
    ):
        return plain
    from edgec.recipe import resolve_recipe

    recipe = _recipe(req, profile)
    from_profile = req.recipe is None and not req.overrides and req.recipe_steps is None
    if from_profile and recipe.steps and not data.labeled:
        log(
            f"note: {profile.name}'s default recipe ({', '.join(s.id for s in recipe.steps)}) "
            "fine-tunes on labeled data; without --data it is not run"
        )
        recipe = resolve_recipe(None)
    ctx.base_recipe = recipe.to_list()
    if not recipe.steps and not search:
        return plain
    if model.keras is None:
        raise UnsupportedModelError(
            f"model {model.path}: compression passes need a Keras 3 model, but it was loaded as "
            f"{model.loader}; remove the passes or give a .keras/.h5 file"
        )
    import keras

    from edgec.pipeline import PassContext, PassManager

    # Names Keras makes up for new layers and models ("dense_3", "sequential_2") count up per
    # process and end up in the flatbuffer: start every target from a fresh count, so that the
    # same build in another process (--from-manifest) writes the same bytes.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(req.seed)
    pctx = PassContext(
        data=data,
        profile=profile,
        seed=req.seed,
        epochs_scale=req.epochs_scale,
        log=log,
        trust_model=req.trust_model,
    )
    # The manager hands each pass a copy: model.keras, shared by the targets, stays as loaded.
    with code_allowed(req.trust_model):  # a trusted Lambda is rebuilt by every copy
        compressed, records = PassManager(recipe.instantiate()).run(model.keras, pctx)
    done = Compression(
        source=compressed, recipe=recipe.to_list(), passes=[r.to_dict() for r in records]
    )
    if not search:
        return done
    return _search(ctx, done)


def measurements(entry: ArtifactEntry, micro_report: Any = None) -> Measurements:
    """The figures of one artifact that its budgets judge (``micro_report``: its TFLM fit,
    whose flash and RAM figures say what measured them)."""
    drop = entry.metrics.accuracy_drop
    micro = micro_report.figures() if micro_report is not None else Measurements()
    return dataclasses.replace(
        micro,
        model_bytes=Figure(value=entry.bytes, source=Source.ARTIFACT),
        accuracy_drop=None if drop is None else Figure(value=drop, source=Source.HOST),
    )


def _search(ctx: TargetContext, done: Compression) -> Compression:
    from edgec.executor import open_executor
    from edgec.search import Measurement, run_search

    req, profile, data, base, log = ctx.req, ctx.profile, ctx.data, ctx.base, ctx.log
    reference = base.evaluation.metrics.get("accuracy")
    if not data.labeled or reference is None:
        raise InputError("the accuracy-aware search needs labeled data: give --data")
    bound = _accuracy_bound(req, profile)
    # A per-layer scheme is measured at int8 here; its layers are chosen on the result.
    per_layer = scheme(profile.quantization).per_layer_int4
    options = convert_options(
        profile, profile.quantization, **({"int4_layers": ()} if per_layer else {})
    )
    if req.search_choice is not None:
        return _replayed_choice(ctx, done, options, req.search_choice)

    def fits_budgets(m: Measurement) -> bool:
        # A microcontroller is judged on the figures the fit report judges the chosen artifact
        # on: flash = the model + TFLM's code for its ops; RAM = the arena TFLM needed for
        # this candidate (+ the profile's margin) + the interpreter objects.
        sizes = Measurements()
        if profile.is_micro and m.content is not None:
            from edgec.micro import runtime_code
            from edgec.micro.costs import cost_table
            from edgec.micro.report import measurements as micro_figures
            from edgec.micro.tflm import recommended_arena

            ops = read_model(m.content, "search candidate").op_counts
            code, estimated, _ = runtime_code(ops, profile)
            if m.arena_required_bytes is not None:  # measured whenever a RAM budget is set
                margin = profile.micro.arena_margin if profile.micro else 0.10
                ram = recommended_arena(m.arena_required_bytes, margin)
                sizes = micro_figures(
                    model_bytes=m.bytes,
                    code=code,
                    ram=ram + cost_table().interpreter_ram(ops),
                    flash_source="estimate" if estimated else "profile",
                    measured=False,
                )
            else:
                sizes = Measurements(
                    flash_bytes=flash_figure(
                        model_bytes=m.bytes,
                        runtime_code_bytes=code,
                        runtime_code_estimated=estimated,
                    )
                )
        sizes = dataclasses.replace(
            sizes, model_bytes=Figure(value=m.bytes, source=Source.ARTIFACT)
        )
        return fits(profile.budgets, sizes)

    with open_executor(req.executor, req.ray_address) as executor:
        result = run_search(
            done.source,
            data,
            options=options,
            calibration=ctx.calibration,
            max_accuracy_drop=bound,
            reference_accuracy=reference,
            profile=profile,
            fits_budgets=fits_budgets,
            seed=req.seed,
            epochs_scale=req.epochs_scale,
            threads=profile.threads,
            executor=executor,
            log=lambda message: log(f"[{profile.name}] {message}"),
            trust_model=req.trust_model,
        )
    chosen = result.chosen
    log(
        f"[{profile.name}] search chose {chosen.label!r}"
        + (
            ""
            if result.met
            else f": NO candidate met the accuracy bound {bound} and the budgets; kept the best found"
        )
    )
    content = result.content
    return Compression(
        source=result.model,
        recipe=done.recipe + [s.resolved() for s in chosen.steps],
        passes=done.passes + list(chosen.records),
        search={**result.to_dict(), "chosen_sha256": sha256_bytes(content)},
        search_met=result.met,
        content=content,
    )


def _replayed_choice(
    ctx: TargetContext, done: Compression, options: ConvertOptions, recorded: dict[str, Any]
) -> Compression:
    """``--from-manifest`` of a searched artifact: its chosen candidate, run as the same job.

    The search's job function (seeded, one BLAS thread, fresh Keras name counters) on the
    same input gives the same bytes in any process; searching again would not, since the
    objective may rank by host latency, which differs from run to run.
    """
    from edgec.recipe import steps_from_tables
    from edgec.search import (
        CandidateJob,
        SearchShared,
        keras_from_bytes,
        keras_to_bytes,
        run_candidate,
    )

    req, profile = ctx.req, ctx.profile
    where = f"--from-manifest {req.replay}"
    steps = steps_from_tables(list(recorded.get("chosen_passes") or []), where)
    shared = SearchShared(
        model=keras_to_bytes(done.source),
        data=ctx.data,
        options=options,
        calibration=ctx.calibration,
        profile=profile,
        seed=req.seed,
        epochs_scale=req.epochs_scale,
        threads=profile.threads,
        objective=profile.objective,
        trust_model=req.trust_model,
    )
    label = str(recorded.get("chosen", "replayed"))
    outcome = run_candidate(shared, CandidateJob(label=label, steps=steps))
    if outcome.measurement is None or outcome.measurement.content is None:
        raise ConversionError(
            f"{where}: the search's choice {label!r} failed again: {outcome.error}"
        )
    content = outcome.measurement.content
    ctx.log(f"[{profile.name}] replayed the search's choice {label!r} (not searched again)")
    return Compression(
        source=done.source
        if outcome.model is None
        else keras_from_bytes(outcome.model, trust=req.trust_model),
        recipe=done.recipe + [s.resolved() for s in steps],
        passes=done.passes + list(outcome.records),
        search={**recorded, "chosen_sha256": sha256_bytes(content)},
        search_met=bool(recorded.get("met", True)),
        content=content,
    )


def _precision(
    ctx: TargetContext, quantization: Quantization, source: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ConvertOptions extras for a scheme chosen per layer (mixed-int4), and the plan's record."""
    if not scheme(quantization).per_layer_int4:
        return {}, None
    from edgec.precision import choose_int4_layers

    profile = ctx.profile
    flat = (
        source
        if isinstance(source, bytes)
        else convert(source, ConvertOptions(quantization=Quantization.FLOAT32))
    )
    plan = choose_int4_layers(
        flat,
        convert_options(profile, quantization, int4_layers=()),
        ctx.calibration,
        ctx.data,
        reference_accuracy=ctx.base.evaluation.metrics.get("accuracy"),
        max_accuracy_drop=_accuracy_bound(ctx.req, profile),
        threads=profile.threads,
    )
    ctx.log(
        f"[{profile.name}] {quantization}: int4 weights on {len(plan.int4_layers)} of "
        f"{len(plan.layers)} conv/dense layers (accuracy {_pct(plan.accuracy)}, "
        f"all-int8 {_pct(plan.int8_accuracy)})"
    )
    return {"int4_layers": plan.int4_layers}, plan.to_dict()


def convert_options(profile: Profile, quantization: Quantization, **extra: Any) -> ConvertOptions:
    integer = scheme(quantization).integer_only
    return ConvertOptions(
        quantization=quantization,
        input_dtype=profile.input_dtype if integer else IODtype.FLOAT32,
        output_dtype=profile.output_dtype if integer else IODtype.FLOAT32,
        float_fallback=profile.float_fallback,
        **extra,
    )


def _artifact_entry(
    file: str,
    quantization: Quantization,
    content: bytes,
    ev: Evaluation,
    baseline_accuracy: float | None,
    precision: dict[str, Any] | None = None,
) -> ArtifactEntry:
    info = read_model(content, file)
    metrics = dict(ev.metrics)
    if "accuracy" in metrics and baseline_accuracy is not None:
        metrics["accuracy_drop"] = round(baseline_accuracy - metrics["accuracy"], 6)
    return ArtifactEntry.from_dict(
        {
            "file": file,
            "quantization": str(quantization),
            **size_facts(content),
            "inputs": [t.to_dict() for t in info.input_tensors],
            "outputs": [t.to_dict() for t in info.output_tensors],
            "ops": info.op_counts,
            "param_count": info.param_count,
            "macs": info.macs(),
            "conversion": {**conversion_facts(content), "precision": precision},
            "metrics": metrics,
        },
        f"artifacts[{file}]",
    )


def _micro_choice(
    source: Any, ctx: TargetContext, candidates: dict[str, bytes] | None = None, **extra: Any
) -> Any:
    """Convert every microcontroller candidate, run each in TFLM, keep the smallest that agrees."""
    from edgec import micro

    profile, data = ctx.profile, ctx.data
    rows = min(len(data.x_val), 64)
    if candidates is None:
        candidates = micro.micro_candidates(source, profile, ctx.calibration, **extra)
    choice = micro.choose_smallest(
        candidates,
        profile,
        data.x_val[:rows],
        reference_outputs=ctx.base.evaluation.outputs[:rows],
        firmware_elf=ctx.req.firmware_elf,
    )
    if len(candidates) > 1:
        ctx.log(f"[{profile.name}] kept {choice.label} of {', '.join(candidates)}")
    return choice


def _with_reports(finish: Callable[[Path], None] | None) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        if finish is not None:
            finish(tmp)
        from edgec.report import render_reports

        render_reports(tmp)

    return run


def demo(
    out: Path,
    *,
    targets: tuple[str, ...] = ("rpi4", "cortex-m4"),
    epochs: int = 30,
    log: Log = print,
    **overrides: Any,
) -> BuildResult:
    """Train the digits CNN offline and build it for ``targets``."""
    from edgec.demo import save_demo_model

    log("demo: training a small CNN on scikit-learn's handwritten digits (offline)")
    path = save_demo_model(out, epochs=epochs)
    return build(
        BuildRequest(model=path, targets=targets, out=out, data="demo", **overrides), log=log
    )
