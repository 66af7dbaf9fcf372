"""``edgec build``: one model and its data become a verified artifact per target profile.

The flow for each target: run the recipe's compression passes (or the
accuracy-aware search), convert to the profile's quantization and variants,
measure every artifact against the float32 baseline through the TFLite runtime,
run the microcontroller fit check where the profile is one, check the budgets,
and write the artifact folder atomically with its manifest and reports.
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
from edgec.convert import ConvertOptions, conversion_facts, convert
from edgec.data import Dataset, load_dataset
from edgec.errors import InputError, UnsupportedModelError, UsageError
from edgec.evaluate import Evaluation, evaluate, size_facts
from edgec.loaders import LoadedModel, load_model
from edgec.modelinfo import read_model
from edgec.profiles import IODtype, Profile, Quantization, load_profile, with_quantization
from edgec.schemes import scheme

Log = Callable[[str], None]


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
    firmware_elf: Path | None = None  # a linked firmware: micro flash and RAM are measured
    # Allow model files that carry code (Lambda layers, custom objects): --trust-model.
    trust_model: bool = False
    executor: str = "local"  # where the search's candidates run: local | ray (edgec.executor)
    ray_address: str | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    name: str
    limit: float
    value: float
    ok: bool
    estimate: bool = False
    detail: str = ""  # for a failed check: the numbers and the biggest contributors


@dataclass(kw_only=True)
class TargetResult:
    target: str
    directory: Path | None
    manifest: dict[str, Any]
    ok: bool
    message: str = ""


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
            for a in t.manifest.get("artifacts", []):
                m = a["metrics"]
                rows.append(
                    {
                        "target": t.target,
                        "file": a["file"],
                        "bytes": a["bytes"],
                        "accuracy": m.get("accuracy"),
                        "drop": m.get("accuracy_drop"),
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
                    "artifacts": t.manifest.get("artifacts", []),
                }
                for t in self.targets
            ],
        }


def build(req: BuildRequest, log: Log = print) -> BuildResult:
    # Every profile checked before any work.
    profiles = [target_profile(load_profile(t), req) for t in req.targets]
    if not profiles:
        raise InputError("no target given; use --target (see `edgec targets`)")
    if req.firmware_elf is not None and not any(p.is_micro for p in profiles):
        raise UsageError("--firmware-elf is for microcontroller targets (e.g. -t cortex-m4)")
    model = load_model(req.model, trust=req.trust_model)
    for note in model.notes:
        log(f"note: {note}")
    data = load_dataset(req.data, model.input_shape, seed=req.seed)
    _check_labels(model, data)
    if data.synthetic:
        log(
            "note: no data given: calibration uses seeded random inputs, and accuracy cannot be measured"
        )
    log(f"model {model.name}: {model.loader}; data: {data.source}")

    float_content = convert(model.convert_source, ConvertOptions(quantization=Quantization.FLOAT32))
    base = evaluate(float_content, data)
    baseline = {**size_facts(float_content), **base.metrics, "file": None}
    log(f"baseline float32: {baseline['bytes']:,} bytes, accuracy {_pct(baseline.get('accuracy'))}")

    result = BuildResult(model=model.name, baseline=baseline)
    for profile in profiles:
        result.targets.append(_build_target(req, profile, model, data, float_content, base, log))
    if any(t.directory is not None for t in result.targets):
        from edgec.report import render_build_summary

        render_build_summary(req.out / model.name)
    return result


def target_profile(profile: Profile, req: BuildRequest) -> Profile:
    """The profile as this build uses it: ``--quantization`` replaces its scheme."""
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


@dataclass(frozen=True, kw_only=True)
class Compression:
    """What the middle of the pipeline hands the back end for one target."""

    source: Any  # what convert() takes: the compressed Keras model, or the input as loaded
    recipe: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    search: dict[str, Any] | None = None
    search_met: bool = True


def _compress(
    req: BuildRequest,
    profile: Profile,
    model: LoadedModel,
    data: Dataset,
    base: Evaluation,
    calibration: Any,
    log: Log,
) -> Compression:
    """Run the target's recipe, then the accuracy-aware search when asked."""
    search = req.search or req.max_accuracy_drop is not None
    if req.recipe is None and not req.overrides and not profile.passes and not search:
        return Compression(source=model.convert_source, recipe=[], passes=[])
    from edgec.recipe import resolve_recipe

    recipe = resolve_recipe(profile, req.recipe, req.overrides)
    from_profile = req.recipe is None and not req.overrides
    if from_profile and recipe.steps and not data.labeled:
        log(
            f"note: {profile.name}'s default recipe ({', '.join(s.id for s in recipe.steps)}) "
            "fine-tunes on labeled data; without --data it is not run"
        )
        recipe = resolve_recipe(None)
    if not recipe.steps and not search:
        return Compression(source=model.convert_source, recipe=[], passes=[])
    if model.keras is None:
        raise UnsupportedModelError(
            f"model {model.path}: compression passes need a Keras 3 model, but it was loaded as "
            f"{model.loader}; remove the passes or give a .keras/.h5 file"
        )
    import keras

    from edgec.pipeline import PassContext, PassManager

    keras.utils.set_random_seed(req.seed)
    clone = keras.models.clone_model(model.keras)
    clone.set_weights(model.keras.get_weights())
    ctx = PassContext(
        data=data,
        profile=profile,
        seed=req.seed,
        epochs_scale=req.epochs_scale,
        log=log,
        trust_model=req.trust_model,
    )
    compressed, records = PassManager(recipe.instantiate()).run(clone, ctx)
    done = Compression(
        source=compressed, recipe=recipe.to_list(), passes=[r.to_dict() for r in records]
    )
    if not search:
        return done
    return _search(req, profile, done, ctx, data, base, calibration, log)


def _search(
    req: BuildRequest,
    profile: Profile,
    done: Compression,
    ctx: Any,
    data: Dataset,
    base: Evaluation,
    calibration: Any,
    log: Log,
) -> Compression:
    from edgec.executor import open_executor
    from edgec.search import run_search

    if not data.labeled or base.metrics.get("accuracy") is None:
        raise InputError("the accuracy-aware search needs labeled data: give --data")
    bound = _accuracy_bound(req, profile)
    # A per-layer scheme is measured at int8 here; its layers are chosen on the result.
    per_layer = scheme(profile.quantization).per_layer_int4
    options = convert_options(
        profile, profile.quantization, **({"int4_layers": ()} if per_layer else {})
    )
    limit = profile.budgets.model_bytes or profile.budgets.flash_bytes
    with open_executor(req.executor, req.ray_address) as executor:
        result = run_search(
            done.source,
            data,
            options=options,
            calibration=calibration,
            max_accuracy_drop=bound,
            reference_accuracy=base.metrics["accuracy"],
            profile=profile,
            fits_budgets=None if limit is None else (lambda m: m.bytes <= limit),
            seed=req.seed,
            epochs_scale=req.epochs_scale,
            threads=profile.threads,
            executor=executor,
            log=lambda message: log(f"[{profile.name}] {message}"),
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
    return Compression(
        source=result.model,
        recipe=done.recipe + [s.resolved() for s in chosen.steps],
        passes=done.passes + list(chosen.records),
        search=result.to_dict(),
        search_met=result.met,
    )


def convert_options(profile: Profile, quantization: Quantization, **extra: Any) -> ConvertOptions:
    integer = scheme(quantization).integer_only
    return ConvertOptions(
        quantization=quantization,
        input_dtype=profile.input_dtype if integer else IODtype.FLOAT32,
        output_dtype=profile.output_dtype if integer else IODtype.FLOAT32,
        float_fallback=profile.float_fallback,
        **extra,
    )


def _precision(
    req: BuildRequest,
    profile: Profile,
    quantization: Quantization,
    source: Any,
    data: Dataset,
    calibration: Any,
    base: Evaluation,
    log: Log,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ConvertOptions extras for a scheme chosen per layer (mixed-int4), and the plan's record."""
    if not scheme(quantization).per_layer_int4:
        return {}, None
    from edgec.precision import choose_int4_layers

    flat = (
        source
        if isinstance(source, bytes)
        else convert(source, ConvertOptions(quantization=Quantization.FLOAT32))
    )
    plan = choose_int4_layers(
        flat,
        convert_options(profile, quantization, int4_layers=()),
        calibration,
        data,
        reference_accuracy=base.metrics.get("accuracy"),
        max_accuracy_drop=_accuracy_bound(req, profile),
        threads=profile.threads,
    )
    log(
        f"[{profile.name}] {quantization}: int4 weights on {len(plan.int4_layers)} of "
        f"{len(plan.layers)} conv/dense layers (accuracy {_pct(plan.accuracy)}, "
        f"all-int8 {_pct(plan.int8_accuracy)})"
    )
    return {"int4_layers": plan.int4_layers}, plan.to_dict()


def _artifact_entry(
    file: str,
    quantization: Quantization,
    content: bytes,
    ev: Evaluation,
    baseline_accuracy: float | None,
    precision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    info = read_model(content, file)
    metrics = dict(ev.metrics)
    if "accuracy" in metrics and baseline_accuracy is not None:
        metrics["accuracy_drop"] = round(baseline_accuracy - metrics["accuracy"], 6)
    return {
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
    }


def _budget_checks(
    profile: Profile, primary: dict[str, Any], req: BuildRequest
) -> list[BudgetCheck]:
    b = profile.budgets
    checks = []
    if b.model_bytes is not None:
        checks.append(
            BudgetCheck(
                name="model_bytes",
                limit=b.model_bytes,
                value=primary["bytes"],
                ok=primary["bytes"] <= b.model_bytes,
            )
        )
    bound = req.max_accuracy_drop if req.max_accuracy_drop is not None else b.max_accuracy_drop
    drop = primary["metrics"].get("accuracy_drop")
    if bound is not None and drop is not None:
        checks.append(
            BudgetCheck(name="max_accuracy_drop", limit=bound, value=drop, ok=drop <= bound + 1e-9)
        )
    return checks


def _build_target(
    req: BuildRequest,
    profile: Profile,
    model: LoadedModel,
    data: Dataset,
    float_content: bytes,
    base: Evaluation,
    log: Log,
) -> TargetResult:
    log(f"[{profile.name}] {profile.description}")
    calibration = data.calibration(req.calibration_size, req.seed)
    compression = _compress(req, profile, model, data, base, calibration, log)
    source = compression.source
    files: dict[str, bytes] = {}
    artifacts: list[dict[str, Any]] = []
    schemes = (profile.quantization, *profile.variants)
    choice = None
    for i, quantization in enumerate(schemes):
        extra, precision = _precision(
            req, profile, quantization, source, data, calibration, base, log
        )
        if i == 0 and profile.is_micro:
            choice = _micro_choice(
                source,
                profile,
                data,
                calibration,
                base,
                log,
                firmware_elf=req.firmware_elf,
                **extra,
            )
            content = choice.content
        else:
            content = convert(source, convert_options(profile, quantization, **extra), calibration)
        name = "model.tflite" if i == 0 else f"model.{quantization}.tflite"
        ev = evaluate(content, data, reference=base.outputs, threads=profile.threads)
        files[name] = content
        artifacts.append(
            _artifact_entry(
                name, quantization, content, ev, base.metrics.get("accuracy"), precision
            )
        )
        m = artifacts[-1]["metrics"]
        log(
            f"[{profile.name}] {name}: {len(content):,} bytes, accuracy {_pct(m.get('accuracy'))}, "
            f"agreement {_pct(m.get('top1_agreement'))}"
        )
        fallback = artifacts[-1]["conversion"]["float_fallback_ops"]
        if fallback:
            log(
                f"[{profile.name}] {name}: float fall-back ops kept (no int8 kernel): "
                + ", ".join(f"{r['op']} x{r['count']}" for r in fallback)
                + f"; {100 * artifacts[-1]['conversion']['float_fallback_compute_share']:.2f}% "
                "of the compute (estimate)"
            )

    # The host's outputs on fixed seeded inputs, so `edgec bench --check-outputs`
    # catches a device (or a model changed since the build) that computes otherwise.
    reference, reference_entry = build_reference(
        files["model.tflite"], micro=profile.is_micro, threads=profile.threads or 1
    )
    files[REFERENCE_FILE] = reference
    checks = _budget_checks(profile, artifacts[0], req)
    micro: dict[str, Any] | None = None
    finish = None
    if choice is not None:
        micro, micro_checks, finish = _micro(profile, choice, log)
        checks += micro_checks
    if compression.search is not None:
        checks.append(
            BudgetCheck(
                name="search",
                limit=compression.search["max_accuracy_drop"],
                value=artifacts[0]["metrics"].get("accuracy_drop", 0.0),
                ok=compression.search_met,
                detail=""
                if compression.search_met
                else "no search candidate met the accuracy bound and the budgets "
                f"(kept the best: {compression.search['chosen']})",
            )
        )
    ok = all(c.ok for c in checks)
    # The search keeps its best artifact even when nothing met the bound (and says so).
    keep = req.keep_failed or all(c.name == "search" for c in checks if not c.ok)
    manifest = {
        "edgec_version": __version__,
        "model": model.describe(),
        "data": data.describe(),
        "target": profile.to_dict(),
        "recipe": compression.recipe,
        "passes": compression.passes,
        "baseline": {**size_facts(float_content), **base.metrics},
        "artifacts": artifacts,
        "budgets": {
            "checks": [dataclasses.asdict(c) for c in checks],
            "ok": ok,
            "kept_despite_failure": not ok and keep,
        },
        "calibration": {
            "size": len(calibration),
            "synthetic": data.synthetic,
            "source": data.source,
        },
        "versions": library_versions(),
    }
    manifest["reference_outputs"] = reference_entry
    if micro is not None:
        manifest["micro"] = micro
    if compression.search is not None:
        manifest["search"] = compression.search
    failed = [c for c in checks if not c.ok]
    message = "; ".join(
        c.detail
        or f"{c.name} {_fmt(c.name, c.value)} exceeds {_fmt(c.name, c.limit)}"
        + (" (estimate)" if c.estimate else "")
        for c in failed
    )
    directory = req.out / model.name / profile.name
    if failed and not keep:
        log(
            f"[{profile.name}] FAILED budgets: {message}; no artifact written (--keep-failed keeps it)"
        )
        return TargetResult(
            target=profile.name, directory=None, manifest=manifest, ok=False, message=message
        )
    write_artifact(directory, files, manifest, finish=_with_reports(finish))
    status = "ok" if ok else f"FAILED budgets (kept): {message}"
    log(f"[{profile.name}] {status} -> {directory}")
    return TargetResult(
        target=profile.name, directory=directory, manifest=manifest, ok=ok, message=message
    )


def _fmt(name: str, value: float) -> str:
    if "bytes" in name:
        return f"{int(value):,} B"
    if "accuracy" in name:
        return f"{100 * value:.2f} pt"
    return f"{value:g}"


def _micro_choice(
    source: Any,
    profile: Profile,
    data: Dataset,
    calibration: Any,
    base: Evaluation,
    log: Log,
    *,
    firmware_elf: Path | None = None,
    **extra: Any,
) -> Any:
    """Convert every microcontroller candidate, run each in TFLM, keep the smallest that agrees."""
    from edgec import micro

    rows = min(len(data.x_val), 64)
    candidates = micro.micro_candidates(source, profile, calibration, **extra)
    choice = micro.choose_smallest(
        candidates,
        profile,
        data.x_val[:rows],
        reference_outputs=base.outputs[:rows],
        firmware_elf=firmware_elf,
    )
    if len(candidates) > 1:
        log(f"[{profile.name}] kept {choice.label} of {', '.join(candidates)}")
    return choice


def _micro(
    profile: Profile, choice: Any, log: Log
) -> tuple[dict[str, Any], list[BudgetCheck], Callable[[Path], None]]:
    report = choice.report
    log(f"[{profile.name}] TFLM: {report.summary_line()}")
    if not report.agreement.ok:
        from edgec.errors import ConversionError

        raise ConversionError(
            f"{profile.name}: TFLM's outputs disagree with LiteRT's on the same artifact "
            f"({report.agreement.to_dict()}); the artifact would not behave as measured"
        )
    checks = [
        BudgetCheck(
            name=c["name"],
            limit=c["limit"],
            value=c["value"],
            ok=c["ok"],
            estimate=c.get("estimate", False),
            detail=c.get("detail", ""),
        )
        for c in report.budget_checks()
    ]

    def finish(tmp: Path) -> None:
        from edgec.firmware import FIRMWARE_DIR, write_firmware

        write_firmware(tmp / FIRMWARE_DIR, choice.content, report)

    return {**report.to_dict(), "choice": choice.to_dict()}, checks, finish


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
