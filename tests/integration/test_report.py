"""The HTML report opens in headless Chromium with its table rows and images rendered."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.capabilities import missing

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("no chromium to check the report in a browser (apt-get install chromium)")
    return found


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=120)


def test_report_renders_rows_plot_and_annotated_photos_in_a_browser(built_detectors, tmp_path, capsys):
    chromium = _chromium()
    page = tmp_path / "report.html"
    assert built_detectors.cli("report", "-o", str(page)) == 0
    assert "4 entries, 5 images" in capsys.readouterr().out
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch: opens offline
    for model in ("tiny_fasterrcnn", "tiny_retinanet", "tiny_maskrcnn", "tiny_keypointrcnn"):
        assert f"<td>{model}</td>" in text
    kernels = text.split("<h2>Where the time goes</h2>")[1].split("<h2>")[0]
    assert kernels.count("<table class='kernels'>") == 4 and kernels.count("<tr><td>") >= 4 * 3  # each artifact's top kernels

    dom = _headless(chromium, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stderr[-500:]
    assert 'data-rows="4"' in body.group(1) and 'data-images-ok="5"' in body.group(1)  # plot + 4 photos decoded

    shots = Path(os.environ.get("BUILDSYS_CI_ARTIFACTS", ROOT / "ci-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "report.png"
    done = _headless(chromium, "--window-size=1300,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000, done.stderr[-500:]


def test_report_marks_what_is_not_built(fresh, capsys):
    ws = fresh("""
models:
  a: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [a], input_size: [32]}
""")
    page = ws.root / "r.html"
    assert ws.cli("report", "-o", str(page)) == 0
    text = page.read_text()
    assert "not built" in text and "nothing built yet" in text
