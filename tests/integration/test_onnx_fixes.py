"""Each ONNX importer fix is needed: without it a tiny detector fails with the error it documents."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.pipeline.importers import onnx_fixes

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]
SEGFAULT = "segmentation fault"

# fix -> (a tiny model that needs it, the error its docstring names)
CASES = {
    "fix_shape_inputs": ("tiny_retinanet", "cannot handle ShapeExpr inputs"),
    "fix_unknown_shapes": ("tiny_retinanet", "CodeGenVM cannot emit this Relax operator directly"),
    "fix_nms": ("tiny_retinanet", "Literal value 9223372036854775807"),
    "fix_slice_to_end": ("tiny_fasterrcnn", SEGFAULT),
    "fix_topk_runtime_k": ("tiny_retinanet", "TopK k must be a constant"),
    "fix_binary_symbolic_dims": ("tiny_maskrcnn", "CodeGenVM cannot emit this Relax operator directly"),
}
# Needed by full-size models (see its docstring); every tiny model builds without it.
FULL_SIZE_ONLY = {"fix_constant_of_shape"}


def _doc(fix: str) -> str:
    return " ".join((getattr(onnx_fixes, fix).__doc__ or "").split()).lower()


def test_every_fix_is_accounted_for_and_documents_its_error():
    assert {f.__name__ for f in onnx_fixes.FIXES} == set(CASES) | FULL_SIZE_ONLY
    for fix, (_, error) in CASES.items():
        assert error.lower() in _doc(fix), fix


@pytest.mark.parametrize("fix", sorted(CASES), ids=str)
def test_without_the_fix_the_documented_error_returns(fix):
    model, error = CASES[fix]
    result = subprocess.run([sys.executable, "-m", "tests.fixtures.onnx_fix_probe", fix, model],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if error == SEGFAULT:
        assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stdout[-1000:])
        return
    lines = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "BUILT"))]
    assert lines and lines[-1].startswith("FAILED"), result.stdout[-2000:] + result.stderr[-2000:]
    assert error in lines[-1]
