"""The HTML report opens in a real browser (Debian's headless Chromium) and its charts load.

A small script appended to a copy of the report writes, on the load event,
each image's ``naturalWidth`` into the DOM, which ``--dump-dom`` prints. A
broken data URI gives width 0, which the negative control below checks.
Never skipped: CI installs the ``chromium`` package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_build

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images).map(i => ({
    id: i.id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const pre = document.createElement("pre");
  pre.id = "edgec-probe";
  pre.textContent = JSON.stringify(imgs);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str:
    exe = shutil.which("chromium") or CHROMIUM
    assert Path(exe).exists(), "chromium is required (apt-get install -y chromium)"
    return exe


def _image_sizes(html_file: Path, tmp: Path) -> list[dict]:
    probe = html_file.with_name(f"probe-{html_file.name}")
    probe.write_text(html_file.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [
            _browser(),
            *FLAGS,
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="edgec-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the probe script did not run; DOM starts: {proc.stdout[:500]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, real_build: Path) -> Path:
    from edgec.report import render_dir

    b = make_build(tmp_path_factory.mktemp("browser"), real_build)
    render_dir(b)
    return b


@pytest.mark.parametrize("where", ["rpi4", "cortex-m4", "."])
def test_charts_load_in_chromium(build: Path, tmp_path: Path, where: str) -> None:
    images = _image_sizes(build / where / "report.html", tmp_path)
    expected = 4 if where != "cortex-m4" else 3  # no search candidates, but a baseline point
    assert len(images) >= expected
    for img in images:
        assert img["id"].startswith("chart-")
        assert img["complete"] and img["w"] > 200 and img["h"] > 100, img


def test_a_broken_chart_is_detected(build: Path, tmp_path: Path) -> None:
    """Negative control: the same probe sees a damaged image as not loaded."""
    page = tmp_path / "broken.html"
    text = (build / "rpi4" / "report.html").read_text()
    page.write_text(re.sub(r"base64,[A-Za-z0-9+/]{200}", "base64,AAAA", text, count=1))
    widths = [img["w"] for img in _image_sizes(page, tmp_path)]
    assert widths[0] == 0 and all(w > 0 for w in widths[1:])


def test_screenshot_is_not_blank(build: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            _browser(),
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1100,900",
            f"--screenshot={shot}",
            (build / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1000
    # Charts put colour on the page: many pixels are neither white nor grey.
    rgb = pixels[..., :3]
    colourful = ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.2).mean()
    assert colourful > 0.01
