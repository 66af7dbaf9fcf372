"""The ``edgec`` command line: click commands only, each calling one library function.

Errors: an ``EdgecError`` prints one line ("edgec: error: ...") and exits with
its code (see ``edgec.errors``); ``--debug`` shows the traceback instead.
Heavy libraries are imported inside the commands, so ``edgec --help`` and
``edgec targets`` start without TensorFlow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgec import __version__
from edgec.errors import EdgecError, ExitCode


class _Group(click.Group):
    """Turns EdgecError into one line and its exit code, unless --debug."""

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


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["edgec.debug"] = value
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgec")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show full tracebacks instead of one-line errors.")
def main() -> None:
    """edgec: compile trained models into verified, budgeted TFLite artifacts per target.

    \b
    Exit codes: 0 ok, 1 internal error, 2 usage (bad option, target, pass or key),
    3 bad input (model or data), 4 conversion, 5 budget exceeded, 6 device, 7 verification.
    """


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
