"""The one place where T-CLIP training hooks into open_clip_train.

``open_clip_train.main.main`` runs the whole training (logging, distributed set-up, optimizer,
precision, scheduler, the loop, evaluation, checkpoints). It looks up a few collaborators as globals
of its module at call time, and :class:`TrainerHooks` swaps exactly those for the run's duration:

==============================  ===============================================================
``create_model_and_transforms``  builds the T-CLIP model (LoRA branches for ``--branch``), applies
                                 ``--init-from``; everything but LoRA and temperatures is frozen
                                 *before* the optimizer is built, so only those are optimised
``get_data``                     the thermal WebDataset loader (16-bit decode, caption modes)
``create_loss``                  one InfoNCE per branch for ``--branch both``; the DeCLIP loss for
                                 ``--method declip``; stops on NaN/inf
``pt_load`` / ``torch.save``     slim checkpoints (trainable tensors + RNG states + base fingerprint,
                                 never the backbone) and adapter folders at every save, written
                                 atomically and only when finite; read with ``weights_only=True``,
                                 rebuilt on resume, refused on other base weights
``get_latest_checkpoint``        ``--resume latest``: the newest checkpoint that loads (unreadable ones
                                 are skipped and logged)
``torch.nn.parallel.DDP``        without ``device_ids`` on CPU (gloo), which torch rejects
==============================  ===============================================================

Global optimizer hooks (``torch.optim.optimizer.register_optimizer_step_*_hook``) clip gradients per
branch (``--grad-clip-norm``; a global norm would couple the branches), clamp every branch's
temperature as open_clip_train clamps ``logit_scale``, and for ``--method declip`` move the momentum
encoder one EMA step after each optimizer step. All of it is undone on exit.

Methods (``--method``, see docs/baselines.md): ``lora`` (T-CLIP), and the baselines ``full`` (plain
OpenCLIP model, all weights trained, full checkpoints plus ``model.safetensors`` exports),
``clip-adapter`` (frozen CLIP + CLIP-Adapter; slim checkpoints plus CLIP-Adapter folders) and
``declip`` (full fine-tuning with a momentum encoder and queues; full checkpoints, which keep the
momentum state for resuming, plus ``model.safetensors`` exports of the online model).
"""
import contextlib
import glob
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import open_clip
import torch
import torch.nn as nn

from ..adapters import THERMAL_NORM_ATTR, load_adapters, read_adapter_config, save_adapters
from ..files import atomic_replace_dir, atomic_write
from ..data.decode import ThermalNorm
from ..base_model import FORCE_GELU, Provenance, resolve_activation
from ..baselines import (EXPORT_NAME, ClipAdapterModel, DeclipConfig, DeclipLoss, DeclipModel, save_clip_adapter,
                         save_openclip_weights)
from ..contracts import FINE_GRAINED, GLOBAL, MIXED, TCLIP_CUSTOM_PREFIX
from ..model import DualLoRAFusion
from ..settings import BOTH, BRANCH_MODES, CLIP_ADAPTER_ALPHA, CLIP_ADAPTER_REDUCTION, METHODS, LoRAConfig
from ..registry import get_tclip_config, list_tclip_models, register_tclip_model, unregister_tclip_model
from .checkpoints import (MARKER, NonFiniteWeightsError, ResumeError, check_base, expand_checkpoint, first_non_finite,
                          is_slim, load_checkpoint, optimizer_tensors, restore_rng_state, slim_checkpoint)
from .losses import DualBranchClipLoss, FiniteLossGuard
from .options import refuse_stock_loader_flags

# branch mode -> (branches of the model, caption mode of the loader)
_BRANCH_LAYOUT = {
    GLOBAL: ((GLOBAL,), GLOBAL),
    FINE_GRAINED: ((FINE_GRAINED,), FINE_GRAINED),
    MIXED: ((MIXED,), MIXED),
    BOTH: ((GLOBAL, FINE_GRAINED), BOTH),
}
MAX_LOGIT_SCALE = math.log(100)  # open_clip_train's clamp


@dataclass
class TrainOptions:
    """The T-CLIP-specific settings of a run (everything else is an open_clip_train flag)."""
    branch: str = GLOBAL  # global | fine_grained | mixed | both
    method: str = "lora"  # lora | full | clip-adapter | declip
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    clip_adapter_alpha: float = CLIP_ADAPTER_ALPHA  # residual ratio of --method clip-adapter
    clip_adapter_reduction: int = CLIP_ADAPTER_REDUCTION  # bottleneck reduction of --method clip-adapter
    declip: DeclipConfig = field(default_factory=DeclipConfig)
    init_from: Optional[str] = None  # adapter folder to start the branch(es) from
    grad_clip_norm: Optional[float] = None  # per branch
    thermal_norm: Union[str, ThermalNorm] = "percentile"  # a mode name or a ThermalNorm (range, percentiles)
    force_gelu: bool = False  # GELU on QuickGELU weights (base_model.resolve_activation)
    strict_data: bool = False


class _StackedCaptions:
    """Turns ``(images, global_tokens, fg_tokens)`` batches into ``(images, tokens[B, 2, L])``:
    open_clip_train's loop unpacks exactly two items and moves ``texts`` to the device."""

    def __init__(self, loader):
        self.loader = loader
        self.num_batches = loader.num_batches
        self.num_samples = loader.num_samples

    def __iter__(self):
        for batch in self.loader:
            images, global_tokens, fg_tokens = batch[:3]
            yield images, torch.stack([global_tokens, fg_tokens], dim=1)

    def __len__(self):
        return self.num_batches


class _Overlay:
    """A module stand-in: the given attributes replaced, every other one the module's own."""

    def __init__(self, module, **overrides):
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _cpu_friendly_ddp(module, device_ids=None, **kwargs):
    """open_clip_train passes ``device_ids=[device]`` even for CPU, which DDP rejects; drop it there."""
    if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
        device_ids = None
    # models whose buffers stay in sync by construction (DeCLIP's momentum encoder) opt out of the
    # per-step buffer broadcast
    kwargs.setdefault("broadcast_buffers", getattr(module, "ddp_broadcast_buffers", True))
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def _torch_for_trainer(hooks: "TrainerHooks") -> _Overlay:
    """Stands in for ``torch`` inside ``open_clip_train.main`` only: ``torch.save`` goes through
    :meth:`TrainerHooks.save_checkpoint`, DDP accepts CPU devices, everything else is the real torch."""
    parallel = _Overlay(torch.nn.parallel, DistributedDataParallel=_cpu_friendly_ddp)
    return _Overlay(torch, save=hooks.save_checkpoint, nn=_Overlay(torch.nn, parallel=parallel))


class TrainerHooks:
    """Install with ``with TrainerHooks(options).installed(): open_clip_train.main.main(argv)``."""

    def __init__(self, options: TrainOptions):
        if options.branch not in BRANCH_MODES:
            raise ValueError(f"--branch must be one of {BRANCH_MODES}, got {options.branch!r}")
        if options.method not in METHODS:
            raise ValueError(f"--method {options.method!r} is not supported (choose from {', '.join(METHODS)})")
        if options.method != "lora" and options.branch == BOTH:
            raise ValueError(f"--method {options.method} trains one model on one caption type; --branch both "
                             "needs --method lora (train a baseline per caption type, or use --branch mixed)")
        if options.method != "lora" and options.init_from:
            raise ValueError(f"--init-from loads LoRA adapters and needs --method lora, not {options.method}")
        self.options = options
        self.model: Optional[nn.Module] = None
        self.first_step = 0
        self._pending_rng = None
        self._loss_guard: Optional[FiniteLossGuard] = None
        self._last_saved: Optional[Path] = None  # the last epoch checkpoint this run wrote
        self._preloaded: Dict[str, dict] = {}  # --resume latest: the checkpoint already read to pick it
        self._clip_groups: Dict[str, List[nn.Parameter]] = {}
        self._originals = {}
        self._registered: Dict[str, Optional[dict]] = {}  # names registered for this run -> config before
        self._run_dir: Optional[Path] = None  # open_clip_train's run folder (--logs/--name), from its args

    # ------------------------------------------------------------------ model
    def _tclip_name(self, model_name: str) -> str:
        if model_name in list_tclip_models():
            return model_name
        # A stock OpenCLIP architecture: register the recipe on it under a derived name.
        name = TCLIP_CUSTOM_PREFIX + model_name
        if name not in self._registered:  # undone when the run ends (installed)
            self._registered[name] = get_tclip_config(name) if name in list_tclip_models() else None
        register_tclip_model(name, {"base_model": model_name, "branches": [GLOBAL],
                                    "lora": self.options.lora.to_dict()})
        return name

    def create_model_and_transforms(self, model_name: str, pretrained: Optional[str] = None, **kwargs):
        branches, _ = _BRANCH_LAYOUT[self.options.branch]
        if self.options.method != "lora":
            model, pp_train, pp_val = self._create_baseline(model_name, pretrained or None, kwargs)
            self._clip_groups = {"model": [p for p in model.parameters() if p.requires_grad]}
        else:
            name = self._tclip_name(model_name)
            model, pp_train, pp_val = open_clip.create_model_and_transforms(
                name, pretrained or None, lora=self.options.lora, branches=list(branches),
                **{**kwargs, FORCE_GELU: self.options.force_gelu})
            if self.options.init_from:
                self._init_from(model, self.options.init_from)
            self._clip_groups = {b: [p for n, p in model.named_parameters()
                                     if p.requires_grad and (n.endswith("." + b) or n == f"logit_scales.{b}")]
                                 for b in model.branches}
        from ..data.loader import resolve_norm
        # recorded in the saved adapter config (adapters.adapter_config); the benchmark decodes with it
        setattr(model, THERMAL_NORM_ATTR, resolve_norm(self.options.thermal_norm).to_dict())
        self.model = model
        return model, pp_train, pp_val

    def _create_baseline(self, model_name: str, pretrained: Optional[str], kwargs: dict):
        """The base CLIP of ``model_name`` (a T-CLIP name stands for its base), wrapped for the method."""
        base_name = get_tclip_config(model_name)["base_model"] if model_name in list_tclip_models() else model_name
        kwargs = resolve_activation(base_name, pretrained, {**kwargs, FORCE_GELU: self.options.force_gelu})
        base, pp_train, pp_val = open_clip.create_model_and_transforms(base_name, pretrained, **kwargs)
        method = self.options.method
        if method == "clip-adapter":
            model = ClipAdapterModel(base, alpha=self.options.clip_adapter_alpha,
                                     reduction=self.options.clip_adapter_reduction,
                                     output_dict=bool(kwargs.get("output_dict")))
        elif method == "declip":
            model = DeclipModel(base, self.options.declip, output_dict=bool(kwargs.get("output_dict")))
        else:
            model = base
        recorded = os.path.abspath(pretrained) if pretrained and os.path.exists(pretrained) else pretrained
        # a plain OpenCLIP model (--method full) takes the attribute too: the export header records it
        model.provenance = Provenance(model_name=method, base_model=base_name, base_pretrained=recorded)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logging.info(f"--method {method} on base {base_name}: {trainable:,} trainable parameters")
        return model, pp_train, pp_val

    @staticmethod
    def _init_from(model: DualLoRAFusion, folder: str) -> None:
        saved = read_adapter_config(folder)["branches"]
        if len(saved) == 1:  # cross-initialisation: one trained branch starts every branch
            for b in model.branches:
                load_adapters(model, folder, as_branch=b)
        else:
            load_adapters(model, folder, {b: b for b in model.branches if b in saved})
        logging.info(f"initialised branches {list(model.branches)} from adapters {folder}")

    # ------------------------------------------------------------------ data
    def _remember_run(self, args) -> None:
        """The run folder, as open_clip_train's ``main`` derives it from its parsed arguments
        (``log_base_path = --logs/--name``; ``args.checkpoint_path`` is its ``checkpoints`` folder)."""
        if getattr(args, "logs", None) and getattr(args, "name", None):
            self._run_dir = Path(args.logs) / args.name
        elif getattr(args, "checkpoint_path", None):
            self._run_dir = Path(args.checkpoint_path).parent

    def get_data(self, args, preprocess_fns, epoch: int = 0, tokenizer=None):
        self._remember_run(args)
        refuse_stock_loader_flags(args)  # the CLI checked already; this covers other callers of the hooks
        from ..data.loader import check_captions_available, make_thermal_dataloader
        pp_train, pp_val = preprocess_fns
        _, caption_mode = _BRANCH_LAYOUT[self.options.branch]
        common = dict(thermal_norm=self.options.thermal_norm, strict=self.options.strict_data, seed=args.seed,
                      rank=args.rank, world_size=args.world_size)
        data = {}
        if args.train_data:
            check_captions_available(args.train_data, caption_mode)
            info = make_thermal_dataloader(
                args.train_data, pp_train, tokenizer, batch_size=args.batch_size, num_workers=args.workers,
                num_samples=args.train_num_samples, is_train=True, resampled=args.dataset_resampled,
                epoch=epoch, captions=caption_mode, **common)
            if caption_mode == BOTH:
                info.dataloader = _StackedCaptions(info.dataloader)
            data["train"] = info
            self.first_step = epoch * info.dataloader.num_batches
        if args.val_data:
            val_captions = FINE_GRAINED if self.options.branch == FINE_GRAINED else GLOBAL
            data["val"] = make_thermal_dataloader(
                args.val_data, pp_val, tokenizer, batch_size=args.batch_size, num_workers=args.workers,
                num_samples=args.val_num_samples, is_train=False, captions=val_captions, **common)
        if self._pending_rng is not None:  # resume: continue the interrupted run's random stream
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        return data

    # ------------------------------------------------------------------ loss
    def create_loss(self, args):
        self._remember_run(args)
        clip_loss_args = dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                              rank=args.rank, world_size=args.world_size, use_horovod=args.horovod)
        if self.options.branch == BOTH and self.options.method == "lora":
            loss = DualBranchClipLoss(**clip_loss_args)
        elif self.options.method == "declip":
            if getattr(args, "accum_freq", 1) != 1:
                raise ValueError("--method declip does not support --accum-freq > 1 (open_clip_train would "
                                 "concatenate the queue snapshots of the accumulated batches)")
            loss = DeclipLoss(self.options.declip, **clip_loss_args)
        else:
            loss = self._originals["create_loss"](args)
        self._loss_guard = FiniteLossGuard(loss, first_step=self.first_step)
        return self._loss_guard

    # ------------------------------------------------------------------ checkpoints
    def pt_load(self, path, map_location=None):
        """open_clip_train's ``pt_load`` with ``weights_only=True`` (whatever torch's default), the
        slim checkpoint's base fingerprint checked against this run's base, and the full state rebuilt."""
        checkpoint = self._preloaded.pop(path, None)
        if checkpoint is None:
            checkpoint = load_checkpoint(path, map_location=map_location)
        if is_slim(checkpoint):
            check_base(checkpoint, self.model, path)
            self._pending_rng = checkpoint[MARKER]["rng"]
            checkpoint = expand_checkpoint(checkpoint, self.model)
        return checkpoint

    def get_latest_checkpoint(self, path: str, remote: bool):
        """``--resume latest``: open_clip_train's choice (newest by natural sort), but a checkpoint that
        does not load (truncated by a kill, corrupt, unsafe) is skipped, with a warning saying why."""
        if remote:
            return self._originals["get_latest_checkpoint"](path, remote)
        import open_clip_train.main as trainer_main
        candidates = sorted(glob.glob(path + "**/*.pt", recursive=True), key=trainer_main.natural_key, reverse=True)
        skipped = []
        for candidate in candidates:
            try:
                checkpoint = load_checkpoint(candidate, map_location="cpu")
            except ResumeError as e:
                logging.warning(f"skipping resume checkpoint {candidate}: {e}")
                skipped.append(candidate)
                continue
            if skipped:
                logging.warning(f"resuming from {candidate} instead of the newer {', '.join(skipped)}")
            self._preloaded = {candidate: checkpoint}
            return candidate
        if skipped:
            raise ResumeError(f"--resume latest: none of the checkpoints in {path} loads ({', '.join(skipped)}); "
                              "see out.log, or pass --resume with a checkpoint")
        return None

    def _check_finite(self, obj: dict, state: dict, path: Path) -> None:
        """Raise :class:`NonFiniteWeightsError` (before anything is written) when a tensor to be saved
        holds NaN/inf: the loss guard sees the loss of a step, not the weights its update produced."""
        bad = first_non_finite(state.items()) or first_non_finite(optimizer_tensors(obj.get("optimizer")))
        if bad is None:
            return
        guard = self._loss_guard
        step = f"step {guard.step - 1}" if guard is not None and guard.step > 0 else "the last step"
        if self._last_saved is not None:
            kept = f"the last checkpoint written, {self._last_saved}, and its adapters are intact"
        else:
            kept = f"this process wrote no checkpoint before; those already in {path.parent} are untouched"
        raise NonFiniteWeightsError(
            f"non-finite weights after {step} (epoch {obj.get('epoch')}): {bad} holds NaN/inf; refusing to write "
            f"{path.name} and the adapters - {kept} (lower --lr, clip gradients, or use fp32)")

    def save_checkpoint(self, obj, f, *args, **kwargs):
        is_train_state = isinstance(obj, dict) and "state_dict" in obj and "epoch" in obj
        if not is_train_state:
            if isinstance(f, (str, os.PathLike)):
                return atomic_write(f, lambda tmp: torch.save(obj, tmp, *args, **kwargs))
            return torch.save(obj, f, *args, **kwargs)
        path = Path(f)
        if self._run_dir is None:
            raise RuntimeError("TrainerHooks.save_checkpoint: the run folder is not known yet (open_clip_train "
                               "passes its arguments to get_data/create_loss before any checkpoint is saved)")
        run_dir = self._run_dir
        epoch_save = path.name != "tmp.pt"  # the save-most-recent copy repeats an epoch save
        # every file is written to a temporary name and renamed: a kill mid-save leaves the old state
        if self.options.method in ("lora", "clip-adapter"):  # frozen backbone: never saved
            slim = slim_checkpoint(obj, self.model)
            self._check_finite(obj, slim["state_dict"], path)
            atomic_write(path, lambda tmp: torch.save(slim, tmp, *args, **kwargs))
            if epoch_save:
                self._write_adapters(path.with_name(path.stem + "_adapters"))
            self._write_adapters(run_dir / "adapters")
        else:  # full, declip: everything trains; the checkpoint also keeps DeCLIP's momentum state
            self._check_finite(obj, obj["state_dict"], path)
            atomic_write(path, lambda tmp: torch.save(obj, tmp, *args, **kwargs))
            if epoch_save:
                save_openclip_weights(self.model, path.with_name(f"{path.stem}_{EXPORT_NAME}"))
            save_openclip_weights(self.model, run_dir / EXPORT_NAME)
        if epoch_save:
            self._last_saved = path

    def _write_adapters(self, folder: Path) -> None:
        """Write to a fresh temporary folder, then swap it in, so readers never see half a folder."""
        save = save_clip_adapter if isinstance(self.model, ClipAdapterModel) else save_adapters
        atomic_replace_dir(folder, lambda tmp: save(self.model, tmp))

    # ------------------------------------------------------------------ optimizer hooks
    def _clip_per_branch(self, optimizer, args, kwargs):
        max_norm = self.options.grad_clip_norm
        if max_norm is None:
            return
        for params in self._clip_groups.values():
            with_grad = [p for p in params if p.grad is not None]
            if with_grad:
                torch.nn.utils.clip_grad_norm_(with_grad, max_norm, norm_type=2.0)

    def _clamp_temperatures(self, optimizer, args, kwargs):
        scales = getattr(self.model, "logit_scales", None)
        if scales is not None:
            with torch.no_grad():
                for p in scales.values():
                    p.clamp_(0, MAX_LOGIT_SCALE)

    def _update_momentum(self, optimizer, args, kwargs):
        if isinstance(self.model, DeclipModel):
            self.model.update_momentum()

    # ------------------------------------------------------------------ install
    @contextlib.contextmanager
    def installed(self) -> Iterator["TrainerHooks"]:
        """Swap the hooks into ``open_clip_train.main`` for the duration of the block.

        Every process-wide change (optimizer hooks, ``open_clip_train.main`` globals, model names
        registered for the run, logging) registers its own undo on one :class:`contextlib.ExitStack`
        as it is made, so an exception part-way through setup, or in the block, leaves nothing behind.
        """
        import open_clip_train.main as trainer_main
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        replacements = {
            "create_model_and_transforms": self.create_model_and_transforms,
            "get_data": self.get_data,
            "create_loss": self.create_loss,
            "pt_load": self.pt_load,
            "get_latest_checkpoint": self.get_latest_checkpoint,
            "torch": _torch_for_trainer(self),
        }
        with contextlib.ExitStack() as stack:
            # unwound last: names registered while the run builds its model (see _tclip_name)
            stack.callback(self._unregister_run_names)
            for register, hook in ((register_optimizer_step_pre_hook, self._clip_per_branch),
                                   (register_optimizer_step_post_hook, self._clamp_temperatures),
                                   (register_optimizer_step_post_hook, self._update_momentum)):
                stack.callback(register(hook).remove)
            self._originals = {}
            for name, value in replacements.items():
                self._originals[name] = original = getattr(trainer_main, name)
                stack.callback(setattr, trainer_main, name, original)
                setattr(trainer_main, name, value)
            stack.enter_context(_restored_logging())
            yield self

    def _unregister_run_names(self) -> None:
        """Undo :meth:`_tclip_name`'s registrations: a name that existed before gets its config back."""
        while self._registered:
            name, previous = self._registered.popitem()
            if previous is None:
                unregister_tclip_model(name)
            else:
                register_tclip_model(name, previous)


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """open_clip_train's setup_logging adds root handlers on every run and sets every existing logger
    (torch's included) to INFO; undo both on exit so in-process reruns and callers stay quiet."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    root_level = root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(root_level)
        for name, lg in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
