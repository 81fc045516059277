from trainforge.models.cnn import CNN
from trainforge.models.seq import SeqEncoder
from trainforge.models.seqsetvae import SeqSetVAE
from trainforge.models.unet import UNet

__all__ = ["CNN", "SeqEncoder", "SeqSetVAE", "UNet"]
