"""Issue 9 item 3: every bad input gets one line, an exit code 2..7, and writes nothing.

A corpus of broken models, data, profiles, recipes, output folders, command
lines and release bundles, all made here, each run through the real CLI
in-process (click's CliRunner: TensorFlow is imported once), plus a seeded
byte-flip fuzz of ``edgec inspect`` on a real tiny .tflite. A few cases also run
as real processes, where TensorFlow's own stderr would show.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

EDGEC = str(Path(sys.executable).with_name("edgec"))


@dataclass(frozen=True)
class Inputs:
    """The corpus's files, made once."""

    root: Path
    keras: Path  # a good .keras model (8x8x1 -> 10 classes)
    tflite: Path  # its good float32 .tflite
    digits: Path  # good data for it
    tiny: Path  # a float .tflite of a few dozen weights: mostly structure, for the fuzz

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _tgz(members: dict[str, bytes | str], *, symlink: str | None = None) -> bytes:
    """A tar.gz the way edgec release writes it (gzip mtime 0, level 9), with these members."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cnn_keras_file, cnn_model, digits, digits_npz) -> Inputs:
    import h5py
    import keras
    import tf_keras
    from PIL import Image

    from edgec.convert import ConvertOptions, convert
    from edgec.profiles import IODtype, Quantization

    root = tmp_path_factory.mktemp("bad")
    float_tflite = convert(cnn_model, ConvertOptions(quantization=Quantization.FLOAT32))
    d = Inputs(
        root=root,
        keras=cnn_keras_file,
        tflite=_write(root / "good.tflite", float_tflite),
        digits=digits_npz,
        tiny=root / "tiny.tflite",
    )
    keras.utils.set_random_seed(0)  # the fuzz's file, and so its exit-code counts, repeat
    tiny = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    d.tiny.write_bytes(convert(tiny, ConvertOptions(quantization=Quantization.FLOAT32)))
    x, y = digits.x_train, digits.y_train
    good = cnn_keras_file.read_bytes()

    # ---- models
    _write(d / "notzip.keras", b"not a zip at all")
    _write(d / "empty.keras", b"")
    _write(d / "truncated.keras", good[: len(good) // 2])
    with zipfile.ZipFile(d / "noconfig.keras", "w") as z:
        z.writestr("metadata.json", "{}")
    with zipfile.ZipFile(d / "badconfig.keras", "w") as z:
        z.writestr("config.json", "{not json")
    (d / "folder.keras").mkdir()
    _write(d / "corrupt.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    cnn_model.save_weights(d / "w.weights.h5")
    with h5py.File(d / "notjson.h5", "w") as f:
        f.attrs["model_config"] = "{{{"
    with h5py.File(d / "list.h5", "w") as f:
        f.attrs["model_config"] = "[1, 2]"
    lam = tf_keras.Sequential(
        [tf_keras.layers.InputLayer(input_shape=(8, 8, 1)), tf_keras.layers.Lambda(lambda t: t)]
    )
    lam.save(d / "lambda.h5")
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t)]).save(
        d / "lambda.keras"
    )

    class Custom(tf_keras.layers.Layer):
        def call(self, t):
            return t

    tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(8, 8, 1)), Custom()]).save(
        d / "custom.h5"
    )
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two = keras.Model([a, b], keras.layers.Dense(10)(keras.layers.Flatten()(a + b)))
    two.save(d / "two_inputs.keras")
    (d / "nopb").mkdir()
    _write(d / "badpb" / "saved_model.pb", b"\x08\x01garbage")
    _write(d / "badmeta" / "saved_model.pb", b"")
    _write(d / "badmeta" / "keras_metadata.pb", b"\x0a\xff\xff\xff\xff\x0f")
    _write(d / "model.onnx", b"onnx")
    _write(d / "garbage.tflite", b"\x1c\0\0\0TFL3" + b"\xff" * 64)
    _write(d / "cut.tflite", float_tflite[: len(float_tflite) // 3])
    _write(d / "empty.tflite", b"")
    int8 = convert(
        cnn_model,
        ConvertOptions(
            quantization=Quantization.INT8, input_dtype=IODtype.INT8, output_dtype=IODtype.INT8
        ),
        calibration=digits.calibration(50),
    )
    _write(d / "int8.tflite", int8)
    _write(d / "notes.txt", "a .tflite this is not")
    os.mkfifo(d / "fifo.tflite")  # reading it would block forever

    # ---- data
    np.savez(d / "xy_lengths.npz", x=x, y=y[:-7])
    np.savez(
        d / "train_lengths.npz", x_train=x, y_train=y[:10], x_val=digits.x_val, y_val=digits.y_val
    )
    nan, inf = x.copy(), x.copy()
    nan[5, 1, 1, 0], inf[2, 0, 0, 0] = np.nan, np.inf
    np.savez(d / "nan.npz", x=nan, y=y)
    np.savez(d / "inf.npz", x=inf, y=y)
    np.savez(d / "shape.npz", x=x.reshape(len(x), 64), y=y)
    np.savez(d / "negative.npz", x=x, y=-y - 1)
    np.savez(d / "fractional.npz", x=x, y=y + 0.5)
    np.savez(d / "strings.npz", x=x, y=np.array([str(v) for v in y]))
    np.savez(d / "classes.npz", x=x, y=y + 20)
    np.savez(d / "labels3d.npz", x=x, y=np.zeros((len(x), 2, 2)))
    np.savez(d / "scalar.npz", x=np.float32(1.0), y=np.int64(1))
    np.savez(d / "empty.npz", x=x[:0], y=y[:0])
    np.savez(d / "one_row.npz", x=x[:1], y=y[:1])
    np.savez(d / "complex.npz", x=x.astype(np.complex64), y=y)
    np.savez(d / "keys.npz", images=x)
    np.savez(d / "object.npz", x=np.array([x[0], "a"], dtype=object), y=y[:2])
    _write(d / "junk.npz", b"junk")
    np.save(d / "array.npy", x)
    (d / "array.npy").rename(d / "renamed.npz")
    _write(d / "data.csv", "1,2,3\n")
    (d / "no_classes").mkdir()
    _write(d / "corrupt_images" / "cat" / "0.png", b"\x89PNG not really")
    _write(d / "corrupt_images" / "dog" / "0.png", b"\x89PNG not really")
    (d / "one_image" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "one_image" / "cat" / "0.png")

    # ---- profiles and recipes
    _write(d / "syntax.toml", "extends = 'rpi4\n")
    _write(d / "unknown_key.toml", "extends = 'rpi4'\nthreadz = 2\n")
    _write(d / "bad_enum.toml", "extends = 'rpi4'\nquantization = 'int3'\n")
    _write(d / "bad_type.toml", "extends = 'rpi4'\nthreads = 'four'\n")
    _write(d / "cycle_a.toml", "extends = 'cycle_b.toml'\n")
    _write(d / "cycle_b.toml", "extends = 'cycle_a.toml'\n")
    _write(d / "extends_missing.toml", "extends = 'no-such-board'\n")
    _write(d / "recipe_unknown_pass.toml", "[[pass]]\nid = 'quantum'\n")
    _write(d / "recipe_unknown_param.toml", "[[pass]]\nid = 'prune'\nsparsity_goal = 0.5\n")
    _write(d / "recipe_syntax.toml", "[[pass]\nid = 'prune'\n")

    # ---- outputs and bundles
    _write(d / "a_file", "x")
    sums = "0" * 64 + "  r/model.tflite\n"
    _write(d / "empty.tar.gz", b"")
    _write(d / "notgzip.tar.gz", b"PK\x03\x04 not gzip")
    ok = _tgz({"r/SHA256SUMS": sums, "r/model.tflite": float_tflite})
    _write(d / "truncated.tar.gz", ok[: len(ok) // 2])
    _write(d / "extra.tar.gz", ok + b"hidden")
    _write(d / "gzip_not_tar.tar.gz", gzip.compress(b"plain text, not a tar", mtime=0))
    _write(d / "no_sums.tar.gz", _tgz({"r/model.tflite": float_tflite}))
    _write(d / "traversal.tar.gz", _tgz({"r/SHA256SUMS": sums, "r/../../evil": "x"}))
    _write(d / "symlink.tar.gz", _tgz({"r/SHA256SUMS": sums}, symlink="r/model.tflite"))
    _write(d / "sum_mismatch.tar.gz", ok)
    (d / "bundle_dir.tar.gz").mkdir()
    return d


M, D, P, R, OUT, U, B, INS = (
    "models",
    "data",
    "profiles",
    "recipes",
    "outputs",
    "usage",
    "bundles",
    "inspect",
)
# id: (category, arguments with {placeholders} from Inputs, expected exit code)
CASES: dict[str, tuple[str, str, int]] = {
    "model-missing": (M, "build {r}/missing.keras -o out", 3),
    "model-not-zip": (M, "build {r}/notzip.keras -o out", 3),
    "model-empty-keras": (M, "build {r}/empty.keras -o out", 3),
    "model-truncated-keras": (M, "build {r}/truncated.keras -o out", 3),
    "model-keras-no-config": (M, "build {r}/noconfig.keras -o out", 3),
    "model-keras-bad-config": (M, "build {r}/badconfig.keras -o out", 3),
    "model-keras-is-a-folder": (M, "build {r}/folder.keras -o out", 3),
    "model-corrupt-h5": (M, "build {r}/corrupt.h5 -o out", 3),
    "model-weights-only-h5": (M, "build {r}/w.weights.h5 -o out", 3),
    "model-h5-config-not-json": (M, "build {r}/notjson.h5 -o out", 3),
    "model-h5-config-a-list": (M, "build {r}/list.h5 -o out", 3),
    "model-h5-lambda": (M, "build {r}/lambda.h5 -o out", 3),
    "model-keras-lambda": (M, "build {r}/lambda.keras -o out --json", 3),
    "model-h5-custom-layer": (M, "build {r}/custom.h5 -o out", 3),
    "model-two-inputs": (M, "build {r}/two_inputs.keras -o out", 3),
    "model-folder-without-pb": (M, "build {r}/nopb -o out", 3),
    "model-garbage-savedmodel": (M, "build {r}/badpb -o out", 3),
    "model-corrupt-keras-metadata": (M, "build {r}/badmeta -o out", 3),
    "model-onnx": (M, "build {r}/model.onnx -o out", 3),
    "model-garbage-tflite": (M, "build {r}/garbage.tflite -o out", 3),
    "model-truncated-tflite": (M, "build {r}/cut.tflite -o out", 3),
    "model-empty-tflite": (M, "build {r}/empty.tflite -o out", 3),
    "model-int8-tflite": (M, "build {r}/int8.tflite -o out", 3),
    "model-fifo": (M, "build {r}/fifo.tflite -o out", 3),
    "data-missing": (D, "build {keras} -d {r}/missing.npz -o out", 3),
    "data-csv": (D, "build {keras} -d {r}/data.csv -o out", 3),
    "data-junk-npz": (D, "build {keras} -d {r}/junk.npz -o out", 3),
    "data-npy-renamed-npz": (D, "build {keras} -d {r}/renamed.npz -o out", 3),
    "data-wrong-keys": (D, "build {keras} -d {r}/keys.npz -o out", 3),
    "data-x-y-lengths": (D, "build {keras} -d {r}/xy_lengths.npz -o out", 3),
    "data-train-lengths": (D, "build {keras} -d {r}/train_lengths.npz -o out", 3),
    "data-nan": (D, "build {keras} -d {r}/nan.npz -o out", 3),
    "data-inf": (D, "build {keras} -d {r}/inf.npz -o out --json", 3),
    "data-sample-shape": (D, "build {keras} -d {r}/shape.npz -o out", 3),
    "data-negative-labels": (D, "build {keras} -d {r}/negative.npz -o out", 3),
    "data-fractional-labels": (D, "build {keras} -d {r}/fractional.npz -o out", 3),
    "data-string-labels": (D, "build {keras} -d {r}/strings.npz -o out", 3),
    "data-labels-beyond-outputs": (D, "build {keras} -d {r}/classes.npz -o out", 3),
    "data-labels-3d": (D, "build {keras} -d {r}/labels3d.npz -o out", 3),
    "data-scalars": (D, "build {keras} -d {r}/scalar.npz -o out", 3),
    "data-empty": (D, "build {keras} -d {r}/empty.npz -o out", 3),
    "data-one-row": (D, "build {keras} -d {r}/one_row.npz -o out", 3),
    "data-complex": (D, "build {keras} -d {r}/complex.npz -o out", 3),
    "data-object-array": (D, "build {keras} -d {r}/object.npz -o out", 3),
    "data-image-folder-no-classes": (D, "build {keras} -d {r}/no_classes -o out", 3),
    "data-corrupt-images": (D, "build {keras} -d {r}/corrupt_images -o out", 3),
    "data-one-image": (D, "build {keras} -d {r}/one_image -o out", 3),
    "data-eval-shape": (D, "eval {tflite} -d {r}/shape.npz", 3),
    "data-search-without-labels": (D, "build {keras} --search -o out", 3),
    "profile-unknown-target": (P, "build {keras} -t rpi9 -o out", 2),
    "profile-toml-syntax": (P, "build {keras} -t {r}/syntax.toml -o out", 2),
    "profile-unknown-key": (P, "build {keras} -t {r}/unknown_key.toml -o out --json", 2),
    "profile-bad-enum": (P, "build {keras} -t {r}/bad_enum.toml -o out", 2),
    "profile-bad-type": (P, "build {keras} -t {r}/bad_type.toml -o out", 2),
    "profile-extends-cycle": (P, "build {keras} -t {r}/cycle_a.toml -o out", 2),
    "profile-extends-missing": (P, "build {keras} -t {r}/extends_missing.toml -o out", 2),
    "profile-show-unknown": (P, "targets show rpi9", 2),
    "profile-inspect-not-micro": (P, "inspect {tflite} --target rpi4", 3),
    "recipe-unknown-pass": (R, "build {keras} --recipe {r}/recipe_unknown_pass.toml -o out", 2),
    "recipe-unknown-param": (R, "build {keras} --recipe {r}/recipe_unknown_param.toml -o out", 2),
    "recipe-toml-syntax": (R, "build {keras} --recipe {r}/recipe_syntax.toml -o out", 2),
    "recipe-missing-file": (R, "build {keras} --recipe {r}/missing.toml -o out", 2),
    "recipe-pass-unknown-id": (R, "build {keras} --pass quantum -o out", 2),
    "recipe-pass-not-key-value": (R, "build {keras} --pass prune:final_sparsity -o out", 2),
    "recipe-pass-bad-value": (R, "build {keras} --pass prune:final_sparsity=lots -o out", 2),
    "out-under-a-file": (OUT, "build {keras} -o {r}/a_file/out", 2),
    "out-dev-null": (OUT, "build {keras} -o /dev/null", 2),
    "out-is-a-file": (OUT, "build {keras} -o {r}/a_file --json", 2),
    "out-under-dev-null": (OUT, "build {keras} -o /dev/null/out", 2),
    "out-demo-dev-null": (OUT, "demo -o /dev/null", 2),
    "out-release-under-a-file": (OUT, "release {r}/no_classes --out {r}/a_file/dist", 2),
    "usage-unknown-option": (U, "build {keras} --colour", 2),
    "usage-unknown-command": (U, "bild {keras}", 2),
    "usage-bad-int": (U, "build {keras} --calibration-size many", 2),
    "usage-negative-drop": (U, "build {keras} --max-accuracy-drop -1 --json", 2),
    "usage-missing-argument": (U, "inspect", 2),
    "usage-bad-shell": (U, "completion tcsh", 2),
    "bundle-missing": (B, "verify {r}/missing.tar.gz", 3),
    "bundle-a-folder": (B, "verify {r}/bundle_dir.tar.gz", 2),
    "bundle-empty": (B, "verify {r}/empty.tar.gz", 7),
    "bundle-not-gzip": (B, "verify {r}/notgzip.tar.gz", 7),
    "bundle-truncated": (B, "verify {r}/truncated.tar.gz --json", 7),
    "bundle-bytes-after-gzip": (B, "verify {r}/extra.tar.gz", 7),
    "bundle-gzip-not-tar": (B, "verify {r}/gzip_not_tar.tar.gz", 7),
    "bundle-no-sums": (B, "verify {r}/no_sums.tar.gz", 7),
    "bundle-path-traversal": (B, "verify {r}/traversal.tar.gz", 7),
    "bundle-symlink": (B, "verify {r}/symlink.tar.gz", 7),
    "bundle-sum-mismatch": (B, "verify {r}/sum_mismatch.tar.gz", 7),
    "inspect-not-tflite": (INS, "inspect {r}/notes.txt", 3),
    "inspect-empty": (INS, "inspect {r}/empty.tflite --json", 3),
    "inspect-garbage": (INS, "inspect {r}/garbage.tflite", 3),
    "inspect-missing": (INS, "inspect {r}/missing.tflite", 2),
    "inspect-dev-zero": (INS, "inspect /dev/zero", 3),
    "inspect-fifo": (INS, "inspect {r}/fifo.tflite", 3),
}


def _args(template: str, d: Inputs) -> list[str]:
    return template.format(r=d.root, keras=d.keras, tflite=d.tflite, digits=d.digits).split()


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def check_one_line(code: int, stdout: str, stderr: str, *, as_json: bool) -> str:
    """The contract for a bad input; returns the error line."""
    assert 2 <= code <= 7, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), stderr
    if as_json:
        envelope = json.loads(stdout)
        assert envelope == {"ok": False, "error": lines[0][14:], "exit_code": code}, stdout
    return lines[0]


def test_the_corpus_is_big_and_broad():
    categories = Counter(category for category, _, _ in CASES.values())
    assert len(CASES) >= 40 and set(categories) == {M, D, P, R, OUT, U, B, INS}, categories


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_and_writes_nothing(case, inputs, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgec.cli import main

    _, template, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative outputs (out/, dist/) would land here
    before = _tree(inputs.root)
    args = _args(template, inputs)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    line = check_one_line(result.exit_code, result.stdout, result.stderr, as_json="--json" in args)
    assert result.exit_code == expected, line
    assert list(work.iterdir()) == [], "a failed command wrote into the working folder"
    assert _tree(inputs.root) == before, "a failed command changed its inputs or wrote beside them"


# A model/data error after TensorFlow loaded, a click usage error, a --json verification
# error: one real process each (in-process, the corpus above covers every case).
@pytest.mark.parametrize("case", ["data-x-y-lengths", "usage-unknown-command", "bundle-truncated"])
def test_bad_input_as_a_real_process(case, inputs, tmp_path):
    """The same contract with the process's real stderr, where TensorFlow's chatter would show."""
    _, template, expected = CASES[case]
    args = _args(template, inputs)
    proc = subprocess.run(
        [EDGEC, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    check_one_line(proc.returncode, proc.stdout, proc.stderr, as_json="--json" in args)
    assert proc.returncode == expected and list(tmp_path.iterdir()) == []


# One fuzz worker: the real click CLI in one process, `inspect --json` on each file it is
# given, one JSON line per file. `inspect` never imports TensorFlow; each file's load check
# is a child process of its own (edgec.runtime.probe_tflite), which is what a flip costs.
_FUZZ_WORKER = r"""
import json, sys
from click.testing import CliRunner
from edgec.cli import main
for path in sys.argv[1:]:
    r = CliRunner().invoke(main, ["inspect", path, "--json"], catch_exceptions=False)
    print(json.dumps([path, r.exit_code, r.stdout, r.stderr]), flush=True)
"""
FUZZ_FLIPS, FUZZ_WORKERS = 200, 2


def test_inspect_byte_flip_fuzz(inputs, tmp_path):
    """200 seeded single-byte flips of a real .tflite: exit 0, or one line and 2..7, never a crash.

    The model is tiny (a few dozen weights), so most flips land in the flatbuffer's
    structure (offsets, shapes, op codes) rather than in weight bytes. The flips are
    shared among two worker processes that run side by side (each flip's load check
    is a child process): an exception escaping the CLI, or a crash, ends a worker with
    a non-zero code and fails the test.
    """
    good = inputs.tiny.read_bytes()
    rng = np.random.default_rng(9)
    paths = []
    for i in range(FUZZ_FLIPS):
        flipped = bytearray(good)
        at = int(rng.integers(len(good)))
        flipped[at] ^= int(rng.integers(1, 256))
        paths.append(_write(tmp_path / "flips" / f"flip{i}.tflite", bytes(flipped)))
    work = tmp_path / "work"
    work.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _FUZZ_WORKER, *map(str, paths[k::FUZZ_WORKERS])],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(FUZZ_WORKERS)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
        results += [json.loads(line) for line in out.splitlines()]
    assert sorted(path for path, *_ in results) == sorted(map(str, paths))
    codes: Counter[int] = Counter()
    for _, code, stdout, stderr in results:
        codes[code] += 1
        if code != 0:
            check_one_line(code, stdout, stderr, as_json=True)
    print(f"inspect fuzz exit codes: {dict(sorted(codes.items()))}")
    assert sum(codes.values()) == FUZZ_FLIPS and set(codes) <= {0, 2, 3, 4, 5, 6, 7}, codes
    assert codes[3] > 0  # the corpus of flips does reach the parser's and the probe's refusals
    assert list(work.iterdir()) == []  # inspect wrote nothing
