"""Versioned IR-Cap prompt templates and the chat messages built from them.

The shipped templates live in ``open_clip_thermal/ircap/prompts/*.txt``. Each file is plain text;
lines starting with ``#`` are comments and are not sent. A prompt's version is the SHA-256 of the
text actually sent (comments excluded), so editing a comment keeps the version and any wording
change gives a new one; every caption record stores these versions.
"""
import hashlib
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..contracts import BRANCHES, FINE_GRAINED, GLOBAL

FIX_PROMPT = "fix_hallucination"
# One prompt per caption kind (the branch names: the two captions every record needs) + the re-ask.
PROMPT_NAMES = BRANCHES + (FIX_PROMPT,)
SHIPPED_PROMPT_DIR = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt: its name, the text sent to the model and the version hash of that text."""

    name: str
    text: str
    source: str  # file the text came from, for error messages and the dry run

    @property
    def version(self) -> str:
        """``name@<first 12 hex digits of sha256(text)>``, stored with each caption."""
        digest = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]
        return f"{self.name}@{digest}"

    def render(self, **values: str) -> str:
        """Fill ``$placeholders`` (only the fix prompt has one, ``$terms``)."""
        return string.Template(self.text).safe_substitute(**values)


def _strip_comments(raw: str) -> str:
    lines = [line for line in raw.splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).strip()


def load_prompt(path: Union[str, Path], name: Optional[str] = None) -> PromptTemplate:
    """Read one template file.

    Args:
        path: the ``.txt`` file.
        name: prompt name; defaults to the file stem.

    Returns:
        The template with comments removed.

    Raises:
        ValueError: if the file has no text besides comments.
    """
    path = Path(path)
    text = _strip_comments(path.read_text(encoding="utf-8"))
    if not text:
        raise ValueError(f"prompt file {path} is empty once '#' comment lines are removed")
    return PromptTemplate(name=name or path.stem, text=text, source=str(path))


@dataclass(frozen=True)
class PromptSet:
    """The three IR-Cap prompts: global caption, fine-grained caption, corrective re-ask."""

    global_: PromptTemplate
    fine_grained: PromptTemplate
    fix_hallucination: PromptTemplate

    def for_kind(self, kind: str) -> PromptTemplate:
        """Prompt for a caption kind (``global`` or ``fine_grained``)."""
        if kind == GLOBAL:
            return self.global_
        if kind == FINE_GRAINED:
            return self.fine_grained
        raise ValueError(f"unknown caption kind {kind!r}; expected one of {BRANCHES}")

    def versions(self) -> Dict[str, str]:
        """Version string of each prompt, keyed by prompt name."""
        return {p.name: p.version for p in (self.global_, self.fine_grained, self.fix_hallucination)}


def load_prompt_set(override_dir: Optional[Union[str, Path]] = None) -> PromptSet:
    """Load the shipped prompts, replacing any that ``override_dir`` provides.

    Args:
        override_dir: folder holding ``global.txt``, ``fine_grained.txt`` and/or
            ``fix_hallucination.txt``; a file missing there falls back to the shipped one.

    Returns:
        The prompt set.

    Raises:
        FileNotFoundError: if ``override_dir`` is given but is not a folder, or holds none of the
            three files (most likely a typo in the path).
    """
    chosen = {}
    if override_dir is not None:
        override_dir = Path(override_dir)
        if not override_dir.is_dir():
            raise FileNotFoundError(f"--prompts folder {override_dir} does not exist")
        for name in PROMPT_NAMES:
            candidate = override_dir / f"{name}.txt"
            if candidate.is_file():
                chosen[name] = load_prompt(candidate, name)
        if not chosen:
            raise FileNotFoundError(
                f"--prompts folder {override_dir} holds none of "
                f"{', '.join(n + '.txt' for n in PROMPT_NAMES)}")
    for name in PROMPT_NAMES:
        if name not in chosen:
            chosen[name] = load_prompt(SHIPPED_PROMPT_DIR / f"{name}.txt", name)
    return PromptSet(global_=chosen[GLOBAL], fine_grained=chosen[FINE_GRAINED],
                     fix_hallucination=chosen[FIX_PROMPT])


def caption_messages(prompt_text: str, image_data_url: str) -> List[dict]:
    """Chat messages for one caption request: the RGB image, then the instruction."""
    return [{
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_data_url}},
            {"type": "text", "text": prompt_text},
        ],
    }]


def fix_messages(first_messages: List[dict], caption: str, fix_prompt: PromptTemplate,
                 flagged_terms: Sequence[str]) -> List[dict]:
    """Follow-up conversation asking the model to rewrite a caption without RGB terms.

    The model sees its own earlier answer and the image again, so it can keep the content and
    drop only the colour / visible-texture words.
    """
    terms = ", ".join(f'"{t}"' for t in flagged_terms)
    return list(first_messages) + [
        {"role": "assistant", "content": caption},
        {"role": "user", "content": fix_prompt.render(terms=terms)},
    ]
