"""The model zoo: torchvision and transformers models built from configs with random weights.

Nothing is downloaded. A zoo entry pairs a module factory with an input
factory. ``get(name)`` also takes any torchvision classification model by its
torchvision name, any transformers encoder config as ``transformers:ConfigClass``
(e.g. ``transformers:RobertaConfig``), or a model registered with ``register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from eclip_ray.models.names import canonical

IMAGE_SHAPE = (3, 224, 224)
SEQ_LEN = 128


@dataclass(frozen=True)
class ZooModel:
    """A model the runtime can build: ``build()`` gives the module, ``make_inputs(batch)`` random inputs."""

    name: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    kind: str
    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]  # without the batch dimension
    input_dtypes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    # Each input's inclusive (low, high), None where any value goes; a function, because text models read it
    # from their transformers config, which is not built until asked for.
    value_ranges: Callable[[], tuple[tuple[int, int] | None, ...]] | None = None

    def ranges(self) -> tuple[tuple[int, int] | None, ...]:
        """Each input's inclusive value range (None: unbounded), e.g. [0, vocab_size - 1] for token ids."""
        return self.value_ranges() if self.value_ranges else (None,) * len(self.input_names)


class EncoderOutput(nn.Module):
    """A transformers encoder that returns its last hidden state as a plain tensor."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids).last_hidden_state


def _image_inputs(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, *IMAGE_SHAPE),)


def image_model(name: str, build: Callable[[], nn.Module]) -> ZooModel:
    return ZooModel(name, build, _image_inputs, "image", ("input",), (IMAGE_SHAPE,), ("FP32",))


def _torchvision(arch: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **kwargs)

    return build


# Inputs of a transformers encoder that index an embedding, and the config field that gives its rows.
_EMBEDDING_ROWS = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size"}


def config_ranges(config: Any, input_names: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
    """[0, rows - 1] for each input that indexes an embedding of a transformers ``config``, else None."""
    rows = [getattr(config, _EMBEDDING_ROWS.get(n, ""), None) for n in input_names]
    return tuple((0, int(r) - 1) if isinstance(r, int) and r > 0 else None for r in rows)


def text_model(name: str, config_factory: Callable[[], Any], seq_len: int = SEQ_LEN) -> ZooModel:
    def build() -> nn.Module:
        from transformers import AutoModel

        return EncoderOutput(AutoModel.from_config(config_factory()))

    def make_inputs(batch: int) -> tuple[torch.Tensor, ...]:
        vocab = config_factory().vocab_size
        return (torch.randint(0, vocab, (batch, seq_len)),)

    names = ("input_ids",)
    return ZooModel(
        name,
        build,
        make_inputs,
        "text",
        names,
        ((seq_len,),),
        ("INT64",),
        value_ranges=lambda: config_ranges(config_factory(), names),
    )


def _albert_base():
    from transformers import AlbertConfig

    # AlbertConfig() defaults to xxlarge (hidden 4096); ECLIP's ALBERT is the base size.
    return AlbertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, embedding_size=128)


def _bert_base():
    from transformers import BertConfig

    return BertConfig()


def _tiny_bert():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )


class TinyCNN(nn.Module):
    """A small CNN for tests: a few conv blocks and a classifier on 3x32x32 images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


_REGISTRY: dict[str, ZooModel] = {}


def register(model: ZooModel) -> ZooModel:
    """Add a model (e.g. a user's own nn.Module factory) to the zoo under ``model.name``."""
    _REGISTRY[model.name] = model
    return model


for _arch in (
    "densenet201",
    "alexnet",
    "resnet152",
    "resnext101_32x8d",
    "shufflenet_v2_x1_0",
    "vgg19",
    "resnet50",
    "mobilenet_v3_large",
):
    register(image_model(_arch, _torchvision(_arch)))
register(text_model("albert-base", _albert_base))
register(text_model("bert-base", _bert_base))
register(text_model("tiny-bert", _tiny_bert, seq_len=16))
register(
    ZooModel(
        "tiny-cnn", TinyCNN, lambda b: (torch.randn(b, 3, 32, 32),), "image", ("input",), ((3, 32, 32),), ("FP32",)
    )
)


def get(name: str) -> ZooModel:
    """Look a model up by zoo name, alias, torchvision name, or ``transformers:ConfigClass``."""
    name = canonical(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("transformers:"):
        import transformers

        cls_name = name.split(":", 1)[1]
        cls = getattr(transformers, cls_name, None)
        if cls is None or not cls_name.endswith("Config"):
            raise KeyError(f"{cls_name!r} is not a transformers config class")
        return register(text_model(name, cls))
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return register(image_model(name, _torchvision(name)))
    raise KeyError(
        f"unknown model {name!r}: not in the zoo {sorted(_REGISTRY)}, not a torchvision classification model, "
        "and not 'transformers:<ConfigClass>'"
    )


def names() -> list[str]:
    return sorted(_REGISTRY)
