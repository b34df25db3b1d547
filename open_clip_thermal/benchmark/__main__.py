"""``python -m open_clip_thermal.benchmark``."""
import sys

from .cli import main

sys.exit(main())
