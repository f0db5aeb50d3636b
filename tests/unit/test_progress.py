"""The progress displays: which one is chosen, and what the live view shows."""

import io
import re
from dataclasses import dataclass

import pytest

from buildsys.pipeline.jobs import Built, Cached, Failed, StageBegun, Started
from buildsys.ui.progress import PlainDisplay, RichDisplay, choose_mode


@dataclass(frozen=True)
class FakeSpec:
    label: str

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class FakeEntry:
    spec: FakeSpec
    key: str


ENTRIES = [FakeEntry(FakeSpec(f"model{i} 32x32 [llvm -mcpu=znver3] O3"), f"{i:x}" * 64) for i in range(1, 4)]
MANIFEST = {"timings": {"export_s": 1.0, "import_s": 0.5, "compile_s": 2.0, "verify_s": 0.3},
            "parity": {"max_rel": 1.5e-7, "tolerance": 1e-4}, "latency": {"artifact_ms": 2.0, "torch_eager_ms": 4.0,
                                                                          "ratio_vs_eager": 0.5}}


class Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("requested, tty, ci, expected", [
    ("auto", True, None, "rich"), ("auto", False, None, "plain"), ("auto", True, "true", "plain"),
    ("plain", True, None, "plain"), ("rich", False, None, "rich"), ("quiet", True, None, "quiet")])
def test_auto_is_the_live_view_on_a_terminal_only(monkeypatch, requested, tty, ci, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    if ci:
        monkeypatch.setenv("CI", ci)
    assert choose_mode(requested, Terminal(tty)) == expected


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _events(display):
    cached, built, failed = ENTRIES
    display(Cached(cached, "built already"))
    display(Started(built, "/store/logs/b.log"))
    for stage in ("export", "import", "build", "verify"):
        display(StageBegun(built, stage))
    display(Started(failed, "/store/logs/c.log"))
    display(StageBegun(failed, "export"))
    display(StageBegun(built, "publish"))
    display(Built(built, 3.8, MANIFEST))
    display(Failed(failed, 1.2, "[ccc] export: torch.export failed: boom\ntraceback", "/store/logs/c.log"))


def test_rich_view_shows_running_stages_then_one_line_per_finished_entry():
    out = Terminal(True)
    display = RichDisplay(ENTRIES, out, force_terminal=True)
    display.console.width = 200
    with display:
        cached, built, failed = ENTRIES
        display(Cached(cached, "built already"))
        display(Started(built))
        display(StageBegun(built, "verify"))
        display.live.refresh()
        live = _plain(out.getvalue())
        assert "verify" in live and "[2/3] model2 32x32 [llvm -mcpu=znver3] O3" in live  # brackets are not markup
        assert "1/3" in live and "1 cached" in live
        display(Built(built, 3.8, MANIFEST))
        display(Started(failed))
        display(Failed(failed, 1.2, "boom", "/store/logs/c.log"))
    text = _plain(out.getvalue())
    assert "\x1b[" in out.getvalue()  # a terminal gets colour
    assert "cached  [1/3]" in text and "cache hit, nothing to do (built already)" in text
    assert "built   [2/3]" in text and "built in 3.8s" in text and "0.5x" in text
    assert "failed  [3/3]" in text and "FAILED after 1.2s: boom (log: /store/logs/c.log)" in text
    assert "3/3" in text and "1 built, 1 cached, 1 failed" in text
    assert display.tasks == {}  # finished rows leave the live view


def test_plain_lines_name_each_stage_and_the_log():
    out, errors = io.StringIO(), io.StringIO()
    display = PlainDisplay(ENTRIES, out)
    display.errors = errors
    _events(display)
    lines = out.getvalue().splitlines()
    built = [line for line in lines if line.startswith("[2/3]")]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in built[1:6]] == [
        "export", "import", "build", "verify", "publish"]
    assert built[0].endswith("building (log: /store/logs/b.log)")
    assert lines[0] == f"[1/3] {ENTRIES[0].spec.label} ({ENTRIES[0].key[:12]}): cached, nothing to do: built already"
    assert errors.getvalue() == ("[3/3] model3 32x32 [llvm -mcpu=znver3] O3 (333333333333): FAILED after 1.2s: "
                                 "[ccc] export: torch.export failed: boom (log: /store/logs/c.log)\n")
