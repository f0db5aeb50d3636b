import textwrap

import pytest

from buildsys.cli import main

TINY_CONFIG = """
models:
  tiny_cnn:
    source: tests.fixtures.models:tiny_cnn
    kwargs: {classes: 10}
  upsample:
    source: tests.fixtures.models:nearest_upsample
matrix:
  model: [tiny_cnn]
  input_size: [32, 48]
  include:
    - {model: upsample, input_size: 29}   # 29 -> 15 -> 29: not a multiple, exposes nearest-resize semantics
"""


def tiny_cnn_config(*matrix_lines: str) -> str:
    """The 10-class tiny CNN at 32x32, with ``matrix_lines`` (e.g. ``target: [...]``) added to its matrix."""
    axes = "".join(f"  {line}\n" for line in matrix_lines)
    return ("models:\n  tiny_cnn:\n    source: tests.fixtures.models:tiny_cnn\n    kwargs: {classes: 10}\n"
            f"matrix:\n  model: [tiny_cnn]\n  input_size: [32]\n{axes}")


class Workspace:
    def __init__(self, root, config_text):
        self.root = root
        self.config = root / "builds.yaml"
        self.config.write_text(textwrap.dedent(config_text))
        self.store = root / "artifacts"

    def cli(self, *args):
        return main(["-c", str(self.config), "--store", str(self.store), *args])

    @property
    def registry(self):
        from buildsys.artifacts.registry import Registry
        return Registry(f"sqlite:///{self.store / 'registry.db'}")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The tiny matrix, built once for the whole session (read-only users only)."""
    ws = Workspace(tmp_path_factory.mktemp("built"), TINY_CONFIG)
    assert ws.cli("build") == 0
    return ws


@pytest.fixture
def fresh(tmp_path):
    return lambda text=TINY_CONFIG: Workspace(tmp_path, text)


DETECTOR_CONFIG = """
models:
  tiny_fasterrcnn: {source: "buildsys.models.tiny:tiny_fasterrcnn", task: detection}
  tiny_retinanet: {source: "buildsys.models.tiny:tiny_retinanet", task: detection}
  tiny_maskrcnn: {source: "buildsys.models.tiny:tiny_maskrcnn", task: detection}
  tiny_keypointrcnn: {source: "buildsys.models.tiny:tiny_keypointrcnn", task: detection}
matrix:
  model: [tiny_fasterrcnn, tiny_retinanet, tiny_maskrcnn, tiny_keypointrcnn]
  input_size: [64]
"""


@pytest.fixture(scope="session")
def built_detectors(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("detectors"), DETECTOR_CONFIG)
    assert ws.cli("build") == 0
    return ws
