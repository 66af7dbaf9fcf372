"""The front end for data: ``.npz`` files, image folders, the demo set, or seeded noise.

Every source becomes one ``Dataset`` of float32 inputs and integer class labels,
checked on the way in (NaN, shapes, label ranges) so that a bad file fails here
with its name, not deep inside training or conversion.

``.npz`` keys: ``x_train``, ``y_train``, ``x_val``, ``y_val``; or ``x`` and ``y``,
split here into train and validation (``val_fraction``, seeded). Labels may be
class indices or one-hot rows. An image folder has one subfolder per class;
images are resized to the model's input and scaled to [0, 1]. With no data,
calibration uses seeded random inputs, and ``Dataset.synthetic`` says so.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import InputError

DEMO = "demo"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True, kw_only=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray | None
    source: str
    synthetic: bool = False  # seeded random inputs: no labels, no accuracy
    class_names: tuple[str, ...] = ()

    @property
    def labeled(self) -> bool:
        return self.y_val is not None

    @property
    def num_classes(self) -> int | None:
        if self.y_train is None and self.y_val is None:
            return None
        ys = [y for y in (self.y_train, self.y_val) if y is not None and y.size]
        return int(max(int(y.max()) for y in ys)) + 1 if ys else None

    def calibration(self, size: int = 300, seed: int = 0) -> np.ndarray:
        """A seeded sample of the training inputs, for full-int8 calibration."""
        n = len(self.x_train)
        if n <= size:
            return self.x_train
        idx = np.random.default_rng(seed).choice(n, size=size, replace=False)
        return self.x_train[np.sort(idx)]

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "train": len(self.x_train),
            "val": len(self.x_val),
            "input_shape": list(self.x_val.shape[1:]),
            "num_classes": self.num_classes,
        }


def load_dataset(
    spec: str | Path | None,
    input_shape: tuple[int, ...],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    synthetic_size: int = 256,
) -> Dataset:
    """Load ``spec`` (a path, ``"demo"`` or ``None``) for a model taking ``input_shape``.

    ``input_shape`` excludes the batch dimension; ``None`` entries are free.
    """
    if spec is None:
        return synthetic_dataset(input_shape, size=synthetic_size, seed=seed)
    if str(spec) == DEMO:
        ds = demo_dataset(seed=seed)
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(
                f"data {path} does not exist; give an .npz file, an image folder or 'demo'"
            )
        if path.is_dir():
            ds = _image_folder(path, input_shape, val_fraction, seed)
        elif path.suffix == ".npz":
            ds = _npz(path, val_fraction, seed)
        else:
            raise InputError(
                f"data {path}: unsupported format {path.suffix or '(none)'!r}; "
                "valid: .npz, a folder of class subfolders, or 'demo'"
            )
    _check(ds, input_shape)
    return ds


def synthetic_dataset(input_shape: tuple[int, ...], *, size: int = 256, seed: int = 0) -> Dataset:
    shape = tuple(1 if d is None else int(d) for d in input_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, *shape)).astype(np.float32)
    half = size // 2
    return Dataset(
        x_train=x[:half],
        y_train=None,
        x_val=x[half:],
        y_val=None,
        source=f"seeded random normal inputs (seed {seed}): no data given",
        synthetic=True,
    )


def demo_dataset(seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shipped offline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    x_train, y_train, x_val, y_val = split_train_val(x, y, 0.25, seed)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        source="demo: scikit-learn handwritten digits (8x8, 10 classes)",
        class_names=tuple(str(i) for i in range(10)),
    )


def split_train_val(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded shuffle split into (x_train, y_train, x_val, y_val)."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction {val_fraction} must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise InputError(f"{where}: labels must be class indices (numbers), got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot rows
        y = y.argmax(axis=1)
    y = y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise InputError(
            f"{where}: labels must be class indices or one-hot rows, got shape {y.shape}"
        )
    whole = np.all(np.isfinite(y)) and np.all(np.equal(np.mod(y, 1), 0))
    if not np.issubdtype(y.dtype, np.integer) and not whole:
        raise InputError(f"{where}: labels must be whole class indices >= 0")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(
            f"{where}: label {int(y.min())} is negative; labels are class indices >= 0"
        )
    return y


def _npz(path: Path, val_fraction: float, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"data {path}: not a readable .npz file ({exc})") from exc
    except AttributeError:  # np.load of a plain .npy renamed .npz returns an array
        raise InputError(f"data {path}: not a readable .npz file (one array, no keys)") from None
    keys = set(arrays)
    if {"x_train", "y_train", "x_val", "y_val"} <= keys:
        pairs = {name: (arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in ("train", "val")}
    elif {"x", "y"} <= keys:
        pairs = {"": (arrays["x"], arrays["y"])}
    else:
        raise InputError(
            f"data {path}: keys {sorted(keys)}; expected x_train, y_train, x_val, y_val "
            "(or x and y, split here)"
        )
    # Checked before the split: a split of mismatched arrays indexes out of range.
    for name, (x, y) in pairs.items():
        _check_pair(path, name, x, y)
    if "" in pairs:
        if len(pairs[""][0]) < 2:
            raise InputError(f"data {path}: x has {len(pairs[''][0])} row; need 2 to split")
        x_train, y_train, x_val, y_val = split_train_val(*pairs[""], val_fraction, seed)
    else:
        (x_train, y_train), (x_val, y_val) = pairs["train"], pairs["val"]
    return Dataset(
        x_train=np.asarray(x_train, dtype=np.float32),
        y_train=_labels(y_train, f"data {path} y_train"),
        x_val=np.asarray(x_val, dtype=np.float32),
        y_val=_labels(y_val, f"data {path} y_val"),
        source=str(path),
    )


def _check_pair(path: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    """Rows of ``x`` and ``y`` (keys ``x_<name>``, ``y_<name>``) pair up and are numbers."""
    xs, ys = f"x_{name}".rstrip("_"), f"y_{name}".rstrip("_")
    for key, a in ((xs, x), (ys, y)):
        if a.ndim == 0:
            raise InputError(f"data {path}: {key} is a scalar; give one row per sample")
    if len(x) != len(y):
        raise InputError(f"data {path}: {xs} has {len(x)} rows but {ys} has {len(y)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"data {path}: {xs} must be real numbers, got dtype {x.dtype}")


def _image_folder(
    path: Path, input_shape: tuple[int, ...], val_fraction: float, seed: int
) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"data {path}: an image folder needs one subfolder per class; found none")
    if len(input_shape) != 3 or input_shape[0] is None or input_shape[1] is None:
        raise InputError(
            f"data {path}: image folders need a model input of shape (height, width, channels), "
            f"got {tuple(input_shape)}"
        )
    h, w, c = int(input_shape[0]), int(input_shape[1]), int(input_shape[2] or 3)
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise InputError(f"data {path}: image models need 1 or 3 input channels, got {c}")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    arr = np.asarray(img.convert(mode).resize((w, h)), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"data {file}: not a readable image ({exc})") from exc
            xs.append(arr.reshape(h, w, c))
            ys.append(label)
    if len(xs) < 2:
        raise InputError(f"data {path}: found {len(xs)} images; need at least 2 across {classes}")
    x_train, y_train, x_val, y_val = split_train_val(
        np.stack(xs), np.asarray(ys, np.int64), val_fraction, seed
    )
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        source=str(path),
        class_names=tuple(classes),
    )


def _check(ds: Dataset, input_shape: tuple[int, ...]) -> None:
    for name, x in (("x_train", ds.x_train), ("x_val", ds.x_val)):
        if len(x) == 0:
            raise InputError(f"data {ds.source}: {name} is empty")
        if not np.all(np.isfinite(x)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise InputError(
                f"data {ds.source}: {name} contains NaN or infinity (first at index {bad})"
            )
        got = tuple(x.shape[1:])
        if len(got) != len(input_shape) or any(
            e is not None and int(e) != g for e, g in zip(input_shape, got, strict=False)
        ):
            want = tuple(input_shape)
            raise InputError(
                f"data {ds.source}: {name} has sample shape {got}; the model takes {want}"
            )
