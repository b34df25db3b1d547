"""Adapter folders on the Hugging Face Hub: :func:`push_adapters` and ``pretrained='hf-hub:ORG/NAME'``.

An adapter repo is an adapter folder (``adapters.py``: ``adapter_config.json`` + one
``<branch>/adapter_model.safetensors`` per branch) plus a generated ``README.md`` model card. The
frozen base is never uploaded: ``adapter_config.json`` names it (``base_model``, ``base_pretrained``)
and the loader builds it through OpenCLIP, as for a local folder.

Loading: ``registry.create_tclip_model`` passes ``pretrained`` through :func:`resolve_pretrained`,
which turns ``'hf-hub:ORG/NAME[@REVISION]'`` into the local snapshot folder of that repo
(``huggingface_hub.snapshot_download``: the Hub cache, ``HF_HUB_CACHE``/``HF_HOME``, and
``HF_HUB_OFFLINE=1`` served from it) and leaves every other value as it is. ``'hf-hub:'`` as a *model
name* (``open_clip.create_model('hf-hub:laion/...')``) never reaches this module: the seam hands
stock names to OpenCLIP, whose own hf-hub handling loads OpenCLIP model repos.

Everything talks to the endpoint huggingface_hub is configured with (``HF_ENDPOINT``), so the
tests run against a loopback server (tests/test_hub.py).
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from huggingface_hub import HfApi, snapshot_download
from open_clip.factory import HF_HUB_PREFIX

from .adapters import adapter_folder, read_adapter_config, save_adapters
from .files import CONFIG_NAME, WEIGHTS_NAME, AdapterError

CARD_NAME = "README.md"  # the file the Hub shows as the model card
DEFAULT_COMMIT_MESSAGE = "Upload T-CLIP LoRA adapters (open_clip_thermal)"
# only the adapter files are fetched: a repo that is no adapter repo costs no large download
ADAPTER_PATTERNS = [CONFIG_NAME, f"*/{WEIGHTS_NAME}"]
PathLike = Union[str, os.PathLike]


def parse_hub_name(pretrained: Any) -> Optional[Tuple[str, Optional[str]]]:
    """``(repo_id, revision)`` of ``'hf-hub:ORG/NAME[@REVISION]'``; None for any other value.

    Raises:
        ValueError: an ``hf-hub:`` value without an ``ORG/NAME`` repo id.
    """
    if not isinstance(pretrained, str) or not pretrained.startswith(HF_HUB_PREFIX):
        return None
    repo_id, _, revision = pretrained[len(HF_HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"pretrained={pretrained!r}: expected 'hf-hub:ORG/NAME' or 'hf-hub:ORG/NAME@REVISION'")
    return repo_id, revision or None


def resolve_pretrained(pretrained: Any, cache_dir: Optional[PathLike] = None) -> Any:
    """The local adapter folder of ``'hf-hub:ORG/NAME[@REVISION]'`` (downloaded into the Hub cache);
    any other ``pretrained`` unchanged.

    Args:
        pretrained: what the caller gave ``create_model`` as ``pretrained``.
        cache_dir: the Hub cache to use (default: huggingface_hub's, ``HF_HUB_CACHE``).

    Raises:
        AdapterError: the repo holds no ``adapter_config.json`` (not an open_clip_thermal adapter repo).
    """
    parsed = parse_hub_name(pretrained)
    if parsed is None:
        return pretrained
    repo_id, revision = parsed
    folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=ADAPTER_PATTERNS)
    if adapter_folder(folder) is None:
        raise AdapterError(
            f"pretrained={pretrained!r}: the repo holds no {CONFIG_NAME}, so it is no open_clip_thermal adapter "
            f"repo. An OpenCLIP model repo loads as a model name: open_clip.create_model('{HF_HUB_PREFIX}{repo_id}')")
    return str(folder)


def push_adapters(model_or_folder: Any, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                  data: Union[None, str, Iterable[str]] = None, recall_table: Union[None, str, Mapping] = None,
                  commit_message: str = DEFAULT_COMMIT_MESSAGE, branches: Optional[Iterable[str]] = None):
    """Upload a T-CLIP model's adapters (or a saved adapter folder) with a generated model card.

    Args:
        model_or_folder: a T-CLIP model (its adapters are saved with ``save_adapters``) or an adapter
            folder; only ``adapter_config.json`` and the branch weights are uploaded, never other files.
        repo_id: ``'ORG/NAME'`` on the Hub (created if missing; an existing repo gets a new commit).
        token: a Hub token with write access (default: ``HF_TOKEN`` or the saved login).
        private: create the repo private (an existing repo keeps its visibility).
        data: the training data, named in the card (``'FLIR ADAS v2 train, global captions'`` or a list).
        recall_table: a Markdown table, ``{row: {column: value}}``, or the benchmark's ``results.json``
            (a path or the parsed dict: its Recall@K rows, in %).
        commit_message: the commit's summary.
        branches: with a model, the branches to upload (default: all).

    Returns:
        huggingface_hub's ``CommitInfo``: ``.repo_url``, ``.oid`` (the commit), ``.commit_url``.
    """
    with tempfile.TemporaryDirectory(prefix="tclip-push-") as staging:
        staging = Path(staging)
        if isinstance(model_or_folder, (str, os.PathLike)):
            _copy_adapter_files(model_or_folder, staging)
        else:
            save_adapters(model_or_folder, staging, branches)
        config = read_adapter_config(staging)
        card = model_card(config, repo_id, data=data, recall_table=recall_table)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(staging), commit_message=commit_message)


def _copy_adapter_files(folder: PathLike, staging: Path) -> None:
    """Copy the config and the weights of every recorded branch (and nothing else) to ``staging``."""
    source = adapter_folder(folder)
    if source is None:
        raise AdapterError(f"{folder} is not an adapter folder (expected {CONFIG_NAME} and <branch>/{WEIGHTS_NAME})")
    config = read_adapter_config(source)
    shutil.copyfile(source / CONFIG_NAME, staging / CONFIG_NAME)
    for branch in config["branches"]:
        weights = source / branch / WEIGHTS_NAME
        if not weights.is_file():
            raise AdapterError(f"adapter {source} records branch {branch!r} but has no {weights}")
        (staging / branch).mkdir()
        shutil.copyfile(weights, staging / branch / WEIGHTS_NAME)


def model_card(config: Mapping, repo_id: str, data: Union[None, str, Iterable[str]] = None,
               recall_table: Union[None, str, Mapping, PathLike] = None) -> str:
    """The README.md of an adapter repo: metadata, what the adapters are, data, recall, how to load."""
    lora = config["lora"]
    base_pretrained = config.get("base_pretrained")
    model_name = config.get("model_name") or "<T-CLIP name with this base and branches>"
    rows = [
        ("T-CLIP model", f"`{model_name}`"),
        ("base model (OpenCLIP)", f"`{config['base_model']}`"),
        ("base weights (pretrained tag)", f"`{base_pretrained}`" if base_pretrained else "none recorded (random base)"),
        ("base fingerprint", f"`{config.get('base_fingerprint')}`"),
        ("activation", str(config.get("activation"))),
        ("branches", ", ".join(f"`{b}`" for b in config["branches"])),
        ("fusion", f"{config.get('fusion')}, λ = {config.get('lam')} (weight of the first branch)"),
        ("LoRA", ", ".join(f"{key} {_setting(value)}" for key, value in lora.items())),
        ("thermal normalisation", f"`{config.get('thermal_norm')}`" if config.get("thermal_norm") else "not recorded"),
        ("versions", f"open_clip {config.get('open_clip_version')}, "
                     f"open_clip_thermal {config.get('open_clip_thermal_version')}"),
    ]
    out = ["---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification",
           "tags:", *[f"- {tag}" for tag in ("open_clip", "open_clip_thermal", "t-clip", "thermal", "lora")], "---", "",
           f"# {repo_id.split('/')[-1]}", "",
           f"T-CLIP LoRA adapters for thermal (LWIR) images, made with open_clip_thermal: LoRA branches on the "
           f"frozen OpenCLIP `{config['base_model']}`, fused at inference. Only the LoRA matrices and each "
           "branch's temperature are in this repo; the base weights load through OpenCLIP.", "",
           "| | |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows], ""]
    if base_pretrained and os.path.isabs(str(base_pretrained)):
        out += [f"The base weights were a local checkpoint (`{base_pretrained}`): pass the same weights as "
                "`base_pretrained=` when loading on another machine.", ""]
    out += ["## Training data", "", _data_text(data), ""]
    if recall_table is not None:
        out += ["## Retrieval recall", "", render_recall_table(recall_table), ""]
    out += ["## How to load", "", "```python", "import open_clip",
            "import open_clip_thermal  # registers the tclip-* names with OpenCLIP", "",
            f"model = open_clip.create_model('{model_name}', pretrained='{HF_HUB_PREFIX}{repo_id}')",
            f"tokenizer = open_clip.get_tokenizer('{config['base_model']}')  # the base's: its text tower is the base's",
            "```", "",
            f"Pin a revision with `pretrained='{HF_HUB_PREFIX}{repo_id}@<commit>'`; `lam=` and `fusion=` override "
            "the recorded fusion. Files: `adapter_config.json` and `<branch>/adapter_model.safetensors`.", ""]
    return "\n".join(out)


def _setting(value: Any) -> str:
    """A LoRA setting as the card shows it: lists joined, None (e.g. last_k_blocks) as 'all'."""
    if value is None:
        return "all"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _data_text(data: Union[None, str, Iterable[str]]) -> str:
    if data is None:
        return "Not recorded."
    names = [data] if isinstance(data, str) else list(data)
    return "\n".join(f"- {name}" for name in names)


def render_recall_table(recall_table: Union[str, Mapping, PathLike]) -> str:
    """A Markdown recall table from Markdown (kept), ``{row: {column: value}}``, or the benchmark's
    ``results.json`` (a path or the parsed dict; recall means in %)."""
    if isinstance(recall_table, os.PathLike) or (isinstance(recall_table, str) and recall_table.endswith(".json")):
        from .evaluation.report import read_results  # names a missing, damaged or foreign file
        recall_table = read_results(recall_table)
    if isinstance(recall_table, str):
        return recall_table.strip()
    if "rows" in recall_table and "config" in recall_table:
        recall_table = {row["label"]: {f"{direction} R@{k}": f"{100 * cell['mean']:.2f}"
                                       for direction, cells in row["recall"].items() for k, cell in cells.items()}
                        for row in recall_table["rows"]}
    columns = list(dict.fromkeys(column for cells in recall_table.values() for column in cells))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(str(cells.get(column, "")) for column in columns) + " |"
              for row, cells in recall_table.items()]
    return "\n".join(lines)
