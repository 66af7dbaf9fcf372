"""What every benchmark in this folder shares: the facts of the host it ran on, its JSON,
and the split of a generated data set.

Each script here is run as ``python benchmarks/suite/NAME.py`` (so this folder is
on ``sys.path``) and ends with ``write_result(out, payload)``. The payload's
``host`` block says what measured the figures: machine, CPU model and its vector
extensions, cores, Python and the numeric packages, the load average before and
after (these machines are shared, so a ratio measured side by side is the figure
to read, never an absolute time). A seeded run with deterministic kernels repeats
exactly only on the same CPU and versions: TensorFlow's kernels take the code path
the CPU offers, and another one rounds differently (the distill benchmark's chirps
teachers, trained on another machine, moved by 0.2-1.5 pt; in fresh processes on
one machine they repeat to the last digit).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def last_rows_held_out(x: Any, y: Any, rows: int, source: str) -> Any:
    """A generated set's last ``rows`` rows as the validation split (its rows are in random
    order already)."""
    from edgec.data import Dataset

    cut = len(x) - rows
    return Dataset(x_train=x[:cut], y_train=y[:cut], x_val=x[cut:], y_val=y[cut:], source=source)


def standardized_table(x: Any, y: Any, source: str) -> Any:
    """A table's seeded 25% validation split, standardized by the training rows' statistics."""
    import numpy as np

    from edgec.data import Dataset, split_train_val

    xt, yt, xv, yv = split_train_val(x.astype(np.float32), y.astype(np.int64), 0.25, 0)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    return Dataset(
        x_train=(xt - mean) / std,
        y_train=yt,
        x_val=(xv - mean) / std,
        y_val=yv,
        source=f"{source}, standardized",
    )


def shells_table() -> Any:
    """scikit-learn make_gaussian_quantiles: 6 nested shells in 12 dimensions, 6,000 rows."""
    from sklearn.datasets import make_gaussian_quantiles

    x, y = make_gaussian_quantiles(n_samples=6000, n_features=12, n_classes=6, random_state=5)
    return standardized_table(x, y, "scikit-learn make_gaussian_quantiles (12 features, 6 shells)")


def classification_table() -> Any:
    """scikit-learn make_classification: 24 features, 8 classes, 6,000 rows."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=6000,
        n_features=24,
        n_informative=16,
        n_redundant=4,
        n_classes=8,
        n_clusters_per_class=2,
        class_sep=1.2,
        flip_y=0.01,
        random_state=7,
    )
    return standardized_table(x, y, "scikit-learn make_classification (24 features, 8 classes)")


def mlperf_dir() -> Path:
    """``shared/models/mlperf-tiny`` beside the checkout or beside a folder above it (worktrees)."""
    for parent in REPO.parents:
        if (parent / "shared/models/mlperf-tiny").is_dir():
            return parent / "shared/models/mlperf-tiny"
    return REPO.parent / "shared/models/mlperf-tiny"


# Vector extensions that change which kernels TensorFlow, XNNPACK and numpy run.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")
PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "numpy", "scikit-learn")


def host_facts() -> dict[str, Any]:
    """The host the benchmark ran on; call it when the run starts, so the load is the start's."""
    from importlib.metadata import PackageNotFoundError, version

    cpu, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not cpu:
            cpu = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "where": "host",
        "machine": platform.machine(),
        "cpu": cpu or platform.processor(),
        "cpu_vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "packages": packages,
        "load_1min_at_start": round(os.getloadavg()[0], 2),
    }


def write_result(out: Path, payload: dict[str, Any], *, show: Any = None) -> None:
    """Write ``payload`` as JSON to ``out`` (adding the load at the end) and print ``show`` or it."""
    host = payload.setdefault("host", host_facts())
    host["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload if show is None else show, indent=2))
    print(f"wrote {out}")
