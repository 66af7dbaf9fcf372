"""Keeping TensorFlow's and LiteRT's log lines off a person's terminal.

TensorFlow, the MLIR converter and LiteRT print straight to file descriptors 1
and 2 from C++ (CUDA probes, "Created TensorFlow Lite XNNPACK delegate", MLIR
dumps), where Python's redirection cannot reach. ``quiet_fds`` points both
descriptors at a temporary file for the duration of a block.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _libc_fflush()  # C stdio buffers would otherwise spill onto the restored fds
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _libc_fflush() -> None:
    with contextlib.suppress(OSError, AttributeError):  # no libc: nothing buffered to lose
        ctypes.CDLL(None).fflush(None)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras once with their start-up chatter hidden, and quiet
    TensorFlow's Python logger (whoever imported it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with quiet_fds():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401

    # Its Python logger's warnings are for TensorFlow programmers ("5 out of the last 155
    # calls ... triggered tf.function retracing", from evaluating each candidate), not users;
    # set also when something else imported TensorFlow first (a worker unpickling a job).
    sys.modules["tensorflow"].get_logger().setLevel("ERROR")
