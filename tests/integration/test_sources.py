"""The key covers the model's own code and data: no stale artifact after an edit.

Each test writes a user model module beside its builds.yaml (no PYTHONPATH), builds it,
changes one thing the model is made of, and checks that `plan` says `build` with a reason
that names what changed, that the rebuild makes a new key, and that an untouched matrix
stays cached. Module names are unique per test: one pytest process imports them all.
"""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model

MODEL = """
import torch
{imports}

class Net(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.scale = scale

    def forward(self, x):
        return self.conv(x) * self.scale

def net():
    return Net({scale})
"""


def _one_model(tmp_path, source, model="usernet"):
    """A workspace whose matrix is one model at 16x16."""
    return Workspace(tmp_path, f"""
        models:
          {model}: {{source: "{source}"}}
        matrix:
          model: [{model}]
          input_size: [16]
        """)


def _workspace(tmp_path, imports="", scale="1.0"):
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODEL.format(imports=imports, scale=scale))
    return _one_model(tmp_path, f"{name}:net"), tmp_path / f"{name}.py"


def _plan(ws, capsys):
    capsys.readouterr()
    assert ws.cli("plan", "--json") == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    return {e["model"]: e for e in entries}


def _build_then_change(ws, capsys, change):
    assert ws.cli("build") == 0
    before = _plan(ws, capsys)["usernet"]
    assert before["action"] == "cached", before
    change()
    after = _plan(ws, capsys)["usernet"]
    assert after["action"] == "build", after
    assert after["key"] != before["key"]
    assert ws.cli("build") == 0
    rebuilt = _plan(ws, capsys)["usernet"]
    # The rebuild records the sources afresh; in a long-lived process (this test session) that may
    # be fewer modules than the prediction carried over, so the key may move once, then stays.
    assert rebuilt["action"] == "cached" and rebuilt["key"] != before["key"]
    assert _plan(ws, capsys)["usernet"] == rebuilt
    return after["reason"]


def test_a_user_module_beside_the_config_builds_and_an_edit_rebuilds_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    ws, module = _workspace(tmp_path)
    reason = _build_then_change(ws, capsys, lambda: module.write_text(module.read_text().replace(
        "return Net(1.0)", "return Net(2.0)")))
    assert reason.startswith("model sources changed") and module.name in reason
    # the rebuilt artifact runs the edited code: outputs doubled would fail parity otherwise,
    # and the registry now holds both keys
    assert len(ws.registry.list()) == 2


def test_editing_a_module_the_model_imports_rebuilds_it(tmp_path, capsys):
    helper = f"user_helper_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{helper}.py").write_text("SCALE = 1.0\n")
    ws, _ = _workspace(tmp_path, imports=f"import {helper}", scale=f"{helper}.SCALE")
    path = tmp_path / f"{helper}.py"
    reason = _build_then_change(ws, capsys, lambda: path.write_text("SCALE = 3.0\n"))
    assert f"{helper}.py" in reason


def test_a_data_file_the_model_reads_is_part_of_the_key(tmp_path, capsys):
    data = tmp_path / "scale.txt"
    data.write_text("1.5\n")
    ws, _ = _workspace(tmp_path, imports="import pathlib",
                       scale="float(pathlib.Path(__file__).with_name('scale.txt').read_text())")
    reason = _build_then_change(ws, capsys, lambda: data.write_text("2.5\n"))
    assert "scale.txt" in reason


def test_upgrading_the_package_that_defines_the_model_rebuilds_it(tmp_path, capsys, monkeypatch):
    """A pip package (in a site-packages folder, with its dist-info) is recorded by name and version."""
    import sys

    site = tmp_path / "env" / "site-packages"
    package = f"userpkg_{uuid.uuid4().hex[:8]}"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(MODEL.format(imports="", scale="1.0"))
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])

    def install(version):
        for old in site.glob(f"{package}-*.dist-info"):
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        info = site / f"{package}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        (info / "top_level.txt").write_text(f"{package}\n")
        (info / "RECORD").write_text("")

    install("1.0")
    ws = _one_model(tmp_path, f"{package}:net")
    reason = _build_then_change(ws, capsys, lambda: install("2.0"))
    assert f"package {package.replace('_', '-')} 1.0 -> 2.0" in reason  # the normalized name


def test_an_untouched_matrix_stays_cached_and_compiles_nothing(tmp_path, capsys, monkeypatch):
    from unittest import mock

    import buildsys.compiler.compile

    ws, _ = _workspace(tmp_path)
    assert ws.cli("build") == 0
    monkeypatch.setenv("BUILDSYS_BUILD_IN_PROCESS", "1")  # else a build runs in a child the mock cannot see
    with mock.patch.object(buildsys.compiler.compile, "compile_model") as compile_model:
        assert ws.cli("build") == 0
    compile_model.assert_not_called()
    assert "done: 0 built, 1 cached" in capsys.readouterr().out


@pytest.mark.parametrize("typo", ["module", "function"])
def test_a_typo_in_the_source_fails_at_plan_with_file_and_line(tmp_path, capsys, typo):
    ws, module = _workspace(tmp_path)
    good = module.stem + ":net"
    bad = (module.stem + "x:net") if typo == "module" else (module.stem + ":nett")
    ws.config.write_text(ws.config.read_text().replace(good, bad))
    assert ws.cli("plan") == 2
    err = capsys.readouterr().err
    assert f"{ws.config}:3" in err and "models.usernet.source" in err
    assert ("cannot find module" in err) if typo == "module" else ("defines no 'nett'" in err and "net" in err)


def test_plan_deep_reports_a_drifted_entry(tmp_path, capsys, monkeypatch):
    """A model whose width comes from an environment variable: no file changes, the graph does."""
    monkeypatch.setenv("BUILDSYS_TEST_WIDTH", "4")
    name = f"user_env_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import os
        import torch

        def net():
            width = int(os.environ["BUILDSYS_TEST_WIDTH"])
            return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU())
        """))
    ws = _one_model(tmp_path, f"{name}:net", model="envnet")
    assert ws.cli("build") == 0
    capsys.readouterr()
    assert ws.cli("plan", "--deep") == 0
    assert "exported graph and weights unchanged" in capsys.readouterr().out
    monkeypatch.setenv("BUILDSYS_TEST_WIDTH", "6")
    assert ws.cli("plan") == 0
    assert "1 cached" in capsys.readouterr().out  # what the recorded files cannot see
    assert ws.cli("plan", "--deep") == 0
    out = capsys.readouterr().out
    assert "drifted: its exported graph" in out and "1 to build" in out


def test_plan_imports_neither_torch_nor_tvm(built):
    code = textwrap.dedent(f"""
        import sys
        from buildsys.cli import main
        code = main(["-c", {str(built.config)!r}, "--store", {str(built.store)!r}, "plan"])
        heavy = sorted(m for m in ("torch", "tvm", "tvm_ffi", "torchvision", "onnx") if m in sys.modules)
        print("HEAVY", heavy, "EXIT", code)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "HEAVY [] EXIT 0" in done.stdout, done.stdout + done.stderr
    assert "3 cached" in done.stdout


def test_a_torchvision_detector_records_no_sources_so_its_planned_key_holds(built_detectors):
    """Nothing outside the toolchain belongs to a torchvision-style model: what the export reads
    from the system (/etc/os-release, /proc) must not enter its key, or every first build would
    publish under another key than the plan showed."""
    import glob

    for path in glob.glob(str(built_detectors.store / "deps" / "*.json")):
        deps = json.loads(open(path).read())["dependencies"]
        assert all(d["kind"] == "module" and d["name"].startswith("buildsys.models.") for d in deps), deps


def _weights_pth(tmp_path):
    import torch

    torch.save(torch.tensor([1.5]), tmp_path / "scale.pth")
    imports = "import pathlib"
    scale = "float(torch.load(pathlib.Path(__file__).with_name('scale.pth'))[0])"
    return imports, scale, lambda: torch.save(torch.tensor([2.5]), tmp_path / "scale.pth"), "scale.pth"


def _same_size_and_mtime(tmp_path):
    helper = tmp_path / f"same_{uuid.uuid4().hex[:8]}.py"
    helper.write_text("S = 1.0\n")

    def change():
        st = os.stat(helper)
        helper.write_text("S = 3.0\n")  # same length
        os.utime(helper, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime (touch -r)
    return f"import {helper.stem}", f"{helper.stem}.S", change, helper.name


def _repointed_symlink(tmp_path):
    name = f"linked_{uuid.uuid4().hex[:8]}"
    (tmp_path / "v1.py").write_text("S = 1.0\n")
    (tmp_path / "v2.py").write_text("S = 2.0\n")
    (tmp_path / f"{name}.py").symlink_to("v1.py")

    def change():
        (tmp_path / f"{name}.py").unlink()
        (tmp_path / f"{name}.py").symlink_to("v2.py")
    return f"import {name}", f"{name}.S", change, f"{name}.py"


def _optional_import(tmp_path):
    name = f"override_{uuid.uuid4().hex[:8]}"
    imports = f"try:\n    from {name} import S\nexcept ImportError:\n    S = 1.0"
    return imports, "S", lambda: (tmp_path / f"{name}.py").write_text("S = 4.0\n"), name


def _read_write_open(tmp_path):
    import numpy as np

    np.save(tmp_path / "s.npy", np.array([1.0], np.float32))
    imports = "import pathlib\nimport numpy as np"
    scale = "float(np.load(pathlib.Path(__file__).with_name('s.npy'), mmap_mode='r+')[0])"
    return imports, scale, lambda: np.save(tmp_path / "s.npy", np.array([5.0], np.float32)), "s.npy"


@pytest.mark.parametrize("setup", [_weights_pth, _same_size_and_mtime, _repointed_symlink, _optional_import,
                                   _read_write_open], ids=lambda f: f.__name__.strip("_"))
def test_changes_that_once_went_unseen_rebuild(tmp_path, capsys, setup):
    """Classes an outside attack found stale: weights in a .pth file, an edit that keeps size and
    mtime, a re-pointed symlink, an optional import that starts to succeed, a file opened r+."""
    imports, scale, change, named = setup(tmp_path)
    ws, _ = _workspace(tmp_path, imports=imports, scale=scale)
    reason = _build_then_change(ws, capsys, change)
    assert named in reason


def test_a_second_checkout_sharing_the_store_records_its_own_sources(tmp_path, capsys, monkeypatch):
    import shutil

    first = tmp_path / "first"
    first.mkdir()
    ws, module = _workspace(first)
    assert ws.cli("build") == 0
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(ws.config, second / "builds.yaml")
    shutil.copy(module, second / module.name)
    (second / module.name).write_text(module.read_text().replace("return Net(1.0)", "return Net(7.0)"))
    copy = Workspace.__new__(Workspace)
    copy.root, copy.config, copy.store = second, second / "builds.yaml", ws.store
    capsys.readouterr()
    assert copy.cli("plan") == 0
    assert "1 to build" in capsys.readouterr().out  # not the first checkout's artifact


def test_plan_deep_keeps_model_output_off_its_json_and_survives_a_crashing_model(tmp_path, capfd, monkeypatch):
    crash = "import ctypes, os\nif os.environ.get('BUILDSYS_TEST_CRASH'):\n    ctypes.string_at(0)"
    ws, _ = _workspace(tmp_path, imports="print('GARBAGE-ON-STDOUT')\n" + crash)
    assert ws.cli("build") == 0
    capfd.readouterr()
    assert ws.cli("plan", "--deep", "--json") == 0
    out = capfd.readouterr().out
    assert json.loads(out)["entries"][0]["action"] == "cached"  # the print went to stderr
    # the model now dies in native code when exported again: that entry drifted, the plan goes on
    monkeypatch.setenv("BUILDSYS_TEST_CRASH", "1")
    assert ws.cli("plan", "--deep") == 0
    out = capfd.readouterr().out
    assert "drifted: it no longer exports" in out and "SIGSEGV" in out


def test_a_model_module_named_like_the_standard_library_is_refused_at_plan(tmp_path, capsys):
    (tmp_path / "random.py").write_text(MODEL.format(imports="", scale="1.0"))
    ws = _one_model(tmp_path, "random:net")
    assert ws.cli("plan") == 2
    err = capsys.readouterr().err
    assert "standard-library module 'random'" in err and "models.usernet.source" in err
