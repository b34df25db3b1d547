"""``python -m open_clip_thermal.clip_benchmark``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
