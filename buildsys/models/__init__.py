"""Turn a ``ModelSpec`` into an eval-mode ``torch.nn.Module`` with the right weights.

``source`` is ``module:function``: torchvision builders
(``torchvision.models:resnet18``), the tiny test detectors
(``buildsys.models.tiny:tiny_fasterrcnn``) or a user's own function.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Iterable

from buildsys.errors import BuildError
from buildsys.artifacts.digests import digest_file
from buildsys.config.spec import ModelSpec, WeightsSpec


def ensure_on_path(directories: Iterable[str]) -> None:
    """Model sources resolve beside the config file first (documented in README)."""
    for directory in reversed([d for d in directories if d]):
        if directory not in sys.path:
            sys.path.insert(0, directory)


def load_function(source: str, search_path: tuple[str, ...] = ()):
    """``module:function`` -> the function; modules resolve beside the config file first."""
    ensure_on_path(search_path)
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BuildError(f"cannot import module {module_name!r} for source {source!r}: {exc}",
                         stage="model") from None
    except SyntaxError as exc:
        raise BuildError(f"module {module_name!r} for source {source!r} has a syntax error: {exc.filename}:"
                         f"{exc.lineno}: {exc.msg}", stage="model") from None
    except SystemExit as exc:
        raise BuildError(f"importing module {module_name!r} for source {source!r} called sys.exit({exc.code!r})",
                         stage="model") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise BuildError(f"importing module {module_name!r} for source {source!r} raised "
                         f"{type(exc).__name__}: {exc}", stage="model") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        from buildsys.errors import did_you_mean
        names = [n for n in dir(module) if not n.startswith("_")]
        hint = did_you_mean(attr, names)
        raise BuildError(f"module {module_name!r} has no {attr!r}" + (f"; {hint}" if hint else ""),
                         stage="model") from None
    if not callable(fn):
        raise BuildError(f"{source!r} is not callable", stage="model")
    return fn


def hub_weights_file(source: str, name: str) -> Path:
    """The local torch hub cache file of a torchvision weights enum member (never downloads)."""
    import torch
    import torchvision

    fn_name = source.partition(":")[2]
    try:
        weights_enum = torchvision.models.get_model_weights(fn_name)
        weights = weights_enum[name] if name != "DEFAULT" else weights_enum.DEFAULT
    except (KeyError, ValueError) as exc:
        raise BuildError(f"torchvision has no weights {name!r} for {fn_name!r}: {exc}", stage="weights") from None
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise BuildError(
            f"weights {fn_name}:{name} are not in the local torch hub cache ({path}); this machine cannot "
            f"download them. Copy {filename} there, or set `weights:` to a file path", stage="weights")
    return path


def weights_digest(model: ModelSpec) -> str:
    """What the key records for the weights: a file digest, or the seed for random weights."""
    weights = model.weights
    if weights.source == "none":
        return f"seeded:{weights.seed}"
    if weights.source == "file":
        return digest_file(weights.path)
    return digest_file(hub_weights_file(model.source, weights.name))


def _weights_file(model: ModelSpec) -> Path | None:
    weights: WeightsSpec = model.weights
    if weights.source == "file":
        return Path(weights.path)
    if weights.source == "hub":
        return hub_weights_file(model.source, weights.name)
    return None


def instantiate(model: ModelSpec):
    """Build the module under the spec's seed, load its weights, and put it in eval mode."""
    import torch

    fn = load_function(model.source, (model.config_dir,) if model.config_dir else ())
    kwargs = model.kwargs.thaw()  # the builder may change what it is given
    params = inspect.signature(fn).parameters
    # torchvision builders would download weights unless told not to.
    for name in ("weights", "weights_backbone"):
        if name in params and name not in kwargs:
            kwargs[name] = None
    torch.manual_seed(model.weights.seed)
    try:
        module = fn(**kwargs)
    except SystemExit as exc:
        raise BuildError(f"{model.source}(**{kwargs}) called sys.exit({exc.code!r})", stage="model") from None
    except Exception as exc:
        raise BuildError(f"{model.source}(**{kwargs}) raised {type(exc).__name__}: {exc}", stage="model") from None
    if not isinstance(module, torch.nn.Module):
        raise BuildError(f"{model.source} returned {type(module).__name__}, not a torch.nn.Module", stage="model")
    path = _weights_file(model)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            module.load_state_dict(state)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BuildError(f"cannot load weights from {path}: {type(exc).__name__}: {first_line}",
                             stage="weights") from None
    return module.eval()


def category_names(model: ModelSpec) -> list[str] | None:
    """Label names for a detector's outputs: COCO's for torchvision detectors left at 91 classes."""
    module_name = model.source.partition(":")[0]
    if module_name != "torchvision.models.detection" or model.kwargs.get("num_classes", 91) != 91:
        return None
    from torchvision.models._meta import _COCO_CATEGORIES

    return list(_COCO_CATEGORIES)
