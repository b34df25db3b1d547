"""``python -m open_clip_thermal.export``."""
import sys

from .cli import main

sys.exit(main())
