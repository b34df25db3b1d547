"""``python -m open_clip_thermal.benchmark``: retrieval tables of trained variants on one test set.

The parser (:mod:`.options`) imports no torch, so ``--help`` is instant; the run (:mod:`.runner`) is
imported only once the arguments are valid.
"""
import logging
import sys
from typing import Optional, Sequence

from ..evaluation.errors import BenchmarkError
from .options import CAPTION_MATCH_RULES, build_parser, parse_lambdas

__all__ = ["main", "build_parser", "parse_lambdas", "CAPTION_MATCH_RULES"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad input, with a one-line message)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .runner import run
    try:
        results = run(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} "
          f"({len(results['rows'])} rows, {results['config']['n_samples']} pairs)")
    return 0
