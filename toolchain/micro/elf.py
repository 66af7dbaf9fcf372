"""Flash and static RAM measured from a linked firmware ELF (pyelftools).

``read_elf`` sums an ELF's allocated sections the way GNU ``size`` (Berkeley
format) does: executable or read-only sections are text (split here into code and
rodata), writable sections with contents are data, sections without contents
(NOBITS) are bss. Flash is text + rodata + data (data's initial values live in
flash), static RAM is data + bss.

It also finds, in the symbol table if there is one, the model array (``g_model``,
as ``firmware/model_data.cc`` names it) and the tensor arena (the largest object
whose name contains "arena"), so a build can put its own model and
``kTensorArenaSize`` in their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.errors import InputError

MODEL_SYMBOL = "g_model"  # firmware/model_data.cc
_ARCH_MACHINES = {"armv": "EM_ARM", "xtensa": "EM_XTENSA", "riscv": "EM_RISCV"}


@dataclass(frozen=True, kw_only=True)
class Section:
    name: str
    bytes: int
    kind: str  # "text", "rodata", "data" or "bss"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "kind": self.kind}


@dataclass(frozen=True, kw_only=True)
class ElfSizes:
    """What a linked firmware ELF occupies, by section kind, and the symbols edgec needs."""

    path: str
    machine: str  # pyelftools' e_machine name, e.g. "EM_ARM"
    text: int  # executable sections
    rodata: int  # allocated, read-only, not executable (incl. the const model array)
    data: int  # allocated, writable, with initial contents (copied from flash at start-up)
    bss: int  # allocated, no contents (zeroed at start-up; the static arena lives here)
    sections: tuple[Section, ...]
    model_bytes: int | None  # size of the g_model symbol; None: no symbol table or no g_model
    arena: tuple[str, int] | None  # (symbol, bytes) of the static tensor arena, if found

    @property
    def flash_bytes(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def static_ram_bytes(self) -> int:
        return self.data + self.bss

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "machine": self.machine,
            "text": self.text,
            "rodata": self.rodata,
            "data": self.data,
            "bss": self.bss,
            "flash_bytes": self.flash_bytes,
            "static_ram_bytes": self.static_ram_bytes,
            "model_symbol_bytes": self.model_bytes,
            "arena_symbol": None
            if self.arena is None
            else {"name": self.arena[0], "bytes": self.arena[1]},
            "sections": [s.to_dict() for s in self.sections],
            "measured_by": "pyelftools, section sizes as GNU size (Berkeley) counts them",
        }


def _kind(flags: int, sh_type: str) -> str | None:
    from elftools.elf.constants import SH_FLAGS

    if not flags & SH_FLAGS.SHF_ALLOC:
        return None  # debug info, symbol tables, comments: not on the device
    if flags & SH_FLAGS.SHF_EXECINSTR:
        return "text"
    if not flags & SH_FLAGS.SHF_WRITE:
        return "rodata"
    return "bss" if sh_type == "SHT_NOBITS" else "data"


def read_elf(path: str | Path, *, arch: str | None = None) -> ElfSizes:
    """Read ``path``'s allocated sections; ``arch`` (a profile's) must match its machine.

    A missing, unreadable or non-ELF file, or one built for another machine, is an
    ``InputError`` naming the file and what was expected.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    p = Path(path)
    try:
        f = p.open("rb")
    except OSError as exc:
        raise InputError(f"--firmware-elf {p}: cannot read ({exc.strerror})") from exc
    with f:
        try:
            elf = ELFFile(f)
            machine = str(elf["e_machine"])
            sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
            sections = []
            for sec in elf.iter_sections():
                kind = _kind(int(sec["sh_flags"]), str(sec["sh_type"]))
                if kind is None or not sec["sh_size"]:
                    continue
                sizes[kind] += int(sec["sh_size"])
                sections.append(Section(name=sec.name, bytes=int(sec["sh_size"]), kind=kind))
            model = None
            arena: tuple[str, int] | None = None
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] != "STT_OBJECT":
                        continue
                    size = int(sym["st_size"])
                    if sym.name == MODEL_SYMBOL:
                        model = size
                    elif "arena" in sym.name.lower() and (arena is None or size > arena[1]):
                        arena = (sym.name, size)
        except (ELFError, ValueError, KeyError, OSError) as exc:
            raise InputError(
                f"--firmware-elf {p}: not a readable ELF file ({exc}); give the linked "
                "firmware (.elf), not a .bin or .hex"
            ) from exc
    if arch is not None:
        want = next((m for prefix, m in _ARCH_MACHINES.items() if arch.startswith(prefix)), None)
        if want is not None and machine != want:
            raise InputError(
                f"--firmware-elf {p}: built for {machine}, but the profile's arch {arch!r} "
                f"needs {want}; give the firmware linked for the target"
            )
    return ElfSizes(
        path=str(p),
        machine=machine,
        sections=tuple(sections),
        model_bytes=model,
        arena=arena,
        **sizes,
    )
