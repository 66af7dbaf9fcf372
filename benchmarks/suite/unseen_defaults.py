"""Each fine-tuning pass at its defaults on two data sets it was not tuned on (wine, breast cancer).

Float Keras accuracy on a stratified 30% validation split, measured on the host; writes
benchmarks/results/unseen_defaults.json. The defaults were tuned on digits only.
First step of issue 11 item 6's third benchmark; compression.py should absorb it.
"""

import json
import os
from pathlib import Path

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split

from edgec.data import Dataset
from edgec.passes import get_pass
from edgec.pipeline import PassContext, PassManager

results = {}
for name, loader in [("wine", load_wine), ("breast_cancer", load_breast_cancer)]:
    X, y = loader(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    xt, xv, yt, yv = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    d = Dataset(x_train=xt, y_train=yt, x_val=xv, y_val=yv, source=name)
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((X.shape[1],)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(int(y.max()) + 1, activation="softmax"),
        ]
    )
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(xt, yt, epochs=40, verbose=0, batch_size=32)

    def acc(mm, xv=xv, yv=yv):
        return float(np.mean(mm.predict(xv, verbose=0).argmax(-1) == yv))

    base = acc(m)
    results[name] = {"base_accuracy": round(base, 4), "validation_rows": len(yv)}
    print(name, "base", round(base, 4), flush=True)
    for pid in ["prune", "lowrank", "prune-channels", "cluster"]:
        cls = get_pass(pid)
        out, _ = PassManager([cls()]).run(m, PassContext(data=d))
        results[name][f"{pid}_drop_pt"] = round(100 * (base - acc(out)), 2)
        print(name, pid, "drop_pt", results[name][f"{pid}_drop_pt"], flush=True)

out = Path(__file__).resolve().parents[1] / "results" / "unseen_defaults.json"
out.write_text(
    json.dumps({"measured_on": "host, Keras float32", "results": results}, indent=2) + "\n"
)
