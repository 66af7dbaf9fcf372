"""Run the harness as ``python -m edgec.harness`` or as a zip (``python harness.zip``)."""

import sys

try:
    from .harness import main
except ImportError:  # run from a zip or a folder on sys.path, not as a package
    from harness import main  # type: ignore[no-redef]

sys.exit(main())
