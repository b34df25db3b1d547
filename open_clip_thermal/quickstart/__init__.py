"""``python -m open_clip_thermal.quickstart``: the embedded end-to-end job: synthetic data, training, benchmark. The code is in :mod:`.cli`.

Names are forwarded lazily so that ``python -m open_clip_thermal.quickstart`` pays only for what it uses.
"""


import importlib


def __getattr__(name: str):
    cli = importlib.import_module(".cli", __name__)
    try:
        return getattr(cli, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
