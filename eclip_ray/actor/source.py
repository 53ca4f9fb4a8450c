"""A model given as a Python object: an ``nn.Module`` class, a factory returning one, or a module instance.

The path of such a model, end to end:

1. ``eclip_ray.serve.model`` (``eclip_ray/serve/declare.py``) wraps the object in a :class:`ModelSource`
   (cloudpickled here, at once) and sets it as the ``source`` of a ``ModelConfig`` (``eclip_ray/actor/spec.py``),
   with the input and output specs inferred from an example.
2. ``build_app`` (``eclip_ray/serve/api.py``) gives the ingress replicas the config with every source
   :meth:`stripped <ModelSource.stripped>` (``AppConfig.for_front`` in ``eclip_ray/serve/config.py``): the front
   never holds, let alone unpickles, the object. The fleet (``eclip_ray/serve/_private/fleet.py``) passes the whole
   config, payload included, to the GPU actors; it only moves the bytes.
3. In the GPU actor, ``GpuWorker._load`` (``eclip_ray/actor/worker.py``) asks ``zoo_entry``
   (``eclip_ray/actor/loader.py``) for the model's entry; for a source, its ``build`` is :meth:`ModelSource.build`
   under the loader's fixed seed, so a class or a factory makes the same weights in every actor (and in the build
   that inferred the outputs). The runner (``eclip_ray/graph/runner.py``) then runs it like any zoo model.

Strings never become sources: pydantic takes a ``ModelSource`` only as a Python object (``from_python``), so a
config from a file or the network still loads its own code only through ``allowed_modules``
(``eclip_ray/models/sources.py``). Nothing here imports torch; cloudpickle (Ray's) only to pickle.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import sysconfig
from pathlib import Path
from typing import Any, Literal

Kind = Literal["class", "factory", "instance"]
_LIBRARY_DIRS = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
_ALWAYS_IMPORTABLE = ("eclip_ray", "torch", "torchvision", "transformers")


def kind_of(obj: Any) -> Kind:
    """Which of the three accepted forms ``obj`` is; TypeError for anything else."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return "instance"
    if inspect.isclass(obj):
        if not issubclass(obj, nn.Module):
            raise TypeError(f"{obj.__qualname__} is a class but not an nn.Module subclass")
        return "class"
    if callable(obj):
        return "factory"
    raise TypeError(f"a model is an nn.Module class, a factory returning one, or an instance; got {type(obj).__name__}")


def label_of(obj: Any) -> str:
    """``module.qualname`` of a class or a function (a partial's function), ``module.qualname()`` of an instance."""
    if _is_module_instance(obj):
        return f"{type(obj).__module__}.{type(obj).__qualname__}()"
    target = getattr(obj, "func", obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _is_module_instance(obj: Any) -> bool:
    nn = sys.modules.get("torch.nn")
    return nn is not None and isinstance(obj, nn.Module)


def _by_value(obj: Any) -> Any:
    """The module of ``obj``'s own code if the GPU actors may not be able to import it (a user's file, not an
    installed library), for cloudpickle to pickle by value; None otherwise."""
    target = type(obj) if _is_module_instance(obj) else getattr(obj, "func", obj)
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if module is None or module.__name__ == "__main__":  # __main__ is pickled by value anyway
        return None
    if module.__name__.split(".")[0] in _ALWAYS_IMPORTABLE:
        return None
    path = getattr(module, "__file__", None)
    if path is None or any(Path(path).resolve().is_relative_to(Path(d).resolve()) for d in _LIBRARY_DIRS):
        return None
    return module


def _cloudpickle():
    """Ray's own copy of cloudpickle (what its workers unpickle with), else the package."""
    try:
        from ray import cloudpickle
    except ImportError:
        import cloudpickle
    return cloudpickle


class ModelSource:
    """A cloudpickled ``nn.Module`` class, factory or instance, built in the GPU actor.

    ``kind`` says which, ``label`` names it (``module.qualname``) in messages and metadata, and ``digest`` is the
    SHA-256 of the payload, so that two configs of the same object compare equal. The object's own module is
    pickled by value unless it is an installed library's (or ``__main__``, which cloudpickle always pickles by
    value), so a model defined in the user's file needs no import on the actors' machines. A class or a factory
    travels as code (bytes); an instance carries its weights.
    """

    __slots__ = ("digest", "kind", "label", "payload")

    def __init__(self, kind: Kind, label: str, payload: bytes | None, digest: str) -> None:
        self.kind, self.label, self.payload, self.digest = kind, label, payload, digest

    @classmethod
    def of(cls, obj: Any) -> ModelSource:
        """``obj`` pickled now, so that later changes to it do not reach the served model."""
        cloudpickle = _cloudpickle()

        kind = kind_of(obj)
        module = _by_value(obj)
        if module is not None:
            cloudpickle.register_pickle_by_value(module)
        try:
            payload = cloudpickle.dumps(obj)
        finally:
            if module is not None:
                cloudpickle.unregister_pickle_by_value(module)
        return cls(kind, label_of(obj), payload, hashlib.sha256(payload).hexdigest())

    def stripped(self) -> ModelSource:
        """The same source without its payload: what the front holds (it never builds the model)."""
        return ModelSource(self.kind, self.label, None, self.digest)

    def build(self) -> Any:
        """The ``nn.Module``: a class constructed, a factory called, an instance as it was pickled (imports torch)."""
        if self.payload is None:
            raise ValueError(f"model source {self.label}: this copy has no payload (the front's); it cannot be built")
        import pickle

        import torch  # noqa: F401  (unpickling an instance needs torch's reducers)
        from torch import nn

        obj = pickle.loads(self.payload)
        module = obj if self.kind == "instance" else obj()
        if not isinstance(module, nn.Module):
            raise TypeError(f"model source {self.label}: the factory returned {type(module).__name__}, not nn.Module")
        return module

    def describe(self) -> str:
        """How the source shows in dumps and metadata: ``python:<kind>:<label>``; never loadable again."""
        return f"python:{self.kind}:{self.label}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSource) and (self.kind, self.digest) == (other.kind, other.digest)

    def __hash__(self) -> int:
        return hash((self.kind, self.digest))

    def __repr__(self) -> str:
        size = "stripped" if self.payload is None else f"{len(self.payload)} bytes"
        return f"ModelSource({self.describe()}, {size})"

    def __reduce__(self):
        return (ModelSource, (self.kind, self.label, self.payload, self.digest))

    # -- pydantic (AppConfig validates ModelConfig fields; no pydantic import unless asked) -----

    @classmethod
    def __get_pydantic_core_schema__(cls, source_type: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def check(value: Any) -> ModelSource:
            if isinstance(value, cls):
                return value
            raise ValueError(
                f"source takes a Python object (eclip_ray.serve.model(...)), never a {type(value).__name__} from a "
                "config; a config from a file names its own code with loader='module:factory' under allowed_modules"
            )

        return core_schema.no_info_plain_validator_function(
            check, serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.describe())
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "description": "A Python object given in code; not settable from a file."}
