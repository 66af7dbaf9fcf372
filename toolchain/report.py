"""Reports people read: ``report.html`` (self-contained, charts as PNG data URIs) and ``report.md``.

This module owns turning stored JSON into reports; it never measures anything.
An artifact folder's report is rendered from its ``manifest.json`` and its
``results/*.json`` (benchmark runs); a build folder's report (``OUT/<model>/``)
summarises every target folder under it. Both can be re-rendered at any time
(``edgec report DIR``) because everything they show is in the stored JSON.

Rendering is defensive: a key that is missing is left out, a results file that
cannot be read becomes a line in the report saying so, and only a missing or
corrupt ``manifest.json`` is an error. Output is deterministic (sorted inputs,
no timestamps, PNG metadata stripped) so that a release that includes reports
stays byte-reproducible.

Charts (matplotlib, Agg canvas, imported lazily):

- size per target and stage: float32 -> compressed (after the passes; the float32 size of the
  compressed model, estimated by ``estimated_bytes``) -> each artifact -> its gzip;
- accuracy against size: the search's candidates, the chosen one, the baseline and artifacts;
- Pareto fronts of the search: every candidate's on-device size and host latency against
  accuracy, the front of candidates nothing beats, the chosen one and the objective;
- latency distribution per device (raw samples as box plots, else the percentiles);
- memory per device.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeGuard

from edgec.errors import InputError
from edgec.files import write_atomic
from edgec.manifest import MANIFEST, Manifest, read_manifest
from edgec.results import BenchResult
from edgec.schemes import stage_order

RESULTS_DIR = "results"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"


# ------------------------------------------------------------------ loading
@dataclass(frozen=True, kw_only=True)
class BenchRun:
    """One ``results/*.json`` file, read by ``results.BenchResult`` (the one reader).

    ``error`` is set (and ``result`` None) when the file cannot be read or is not
    a bench result; the report then says so in a line instead of failing.
    """

    file: str
    result: BenchResult | None = None
    error: str = ""

    @classmethod
    def read(cls, path: Path, file: str) -> BenchRun:
        try:
            return cls(
                file=file, result=BenchResult.from_dict(read_json(path, "bench result"), str(path))
            )
        except InputError as exc:
            return cls(file=file, error=str(exc))

    @property
    def data(self) -> dict[str, Any]:
        """The stored document (empty when unreadable), for tables that show raw fields."""
        return self.result.to_dict() if self.result is not None else {}

    @property
    def device(self) -> str:
        return self.result.device if self.result is not None else Path(self.file).stem

    @property
    def latency(self) -> dict[str, Any]:
        """Steady-state latency with plain keys (count, mean, p50, ..., samples), all in ms."""
        if self.result is None:
            return {}
        return {k.removesuffix("_ms"): v for k, v in self.result.steady.to_dict().items()}

    @property
    def samples(self) -> list[float]:
        return list(self.result.steady.samples_ms) if self.result is not None else []

    @property
    def memory(self) -> dict[str, float]:
        """Numeric memory facts in bytes, keys without a ``_bytes`` suffix (peak_rss, ...)."""
        if self.result is None:
            return {}
        mem = self.result.memory.to_dict()
        return {k.removesuffix("_bytes"): float(v) for k, v in mem.items() if _is_number(v)}

    @property
    def peak_memory(self) -> float | None:
        m = self.result.memory if self.result is not None else None
        if m is None:
            return None
        peak = m.peak_rss_bytes if m.peak_rss_bytes is not None else m.rss_after_load_bytes
        return float(peak) if peak is not None else None

    @property
    def threads(self) -> Any:
        return self.result.threads if self.result is not None else None

    @property
    def runtime(self) -> str:
        if self.result is None:
            return "–"
        return f"{self.result.runtime} {self.result.runtime_version}".strip()

    @property
    def measured_on(self) -> str:
        """What measured these figures, on one line (arch, CPU, cores, kernel, emulation)."""
        return self.result.measured.label if self.result is not None else "–"


@dataclass(frozen=True, kw_only=True)
class ArtifactData:
    """What a report shows for one target folder."""

    path: Path
    typed: Manifest  # checked by edgec.manifest when it was read
    runs: tuple[BenchRun, ...] = field(default_factory=tuple)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The manifest as its JSON object (the tables below read sections from it)."""
        return self.typed.to_dict()

    @property
    def target(self) -> str:
        return self.typed.target_name or self.path.name

    @property
    def model_name(self) -> str:
        return self.typed.model.name or self.path.parent.name

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.typed.artifacts]

    @property
    def baseline(self) -> dict[str, Any]:
        return self.typed.baseline.to_dict()


def read_json(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON object from ``path``, or ``InputError`` naming the file and the problem."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such {what}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: a {what} must hold a JSON object, found {type(data).__name__}")
    return data


def load_artifact(artifact_dir: str | Path) -> ArtifactData:
    """Read one target folder: its manifest (required) and its bench results (optional)."""
    path = Path(artifact_dir)
    manifest = read_manifest(path)
    runs = []
    for f in sorted((path / RESULTS_DIR).glob("*.json")):
        runs.append(BenchRun.read(f, f"{RESULTS_DIR}/{f.name}"))
    return ArtifactData(path=path, typed=manifest, runs=tuple(runs))


def target_dirs(build_dir: str | Path) -> list[Path]:
    """Target folders of a build (``OUT/<model>/<target>/``): subfolders holding a manifest."""
    root = Path(build_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected a build folder OUT/<model>)")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


# ------------------------------------------------------------------ writing
def render_reports(artifact_dir: str | Path) -> list[Path]:
    """Write ``report.html`` and ``report.md`` into one target folder; returns their paths."""
    data = load_artifact(artifact_dir)
    html_text, md_text = artifact_report(data)
    out = [data.path / REPORT_HTML, data.path / REPORT_MD]
    write_atomic(out[0], html_text.encode())
    write_atomic(out[1], md_text.encode())
    return out


def render_build_summary(build_dir: str | Path) -> list[Path]:
    """Write ``report.html`` and ``report.md`` into a build folder, over all its targets."""
    root = Path(build_dir)
    items = [load_artifact(d) for d in target_dirs(root)]
    if not items:
        raise InputError(f"{root}: no target folders with a {MANIFEST} inside")
    html_text, md_text = build_report(items, title=items[0].model_name)
    out = [root / REPORT_HTML, root / REPORT_MD]
    write_atomic(out[0], html_text.encode())
    write_atomic(out[1], md_text.encode())
    return out


def render_dir(path: str | Path) -> list[Path]:
    """``edgec report DIR``: a target folder, or a build folder (every target plus the summary)."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return render_reports(root)
    written: list[Path] = []
    dirs = target_dirs(root)
    if not dirs:
        raise InputError(
            f"{root}: neither an artifact folder (no {MANIFEST}) nor a build folder "
            f"(no <target>/{MANIFEST} inside)"
        )
    from edgec.progress import track

    for d in track(dirs, "rendering reports"):
        written += render_reports(d)
    written += render_build_summary(root)
    return written


# ------------------------------------------------------------------ numbers
def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_bytes(n: Any) -> str:
    if not _is_number(n):
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_num(v: Any, digits: int = 4) -> str:
    if _is_number(v):
        return str(v) if isinstance(v, int) else f"{v:.{digits}g}"
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def fmt_pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if _is_number(v) else "–"


def fmt_ms(v: Any) -> str:
    return f"{v:.4g} ms" if _is_number(v) else "–"


# What the size chart's estimated stage says it is: the measured fixed part plus 4 B per weight.
ESTIMATE_LABEL = "compressed (est.: float32 fixed part + 4 B/param)"


def estimated_bytes(
    float32_bytes: float, float32_params: float, params: float, bytes_per_param: float = 4.0
) -> float:
    """A flatbuffer's size with ``params`` weights of ``bytes_per_param`` bytes each, estimated.

    A float32 ``.tflite`` is its weights (4 B each) plus a fixed part (graph,
    tensor tables, names, signatures) that does not shrink with the weights:
    that part is measured as the float32 file's bytes minus 4 B per parameter of
    the model it came from, and kept. (Folded BatchNorm statistics, stored in no
    tensor, make it an underestimate; it never goes below zero.)
    """
    fixed = max(0.0, float32_bytes - 4.0 * float32_params)
    return fixed + bytes_per_param * params


def size_stages(item: ArtifactData) -> list[tuple[str, float]]:
    """(stage, bytes) from the float32 baseline through the passes to each artifact."""
    stages: list[tuple[str, float]] = []
    base = item.baseline.get("bytes")
    if _is_number(base):
        stages.append(("float32", float(base)))
    passes = [p for p in item.manifest.get("passes") or [] if isinstance(p, dict)]
    if _is_number(base) and any(p.get("changed") for p in passes):
        # The float32 file of the compressed model is never written: its size is estimated
        # from the parameter count.
        first, last = passes[0].get("params_before"), passes[-1].get("params_after")
        if _is_number(first) and _is_number(last) and 0 < last < first:
            stages.append((ESTIMATE_LABEL, estimated_bytes(float(base), first, last)))
    for a in item.artifacts:
        name = str(a.get("quantization") or a.get("file") or "artifact")
        if _is_number(a.get("bytes")):
            stages.append((name, float(a["bytes"])))
    for a in item.artifacts[:1]:
        # Pruning and clustering keep the tensor sizes; their gain is in the
        # compressed download, so the primary artifact's gzip size is a stage too.
        if _is_number(a.get("gzip_bytes")):
            name = str(a.get("quantization") or a.get("file") or "artifact")
            stages.append((f"{name} gzip", float(a["gzip_bytes"])))
    return stages


def _search(item: ArtifactData) -> tuple[list[dict[str, Any]], str | None]:
    s = item.manifest.get("search")
    if not isinstance(s, dict):
        return [], None
    cands = [c for c in s.get("candidates") or [] if isinstance(c, dict)]
    chosen = s.get("chosen")
    if isinstance(chosen, dict):
        chosen = chosen.get("label")
    if chosen is None:
        chosen = next((c.get("label") for c in cands if c.get("chosen")), None)
    return cands, (str(chosen) if chosen is not None else None)


# ------------------------------------------------------------------ charts
_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    # The Agg canvas directly: no pyplot global state, no backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout fits labels and outside legends in one draw (bbox "tight" needs two).
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No "Software" tag and no timestamps: the same data gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# Bars left to right as the compiler goes: float, after the passes, then smaller schemes.
_STAGE_ORDER = {"compressed": 1, **stage_order()}  # from the scheme table
# A stage "<scheme> gzip" sorts after every plain stage.
_GZIP_ORDER = max(_STAGE_ORDER.values()) + 1


def chart_sizes(items: list[ArtifactData]) -> bytes | None:
    groups = [(it.target, size_stages(it)) for it in items]
    groups = [(t, s) for t, s in groups if s]
    if not groups:
        return None
    seen: list[str] = []
    for _, stages in groups:
        for label, _ in stages:
            if label not in seen:
                seen.append(label)
    labels = sorted(
        seen,
        key=lambda lb: (
            _GZIP_ORDER if lb.endswith(" gzip") else _STAGE_ORDER.get(lb.split(" ")[0], 9),
            seen.index(lb),
        ),
    )
    fig = _figure(max(5.0, 1.6 + 1.4 * len(groups) * max(1, len(labels)) / 3), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs, ys = [], []
        for i, (_, stages) in enumerate(groups):
            value = dict(stages).get(label)
            if value is not None:
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(value / 1024)
        bars = ax.bar(xs, ys, width * 0.95, label=label, color=_COLORS[j % len(_COLORS)])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), [t for t, _ in groups])
    ax.set_ylabel("model size (KiB)")
    ax.set_title("Size per target and stage")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def chart_accuracy_size(items: list[ArtifactData]) -> bytes | None:
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    plotted = False
    # The search ranks candidates by gzip size (pruned and clustered weights compress,
    # they do not shrink the file), so the x axis is gzip size wherever it is known.
    key = (
        "gzip_bytes"
        if all(_is_number(c.get("gzip_bytes")) for it in items for c in _search(it)[0])
        and all(_is_number(it.baseline.get("gzip_bytes")) for it in items)
        else "bytes"
    )
    many = len(items) > 1
    for i, it in enumerate(items):
        color = _COLORS[i % len(_COLORS)]
        prefix = f"{it.target}: " if many else ""
        cands, chosen = _search(it)
        good = [c for c in cands if _is_number(c.get(key)) and _is_number(c.get("accuracy"))]
        ok = [c for c in good if c.get("ok", True)]
        bad = [c for c in good if not c.get("ok", True)]
        if ok:
            ax.scatter(
                [c[key] / 1024 for c in ok],
                [c["accuracy"] for c in ok],
                s=28,
                color=color,
                alpha=0.6,
                label=f"{prefix}candidates within the bound and budgets",
            )
            plotted = True
        if bad:
            ax.scatter(
                [c[key] / 1024 for c in bad],
                [c["accuracy"] for c in bad],
                s=28,
                marker="x",
                color=color,
                alpha=0.6,
                label=f"{prefix}candidates missing the bound or budgets",
            )
            plotted = True
        for c in good:
            if chosen is not None and str(c.get("label")) == chosen:
                ax.scatter(
                    [c[key] / 1024],
                    [c["accuracy"]],
                    s=180,
                    marker="*",
                    color=color,
                    edgecolor="black",
                    zorder=5,
                    label=f"{prefix}chosen: {chosen}",
                )
        base = it.baseline
        if _is_number(base.get(key)) and _is_number(base.get("accuracy")):
            ax.scatter(
                [base[key] / 1024],
                [base["accuracy"]],
                s=60,
                marker="s",
                facecolor="white",
                edgecolor=color,
                zorder=4,
                label=f"{prefix}float32 baseline",
            )
            plotted = True
        arts = [
            a
            for a in it.artifacts
            if _is_number(a.get(key)) and _is_number((a.get("metrics") or {}).get("accuracy"))
        ]
        if arts:
            ax.scatter(
                [a[key] / 1024 for a in arts],
                [a["metrics"]["accuracy"] for a in arts],
                s=70,
                marker="D",
                color=color,
                edgecolor="black",
                zorder=4,
                label=f"{prefix}artifact",
            )
            for a in arts:
                ax.annotate(
                    str(a.get("quantization") or a.get("file")),
                    (a[key] / 1024, a["metrics"]["accuracy"]),
                    fontsize=7,
                    xytext=(4, -10),
                    textcoords="offset points",
                )
            plotted = True
    if not plotted:
        return None
    ax.set_xlabel("model size, gzip -9 (KiB)" if key == "gzip_bytes" else "model size (KiB)")
    ax.set_ylabel("accuracy (validation)")
    # At least two points of accuracy on the axis: a 0.2-point difference must not look huge.
    low, high = ax.get_ylim()
    if high - low < 0.02:
        mid = (low + high) / 2
        ax.set_ylim(mid - 0.01, mid + 0.01)
    ax.set_title("Accuracy against size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _png(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: cost (x) lower or equal and accuracy (y)
    higher or equal, one of them strictly; ordered by cost."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i])


# The Pareto chart's panels: the candidate field on x, its axis label, and a scale to KiB.
_PARETO_PANELS = (
    ("bytes", "on-device size, .tflite (KiB)", 1 / 1024),
    ("host_latency_ms", "host latency, LiteRT on the build host (ms): not the device's", 1.0),
)


def chart_pareto(items: list[ArtifactData]) -> bytes | None:
    """Every search candidate, size and host latency against accuracy; front and choice marked."""
    rows = [(it, *_search(it)) for it in items]
    rows = [(it, cands, chosen) for it, cands, chosen in rows if cands]
    if not rows:
        return None
    fig = _figure(11.0, 3.6 * len(rows))
    grid = fig.subplots(len(rows), len(_PARETO_PANELS), squeeze=False)
    for r, (it, cands, chosen) in enumerate(rows):
        objective = (it.manifest.get("search") or {}).get("objective") or {}
        for col, (key, label, scale) in enumerate(_PARETO_PANELS):
            ax = grid[r][col]
            good = [c for c in cands if _is_number(c.get(key)) and _is_number(c.get("accuracy"))]
            points = [(float(c[key]) * scale, float(c["accuracy"])) for c in good]
            for ok, marker, what in (
                (True, "o", "candidates within the bound and budgets"),
                (False, "x", "candidates missing the bound or budgets"),
            ):
                pts = [
                    p for c, p in zip(good, points, strict=True) if bool(c.get("ok", True)) is ok
                ]
                if pts:
                    ax.scatter(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        s=26,
                        marker=marker,
                        color=_COLORS[0 if ok else 3],
                        alpha=0.7,
                        label=what,
                    )
            front = pareto_front(points)
            if front:
                ax.step(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    where="post",
                    color=_COLORS[2],
                    linewidth=1.2,
                    label="Pareto front",
                )
            for c, p in zip(good, points, strict=True):
                if chosen is not None and str(c.get("label")) == chosen:
                    ax.scatter(
                        [p[0]],
                        [p[1]],
                        s=200,
                        marker="*",
                        color=_COLORS[1],
                        edgecolor="black",
                        zorder=5,
                        label=f"chosen: {chosen}",
                    )
                    ax.annotate(chosen, p, fontsize=7, xytext=(6, 4), textcoords="offset points")
            if not good:
                ax.text(0.5, 0.5, f"no candidate has {key}", ha="center", transform=ax.transAxes)
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("accuracy (validation)", fontsize=8)
            low, high = ax.get_ylim()
            if high - low < 0.02:
                mid = (low + high) / 2
                ax.set_ylim(mid - 0.01, mid + 0.01)
            ranks = f"; objective: {objective['name']}" if objective.get("name") else ""
            ax.set_title(f"{it.target}{ranks}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, frameon=False, loc="best")
    return _png(fig)


def _device_runs(items: list[ArtifactData]) -> list[tuple[str, BenchRun]]:
    many = len(items) > 1
    out = []
    for it in items:
        for run in it.runs:
            if not run.error:
                out.append((f"{it.target} · {run.device}" if many else run.device, run))
    return out


def chart_latency(items: list[ArtifactData]) -> bytes | None:
    runs = [(n, r) for n, r in _device_runs(items) if r.samples or _is_number(r.latency.get("p50"))]
    if not runs:
        return None
    fig = _figure(7.0, 0.9 + 0.55 * len(runs))
    ax = fig.add_subplot()
    for i, (_name, run) in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        if run.samples:
            box = ax.boxplot(
                [run.samples],
                positions=[i],
                vert=False,
                widths=0.5,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 3},
            )
            box["boxes"][0].set_facecolor(color)
            box["boxes"][0].set_alpha(0.6)
            for line in box["medians"]:
                line.set_color("black")
        else:  # only the summary was stored: p50 bar, p90 and p99 ticks
            lat = run.latency
            ax.barh([i], [lat["p50"]], 0.5, color=color, alpha=0.6)
            for key, marker in (("p90", "|"), ("p99", "d")):
                if _is_number(lat.get(key)):
                    ax.plot([lat[key]], [i], marker=marker, color="black")
    ax.set_yticks(range(len(runs)), [n for n, _ in runs])
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title("Latency distribution per device")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(left=0)
    return _png(fig)


def chart_memory(items: list[ArtifactData]) -> bytes | None:
    runs = [(n, r) for n, r in _device_runs(items) if r.memory]
    if not runs:
        return None
    keys: list[str] = []
    for _, r in runs:
        for k in r.memory:
            if k not in keys:
                keys.append(k)
    fig = _figure(max(5.0, 1.5 + 0.5 * len(runs) * len(keys)), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        xs, ys = [], []
        for i, (_, r) in enumerate(runs):
            if key in r.memory:
                xs.append(i + (j - (len(keys) - 1) / 2) * width)
                ys.append(r.memory[key] / (1024 * 1024))
        bars = ax.bar(
            xs, ys, width * 0.95, label=key.replace("_", " "), color=_COLORS[j % len(_COLORS)]
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(runs)), [n for n, _ in runs])
    ax.set_ylabel("MiB")
    ax.set_title("Memory per device")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


CHARTS: dict[str, tuple[str, Callable[[list[ArtifactData]], bytes | None]]] = {
    "sizes": ("Size per target and stage", chart_sizes),
    "accuracy-size": ("Accuracy against size", chart_accuracy_size),
    "pareto": (
        "Search candidates: Pareto fronts of size and host latency against accuracy",
        chart_pareto,
    ),
    "latency": ("Latency distribution per device", chart_latency),
    "memory": ("Memory per device", chart_memory),
}


def charts(items: list[ArtifactData]) -> dict[str, bytes]:
    """Every chart that has data, as PNG bytes keyed by name (``sizes``, ``accuracy-size``, ...)."""
    out = {}
    for name, (_, fn) in CHARTS.items():
        png = fn(items)
        if png is not None:
            out[name] = png
    return out


def build_charts(build_dir: str | Path) -> dict[str, bytes]:
    """The build summary's charts for ``build_dir`` (or one artifact folder), as PNG bytes."""
    root = Path(build_dir)
    dirs = [root] if (root / MANIFEST).is_file() else target_dirs(root)
    if not dirs:
        raise InputError(f"{root}: no {MANIFEST} here or in its subfolders")
    return charts([load_artifact(d) for d in dirs])


# ------------------------------------------------------------------ tables
@dataclass(frozen=True, kw_only=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _model_table(item: ArtifactData) -> Table:
    m = item.manifest.get("model") or {}
    d = item.manifest.get("data") or {}
    rows = [
        [k, fmt_num(m.get(k))] for k in ("name", "source", "format", "loader", "sha256") if k in m
    ]
    rows += [
        [f"data.{k}", fmt_num(d.get(k))]
        for k in ("source", "synthetic", "train", "val", "input_shape", "num_classes")
        if k in d
    ]
    rows.append(["edgec", fmt_num(item.manifest.get("edgec_version"))])
    return Table(title="Model and data", header=["key", "value"], rows=rows)


def _target_table(items: list[ArtifactData]) -> Table:
    rows = []
    for it in items:
        t = it.manifest.get("target") or {}
        b = t.get("budgets") or {}
        budgets = ", ".join(f"{k}={fmt_num(v)}" for k, v in sorted(b.items()) if v is not None)
        rows.append(
            [
                it.target,
                fmt_num(t.get("runtime")),
                fmt_num(t.get("arch")),
                fmt_num(t.get("quantization")),
                fmt_num(t.get("threads")),
                budgets or "–",
            ]
        )
    return Table(
        title="Targets",
        header=["target", "runtime", "arch", "quantization", "threads", "budgets"],
        rows=rows,
    )


def _passes_table(item: ArtifactData) -> Table:
    rows = []
    for p in item.manifest.get("passes") or []:
        if not isinstance(p, dict):
            continue
        params = ", ".join(f"{k}={fmt_num(v)}" for k, v in sorted((p.get("params") or {}).items()))
        rows.append(
            [
                fmt_num(p.get("id")),
                params or "–",
                fmt_num(p.get("changed")),
                fmt_num(p.get("params_before")),
                fmt_num(p.get("params_after")),
                fmt_num(p.get("seconds")),
            ]
        )
    note = "" if rows else "No compression passes ran (conversion and quantization only)."
    return Table(
        title="Compression passes",
        header=["pass", "parameters", "changed", "params before", "params after", "seconds"],
        rows=rows,
        note=note,
    )


def _artifact_table(items: list[ArtifactData]) -> Table:
    many = len(items) > 1
    rows = []
    for it in items:
        base = it.baseline
        if base:
            rows.append(
                ([it.target] if many else [])
                + [
                    "float32 baseline",
                    "float32",
                    fmt_bytes(base.get("bytes")),
                    fmt_bytes(base.get("gzip_bytes")),
                    fmt_pct(base.get("accuracy")),
                    "–",
                    "–",
                    fmt_ms(base.get("host_latency_ms")),
                ]
            )
        for a in it.artifacts:
            m = a.get("metrics") or {}
            rows.append(
                ([it.target] if many else [])
                + [
                    fmt_num(a.get("file")),
                    fmt_num(a.get("quantization")),
                    fmt_bytes(a.get("bytes")),
                    fmt_bytes(a.get("gzip_bytes")),
                    fmt_pct(m.get("accuracy")),
                    fmt_pct(m.get("accuracy_drop")),
                    fmt_pct(m.get("top1_agreement")),
                    fmt_ms(m.get("host_latency_ms")),
                ]
            )
    header = [
        "file",
        "quantization",
        "bytes",
        "gzip",
        "accuracy",
        "drop",
        "top-1 agreement",
        "host latency",
    ]
    return Table(
        title="Artifacts",
        header=(["target"] if many else []) + header,
        rows=rows,
        note="; ".join(n for it in items for a in it.artifacts for n in _precision_notes(it, a)),
    )


def _precision_notes(item: ArtifactData, artifact: dict[str, Any]) -> list[str]:
    """What an artifact's manifest says about float fall-back ops and int4 weights."""
    conv = artifact.get("conversion")
    if not isinstance(conv, dict):
        return []
    where = f"{item.target}/{artifact.get('file')}"
    notes = []
    ops = [r for r in conv.get("float_fallback_ops") or [] if isinstance(r, dict)]
    if ops:
        names = ", ".join(f"{r.get('op')} x{r.get('count')}" for r in ops)
        notes.append(
            f"{where} keeps float fall-back ops (no int8 kernel): {names}, "
            f"{fmt_pct(conv.get('float_fallback_macs_share'))} of the MACs and "
            f"{fmt_pct(conv.get('float_fallback_compute_share'))} of the compute (estimate)"
        )
    int4 = [w for w in conv.get("int4_weights") or [] if isinstance(w, dict)]
    if int4:
        notes.append(f"{where}: int4 weights in {len(int4)} layers")
    return notes


def _budget_table(items: list[ArtifactData]) -> Table:
    many = len(items) > 1
    rows = []
    for it in items:
        for c in it.typed.budgets.checks:
            measured = c.source or "–"
            rows.append(
                ([it.target] if many else [])
                + [
                    c.name,
                    fmt_num(c.value),
                    fmt_num(c.limit),
                    measured + (" (estimate)" if c.estimate and c.source != "estimate" else ""),
                    "ok" if c.ok else "FAILED",
                ]
            )
    notes = [
        f"{it.target}: budgets {'ok' if it.typed.budgets.ok else 'FAILED'}"
        + (" (kept despite failure)" if it.typed.budgets.kept_despite_failure else "")
        + "".join(f"; {n}" for n in it.typed.budgets.notes)
        for it in items
    ]
    return Table(
        title="Budgets",
        header=(["target"] if many else []) + ["check", "value", "limit", "measured by", "result"],
        rows=rows,
        note="; ".join(notes),
    )


def _search_table(item: ArtifactData) -> Table | None:
    cands, chosen = _search(item)
    if not cands:
        return None
    rows = [
        [
            fmt_num(c.get("label"))
            + (" (chosen)" if chosen is not None and str(c.get("label")) == chosen else ""),
            fmt_bytes(c.get("bytes")),
            fmt_bytes(c.get("gzip_bytes")),
            fmt_pct(c.get("accuracy")),
            "ok" if c.get("ok", True) else "misses bound/budgets",
        ]
        for c in cands
    ]
    return Table(
        title="Search candidates",
        header=["candidate", "bytes", "gzip", "accuracy", "budgets"],
        rows=rows,
    )


def _micro_table(item: ArtifactData) -> Table | None:
    m = item.manifest.get("micro")
    if not isinstance(m, dict) or not m:
        return None
    rows = [
        [k, fmt_bytes(v) if k.endswith("bytes") else fmt_num(v)]
        for k, v in sorted(m.items())
        if not isinstance(v, (dict, list))
    ]
    return Table(title="Microcontroller fit", header=["key", "value"], rows=rows)


def _run_budgets(run: BenchRun) -> str:
    b = run.data.get("budgets")
    if not isinstance(b, dict) or not b.get("checks"):
        return "–"
    return "ok" if b.get("ok") else "FAILED"


def _bench_table(items: list[ArtifactData]) -> Table:
    many = len(items) > 1
    rows, errors = [], []
    for it in items:
        for r in it.runs:
            if r.error:
                errors.append(r.error)
                continue
            lat = r.latency
            rows.append(
                ([it.target] if many else [])
                + [
                    r.device,
                    r.runtime,
                    fmt_num(r.threads),
                    fmt_ms(r.data.get("init_ms")),
                    fmt_ms(r.data.get("first_inference_ms")),
                    fmt_num(lat.get("count")),
                    *(
                        fmt_ms(lat.get(k))
                        for k in ("mean", "std", "min", "p50", "p90", "p99", "max")
                    ),
                    fmt_bytes(r.peak_memory),
                    _run_budgets(r),
                    r.file,
                ]
            )
    note = " ".join(f"Unreadable: {e}." for e in errors)
    if not rows and not errors:
        note = "No benchmark results yet (edgec bench writes results/*.json)."
    return Table(
        title="On-device benchmarks",
        header=(["target"] if many else [])
        + [
            "device",
            "runtime",
            "threads",
            "init",
            "first run",
            "runs",
            "mean",
            "std",
            "min",
            "p50",
            "p90",
            "p99",
            "max",
            "peak memory",
            "budgets",
            "file",
        ],
        rows=rows,
        note=note,
    )


def _versions_table(item: ArtifactData) -> Table:
    v = item.manifest.get("versions") or {}
    return Table(
        title="Versions",
        header=["package", "version"],
        rows=[[str(k), fmt_num(val)] for k, val in sorted(v.items())],
    )


# ------------------------------------------------------------------ HTML / Markdown
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:13px;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.FAILED,span.FAILED{color:#b00;font-weight:bold}span.ok{color:#070}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0}
figcaption{font-size:12px;color:#555}img{max-width:100%;height:auto}
.note{color:#555;font-size:13px}code{background:#f4f4f4;padding:0 3px}
"""


def _html_table(t: Table) -> str:
    e = html.escape
    out = [f"<h2>{e(t.title)}</h2>"]
    if t.rows:
        out.append(
            "<table><thead><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in t.header)
            + "</tr></thead><tbody>"
        )
        for row in t.rows:
            out.append(
                "<tr>"
                + "".join(
                    f'<td class="{e(c)}">{e(c)}</td>' if c == "FAILED" else f"<td>{e(c)}</td>"
                    for c in row
                )
                + "</tr>"
            )
        out.append("</tbody></table>")
    if t.note:
        out.append(f'<p class="note">{e(t.note)}</p>')
    return "\n".join(out)


def _html_charts(pngs: Mapping[str, bytes]) -> str:
    if not pngs:
        return '<p class="note">No chart data.</p>'
    figs = []
    for name, png in pngs.items():
        caption = CHARTS[name][0]
        b64 = base64.b64encode(png).decode("ascii")
        figs.append(
            f'<figure><img class="chart" id="chart-{name}" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
        )
    return '<div class="charts">' + "\n".join(figs) + "</div>"


def _html_page(
    title: str, subtitle: str, pngs: Mapping[str, bytes], tables: Iterable[Table]
) -> str:
    e = html.escape
    body = "\n".join(_html_table(t) for t in tables)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f'<h1>{e(title)}</h1><p class="note">{e(subtitle)}</p>\n'
        f"<h2>Charts</h2>\n{_html_charts(pngs)}\n{body}\n"
        '<p class="note">Rendered by edgec from manifest.json and results/*.json; '
        "re-render with <code>edgec report DIR</code>.</p>\n</body></html>\n"
    )


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    out = [f"## {t.title}", ""]
    if t.rows:
        out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
        out.append("|" + "|".join("---" for _ in t.header) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
        out.append("")
    if t.note:
        out += [t.note, ""]
    return "\n".join(out)


def _md_page(title: str, subtitle: str, pngs: Mapping[str, bytes], tables: Iterable[Table]) -> str:
    shown = ", ".join(CHARTS[n][0].lower() for n in pngs) or "none"
    parts = [
        f"# {title}",
        "",
        subtitle,
        "",
        f"Charts ({shown}) are in `report.html` next to this file.",
        "",
    ]
    parts += [_md_table(t) for t in tables]
    return "\n".join(parts).rstrip() + "\n"


def _status(items: list[ArtifactData]) -> str:
    bits = []
    for it in items:
        b = it.manifest.get("budgets")
        ok = b.get("ok") if isinstance(b, dict) else None
        bits.append(
            f"{it.target}: "
            + ("budgets ok" if ok else "budgets FAILED" if ok is False else "no budgets")
        )
    return "; ".join(bits)


def artifact_report(item: ArtifactData) -> tuple[str, str]:
    """(HTML, Markdown) for one target folder."""
    items = [item]
    pngs = charts(items)
    tables = [
        _model_table(item),
        _target_table(items),
        _passes_table(item),
        _artifact_table(items),
        _search_table(item),
        _budget_table(items),
        _micro_table(item),
        _bench_table(items),
        _versions_table(item),
    ]
    real = [t for t in tables if t is not None]
    title = f"edgec report: {item.model_name} for {item.target}"
    subtitle = _status(items)
    return _html_page(title, subtitle, pngs, real), _md_page(title, subtitle, pngs, real)


def build_report(items: list[ArtifactData], *, title: str) -> tuple[str, str]:
    """(HTML, Markdown) summarising several target folders of one build."""
    pngs = charts(items)
    tables = [
        _model_table(items[0]),
        _target_table(items),
        _artifact_table(items),
        _budget_table(items),
        _bench_table(items),
    ]
    page_title = f"edgec build summary: {title} ({len(items)} target{'s' * (len(items) != 1)})"
    subtitle = _status(items)
    return _html_page(page_title, subtitle, pngs, tables), _md_page(
        page_title, subtitle, pngs, tables
    )
