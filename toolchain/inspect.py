"""``edgec inspect`` and ``edgec eval``: facts about any existing ``.tflite`` file.

Any file is parsed (``edgec.modelinfo``) and then probed in a child interpreter
before anything runs it in this process, so a malformed model cannot crash edgec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.errors import InputError, UsageError
from edgec.modelinfo import ModelInfo, read_model
from edgec.runtime import probe_tflite


@dataclass(frozen=True, kw_only=True)
class InspectReport:
    path: Path
    info: ModelInfo
    fit: Any | None = None  # edgec.micro.MicroReport for a microcontroller target

    def to_dict(self) -> dict[str, Any]:
        out = {
            "file": str(self.path),
            **self.info.summary(),
            "tensors": [t.to_dict() for t in self.info.tensors],
        }
        if self.fit is not None:
            out["fit"] = self.fit.to_dict()
        return out

    def format_text(self) -> str:
        s = self.info.summary()
        lines = [
            f"{self.path}: {s['size_bytes']:,} bytes, {s['param_count']:,} parameters, "
            f"~{s['macs']:,} MACs, {s['op_count']} ops, {s['tensor_count']} tensors",
            "ops:",
            *(f"  {name:<28} {count}" for name, count in s["ops"].items()),
        ]
        for side in ("inputs", "outputs"):
            lines.append(f"{side}:")
            for t in s[side]:
                q = t["quantization"]
                quant = (
                    f"scale {q['scale'][0]:.6g}, zero point {q['zero_point'][0]}"
                    if q and q["scale"]
                    else "not quantized"
                )
                lines.append(f"  {t['name']:<28} {t['dtype']:<8} {t['shape']}  {quant}")
        lines.append("tensors:")
        for t in self.info.tensors:
            kind = "const" if t.constant else "act"
            lines.append(f"  {t.index:>4} {kind:<5} {t.dtype:<8} {list(t.shape)!s:<20} {t.name}")
        if self.fit is not None:
            lines += ["", self.fit.format_text()]
        return "\n".join(lines)


def _read(path: Path) -> bytes:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    if path.suffix.lower() != ".tflite":
        raise InputError(f"{path}: expected a .tflite file")
    return content


def inspect_tflite(
    path: Path, target: str | None = None, *, firmware_elf: Path | None = None
) -> InspectReport:
    if firmware_elf is not None and target is None:
        raise UsageError(
            "--firmware-elf needs --target (a microcontroller profile, e.g. cortex-m4)"
        )
    content = _read(path)
    info = read_model(content, str(path))
    probe_tflite(content, str(path))
    fit = None
    if target is not None:
        from edgec.profiles import load_profile

        profile = load_profile(target)
        if not profile.is_micro:
            raise InputError(
                f"--target {target}: fit reports are for microcontroller profiles "
                "(runtime = 'tflm'), e.g. cortex-m4"
            )
        from edgec import micro

        fit = micro.fit_report(
            content, profile, inputs=None, where=str(path), firmware_elf=firmware_elf
        )
    return InspectReport(path=path, info=info, fit=fit)


def evaluate_tflite(path: Path, data: str, *, threads: int = 1) -> dict[str, Any]:
    from edgec.data import load_dataset
    from edgec.evaluate import evaluate, size_facts

    content = _read(path)
    info = read_model(content, str(path))
    probe_tflite(content, str(path))
    shape = tuple(info.input_tensors[0].shape[1:])
    dataset = load_dataset(data, shape)
    classes = info.output_tensors[0].shape[-1]
    if dataset.num_classes is not None and dataset.num_classes > classes:
        raise InputError(
            f"data {data}: labels go up to {dataset.num_classes - 1}, the model has {classes} outputs"
        )
    metrics = evaluate(content, dataset, threads=threads).metrics
    return {"file": str(path), **size_facts(content), **metrics, "data": dataset.source}
