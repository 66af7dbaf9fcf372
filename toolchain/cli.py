"""The ``edgec`` command line: click commands only, each calling one library function.

Errors: an ``EdgecError`` prints one line ("edgec: error: ...") and exits with
its code (see ``edgec.errors``); ``--debug`` shows the traceback instead.
Heavy libraries are imported inside the commands, so ``edgec --help`` and
``edgec targets`` start without TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from edgec import __version__
from edgec.deploy import RUNTIMES
from edgec.errors import EdgecError
from edgec.executor import ExecutorKind
from edgec.objective import Objective
from edgec.schemes import Quantization
from edgec.schemes import names as scheme_names


class _Group(click.Group):
    """Turns EdgecError, and click's own usage errors, into one line and an exit code.

    ``--debug`` shows an EdgecError's traceback instead. With ``--json`` on the
    command line a usage error also prints the JSON error envelope on stdout.
    """

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            # Not standalone: click raises its errors here instead of printing usage text.
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            code = _usage_error(exc, as_json="--json" in argv)
        except click.Abort:
            click.echo("edgec: interrupted", err=True)
            code = 130
        # The commands return None; an int is the code of an explicit ctx.exit().
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgecError as exc:
            if ctx.meta.get("edgec.debug"):
                raise
            click.echo(f"edgec: error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("edgec: interrupted", err=True)
            ctx.exit(130)


def _usage_error(exc: click.ClickException, *, as_json: bool) -> int:
    """Print a click error as edgec's one line (and the JSON envelope); return its code."""
    from edgec.errors import ExitCode

    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and ctx is not None:
        click.echo(ctx.get_help())  # a bare `edgec` or `edgec device` asks for the help
        return 0
    # Click's own errors are all about the command line; its FileError says 1.
    code = max(int(exc.exit_code), int(ExitCode.USAGE))
    message = " ".join(exc.format_message().split()).rstrip(".")
    if ctx is not None:
        message += f"; see '{ctx.command_path} --help'"
    if as_json:
        emit_json({"ok": False, "error": message, "exit_code": code})
    click.echo(f"edgec: error: {message}", err=True)
    return code


def _imports_tensorflow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Import TensorFlow quietly when the command starts: after click has checked the
    options, so a usage error never waits for the import (or prints its chatter)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not click.get_current_context().meta.get("edgec.debug"):
            from edgec.quiet import import_tensorflow_quietly

            import_tensorflow_quietly()
        return fn(*args, **kwargs)

    return wrapper


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["edgec.debug"] = value
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgec")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show full tracebacks instead of one-line errors.",
)
def main() -> None:
    """edgec: compile trained models into verified, budgeted TFLite artifacts per target.

    \b
    Exit codes: 0 ok, 1 internal error, 2 usage (bad option, target, pass or key),
    3 bad input (model or data), 4 conversion, 5 budget exceeded, 6 device, 7 verification.
    """
    # TensorFlow's C++ start-up chatter is noise for a CLI user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def _json_errors(as_json: bool) -> Iterator[None]:
    """With --json, a failure also prints {"ok": false, "error", "exit_code"} on stdout.

    The error line still goes to stderr and the exit code is unchanged, so a CI
    step can both parse stdout and branch on the code.
    """
    try:
        yield
    except EdgecError as exc:
        if as_json:
            emit_json({"ok": False, "error": str(exc), "exit_code": int(exc.exit_code)})
        raise


# ---------------------------------------------------------------- targets
@main.group(invoke_without_command=True)
@click.pass_context
def targets(ctx: click.Context) -> None:
    """List the target profiles (or `targets show NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    from edgec.profiles import builtin_names, load_profile

    for name in builtin_names():
        p = load_profile(name)
        click.echo(f"{name:<10} {p.runtime:<7} {p.quantization:<8} {p.description}")


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON.")
def targets_show(name: str, as_json: bool) -> None:
    """Print one resolved profile (a built-in name or a .toml path)."""
    from edgec.profiles import load_profile

    profile = load_profile(name)
    if as_json:
        emit_json(profile.to_dict())
        return
    for key, value in profile.to_dict().items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if v is not None:
                    click.echo(f"{key}.{sub:<18} {v}")
        else:
            click.echo(f"{key:<25} {value}")


# ---------------------------------------------------------------- build, demo, inspect, eval
def _log(message: str) -> None:
    click.echo(message, err=True)


def _print_table(result: Any) -> None:
    click.echo(f"\n{'target':<20} {'file':<24} {'bytes':>12} {'accuracy':>9} {'drop':>8}  status")
    for row in result.table():
        acc = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        drop = "" if row["drop"] is None else f"{100 * row['drop']:+.2f}pt"
        status = "ok" if row["ok"] else "FAILED"
        click.echo(
            f"{row['target']:<20} {row['file']:<24} {row['bytes']:>12,} {acc:>9} {drop:>8}  {status}"
        )


def _finish_build(result: Any, as_json: bool) -> None:
    """Print the result (its JSON says "ok": false on a budget failure), then fail if it failed."""
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_table(result)
    if not result.ok:
        failed = ", ".join(f"{t.target} ({t.message})" for t in result.targets if not t.ok)
        from edgec.errors import BudgetError

        raise BudgetError(f"budget check failed for {failed}")


def _output_dir(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """An output folder must be one edgec can create or write into: checked before any work.

    Nothing is created here; the nearest existing ancestor must be a writable folder.
    """
    probe = value
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a file" if probe.is_file() else "not a folder (a device or special file)"
        where = "" if probe == value else f", and {value} would be inside it"
        raise click.BadParameter(f"{probe} is {kind}{where}; give a folder", ctx, param)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"folder {probe} is not writable; give another folder", ctx, param)
    return value


_OUT = click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_output_dir,
    default=Path("out"),
    show_default=True,
    help="Output folder.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def _executor_option(what: str) -> Any:
    return click.option(
        "--executor",
        type=click.Choice([k.value for k in ExecutorKind]),
        default="local",
        show_default=True,
        help=f"{what}: this process, or a Ray cluster (pip install 'edgec[distributed]').",
    )


_RAY_ADDRESS = click.option(
    "--ray-address",
    envvar="EDGEC_RAY_ADDRESS",
    metavar="ADDRESS",
    help="Ray cluster to join (HOST:PORT, ray://HOST:PORT or auto; default $EDGEC_RAY_ADDRESS); "
    "none: start a local cluster.",
)


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    help="Target profile name or .toml path; repeat for several. Default: rpi4.",
)
@click.option("--data", "-d", help="An .npz file, a folder of class subfolders, or 'demo'.")
@_OUT
@click.option(
    "--recipe",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML recipe of compression passes (default: the profile's).",
)
@click.option(
    "--pass",
    "overrides",
    multiple=True,
    metavar="ID:KEY=VALUE,...",
    help="Add or override a pass, e.g. prune:final_sparsity=0.8.",
)
@click.option(
    "--search",
    is_flag=True,
    help="Search compression strength for the smallest artifact within bounds.",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0.0),
    help="Search within this accuracy bound (absolute, 0.01 = 1 point); "
    "--search alone uses the profile's bound.",
)
@click.option(
    "--objective",
    type=click.Choice([o.value for o in Objective]),
    help="What the search optimizes instead of each profile's: bytes (on-device bytes, "
    "then TFLM arena), latency (host-measured, then bytes) or download (gzip bytes).",
)
@click.option(
    "--keep-failed",
    is_flag=True,
    help="Write the artifact even when a budget fails (exit stays nonzero).",
)
@click.option(
    "--calibration-size",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Representative samples drawn from the training data for int8 calibration.",
)
@click.option(
    "--quantization",
    type=click.Choice(scheme_names()),
    help="Use this quantization scheme instead of each target profile's (one build).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--epochs-scale",
    type=click.FloatRange(min=0.0, min_open=True),
    help="Scale every pass's fine-tuning epochs (default 1; 0.25: a quick first search). "
    "The manifest records it.",
)
@_executor_option("Where the search's candidates run")
@_RAY_ADDRESS
@click.option(
    "--firmware-elf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your linked firmware (.elf) around firmware/: judge microcontroller flash and RAM "
    "on its measured sections instead of the estimate.",
)
@click.option(
    "--trust-model",
    is_flag=True,
    help="Load a model that carries code (Lambda layers, custom objects), as Keras's "
    "safe_mode=False does; only for files you trust.",
)
@click.option(
    "--from-manifest",
    "replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rebuild the artifact a manifest.json records (its profile, recipe, seed, "
    "calibration); MODEL and --data must be the files it records.",
)
@_JSON
@_imports_tensorflow
def build(
    model: Path | None,
    targets: tuple[str, ...],
    data: str | None,
    out: Path,
    recipe: Path | None,
    overrides: tuple[str, ...],
    search: bool,
    max_accuracy_drop: float | None,
    objective: str | None,
    keep_failed: bool,
    calibration_size: int,
    quantization: str | None,
    seed: int,
    epochs_scale: float | None,
    executor: str,
    ray_address: str | None,
    firmware_elf: Path | None,
    trust_model: bool,
    replay: Path | None,
    as_json: bool,
) -> None:
    """Compile MODEL into a verified TFLite artifact per target (no MODEL: the demo)."""
    from edgec import build as build_mod
    from edgec.errors import UsageError

    if replay is not None and (
        model is None
        or targets
        or recipe
        or overrides
        or quantization
        or objective
        or epochs_scale is not None
    ):
        raise UsageError(
            "--from-manifest takes MODEL (and --data), and no --target, --recipe, --pass, "
            "--quantization, --objective or --epochs-scale: the manifest records those"
        )

    options = {
        "recipe": recipe,
        "overrides": overrides,
        "search": search,
        "max_accuracy_drop": max_accuracy_drop,
        "objective": None if objective is None else Objective(objective),
        "keep_failed": keep_failed,
        "calibration_size": calibration_size,
        "seed": seed,
        "epochs_scale": 1.0 if epochs_scale is None else epochs_scale,
        "executor": executor,
        "ray_address": ray_address,
        "quantization": None if quantization is None else Quantization(quantization),
        "firmware_elf": firmware_elf,
        "trust_model": trust_model,
        "replay": replay,
    }
    with _json_errors(as_json):
        if executor == ExecutorKind.RAY:
            from edgec.executor_ray import preflight

            preflight(ray_address)  # a missing extra or a dead address fails now, not later
        if model is None:
            result = build_mod.demo(
                out, targets=targets or ("rpi4", "cortex-m4"), log=_log, **options
            )
        else:
            request = build_mod.BuildRequest(
                model=model, targets=targets or ("rpi4",), data=data, out=out, **options
            )
            result = build_mod.build(request, log=_log)
    _finish_build(result, as_json)


@main.command()
@click.argument("batch_file", metavar="BATCH_FILE", type=click.Path(path_type=Path))
@_OUT
@_executor_option("Where the builds run, one (model, target) per job")
@_RAY_ADDRESS
@_JSON
@_imports_tensorflow
def batch(
    batch_file: Path, out: Path, executor: str, ray_address: str | None, as_json: bool
) -> None:
    """Build every model x target that BATCH_FILE (TOML, [[build]] tables) lists.

    Each (model, target) is one job, in this process or on a Ray cluster; the
    artifacts are written here, atomically. A build that fails is a row with its
    reason and the others are still written; the exit code is then the first
    failed build's.
    """
    from edgec.batch import load_batch, run_batch
    from edgec.executor import open_executor

    with _json_errors(as_json):
        builds = load_batch(batch_file, out=out)  # every key, path and target, before any work
        if executor == ExecutorKind.RAY:
            from edgec.executor_ray import preflight

            preflight(ray_address)
        with open_executor(executor, ray_address) as ex:
            result = run_batch(builds, executor=ex, log=_log)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(f"\n{'model/target':<32} {'bytes':>10} {'accuracy':>9} {'drop':>8}  status")
        for row in result.rows:
            metrics = row.artifacts[0]["metrics"] if row.artifacts else {}
            size = f"{row.artifacts[0]['bytes']:,}" if row.artifacts else ""
            acc, drop = metrics.get("accuracy"), metrics.get("accuracy_drop")
            status = "ok" if row.ok else f"FAILED: {row.message}"
            click.echo(
                f"{row.label:<32} {size:>10} "
                f"{'' if acc is None else f'{100 * acc:.2f}%':>9} "
                f"{'' if drop is None else f'{100 * drop:+.2f}pt':>8}  {status}"
            )
        if result.ok:
            click.echo(result.summary(), err=True)
    result.check()  # the summary, as the error line, when a build failed


@main.command()
@_OUT
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@_JSON
@_imports_tensorflow
def demo(out: Path, epochs: int, as_json: bool) -> None:
    """Train a small CNN on offline handwritten digits and build it for rpi4 and cortex-m4."""
    from edgec import build as build_mod

    with _json_errors(as_json):
        result = build_mod.demo(out, epochs=epochs, log=_log)
    _finish_build(result, as_json)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--target", "-t", help="Also run it in TFLM and check this microcontroller profile's budgets."
)
@click.option(
    "--firmware-elf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --target: measure flash and static RAM from this linked firmware (.elf).",
)
@_JSON
def inspect(model: Path, target: str | None, firmware_elf: Path | None, as_json: bool) -> None:
    """Ops, tensors, parameters, size, MACs and I/O quantization of a .tflite."""
    from edgec.inspect import inspect_tflite

    with _json_errors(as_json):
        report = inspect_tflite(model, target, firmware_elf=firmware_elf)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(report.format_text())
    if report.fit is not None:
        report.fit.raise_for_failures()  # after the report, so the numbers are on screen


@main.command("eval")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "-d", required=True, help="An .npz file, an image folder, or 'demo'.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@_JSON
@_imports_tensorflow
def eval_(model: Path, data: str, threads: int, as_json: bool) -> None:
    """Accuracy and host latency of a .tflite on labeled data."""
    from edgec.inspect import evaluate_tflite

    with _json_errors(as_json):
        metrics = evaluate_tflite(model, data, threads=threads)
    if as_json:
        emit_json(metrics)
    else:
        for key, value in metrics.items():
            click.echo(f"{key:<18} {value}")


# ---------------------------------------------------------------- deploy, bench, devices
def _device_options(fn: Any) -> Any:
    """--devices, --accept-new-host-key and --connect-timeout, shared by the device commands."""
    fn = click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="Seconds to wait for the SSH connection.",
    )(fn)
    fn = click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Accept and record an UNKNOWN host key in known_hosts "
        "(a changed key is always refused).",
    )(fn)
    fn = click.option(
        "--devices",
        "devices_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Devices TOML file (default $EDGEC_DEVICES, then ~/.config/edgec/devices.toml).",
    )(fn)
    return fn


def _connect_options(accept_new_host_key: bool, connect_timeout: float) -> Any:
    from edgec.deploy.transport import ConnectOptions

    return ConnectOptions(accept_new_host_key=accept_new_host_key, connect_timeout=connect_timeout)


_DEVICE_HELP = (
    "'local', 'emulated:BOARD' (see `edgec device emulate`), a name from the devices file, "
    "or [user@]host[:port] (~/.ssh/config aliases work)."
)


@main.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--device", "-D", default="local", show_default=True, help=_DEVICE_HELP)
@_device_options
@click.option(
    "--allowed-signers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Refuse unsigned or tampered artifacts (default $EDGEC_ALLOWED_SIGNERS).",
)
@_JSON
def deploy(
    artifact: Path,
    device: str,
    devices_file: Path | None,
    accept_new_host_key: bool,
    connect_timeout: float,
    allowed_signers: Path | None,
    as_json: bool,
) -> None:
    """Publish an artifact (folder or .tflite) and the harness on a device over SSH.

    Uploads under a temporary name, verifies the sha256 on the device and renames
    into <workdir>/models/<model>/<sha256[:12]>/; the same bytes are never sent twice.
    """
    from edgec.deploy.publish import deploy as deploy_artifact

    with _json_errors(as_json):
        dep = deploy_artifact(
            artifact,
            device,
            devices_file=devices_file,
            log=_log,
            options=_connect_options(accept_new_host_key, connect_timeout),
            allowed_signers=allowed_signers,
        )
    if as_json:
        emit_json({"ok": True, **dep.to_dict()})
        return
    click.echo(
        f"{dep.device.name}: {dep.model.remote} (sha256 {dep.model.sha256[:12]}, "
        f"{'uploaded' if dep.model.uploaded else 'already deployed'})"
    )


@main.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--device", "-D", default=None, help=_DEVICE_HELP + " [default: local]")
@click.option("--group", "-g", default=None, help="Every device of this group in the devices file.")
@click.option(
    "--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Steady-state runs."
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Warm-up runs (discarded).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Interpreter threads [default: the target profile's].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds before a hung harness is killed.",
)
@click.option(
    "--min-secs",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Run at least this long, even past --runs.",
)
@click.option(
    "--max-secs",
    type=click.FloatRange(min=0),
    default=150.0,
    show_default=True,
    help="Stop after this long, even before --runs (0: no limit).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A .npy/.npz file of inputs instead of random ones.",
)
@click.option(
    "--target",
    "-t",
    default=None,
    help="Profile whose budgets apply [default: the artifact's manifest target].",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Devices benchmarked at once (--group).",
)
@click.option(
    "--check-outputs/--no-check-outputs",
    default=None,
    help="Compare the outputs of fixed seeded inputs with the host reference; exit 7 "
    "beyond the runtimes' tolerance [default: on for emulated devices].",
)
@click.option(
    "--check-count",
    type=click.IntRange(min=1),
    default=None,
    help="Inputs of the outputs check [default: the stored reference's, else 16].",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="Interpreter on the device; auto takes the first that loads and runs the model "
    "in a child process (one that crashes is skipped and named).",
)
@click.option(
    "--allow-arch-mismatch",
    is_flag=True,
    help="Benchmark on a device whose arch is not the profile's; results are labelled "
    "as mismatched and no latency or RAM budget is judged (default: refuse, exit 6).",
)
@_device_options
@click.option(
    "--allowed-signers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Refuse unsigned or tampered artifacts (default $EDGEC_ALLOWED_SIGNERS).",
)
@_JSON
def bench(
    artifact: Path,
    device: str | None,
    group: str | None,
    runs: int,
    warmup: int,
    threads: int | None,
    timeout: float,
    min_secs: float,
    max_secs: float,
    seed: int,
    inputs: Path | None,
    target: str | None,
    jobs: int,
    check_outputs: bool | None,
    check_count: int | None,
    runtime: str,
    allow_arch_mismatch: bool,
    devices_file: Path | None,
    accept_new_host_key: bool,
    connect_timeout: float,
    allowed_signers: Path | None,
    as_json: bool,
) -> None:
    """Run the on-device harness: latency and memory back into ARTIFACT/results/.

    Deploys if needed, streams progress, stores results/bench-<device>.json, updates
    the report, and exits 5 when the profile's latency or RAM budget is exceeded
    (6 when a device fails; with --group the other devices still run; 7 when the
    outputs check finds outputs beyond the tolerance). --device emulated:BOARD runs
    on a board prepared by `edgec device emulate`: outputs checked, latency not judged.
    """
    from edgec.deploy import fleet
    from edgec.deploy.options import BenchOptions

    options = BenchOptions(
        runs=runs,
        warmup=warmup,
        threads=threads,
        timeout=timeout,
        min_secs=min_secs,
        max_secs=max_secs,
        seed=seed,
        inputs=inputs,
        target=target,
        jobs=jobs,
        check_outputs=check_outputs,
        check_count=check_count,
        runtime=runtime,
        allow_arch_mismatch=allow_arch_mismatch,
        connect=_connect_options(accept_new_host_key, connect_timeout),
    )
    request = {
        "device": device,
        "group": group,
        "devices_file": devices_file,
        "options": options,
        "allowed_signers": allowed_signers,
        "log": _log,
    }
    if not as_json:
        fleet.bench(artifact, **request, out=click.echo)
        return
    with _json_errors(as_json):  # bad options, artifact, device or group
        outcomes = fleet.run_fleet(artifact, **request)
    error = fleet.verdict(outcomes)
    emit_json(fleet.fleet_json(outcomes, error))  # every device's result or failure
    if error is not None:
        raise error


@main.group()
def device() -> None:
    """Check or prepare a device: Python, numpy and a TFLite runtime."""


def _device_name(positional: str | None, option: str | None) -> str:
    """NAME or --device NAME (the same device either way); default local."""
    from edgec.errors import UsageError

    if positional and option and positional != option:
        raise UsageError(f"device given twice: {positional!r} and --device {option!r}; give one")
    return positional or option or "local"


_DEVICE_ARG = click.argument("name", required=False, metavar="[NAME]")
_DEVICE_OPT = click.option(
    "--device", "-D", "device_opt", default=None, help=_DEVICE_HELP + " [default: local]"
)


@device.command("check")
@_DEVICE_ARG
@_DEVICE_OPT
@click.option("--micro", is_flag=True, help="Require the TFLM runtime (tflite-micro) instead.")
@_device_options
@_JSON
def device_check(
    name: str | None,
    device_opt: str | None,
    micro: bool,
    devices_file: Path | None,
    accept_new_host_key: bool,
    connect_timeout: float,
    as_json: bool,
) -> None:
    """Say which Python, numpy and runtimes a device has; exit 6 when one is missing.

    Each runtime loads and runs a tiny model in a child process on the device,
    so "ok" means it runs; one that crashes is named with its signal.
    """
    from edgec.deploy.devices import resolve_device
    from edgec.deploy.provision import check_device

    with _json_errors(as_json):
        name = _device_name(name, device_opt)
        facts = check_device(
            name,
            devices_file=devices_file,
            need_micro=micro,
            options=_connect_options(accept_new_host_key, connect_timeout),
        )
    if as_json:
        emit_json(facts.to_dict(resolve_device(name, devices_file)))
        return
    p = facts.probe
    click.echo(
        f"{name}: ok: {facts.python} (Python {p.get('python')}, {p.get('machine')}, "
        f"{p.get('cpu_count')} CPUs), numpy {p.get('numpy')}, runtimes: {facts.runtimes_text()}"
    )


@device.command("setup")
@_DEVICE_ARG
@_DEVICE_OPT
@click.option(
    "--wheels",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Install from these local .whl files only (offline devices).",
)
@click.option(
    "--package",
    "packages",
    multiple=True,
    help="Packages to install [default: numpy ai-edge-litert]; repeat the option.",
)
@click.option(
    "--system-site-packages", is_flag=True, help="Let the venv see the device's system packages."
)
@click.option(
    "--python",
    "python",
    default=None,
    help="The device's interpreter that creates the venv [default: python3].",
)
@_device_options
@_JSON
def device_setup(
    name: str | None,
    device_opt: str | None,
    wheels: Path | None,
    packages: tuple[str, ...],
    system_site_packages: bool,
    python: str | None,
    devices_file: Path | None,
    accept_new_host_key: bool,
    connect_timeout: float,
    as_json: bool,
) -> None:
    """Create <workdir>/venv on a device and pip-install numpy and ai-edge-litert into it.

    `edgec bench` then uses that venv's python automatically (unless the devices
    file sets the device's python, which setup then says).
    """
    from edgec.deploy.devices import resolve_device
    from edgec.deploy.provision import SETUP_PACKAGES, setup_device

    with _json_errors(as_json):
        name = _device_name(name, device_opt)
        facts = setup_device(
            name,
            devices_file=devices_file,
            wheels=wheels,
            packages=packages or SETUP_PACKAGES,
            system_site_packages=system_site_packages,
            python=python,
            log=_log,
            options=_connect_options(accept_new_host_key, connect_timeout),
        )
    if as_json:
        emit_json(facts.to_dict(resolve_device(name, devices_file)))
        return
    click.echo(f"{name}: ready: {facts.python}")
    for note in facts.notes:
        click.echo(f"{name}: note: {note}")


@device.command("emulate")
@click.argument("board")
@click.option(
    "--wheels",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Install numpy and ai-edge-litert from these aarch64 .whl files only (offline).",
)
@click.option(
    "--mirror",
    default=None,
    help="Debian mirror URL for debootstrap [default: the one this machine's apt uses].",
)
@click.option("--rebuild", is_flag=True, help="Build the root file system again.")
@_JSON
def device_emulate(
    board: str, wheels: Path | None, mirror: str | None, rebuild: bool, as_json: bool
) -> None:
    """Prepare BOARD (rpi4, rpi5, phone), emulated: a Debian arm64 root file system
    run under qemu-user.

    Once (about a minute, needs root and the Debian mirror; cached under
    $XDG_CACHE_HOME/edgec/emulate), then `edgec bench ARTIFACT --device emulated:BOARD`
    runs the harness under qemu-aarch64-static (-cpu cortex-a72 for rpi4,
    cortex-a76 for rpi5 and phone), outputs checked, latency labelled as emulated.
    """
    from edgec.deploy.emulate import prepare

    ready = prepare(board, wheels=wheels, mirror=mirror, rebuild=rebuild, log=_log)
    if as_json:
        emit_json(ready.to_dict())
        return
    pk = ready.rootfs.get("packages", {})
    state = f"prepared in {ready.seconds:.0f} s" if ready.built else "already prepared"
    click.echo(
        f"emulated:{ready.board.name}: {state}: Debian {ready.rootfs.get('suite')} arm64, Python "
        f"{ready.rootfs.get('python')}, numpy {pk.get('numpy')}, ai-edge-litert "
        f"{pk.get('ai-edge-litert')} under qemu-aarch64-static -cpu {ready.board.cpu} "
        f"({ready.folder})"
    )


@main.command("devices")
@click.option(
    "--devices",
    "devices_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Devices TOML file (default $EDGEC_DEVICES, then ~/.config/edgec/devices.toml).",
)
def devices_(devices_file: Path | None) -> None:
    """List the devices file: name, address, profile and groups."""
    from edgec.deploy.devices import list_devices

    for line in list_devices(devices_file):
        click.echo(line)


# ---------------------------------------------------------- release, verify, report, completion
_SIGNERS_HELP = (
    "OpenSSH allowed_signers file of trusted release keys; when given (or set in "
    "$EDGEC_ALLOWED_SIGNERS) a valid signature is required."
)


@main.command()
@click.argument("build_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--version",
    "version_",
    metavar="V",
    help="Release version [default: model.version in the manifest, else 0.0.0+<sha>].",
)
@click.option("--name", metavar="N", help="Bundle name [default: the model's name].")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_output_dir,
    default=Path("dist"),
    show_default=True,
    help="Where the bundle and SHA256SUMS go.",
)
@click.option("--allow-failed", is_flag=True, help="Package targets whose budget checks failed.")
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sign SHA256SUMS with this OpenSSH private key (ssh-keygen -Y sign).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def release(
    build_dir: Path,
    version_: str | None,
    name: str | None,
    out: Path,
    allow_failed: bool,
    sign_key: Path | None,
    as_json: bool,
) -> None:
    """Bundle a build (OUT/<model>: every target) as dist/<name>-<version>.tar.gz.

    The bundle holds the artifacts, manifests, bench results, reports, a model
    card and SHA256SUMS, and is byte-reproducible (set SOURCE_DATE_EPOCH to fix
    the timestamps, 0 otherwise). Refuses failed budgets unless --allow-failed.
    """
    from edgec.release import release as make_release

    with _json_errors(as_json):
        result = make_release(
            build_dir,
            version=version_,
            name=name,
            out=out,
            allow_failed=allow_failed,
            sign_key=sign_key,
        )
    if as_json:
        emit_json({"ok": True, **result.to_dict()})
        return
    click.echo(
        f"{result.bundle}: {len(result.targets)} target(s) ({', '.join(result.targets)}), "
        f"{result.files} files, {result.bytes:,} bytes" + (", signed" if result.signed else "")
    )
    click.echo(f"sha256 {result.sha256}  (also in {result.sums})")
    if result.failed_budgets:
        click.echo(
            f"warning: released with failed budgets: {', '.join(result.failed_budgets)}", err=True
        )


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--allowed-signers", type=click.Path(dir_okay=False, path_type=Path), help=_SIGNERS_HELP
)
@click.option("--no-load", is_flag=True, help="Skip loading each model in the runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle: Path, allowed_signers: Path | None, no_load: bool, as_json: bool) -> None:
    """Check a release bundle: checksums, signature, manifests, and that models load.

    Exit code 7 names the first file that was altered, added or removed.
    """
    from edgec.bundle_verify import verify_bundle
    from edgec.signing import resolve_allowed_signers

    with _json_errors(as_json):
        trusted = resolve_allowed_signers(allowed_signers)
        result = verify_bundle(bundle, trusted, probe=not no_load)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"{bundle}: OK ({result.name} {result.version}, {result.files} files)")
    for check in result.checks:
        click.echo(f"  ok  {check}")
    if not result.signed:
        click.echo("  --  unsigned")
    elif not result.trusted:
        click.echo("  --  signed, but no --allowed-signers given: the signer is not checked")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="OpenSSH private key (ssh-keygen -t ed25519 -f KEY).",
)
def sign(directory: Path, key: Path) -> None:
    """Sign an artifact folder in place (SHA256SUMS + SHA256SUMS.sig) for signed deploys."""
    from edgec.signing import sign_dir

    sums, sig = sign_dir(directory, key)
    click.echo(f"wrote {sums} and {sig}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the written files as JSON.")
def report(directory: Path, as_json: bool) -> None:
    """Re-render report.html and report.md from stored JSON (an artifact or build folder)."""
    from edgec.report import render_dir

    with _json_errors(as_json):
        written = render_dir(directory)
    if as_json:
        emit_json({"ok": True, "written": [str(p) for p in written]})
        return
    for path in written:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("shell", required=False, type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str | None) -> None:
    """Print the shell completion script (default: from $SHELL).

    \b
    bash:  eval "$(edgec completion bash)"      (add to ~/.bashrc)
    zsh:   eval "$(edgec completion zsh)"       (add to ~/.zshrc)
    fish:  edgec completion fish > ~/.config/fish/completions/edgec.fish
    """
    from click.shell_completion import get_completion_class

    shell = shell or Path(os.environ.get("SHELL", "bash")).name
    cls = get_completion_class(shell)
    if cls is None:
        raise click.UsageError(f"no completion for shell {shell!r}; use bash, zsh or fish")
    click.echo(cls(main, {}, "edgec", "_EDGEC_COMPLETE").source())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
