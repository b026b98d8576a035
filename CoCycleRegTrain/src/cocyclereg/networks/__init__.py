"""The networks of CoCycleReg: R (dual-head registration UNet), T (3D ResNet translation
generators) and D (3D PatchGAN discriminators)."""

from cocyclereg.networks.discriminator import PatchDiscriminator
from cocyclereg.networks.generator import ResnetGenerator
from cocyclereg.networks.registration import DualHeadUNet

__all__ = ["DualHeadUNet", "PatchDiscriminator", "ResnetGenerator"]
