"""Where a model comes from, by its ``loader`` string, and whether the app allows it: no torch, no files read.

A loader is a zoo name (``resnet50``, ``transformers:RobertaConfig``, ...), a
``module:factory`` import path of the user's own ``nn.Module`` factory, or
``onnx:<path>`` of a ``.onnx`` file. Import paths are honoured only for modules
under ``allowed_modules``, ONNX files only under ``allowed_model_dirs`` (after
resolving symlinks): a config is not a way to run arbitrary code or read
arbitrary files. The HTTP front checks configs with these (it never imports
torch); the GPU actor checks them again before it builds anything
(``eclip_ray/actor/loader.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ONNX_PREFIX = "onnx:"


def is_import_path(loader: str) -> bool:
    # "transformers:BertConfig" is the zoo's own syntax, and "onnx:<path>" a file, not import paths.
    return ":" in loader and not loader.startswith(("transformers:", ONNX_PREFIX))


def is_onnx(loader: str) -> bool:
    return loader.startswith(ONNX_PREFIX)


def check_allowed(loader: str, allowed_modules: Sequence[str]) -> None:
    """Raise ValueError unless ``loader``'s module lies under one of ``allowed_modules``."""
    module = loader.split(":", 1)[0]
    if not any(module == m or module.startswith(m + ".") for m in allowed_modules):
        raise ValueError(
            f"loader {loader!r}: module {module!r} is not under allowed_modules {list(allowed_modules)}; "
            "add it there to load your own model factory"
        )


def allowed_path(path: str | Path, allowed_dirs: Sequence[str | Path]) -> Path:
    """``path`` resolved, if it is an ``.onnx`` file under one of ``allowed_dirs``; ValueError otherwise."""
    if not allowed_dirs:
        raise ValueError("ONNX models load only from configured directories, and allowed_dirs is empty")
    real = Path(path).resolve()
    roots = [Path(d).resolve() for d in allowed_dirs]
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(f"{path} resolves to {real}, outside the allowed directories {[str(r) for r in roots]}")
    if real.suffix != ".onnx" or not real.is_file():
        raise ValueError(f"{real} is not an .onnx file")
    return real


def check_onnx_allowed(loader: str, allowed_dirs: Sequence[str]) -> Path:
    """The resolved ``.onnx`` file of an ``onnx:<path>`` loader; ValueError unless it lies under ``allowed_dirs``."""
    path = loader[len(ONNX_PREFIX) :]
    if not path:
        raise ValueError(f"loader {loader!r}: give the model file, as onnx:/path/to/model.onnx")
    try:
        return allowed_path(path, allowed_dirs)
    except ValueError as e:
        raise ValueError(f"loader {loader!r}: {e} (allowed_model_dirs: {list(allowed_dirs)})") from None
