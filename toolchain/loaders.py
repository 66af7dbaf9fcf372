"""The front end for models: Keras 3 ``.keras``, legacy ``.h5``, SavedModel, float ``.tflite``.

Every format becomes one ``LoadedModel`` that says how it was loaded. Legacy
``.h5`` files saved by Keras 2 are loaded by Keras 3 directly when it can; when
it rejects their config, the known incompatibilities are repaired (and listed
in ``notes``), and as a last resort tf-keras loads the file when installed.
Passes run only on Keras 3 models; the other forms can still be converted.

No code runs from a model file unless the user trusts it (``trust=True``,
``--trust-model``): every loader first reads the file's config as JSON and
refuses Lambda layers, Python lambdas, custom objects and function references
(``find_code``) before Keras or tf-keras deserialise anything, and the loads
themselves run in Keras's safe mode.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.errors import InputError, UntrustedModelError
from edgec.files import sha256_bytes, sha256_path

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


def load_model(path: str | Path, *, trust: bool = False) -> LoadedModel:
    """Load ``path``; ``trust`` allows a model that carries code (see ``find_code``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model {path} does not exist; give {FORMATS}")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise InputError(f"model {path} is a folder without saved_model.pb; give {FORMATS}")
        return _savedmodel(path, trust)
    if not path.is_file():  # a device or FIFO would be read forever
        raise InputError(f"model {path} is not a regular file; give {FORMATS}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _keras(path, trust)
    if suffix in (".h5", ".hdf5"):
        return _h5(path, trust)
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


def load_keras_file(path: Path, *, trust: bool, what: str = "model") -> Any:
    """A Keras 3 ``.keras`` archive as a Keras model, its config checked for code first."""
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(
            f"{what} {path}: not a valid .keras archive (corrupt or truncated: {_first_line(exc)})"
        ) from exc
    refuse_code(config, f"{what} {path}", trust=trust)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:
        raise InputError(f"{what} {path}: Keras could not load it: {_first_line(exc)}") from exc


def _keras(path: Path, trust: bool) -> LoadedModel:
    import keras

    model = load_keras_file(path, trust=trust)
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


# ---------------------------------------------------------------- code in a model file
# Packages whose classes Keras resolves by name without importing anything else.
_KERAS_PACKAGES = frozenset({"keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp"})
# Keras 3 writes functions as {"class_name": "function", "module": ...}; these
# modules hold only tensor math, anything else (file utilities, say) is a gadget.
_FUNCTION_MODULES = frozenset(
    {"activations", "losses", "metrics", "ops", "initializers", "regularizers", "constraints"}
)
# tf-keras wraps TensorFlow calls on symbolic tensors as TFOpLambda layers that name
# the function ("nn.relu6", "math.multiply"); pure tensor namespaces are data, the
# rest of the API (io, py_function, print, ...) would act on the host.
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
_TF_OP_NAMESPACES = ("math.", "nn.", "__operators__.", "linalg.", "image.", "signal.", "bitwise.")
_TF_OP_NAMES = frozenset(
    {
        "reshape", "concat", "stack", "unstack", "transpose", "expand_dims", "squeeze", "cast",
        "identity", "clip_by_value", "split", "tile", "pad", "gather", "gather_nd", "where",
        "shape", "ones_like", "zeros_like", "fill", "broadcast_to", "slice", "strided_slice",
        "reverse", "one_hot", "argmax", "argmin", "einsum", "matmul", "range", "size", "rank",
        "stop_gradient", "convert_to_tensor", "boolean_mask", "reduce_sum", "reduce_mean",
        "reduce_max", "reduce_min", "reduce_prod", "maximum", "minimum", "abs", "square", "sqrt",
        "exp", "pow", "add", "subtract", "multiply", "divide", "sigmoid", "tanh",
    }
)  # fmt: skip
# Config keys that hold a layer (where a legacy file names its classes).
_LAYER_KEYS = ("layer", "forward_layer", "backward_layer", "cell")


def find_code(config: Any, *, legacy: bool = False) -> list[str]:
    """What in a Keras model config would run, or need, Python code: one phrase each.

    Lambda layers and serialised lambdas carry bytecode; a class or function
    from outside Keras is a custom object (code the file names but does not
    hold); a TFOpLambda outside TensorFlow's tensor namespaces calls the host.
    ``legacy`` (Keras 2 ``.h5`` configs, which name classes without modules)
    also flags layer classes neither Keras 3 nor tf-keras defines.
    """
    found: list[str] = []
    known = _legacy_layer_names() if legacy else None

    def visit(node: Any, is_layer: bool) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, False)
            return
        if not isinstance(node, dict):
            return
        cls = node.get("class_name")
        if isinstance(cls, str):
            raw = node.get("config")
            cfg: dict[str, Any] = raw if isinstance(raw, dict) else {}
            label = f"{cls} {cfg.get('name') or node.get('name') or ''}".strip()
            module = node.get("module")
            package = module.split(".")[0] if isinstance(module, str) and module else None
            if cls == "Lambda":
                found.append(f"Lambda layer {label.split(' ', 1)[-1]!r} (Python code)")
            elif cls == "__lambda__":
                found.append("a serialised Python lambda")
            elif cls in _TF_OP_LAYERS and not _pure_tf_op(cfg.get("function")):
                found.append(f"{cls} layer calling tf.{cfg.get('function')}")
            elif package is not None and package not in _KERAS_PACKAGES:
                found.append(f"custom object {cls!r} from module {module!r}")
            elif cls == "function" and not _keras_function(module):
                found.append(f"function {node.get('config')!r} from module {module!r}")
            elif is_layer and known is not None and cls not in known:
                found.append(f"custom layer {cls!r} (not a Keras or tf-keras layer)")
        for key, value in node.items():
            if key == "compile_config":  # loaded with compile=False: never deserialised
                continue
            if key == "layers" and isinstance(value, list):
                for item in value:
                    visit(item, True)
            else:
                visit(value, key in _LAYER_KEYS)

    visit(config, True)
    return list(dict.fromkeys(found))


def refuse_code(config: Any, where: str, *, trust: bool, legacy: bool = False) -> None:
    """Raise UntrustedModelError when ``config`` carries code and the file is not trusted."""
    if trust:
        return
    found = find_code(config, legacy=legacy)
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise UntrustedModelError(
            f"{where}: refused: the model carries code that loading would run or look up "
            f"({'; '.join(found[:3])}{more}); if you trust this file, pass --trust-model"
        )


@contextlib.contextmanager
def code_allowed(trust: bool) -> Iterator[None]:
    """While ``trust`` (``--trust-model``), Keras may rebuild layers that carry code.

    Loading a trusted file turns safe mode off for that load only; rebuilding its model
    (``clone_model`` in the passes, a search job loading a candidate) deserialises the
    same Lambda again and needs the same permission, for that work only: the scope that
    ``keras.saving.load_model(safe_mode=False)`` itself uses, never the process-wide switch.
    """
    if not trust:
        yield
        return
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(safe_mode=False):
        yield


def _pure_tf_op(function: Any) -> bool:
    if not isinstance(function, str):
        return False
    name = function.removeprefix("compat.v1.")
    return name.startswith(_TF_OP_NAMESPACES) or name in _TF_OP_NAMES


def _keras_function(module: Any) -> bool:
    if not isinstance(module, str):
        return False
    parts = module.split(".")
    if parts[0] != "keras":
        return False
    rest = parts[2:] if parts[1:2] == ["src"] else parts[1:]
    return bool(rest) and rest[0] in _FUNCTION_MODULES


def _legacy_layer_names() -> frozenset[str] | None:
    """Layer class names Keras 3 and tf-keras define; None without tf-keras (then unchecked)."""
    import keras

    try:
        import tf_keras
    except ImportError:
        return None
    names = {*dir(keras.layers), *dir(tf_keras.layers), *_TF_OP_LAYERS}
    return frozenset(names | {"Sequential", "Functional", "Model"})


def _savedmodel_keras_configs(path: Path) -> list[Any]:
    """The layer configs a tf-keras SavedModel records in ``keras_metadata.pb`` (else none)."""
    meta = path / "keras_metadata.pb"
    if not meta.is_file():
        return []
    try:
        return [json.loads(blob) for blob in _protobuf_strings(meta.read_bytes(), (1, 5))]
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise InputError(f"model {path}: keras_metadata.pb is corrupt ({exc})") from None


def _protobuf_strings(data: bytes, field_path: tuple[int, ...]) -> list[bytes]:
    """Length-delimited values at ``field_path`` of a protobuf message, by its wire format.

    ``keras_metadata.pb`` is ``SavedMetadata{repeated SavedObject nodes = 1}`` with
    each node's JSON in field 5; reading the wire format needs no tf-keras.
    """

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            if i >= len(buf) or shift > 63:
                raise ValueError("truncated varint")
            b = buf[i]
            result |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return result, i
            shift += 7

    def fields(buf: bytes) -> Iterator[tuple[int, bytes | None]]:
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, i = varint(buf, i)
                yield number, None
            elif wire == 2:
                n, i = varint(buf, i)
                if i + n > len(buf):
                    raise ValueError("truncated field")
                yield number, buf[i : i + n]
                i += n
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
                yield number, None
            else:
                raise ValueError(f"wire type {wire}")

    level = [data]
    for number in field_path:
        level = [v for buf in level for n, v in fields(buf) if n == number and v is not None]
    return level


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


def _h5(path: Path, trust: bool) -> LoadedModel:
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
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"model {path}: its model_config is not JSON ({_first_line(exc)})"
        ) from exc
    if not isinstance(config, dict):
        raise InputError(f"model {path}: its model_config is not a Keras model config")
    # Before any loader sees the file: the repaired copy and tf-keras read the same config.
    refuse_code(config, f"model {path}", trust=trust, legacy=True)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust)
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
                model = keras.models.load_model(copy, compile=False, safe_mode=not trust)
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
    return _tf_keras_fallback(path, digest, saved_by, last_error, trust)


def _tf_keras_fallback(
    path: Path, digest: str, saved_by: str, error: str, trust: bool
) -> LoadedModel:
    try:
        import tf_keras
    except ImportError:
        raise InputError(
            f"model {path}: Keras 3 cannot load this Keras {saved_by} file even after repair "
            f"({error}); install tf-keras (pip install 'edgec[legacy]') to load it with Keras 2"
        ) from None
    try:
        model = tf_keras.models.load_model(path, compile=False, safe_mode=not trust)
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


def _savedmodel(path: Path, trust: bool) -> LoadedModel:
    from edgec.convert import ConvertOptions, convert
    from edgec.modelinfo import read_model
    from edgec.profiles import Quantization

    # The graph is converted, never deserialised into Keras layers, so no Python
    # runs; a tf-keras SavedModel still records its layers' configs, Lambda code
    # included, and a model that carries code is refused the same way everywhere.
    for config in _savedmodel_keras_configs(path):
        refuse_code(config, f"model {path}", trust=trust)

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
        sha256=sha256_bytes(content),
        keras=None,
        convert_source=content,
        **io_shapes,
        notes=(
            ".tflite input: quantized with litert-quantizer; compression passes need a Keras 3 model",
        ),
    )
