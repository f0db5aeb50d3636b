"""``buildsys report -o report.html``: the matrix as one static page.

Everything is inline (CSS, the matplotlib plot and the photos as data: URIs),
so the page opens without a network or a server. Rows: every matrix entry with
its status, build time, size, parity and latency ratio to eager (a
``buildsys bench`` figure when there is one, else the build-time estimate,
marked ~). For each detection artifact fast enough (``photo_budget_s``), the
reference photo annotated by the artifact itself through the thin loader.
"""

from __future__ import annotations

import base64
import html
import io
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from buildsys.format.status import ArtifactStatus, RunStatus
from buildsys.errors import BuildsysError
from buildsys.format.status import Action

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #eee; } td.num { text-align: right; font-family: monospace; }
tr.failed td { background: #fdd; } tr.pending td { background: #ffd; }
.photos { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
figcaption { font-size: 12px; max-width: 320px; }
"""

# Counts the images that actually decoded, for a headless browser to read back (tests).
ONLOAD = """
window.addEventListener("load", function () {
  var ok = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-ok", String(ok.length));
  document.body.setAttribute("data-rows", String(document.querySelectorAll("table#matrix tbody tr").length));
});
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _ratio(record) -> tuple[float | None, bool]:
    """(ratio to eager, measured by bench?)"""
    bench = record.metrics.get("bench_ratio_vs_eager")
    if bench is not None:
        return bench, True
    return record.metrics.get("ratio_vs_eager"), False


def _plot(rows: list[tuple[str, float, bool]]) -> bytes | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    labels = [label for label, _, _ in rows]
    values = [value for _, value, _ in rows]
    colours = ["#2a7" if value <= 1 else "#c54" for value in values]
    ax.barh(labels, values, color=colours, hatch=None)
    ax.axvline(1.0, color="#333", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("artifact latency / PyTorch eager (log scale; < 1 is faster)")
    ax.invert_yaxis()
    for i, (_, value, measured) in enumerate(rows):
        ax.text(value, i, f" {value:.2f}x{'' if measured else ' ~'}", va="center", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _annotated(predictor, photo: Path, max_side: int = 320) -> bytes:
    import tempfile

    from PIL import Image

    from buildsys.ui.annotate import draw_detections, read_image

    image = read_image(photo)
    detections = predictor.detect(image, score_threshold=0.0, max_detections=5)
    with tempfile.TemporaryDirectory(prefix="buildsys-report-") as tmp:
        draw_detections(image, detections, Path(tmp) / "annotated.png")
        picture = Image.open(Path(tmp) / "annotated.png")
        picture.load()
    picture.thumbnail((max_side, max_side))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def default_photo() -> Path | None:
    try:
        from importlib import resources

        path = resources.files("skimage") / "data" / "astronaut.png"
        return Path(str(path)) if path.is_file() else None
    except ModuleNotFoundError:
        return None


def build_report(entries, registry, store, *, photo: Path | None = None, photo_budget_s: float = 30.0,
                 title: str = "buildsys matrix") -> str:
    """The HTML page for ``entries`` (a plan) and the registry's records."""
    from buildsys.runtime import load_artifact

    runs = {}
    rows_html, plot_rows, photos, kernels = [], [], [], []
    for entry in entries:
        record = registry.get(entry.key) if entry.action == Action.CACHED else None
        if record is None and entry.action == Action.BUILD:
            last = registry.runs(entry.key, limit=1)
            runs[entry.key] = last[0] if last else None
        spec = entry.spec
        foreign = record is not None and record.target.is_cross()  # another architecture: nothing runs here
        if record is not None:
            status, css = ("built", "") if record.status != ArtifactStatus.UNVERIFIED else ("built, NOT verified", "pending")
            sizes = sum(f.size for f in record.files)
            timings = record.metrics
            build_s = sum(timings.get(k, 0.0) for k in ("export_s", "import_s", "compile_s", "serialize_s",
                                                        "verify_s"))
            ratio, measured = _ratio(record)
            parity = record.parity_max_rel
            if ratio is not None:
                plot_rows.append((f"{spec.model.name} {spec.size_label} {spec.target.cli()}"
                                  + (" tuned" if spec.tuning else ""), ratio, measured))
        else:
            last = runs.get(entry.key)
            status = "skipped" if entry.action == Action.SKIP else (
                "failed" if last is not None and last.status == RunStatus.FAILED else "not built")
            css = "failed" if status == "failed" else "pending"
            sizes = build_s = ratio = parity = None
            measured = False
        cells = [spec.model.name, spec.size_label, spec.target.cli(), f"O{spec.opt_level}",
                 ", ".join(spec.disabled_passes) or "-",
                 "off" if spec.tuning is None else f"{spec.tuning.trials} trials", status]
        numbers = [f"{build_s:.1f}" if build_s else "-", f"{sizes / 1e6:.1f}" if sizes else "-",
                   f"{parity:.1e}" if parity is not None else "-",
                   (f"{ratio:.2f}x" + ("" if measured else " ~")) if ratio is not None else "-"]
        rows_html.append(f"<tr class='{css}' title='{html.escape(entry.reason)}'>"
                         + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                         + "".join(f"<td class='num'>{html.escape(n)}</td>" for n in numbers)
                         + f"<td><code>{entry.key[:12]}</code></td></tr>")
        estimate_s = record.metrics.get("artifact_ms", float("inf")) / 1e3 if record is not None else None
        predictor = not_loadable = None
        if record is not None and estimate_s <= photo_budget_s:  # loaded once: its kernels, then its photo
            try:
                predictor = load_artifact(record.key, registry=registry, store=store)
            except BuildsysError as exc:  # not loadable here (another CPU, another runtime): the page says so
                not_loadable = exc
            kernels.append((spec.describe(), _kernel_rows(predictor, not_loadable)))
        if record is not None and record.task == "detection" and photo is not None:
            caption = f"{spec.describe()}"
            if foreign:
                photos.append((None, f"{caption}: built for {record.target.triple}, not run on this "
                                     f"{platform.machine()} host"))
            elif estimate_s <= photo_budget_s:
                if not_loadable is not None:
                    raise not_loadable
                start = time.perf_counter()
                png = _annotated(predictor, photo)
                photos.append((_png_data_uri(png), f"{caption}: top 5 detections, "
                                                   f"{time.perf_counter() - start:.1f} s through the thin loader"))
            else:
                photos.append((None, f"{caption}: not run here, one inference takes about {estimate_s:.0f} s "
                                     f"untuned (budget {photo_budget_s:.0f} s)"))
    plot = _plot(plot_rows)
    head = ["model", "size", "target", "opt", "disabled passes", "tuning", "status", "build s", "size MB",
            "parity max_rel", "latency vs eager", "key"]
    figures = "".join(
        f"<figure>{f'<img src={chr(34)}{uri}{chr(34)} alt={chr(34)}{html.escape(caption)}{chr(34)}>' if uri else ''}"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for uri, caption in photos)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style>
<script>{ONLOAD}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(entries)} matrix entries, generated {generated}. Latency ratios: artifact / PyTorch eager on the same
input; <b>~</b> marks a build-time estimate (run <code>buildsys bench</code> for measured figures).</p>
<table id="matrix"><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>
<tbody>{''.join(rows_html)}</tbody></table>
<h2>Latency ratio per model and target</h2>
{f'<img src="{_png_data_uri(plot)}" alt="latency ratio per model and target">' if plot else '<p>nothing built yet</p>'}
<h2>Where the time goes</h2>
<p>Each artifact's slowest kernels (<code>buildsys profile KEY</code> through the thin runtime: fastest of
{PROFILE_RUNS} instrumented runs; GFLOP/s from the operations the builder counted per kernel).</p>
{''.join(_kernel_html(label, rows) for label, rows in kernels) or '<p>nothing built yet</p>'}
<h2>Detectors on the reference photo</h2>
<div class="photos">{figures or '<p>no detection artifacts</p>'}</div>
</body></html>
"""


def make_report(ws, out_path: str | Path, *, photo: str | None = None, photo_budget_s: float = 30.0,
                filters=()) -> tuple[Path, int, int]:
    """``buildsys report``: the page for the workspace's matrix, written to ``out_path``.
    Returns (path, entries, images)."""
    entries = ws.plan(filters=filters, include_skipped=True)
    page = build_report(entries, ws.registry, ws.store, photo=Path(photo) if photo else default_photo(),
                        photo_budget_s=photo_budget_s)
    return write_report(out_path, page), len(entries), page.count("<img ")


PROFILE_RUNS = 3
PROFILE_TOP = 5


def _kernel_rows(predictor, not_loadable: Exception | None) -> list[tuple[str, ...]] | str:
    """The artifact's slowest kernels as table rows, or why there are none."""
    from buildsys.ops.profile import profile_predictor
    from buildsys.ui.tables import PROFILE_HEADER, profile_rows

    if not_loadable is not None:
        return f"not profiled: {not_loadable}"
    signature = predictor.signature
    profile = profile_predictor(predictor, signature.sample(signature.batch_min), PROFILE_RUNS)
    return [PROFILE_HEADER, *profile_rows(profile, PROFILE_TOP)]


def _kernel_html(label: str, rows) -> str:
    if isinstance(rows, str):
        return f"<h3>{html.escape(label)}</h3><p>{html.escape(rows)}</p>"
    head, *body = rows
    return (f"<h3>{html.escape(label)}</h3><table class='kernels'><thead><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            + "</tbody></table>")


def write_report(path: str | Path, page: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

