"""Zoo model names and their aliases, as plain data: the planner and the benchmark's mixes resolve
names without importing torch (``zoo.py`` builds the models)."""

from __future__ import annotations

ALIASES = {
    "albert": "albert-base",
    "bert": "bert-base",
    "resnext101": "resnext101_32x8d",
    "shufflenet": "shufflenet_v2_x1_0",
    "shufflenet_v2": "shufflenet_v2_x1_0",
    "mobilenet_v3": "mobilenet_v3_large",
}

ECLIP_SET = ("albert-base", "densenet201", "alexnet", "resnet152", "resnext101_32x8d", "shufflenet_v2_x1_0", "vgg19")
ZOO_SET = (*ECLIP_SET, "resnet50", "bert-base", "mobilenet_v3_large")


def canonical(name: str) -> str:
    """The zoo name of ``name`` (an alias such as ``bert`` becomes ``bert-base``)."""
    return ALIASES.get(name, name)
