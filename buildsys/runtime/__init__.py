"""The thin loader: resolve a key or alias, verify every byte, load with TVM's runtime only.

Never imports torch, the exporter, the compiler pipeline or ``tvm.relax``.
"""

from buildsys.runtime.loader import Predictor, load_artifact

__all__ = ["Predictor", "load_artifact"]
