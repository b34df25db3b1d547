"""Run CLIP_benchmark's own CLI (``clip_benchmark.cli.main``) with the T-CLIP plug-in imported first.

The stock ``clip_benchmark`` console script never imports ``open_clip_thermal``, so OpenCLIP does not
know the ``tclip-*`` names and fails with "Model config for 'tclip-tiny-global' not found". Here the
plug-in is imported, then CLIP_benchmark parses the arguments itself, unchanged, with two exceptions:

* precision: CLIP_benchmark runs under ``torch.autocast`` unless ``--no_amp`` is given, which on a CPU
  is bfloat16 and shifts recalls against our fp32 benchmark. Without CUDA, ``--no_amp`` is added unless
  the caller passes ``--amp`` (our flag, removed before CLIP_benchmark parses: keep its autocast);
* ``--pretrained`` with a folder (our adapter folders) and no ``--output``: CLIP_benchmark's default
  output name embeds the ``--pretrained`` text, slashes included, and fails after the whole evaluation
  when writing the result; that is refused at once (exit 2).

While it runs, ``compat.py`` replaces CLIP_benchmark's top-k ``accuracy`` if the installed NumPy makes it
fail (NumPy >= 2.4), and restores it afterwards.
"""
import importlib.util
import os
import sys
from typing import List, Optional, Sequence

AMP_FLAG = "--amp"  # ours: keep CLIP_benchmark's autocast on a CPU
NO_AMP_FLAG = "--no_amp"  # CLIP_benchmark's
INSTALL_HINT = "pip install 'open_clip_thermal[eval]' (or pip install clip_benchmark)"


class PassthroughError(ValueError):
    """The CLIP_benchmark run cannot start (message names why); exit status 2."""


def _option_values(argv: Sequence[str], flag: str) -> Optional[List[str]]:
    """Values of ``flag`` (``--flag A B`` or ``--flag=A``); None when absent."""
    values: Optional[List[str]] = None
    for i, token in enumerate(argv):
        if token == flag:
            values = values or []
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                values.append(value)
        elif token.startswith(flag + "="):
            values = (values or []) + [token.split("=", 1)[1]]
    return values


def prepare_argv(argv: Sequence[str], cuda_available: bool) -> List[str]:
    """CLIP_benchmark's argv from ours: the precision default and the output-name check (module docstring)."""
    argv = list(argv)
    if not argv or argv[0] != "eval" or "-h" in argv or "--help" in argv:
        return argv
    if AMP_FLAG in argv:
        if NO_AMP_FLAG in argv:
            raise PassthroughError(f"{AMP_FLAG} and {NO_AMP_FLAG} contradict each other: give one")
        argv = [token for token in argv if token != AMP_FLAG]
    elif NO_AMP_FLAG not in argv and not cuda_available:
        argv.append(NO_AMP_FLAG)
    pretrained = _option_values(argv, "--pretrained") or []
    has_output = _option_values(argv, "--output") is not None
    with_slash = [p for p in pretrained if "/" in p and not os.path.isfile(p)]
    if with_slash and not has_output:
        raise PassthroughError(f"--pretrained {with_slash[0]!r} holds '/', and CLIP_benchmark's default --output "
                               "name embeds --pretrained, so writing the result would fail: pass --output FILE.json "
                               "(a template may use {dataset}, {model}, {task}, {language})")
    return argv


def run_clip_benchmark(argv: Sequence[str]) -> int:
    """``clip_benchmark ARGV`` with ``open_clip_thermal`` imported first; returns the exit status.

    Raises:
        PassthroughError: clip_benchmark is not installed, or the arguments cannot work (see module docstring).
    """
    if importlib.util.find_spec("clip_benchmark") is None:
        raise PassthroughError(f"clip_benchmark is not installed: {INSTALL_HINT}")
    import torch

    argv = prepare_argv(argv, torch.cuda.is_available())
    # The plug-in first: its seam (seam.py) registers the tclip-* models the moment OpenCLIP is imported,
    # which CLIP_benchmark's CLI module does.
    import open_clip_thermal  # noqa: F401
    from clip_benchmark import cli as clip_benchmark_cli

    from .compat import patched_accuracy

    saved = sys.argv
    sys.argv = ["clip_benchmark", *argv]  # CLIP_benchmark's parser reads sys.argv itself
    try:
        with patched_accuracy():  # compat.py: its classification accuracy fails under NumPy >= 2.4
            status = clip_benchmark_cli.main()
    finally:
        sys.argv = saved
    return int(status or 0)
