"""``python -m open_clip_thermal.train`` / ``torchrun -m open_clip_thermal.train``: T-CLIP on open_clip_train.

Our flags (see ``--help``) are parsed here; the rest is handed to ``open_clip_train.main.main`` with the
hooks of :mod:`open_clip_thermal.training.hooks` installed for the run.
"""
import contextlib
import io
import logging
import sys
from typing import Optional, Sequence

import open_clip_thermal  # noqa: F401  (registers the T-CLIP models with OpenCLIP once it is imported)
from open_clip_thermal.training.options import (build_parser, parse_args, plan_steps, refuse_stock_loader_flags,
                                                train_options)


def _trainer_help() -> str:
    from open_clip_train.params import parse_args as trainer_parse_args
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        trainer_parse_args(["--help"])
    return buffer.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a training; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = parse_args(argv)
    if ours.help:
        build_parser().print_help()
        print("\nopen_clip_train flags (passed through unchanged):\n")
        print(_trainer_help())
        return 0
    options = train_options(ours)
    from open_clip_train.params import parse_args as trainer_parse_args  # argparse only, no torch
    try:  # before any model is built: flags only open_clip_train's own data loader reads
        refuse_stock_loader_flags(trainer_parse_args(rest))
    except ValueError as e:
        print(f"open_clip_thermal.train: {e}", file=sys.stderr)
        return 2
    trainer_argv = plan_steps(ours, rest)
    # Imported after the flags parse, so that --help and flag errors import no torch.
    import open_clip_train.main as trainer_main
    from open_clip_thermal.training.checkpoints import NonFiniteWeightsError
    from open_clip_thermal.training.hooks import TrainerHooks
    from open_clip_thermal.training.losses import NonFiniteLossError
    try:
        with TrainerHooks(options).installed():
            trainer_main.main(trainer_argv)
    except (NonFiniteLossError, NonFiniteWeightsError) as e:
        logging.error(str(e))
        print(f"open_clip_thermal.train: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # bad data, adapter input or resume checkpoint, named by the raising code
        print(f"open_clip_thermal.train: {e}", file=sys.stderr)
        return 2
    return 0

