"""Models served by eclip_ray: the zoo of torchvision and transformers models with random weights."""

from eclip_ray.models.zoo import ECLIP_SET, ZOO_SET, ZooModel, get, register

__all__ = ["ECLIP_SET", "ZOO_SET", "ZooModel", "get", "register"]
