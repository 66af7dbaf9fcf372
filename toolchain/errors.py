"""The error hierarchy and exit codes that edgec shows to people.

Every failure a user can cause or meet is an ``EdgecError`` subclass. Each one
carries its process exit code, and its message is one line: what was wrong,
where (file, key, value) and what would be valid. The CLI prints that line and
exits with the code; the traceback is shown only with ``--debug``.

Exit codes (also in the README):

====  ==========================================================
0     success
1     internal error (a bug in edgec: please report it)
2     usage error: bad option, unknown target, pass or key
3     bad input: a missing, corrupt or mismatched model or data file
4     conversion failed, or an artifact is not what its profile asks
5     a budget (size, RAM, latency, accuracy) was exceeded
6     a device could not be reached or used (SSH, runtime, harness)
7     verification failed: a checksum, signature or manifest mismatch, or device
      outputs beyond the tolerance (bench --check-outputs)
====  ==========================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    INPUT = 3
    CONVERSION = 4
    BUDGET = 5
    DEVICE = 6
    VERIFY = 7


class EdgecError(Exception):
    """Root of every error edgec reports to a person."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message is a bug in the raiser.
        super().__init__(" ".join(str(message).split()))


class UsageError(EdgecError):
    """An option, target, pass id or key that does not exist."""

    exit_code = ExitCode.USAGE


class ProfileError(UsageError):
    """A target profile file that is missing, malformed or off-schema."""


class RecipeError(UsageError):
    """A recipe or ``--pass`` override that names an unknown pass or parameter."""


class InputError(EdgecError):
    """A model or data file that is missing, corrupt or does not fit."""

    exit_code = ExitCode.INPUT


class UnsupportedModelError(InputError):
    """A model a pass or the converter cannot handle faithfully (names the layer)."""


class UntrustedModelError(InputError):
    """A model file that carries code (a Lambda, a custom object) and was not trusted.

    Loading it would run or look up Python named by the file; ``--trust-model``
    allows it, as Keras's ``safe_mode=False`` does.
    """


class ConversionError(EdgecError):
    """The converter failed, or produced an artifact its profile forbids."""

    exit_code = ExitCode.CONVERSION


class BudgetError(EdgecError):
    """A profile budget (bytes, RAM, latency, accuracy drop) was exceeded."""

    exit_code = ExitCode.BUDGET


class DeviceError(EdgecError):
    """A device could not be reached, authenticated, or used."""

    exit_code = ExitCode.DEVICE


class ClusterError(DeviceError):
    """A compute cluster (Ray) for the search could not be reached or joined."""


class VerifyError(EdgecError):
    """A bundle or artifact failed a checksum, signature or manifest check."""

    exit_code = ExitCode.VERIFY
