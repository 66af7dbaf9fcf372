"""Regenerate the README's charts into docs/ from a build folder.

Usage (from the repository root, after the walkthrough's build and bench)::

    python docs/make_charts.py out/digits_cnn            # writes docs/chart-*.png
    python docs/make_charts.py out/digits_cnn --out /tmp  # somewhere else

The charts are the build summary's (``edgec.report.build_charts``), so the
README shows exactly what ``report.html`` shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="a build folder OUT/<model> (or one target)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where the PNG files go (default: docs/)",
    )
    args = parser.parse_args(argv)

    from edgec.errors import EdgecError
    from edgec.report import build_charts, write_atomic

    try:
        charts = build_charts(args.build_dir)
    except EdgecError as exc:
        print(f"make_charts: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    for name, png in charts.items():
        path = args.out / f"chart-{name}.png"
        write_atomic(path, png)
        print(f"wrote {path} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
