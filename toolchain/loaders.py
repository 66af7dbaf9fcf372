"""The front end for models: Keras 3 ``.keras``, legacy ``.h5``, SavedModel, float ``.tflite``.

Every format becomes one ``LoadedModel`` that says how it was loaded. Legacy
``.h5`` files saved by Keras 2 are loaded by Keras 3 directly when it can; when
it rejects their config, the known incompatibilities are repaired (and listed
in ``notes``), and as a last resort tf-keras loads the file when installed.
Passes run only on Keras 3 models; the other forms can still be converted.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.errors import InputError

FORMATS = ".keras, .h5, a SavedModel directory, or a float .tflite"


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    name: str
    path: Path
    format: str  # keras | h5 | savedmodel | tflite
    loader: str  # how it was loaded, said in the manifest and report
    sha256: str
    keras: Any | None  # a Keras 3 model that passes can rewrite, else None
    convert_source: Any  # what edgec.convert.convert takes
    input_shape: tuple[int | None, ...]  # without the batch dimension
    output_shape: tuple[int | None, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.path),
            "sha256": self.sha256,
            "format": self.format,
            "loader": self.loader,
            "notes": list(self.notes),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
        }


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's sorted relative paths and contents."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise InputError(f"model {path} does not exist; give {FORMATS}")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise InputError(f"model {path} is a folder without saved_model.pb; give {FORMATS}")
        return _savedmodel(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _keras(path)
    if suffix in (".h5", ".hdf5"):
        return _h5(path)
    if suffix == ".tflite":
        return _tflite(path)
    raise InputError(f"model {path}: unsupported format {suffix or '(none)'!r}; give {FORMATS}")


def from_keras(model: Any, name: str = "model", path: Path | None = None) -> LoadedModel:
    """Wrap an in-memory Keras 3 model (the demo, tests, and the passes' output)."""
    return _wrap_keras(
        model,
        name=name,
        path=path or Path(name),
        fmt="keras",
        loader=f"keras {_keras_version()} (in memory)",
        digest="",
        notes=(),
    )


def _keras_version() -> str:
    import keras

    return keras.__version__


def _single(shape: Any, what: str, path: Path) -> tuple[int | None, ...]:
    if isinstance(shape, list):
        if len(shape) != 1:
            raise InputError(f"model {path}: has {len(shape)} {what}s; edgec handles one {what}")
        shape = shape[0]
    return tuple(None if d is None else int(d) for d in shape[1:])


def _wrap_keras(
    model: Any, *, name: str, path: Path, fmt: str, loader: str, digest: str, notes: tuple[str, ...]
) -> LoadedModel:
    return LoadedModel(
        name=name,
        path=path,
        format=fmt,
        loader=loader,
        sha256=digest,
        keras=model,
        convert_source=model,
        input_shape=_single(model.input_shape, "input", path),
        output_shape=_single(model.output_shape, "output", path),
        notes=notes,
    )


def _keras(path: Path) -> LoadedModel:
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):
        raise InputError(f"model {path}: not a valid .keras archive (corrupt or truncated)")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise InputError(f"model {path}: Keras could not load it: {_first_line(exc)}") from exc
    return _wrap_keras(
        model,
        name=path.stem,
        path=path,
        fmt="keras",
        loader=f"keras {keras.__version__}",
        digest=sha256_path(path),
        notes=(),
    )


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}"


# Keyword arguments Keras 2 wrote into layer configs that Keras 3 layers reject.
_LEGACY_DROP = {
    "DepthwiseConv2D": ("groups",),
    "InputLayer": ("ragged",),
    "*": ("time_major",),
}
_UNRECOGNIZED = re.compile(r"Unrecognized keyword arguments[^\[{]*[\[{]([^\]}]*)[\]}]")


def _repair_config(config: dict[str, Any], extra_drops: dict[str, set[str]]) -> list[str]:
    """Fix Keras 2 layer configs in place; return what was changed, for the notes."""
    changes: set[str] = set()

    def visit(layer: dict[str, Any]) -> None:
        cls = layer.get("class_name", "")
        cfg = layer.get("config", {})
        if not isinstance(cfg, dict):
            return
        if cls == "InputLayer" and "batch_input_shape" in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")
            changes.add("InputLayer: batch_input_shape -> batch_shape")
        for key in (*_LEGACY_DROP.get(cls, ()), *_LEGACY_DROP["*"], *extra_drops.get(cls, ())):
            if key in cfg:
                cfg.pop(key)
                changes.add(f"{cls}: dropped {key!r}")
        for sub in cfg.get("layers", []) or []:
            if isinstance(sub, dict):
                visit(sub)
        inner = cfg.get("layer")
        if isinstance(inner, dict):
            visit(inner)

    visit(config)
    return sorted(changes)


def _h5(path: Path) -> LoadedModel:
    import h5py
    import keras

    digest = sha256_path(path)
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            saved_by = f.attrs.get("keras_version", "unknown")
    except OSError as exc:
        raise InputError(f"model {path}: not a readable HDF5 file (corrupt or truncated)") from exc
    if raw is None:
        raise InputError(
            f"model {path}: an .h5 with weights only (no model_config); save the whole model"
        )
    saved_by = saved_by.decode() if isinstance(saved_by, bytes) else str(saved_by)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
        return _wrap_keras(
            model,
            name=path.stem,
            path=path,
            fmt="h5",
            loader=f"keras {keras.__version__} (h5 saved by keras {saved_by})",
            digest=digest,
            notes=(),
        )
    except Exception as exc:  # Keras 3 rejected the legacy config: repair it
        first_error = _first_line(exc)
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    drops: dict[str, set[str]] = {}
    changes: list[str] = []
    last_error = first_error
    with tempfile.TemporaryDirectory(prefix="edgec-h5-") as tmp:
        # Keras's own legacy-h5 loader reads the weights; only the config is rewritten,
        # in a copy, so the user's file is never touched.
        copy = Path(tmp, path.name)
        shutil.copyfile(path, copy)
        for _ in range(8):
            changes = sorted(set(changes) | set(_repair_config(config, drops)))
            with h5py.File(copy, "r+") as f:
                f.attrs["model_config"] = json.dumps(config)
            try:
                model = keras.models.load_model(copy, compile=False, safe_mode=True)
            except Exception as exc:
                last_error = _first_line(exc)
                match = _UNRECOGNIZED.search(str(exc))
                layer = re.search(r"(?:deserializing class|passed to) '?(\w+)", str(exc))
                if not match:
                    break
                keys = {
                    k.strip(" '\"").split(":")[0].strip(" '\"") for k in match.group(1).split(",")
                }
                drops.setdefault(layer.group(1) if layer else "*", set()).update(
                    k for k in keys if k
                )
                continue
            notes = (
                f"keras {keras.__version__} rejected the Keras {saved_by} config "
                f"({first_error[:120]}...); repaired: {'; '.join(changes)}",
            )
            return _wrap_keras(
                model,
                name=path.stem,
                path=path,
                fmt="h5",
                loader=f"keras {keras.__version__} (repaired legacy h5)",
                digest=digest,
                notes=notes,
            )
    return _tf_keras_fallback(path, digest, saved_by, last_error)


def _tf_keras_fallback(path: Path, digest: str, saved_by: str, error: str) -> LoadedModel:
    try:
        import tf_keras
    except ImportError:
        raise InputError(
            f"model {path}: Keras 3 cannot load this Keras {saved_by} file even after repair "
            f"({error}); install tf-keras (pip install 'edgec[legacy]') to load it with Keras 2"
        ) from None
    try:
        model = tf_keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise InputError(
            f"model {path}: neither Keras 3 nor tf-keras can load it ({_first_line(exc)})"
        ) from exc
    return LoadedModel(
        name=path.stem,
        path=path,
        format="h5",
        loader=f"tf-keras {tf_keras.__version__} (fallback)",
        sha256=digest,
        keras=None,
        convert_source=model,
        input_shape=_single(model.input_shape, "input", path),
        output_shape=_single(model.output_shape, "output", path),
        notes=(
            f"Keras 3 could not load it ({error}); loaded with tf-keras: compression passes "
            "need a Keras 3 model and are unavailable",
        ),
    )


def _tflite_io(info: Any, path: Path) -> dict[str, tuple[int | None, ...]]:
    """``input_shape`` and ``output_shape`` (batch dropped) of a one-input flatbuffer."""
    return {
        "input_shape": _single([list(t.shape) for t in info.input_tensors], "input", path),
        # The first output is the one evaluated; further outputs are carried as they are.
        "output_shape": _single([list(t.shape) for t in info.output_tensors[:1]], "output", path),
    }


def _savedmodel(path: Path) -> LoadedModel:
    from edgec.convert import ConvertOptions, convert
    from edgec.modelinfo import read_model
    from edgec.profiles import Quantization

    try:
        float_tflite = convert(str(path), ConvertOptions(quantization=Quantization.FLOAT32))
    except Exception as exc:
        raise InputError(
            f"model {path}: not a convertible SavedModel ({_first_line(exc)})"
        ) from exc
    info = read_model(float_tflite, str(path))
    return LoadedModel(
        name=path.name,
        path=path,
        format="savedmodel",
        loader="tf.lite from_saved_model",
        sha256=sha256_path(path),
        keras=None,
        convert_source=str(path),
        **_tflite_io(info, path),
        notes=("SavedModel: converted as a graph; compression passes need a Keras 3 model",),
    )


def _tflite(path: Path) -> LoadedModel:
    from edgec.modelinfo import read_model
    from edgec.runtime import probe_tflite

    content = path.read_bytes()
    info = read_model(content, f"model {path}")
    probe_tflite(content, f"model {path}")
    io_shapes = _tflite_io(info, path)
    if info.input_tensors[0].dtype != "float32":
        raise InputError(
            f"model {path}: already quantized ({info.input_tensors[0].dtype} input); give a float .tflite"
        )
    return LoadedModel(
        name=path.stem,
        path=path,
        format="tflite",
        loader="float .tflite (LiteRT quantizer)",
        sha256=hashlib.sha256(content).hexdigest(),
        keras=None,
        convert_source=content,
        **io_shapes,
        notes=(
            ".tflite input: quantized with litert-quantizer; compression passes need a Keras 3 model",
        ),
    )
