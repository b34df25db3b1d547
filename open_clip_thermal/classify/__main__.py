"""``python -m open_clip_thermal.classify``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
