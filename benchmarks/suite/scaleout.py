"""Benchmark for the executors: the search and batch builds, local against Ray with 1 and 2 workers.

Three parts, side by side in one run on this host:

- ``latency_noise``: the run-to-run spread of the search's side-by-side host latency
  timing (``edgec.search._side_by_side``, i.e. ``evaluate.interleaved_latency_ms``) on
  real candidates, which sets ``edgec.objective.LATENCY_MARGIN``;
- ``search``: one search (a digits CNN, int8, N independent candidates in one wave,
  every candidate fine-tuning, converting and measuring for real) run by the
  LocalExecutor, then on a local Ray cluster with 1 CPU and with 2 CPUs;
- ``batch``: one batch build (``edgec.batch``: M models x 2 targets, each pair one
  job that prunes, converts and measures) on the same three executors.

It writes the wall times, the ratios ``ray_1 / ray_2`` (what a second worker buys) and
``ray_1 / local``, the per-job overhead of Ray against local (wall time difference per
job; the cluster's start-up and the workers' first TensorFlow import are excluded and
reported apart), each job's own seconds as measured inside it, and Ray's cost of one
round trip of the search's real shared payload with a job that does nothing.
``docs/scale-out.md`` works from these figures.

    python benchmarks/suite/scaleout.py [--out benchmarks/results/scaleout.json]
        [--candidates 6] [--models 3] [--parts latency_noise,search,batch]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, host_facts, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The clusters this benchmark starts stay on the loopback interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _model(data, width: int = 16, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(width, 3, activation="relu"),
            keras.layers.Conv2D(2 * width, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(data.x_train, data.y_train, epochs=8, verbose=0)
    return m


def _ladder(n: int):
    from edgec.recipe import Step
    from edgec.search import Ladder, Rung

    # One rung per family, no combinations: the N candidates form a single wave.
    rungs = []
    for i in range(n):
        if i % 2 == 0:
            s = 0.5 + 0.05 * i
            rungs.append(
                Rung(
                    label=f"prune {s:.0%}", steps=(Step(id="prune", params={"final_sparsity": s}),)
                )
            )
        else:
            k = 64 >> (i // 2)
            rungs.append(
                Rung(label=f"cluster k={k}", steps=(Step(id="cluster", params={"k": max(k, 4)}),))
            )
    return Ladder(families=tuple((r,) for r in rungs), combine=False)


def _noop(shared, job):
    return job.label


def _warm(shared, job):
    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras  # noqa: F401

    time.sleep(1.0)  # long enough that each warm-up job lands on its own worker
    return job


def latency_noise(model, data, *, repeats: int, threads: tuple[int, ...]) -> dict:
    """How far apart side-by-side latencies of the same candidates land from run to run.

    Each repeat is one ``interleaved_latency_ms`` call over the same real artifacts (the
    plain model and compressed ones, as the search times them before choosing). Per
    pair of candidates, the ratio of their medians varies between repeats; its spread
    (max/min - 1) is what a tie margin must cover for two runs to rank them alike.
    """
    from edgec.convert import ConvertOptions
    from edgec.evaluate import interleaved_latency_ms
    from edgec.profiles import Quantization
    from edgec.recipe import Step
    from edgec.search import CandidateJob, SearchShared, keras_to_bytes, run_candidate

    shared = SearchShared(
        model=keras_to_bytes(model),
        data=data,
        options=ConvertOptions(quantization=Quantization.INT8),
        calibration=data.calibration(200),
        epochs_scale=0.3,
    )
    jobs = [
        CandidateJob(label="plain", steps=()),
        CandidateJob(label="prune 80%", steps=(Step(id="prune", params={"final_sparsity": 0.8}),)),
        CandidateJob(label="cluster k=16", steps=(Step(id="cluster", params={"k": 16}),)),
        CandidateJob(
            label="prune-channels 50%", steps=(Step(id="prune-channels", params={"sparsity": 0.5}),)
        ),
        CandidateJob(label="distill width 0.5", steps=(Step(id="distill", params={"width": 0.5}),)),
    ]
    contents = {}
    for job in jobs:
        m = run_candidate(shared, job).measurement
        if m is not None and m.content is not None:
            contents[job.label] = m.content
    out: dict = {"candidates": list(contents), "repeats": repeats}
    estimators = {"median": statistics.median, "min": min}  # the search uses the median
    for (est, statistic), t in itertools.product(estimators.items(), threads):
        runs = [
            interleaved_latency_ms(contents, data.x_val, threads=t, statistic=statistic)
            for _ in range(repeats)
        ]
        spreads = []
        for a, b in itertools.combinations(contents, 2):
            ratios = [r[a] / r[b] for r in runs]
            spreads.append(max(ratios) / min(ratios) - 1.0)
        medians = {k: round(statistics.median(r[k] for r in runs), 4) for k in contents}
        fastest = min(medians.values())
        out[f"{est}_threads_{t}"] = {
            "median_ms": medians,
            "relative_to_fastest": {k: round(v / fastest, 3) for k, v in medians.items()},
            "pair_ratio_spread_max": round(max(spreads), 4),
            "pair_ratio_spread_median": round(statistics.median(spreads), 4),
        }
    return out


def _batch_files(root: Path, data, models: int) -> Path:
    import numpy as np

    np.savez(
        root / "d.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_val=data.x_val,
        y_val=data.y_val,
    )
    lines = [
        "[defaults]",
        'data = "d.npz"',
        'targets = ["rpi4", "x86-64"]',
        'passes = ["prune:final_sparsity=0.6"]',
        "epochs_scale = 0.5",
    ]
    for i in range(models):
        _model(data, width=8 + 4 * i, seed=i).save(root / f"m{i}.keras")
        lines += ["", "[[build]]", f'model = "m{i}.keras"']
    (root / "builds.toml").write_text("\n".join(lines) + "\n")
    return root / "builds.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "scaleout.json")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--models", type=int, default=3, help="models in the batch (x 2 targets)")
    parser.add_argument("--epochs-scale", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=8, help="latency_noise repeats")
    parser.add_argument("--parts", default="latency_noise,search,batch")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    host = host_facts()

    import ray

    from edgec.batch import load_batch, run_batch
    from edgec.convert import ConvertOptions
    from edgec.data import demo_dataset
    from edgec.executor import LocalExecutor
    from edgec.executor_ray import RayExecutor
    from edgec.passes.common import accuracy
    from edgec.profiles import Quantization
    from edgec.search import SearchShared, keras_to_bytes, run_search

    data = demo_dataset()
    model = _model(data)
    payload: dict = {
        "what": "executors on this shared 2-core host: host CPU, LiteRT for measuring; "
        "wall times measured side by side in one run",
        "host": host,
        "ray_version": ray.__version__,
    }
    if "latency_noise" in parts:
        payload["latency_noise"] = latency_noise(model, data, repeats=args.repeats, threads=(1, 4))

    ladder = _ladder(args.candidates)
    reference = accuracy(model, data.x_val, data.y_val)
    calibration = data.calibration(200)
    options = ConvertOptions(quantization=Quantization.INT8)
    tmp = Path(tempfile.mkdtemp(prefix="edgec-scaleout-"))
    spec = _batch_files(tmp, data, args.models) if "batch" in parts else None

    def search(executor):
        start = time.perf_counter()
        result = run_search(
            model,
            data,
            options=options,
            calibration=calibration,
            max_accuracy_drop=0.02,
            reference_accuracy=reference,
            epochs_scale=args.epochs_scale,
            executor=executor,
            ladder=ladder,
        )
        return time.perf_counter() - start, result

    def batch(executor, name: str):
        assert spec is not None
        start = time.perf_counter()
        result = run_batch(
            load_batch(spec, out=tmp / f"out-{name}"), executor=executor, log=lambda _: None
        )
        return time.perf_counter() - start, result

    runs: dict[str, dict] = {"search": {}, "batch": {}}
    found: dict[str, dict] = {"search": {}, "batch": {}}
    if "search" in parts:
        wall, found["search"]["local"] = search(LocalExecutor())
        runs["search"]["local"] = {"wall_s": round(wall, 2), "workers": 1}
    if spec is not None:
        wall, found["batch"]["local"] = batch(LocalExecutor(), "local")
        runs["batch"]["local"] = {"wall_s": round(wall, 2), "workers": 1}
    round_trip: dict[str, float] = {}
    cluster: dict[str, dict] = {}
    for cpus in (1, 2) if parts & {"search", "batch"} else ():
        started = time.perf_counter()
        executor = RayExecutor(num_cpus=cpus)
        init_s = time.perf_counter() - started
        try:
            # Warm the workers (a fresh worker imports TensorFlow once) so the timed runs
            # measure the steady state; the warm-up is reported beside them.
            warm = time.perf_counter()
            list(executor.map(_warm, None, list(range(cpus))))
            cluster[f"ray_{cpus}"] = {
                "cluster_start_s": round(init_s, 2),
                "worker_warmup_s": round(time.perf_counter() - warm, 2),
            }
            if "search" in parts:
                wall, found["search"][f"ray_{cpus}"] = search(executor)
                runs["search"][f"ray_{cpus}"] = {"wall_s": round(wall, 2), "workers": cpus}
            if spec is not None:
                wall, found["batch"][f"ray_{cpus}"] = batch(executor, f"ray{cpus}")
                runs["batch"][f"ray_{cpus}"] = {"wall_s": round(wall, 2), "workers": cpus}
            if cpus == 1 and "search" in parts:
                shared = SearchShared(
                    model=keras_to_bytes(model), data=data, options=options, calibration=calibration
                )
                trips = []
                for _ in range(5):
                    t = time.perf_counter()
                    list(executor.map(_noop, shared, [r for f in ladder.families for r in f]))
                    trips.append((time.perf_counter() - t) / args.candidates)
                round_trip = {
                    "per_job_ms_median": round(statistics.median(trips) * 1e3, 2),
                    "shared_bytes": len(shared.model)
                    + data.x_train.nbytes
                    + data.x_val.nbytes
                    + calibration.nbytes,
                }
        finally:
            executor.close()
    payload["ray_clusters"] = cluster

    def ratios(kind: str, jobs: int) -> dict:
        r = runs[kind]
        return {
            "runs": r,
            "jobs": jobs,
            "ratio_ray1_over_ray2": round(r["ray_1"]["wall_s"] / r["ray_2"]["wall_s"], 3),
            "ratio_ray1_over_local": round(r["ray_1"]["wall_s"] / r["local"]["wall_s"], 3),
            "ray_overhead_per_job_s": round(
                (r["ray_1"]["wall_s"] - r["local"]["wall_s"]) / jobs, 3
            ),
        }

    if "search" in parts:
        local = found["search"]["local"]
        for result in found["search"].values():
            assert [r["accuracy"] for r in result.table] == [r["accuracy"] for r in local.table]
        job_seconds = [row["seconds"] for row in local.table]
        choices = {k: v.chosen.label for k, v in found["search"].items()}
        payload["search"] = {
            "what": "one search of N independent candidates (one wave), int8, digits CNN, "
            f"epochs_scale {args.epochs_scale}; objective download (no latency timing)",
            **ratios("search", args.candidates + 1),  # the ladder's N plus the plain model
            "candidate_job_s": {
                "median": round(statistics.median(job_seconds), 2),
                "min": min(job_seconds),
                "max": max(job_seconds),
            },
            "ray_noop_round_trip": round_trip,
            "same_choice": len(set(choices.values())) == 1,
            "choices": choices,
        }
    if spec is not None:
        local = found["batch"]["local"]
        sha = {
            k: [[a["sha256"] for a in row.artifacts] for row in v.rows]
            for k, v in found["batch"].items()
        }
        job_seconds = [row.seconds for row in local.rows if row.seconds is not None]
        payload["batch"] = {
            "what": f"one batch build of {args.models} digits CNNs x 2 targets (rpi4, x86-64), "
            "each job pruning to 60% (epochs_scale 0.5), int8, converting and measuring",
            **ratios("batch", len(local.rows)),
            "job_s": {
                "median": round(statistics.median(job_seconds), 2),
                "min": round(min(job_seconds), 2),
                "max": round(max(job_seconds), 2),
            },
            "all_ok": all(v.ok for v in found["batch"].values()),
            "same_artifacts": all(s == sha["local"] for s in sha.values()),
        }
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
