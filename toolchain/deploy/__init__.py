"""Deploy and benchmark on devices, in layers (each module imports only those above it):

- ``devices``: the devices file, ``--device`` specs and groups;
- ``transport``: the ``Transport`` protocol, ``ConnectOptions``, ``connect`` and the
  device-side file operations; ``ssh`` and ``local`` implement it (a new transport:
  one class with ``open``, ``notices``, ``run``, ``upload``, ``download``, ``close``,
  ``label`` and ``emulated``, and one entry in ``transport._OPENERS``);
- ``options``: ``BenchOptions`` and the artifact lookup;
- ``provision``: device check and setup (which Python, which runtimes run);
- ``publish``: deploy (versioned remote paths, idempotent uploads);
- ``protocol``: the harness's command line, running it, reading its answer;
- ``bench``: one device's benchmark, its typed result (``edgec.results``), budgets;
- ``fleet``: ``edgec bench`` over one device or a group, the table and ``--json``.
"""

# ``bench --runtime`` choices, spelled as their pip packages are (the harness
# names the modules: tflite_runtime). Here so the CLI can offer them without
# importing the deploy modules.
RUNTIMES = ("auto", "litert", "tflite-runtime", "tflm")
