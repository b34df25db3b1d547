"""open_clip_thermal: thermal (LWIR) perception for OpenCLIP (T-CLIP)."""
from .version import __version__
