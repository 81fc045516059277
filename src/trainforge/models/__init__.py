from trainforge.models.unet import UNet

__all__ = ["UNet"]
