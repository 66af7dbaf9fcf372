"""Benchmark for the search's executors: local against Ray with 1 and 2 workers, in one run.

One search (a digits CNN, int8, N independent candidates in one wave: every
candidate's passes fine-tune, convert and measure for real) runs three ways,
side by side on this host:

- ``local``: the LocalExecutor, one candidate after another in this process;
- ``ray_1``: a local Ray cluster with 1 CPU (one worker at a time);
- ``ray_2``: a local Ray cluster with 2 CPUs (two candidates at once).

It writes the wall times, the ratio ``ray_1 / ray_2`` (what a second worker
buys), the per-candidate overhead of Ray against local (wall time difference
per candidate, the cluster's start-up excluded and reported apart), each
candidate's own job seconds as measured inside its worker, and Ray's cost of one
round trip of the search's real shared payload with a job that does nothing.
``docs/scale-out.md`` works from these figures.

    python benchmarks/suite/scaleout.py [--out benchmarks/results/scaleout.json] [--candidates 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The clusters this benchmark starts stay on the loopback interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _model(data):
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaleout.json"))
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--epochs-scale", type=float, default=0.5)
    args = parser.parse_args()

    import ray

    from edgec.convert import ConvertOptions
    from edgec.data import demo_dataset
    from edgec.executor import LocalExecutor
    from edgec.executor_ray import RayExecutor
    from edgec.passes.common import accuracy
    from edgec.profiles import Quantization
    from edgec.search import SearchShared, keras_to_bytes, run_search

    data = demo_dataset()
    model = _model(data)
    ladder = _ladder(args.candidates)
    reference = accuracy(model, data.x_val, data.y_val)
    calibration = data.calibration(200)
    options = ConvertOptions(quantization=Quantization.INT8)

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

    runs: dict[str, dict] = {}
    local_wall, local = search(LocalExecutor())
    runs["local"] = {"wall_s": round(local_wall, 2), "workers": 1}
    choice = {"local": local.chosen.label}
    round_trip: dict[str, float] = {}
    for cpus in (1, 2):
        started = time.perf_counter()
        executor = RayExecutor(num_cpus=cpus)
        init_s = time.perf_counter() - started
        try:
            # Warm the workers (a fresh worker imports TensorFlow once) so the timed search
            # measures the steady state; the warm-up is reported beside it.
            warm = time.perf_counter()
            list(executor.map(_warm, None, list(range(cpus))))
            warm_s = time.perf_counter() - warm
            wall, result = search(executor)
            if cpus == 1:
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
                    "shared_bytes": len(keras_to_bytes(model))
                    + data.x_train.nbytes
                    + data.x_val.nbytes
                    + calibration.nbytes,
                }
        finally:
            executor.close()
        runs[f"ray_{cpus}"] = {
            "wall_s": round(wall, 2),
            "workers": cpus,
            "cluster_start_s": round(init_s, 2),
            "worker_warmup_s": round(warm_s, 2),
        }
        choice[f"ray_{cpus}"] = result.chosen.label
        assert [r["accuracy"] for r in result.table] == [r["accuracy"] for r in local.table]
    job_seconds = [row["seconds"] for row in local.table]
    payload = {
        "what": "one search of N independent candidates (one wave), int8, digits CNN; "
        "host CPU, LiteRT 1 thread for measuring; wall times on this shared 2-core host",
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_1min": os.getloadavg()[0],
        },
        "ray_version": ray.__version__,
        "candidates": args.candidates + 1,  # the ladder's N plus the plain model
        "epochs_scale": args.epochs_scale,
        "runs": runs,
        "ratio_ray1_over_ray2": round(runs["ray_1"]["wall_s"] / runs["ray_2"]["wall_s"], 3),
        "ratio_ray1_over_local": round(runs["ray_1"]["wall_s"] / runs["local"]["wall_s"], 3),
        "ray_overhead_per_candidate_s": round(
            (runs["ray_1"]["wall_s"] - runs["local"]["wall_s"]) / (args.candidates + 1), 3
        ),
        "candidate_job_s": {
            "median": round(statistics.median(job_seconds), 2),
            "min": min(job_seconds),
            "max": max(job_seconds),
        },
        "ray_noop_round_trip": round_trip,
        "same_choice": len(set(choice.values())) == 1,
        "choices": choice,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


def _warm(shared, job):
    from edgec.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras  # noqa: F401

    time.sleep(1.0)  # long enough that each warm-up job lands on its own worker
    return job


if __name__ == "__main__":
    main()
