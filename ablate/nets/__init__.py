"""Networks: the `ARCHITECTURES` registry, `build_network`, and cost measures."""

from ablate.nets.cost import count_flops, count_parameters
from ablate.nets.unet import ARCHITECTURES, ArchSpec, UNet, build_network

__all__ = ["ARCHITECTURES", "ArchSpec", "UNet", "build_network", "count_flops", "count_parameters"]
