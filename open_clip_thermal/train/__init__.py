"""``python -m open_clip_thermal.train``: fine-tuning T-CLIP branches and baselines on open_clip_train. The code is in :mod:`.cli`.

Names are forwarded lazily so that ``python -m open_clip_thermal.train`` pays only for what it uses.
"""


import importlib


def __getattr__(name: str):
    cli = importlib.import_module(".cli", __name__)
    try:
        return getattr(cli, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
