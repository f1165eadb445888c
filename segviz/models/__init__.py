"""One module per paper; importing this package registers every configuration."""
from . import deeplab, dilation, fcn, gcn, pspnet, refinenet, segnet, unet  # noqa: F401
