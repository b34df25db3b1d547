"""``python -m open_clip_thermal.reproduce``."""
import sys

from .cli import main

sys.exit(main())
