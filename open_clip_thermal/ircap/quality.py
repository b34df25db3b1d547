"""Caption-quality checks: the RGB-hallucination lint and attribute coverage.

Both are keyword checks over lexicons shipped as JSON in ``open_clip_thermal/ircap/lexicons/``:

* ``rgb_terms.json``: colour and visible-texture words that mean nothing in long-wave infrared
  (the paper's D3 criterion). Decision on false positives: thermal vocabulary that contains a
  colour word (palette names ``white-hot``/``black-hot``, ``red-hot``, ``blackbody``, ``greybody``,
  ``greyscale``, ``black ice``, ``false colour``) is listed under ``allowed`` and removed before
  matching. ``bright``/``dark`` are NOT flagged, unlike the paper's rating guide: they also describe
  radiance in a white-hot display and the scene illumination global captions must describe
  (docs/ircap.md explains, and how to follow the guide with a custom lexicon).
* ``coverage.json``: per caption kind, attribute -> terms; a caption covers an attribute if any
  term occurs as a whole word (the shipped file lists inflections instead of ``*`` prefixes).

Term syntax: case-insensitive whole words; a trailing ``*`` matches any word ending; a space or
hyphen inside a phrase matches spaces or hyphens (``street light`` matches ``street-light``).
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Pattern, Sequence, Tuple, Union

from ..contracts import BRANCHES

LEXICON_DIR = Path(__file__).parent / "lexicons"


def _term_regex(term: str) -> str:
    term = term.strip().lower()
    prefix = term.endswith("*")
    if prefix:
        term = term[:-1]
    words = [re.escape(w) for w in re.split(r"[\s-]+", term) if w]
    body = r"[\s-]+".join(words)
    # Hyphens count as word boundaries, so "dark-coloured" flags "coloured"; compounds that must
    # not be flagged ("white-hot") are masked beforehand by the allowed list.
    return rf"(?<!\w){body}\w*" if prefix else rf"(?<!\w){body}(?!\w)"


def compile_terms(terms: Iterable[str]) -> Pattern:
    """One case-insensitive regex matching any of ``terms`` (see module docstring for syntax)."""
    # Longest first, so that a phrase wins over a word it starts with.
    ordered = sorted({t for t in terms if t.strip()}, key=len, reverse=True)
    if not ordered:
        raise ValueError("lexicon has no terms")
    return re.compile("|".join(f"(?:{_term_regex(t)})" for t in ordered), re.IGNORECASE)


def _load_json(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"lexicon {path} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class LintHit:
    """One flagged word in a caption."""

    term: str  # the text as it appears in the caption
    category: str  # ``colour`` or ``texture``
    start: int
    end: int


class RGBHallucinationLint:
    """Flags colour / visible-texture words in thermal captions.

    Args:
        lexicon_path: JSON with ``colour``, ``texture`` and ``allowed`` term lists; defaults to the
            shipped ``lexicons/rgb_terms.json``.
    """

    CATEGORIES = ("colour", "texture")

    def __init__(self, lexicon_path: Optional[Union[str, Path]] = None):
        self.lexicon_path = Path(lexicon_path or LEXICON_DIR / "rgb_terms.json")
        lexicon = _load_json(self.lexicon_path)
        missing = [k for k in self.CATEGORIES + ("allowed",) if k not in lexicon]
        if missing:
            raise ValueError(f"lexicon {self.lexicon_path} lacks the lists {missing}")
        self.version = lexicon.get("version")
        self._allowed = compile_terms(lexicon["allowed"])
        self._patterns: Dict[str, Pattern] = {c: compile_terms(lexicon[c]) for c in self.CATEGORIES}

    def _mask_allowed(self, caption: str) -> str:
        # Blank out allowed phrases with spaces so offsets stay valid for the hits.
        return self._allowed.sub(lambda m: " " * len(m.group(0)), caption)

    def check(self, caption: str) -> List[LintHit]:
        """All flagged words in ``caption``, in order of appearance."""
        masked = self._mask_allowed(caption)
        hits = []
        for category, pattern in self._patterns.items():
            for m in pattern.finditer(masked):
                hits.append(LintHit(caption[m.start():m.end()], category, m.start(), m.end()))
        return sorted(hits, key=lambda h: h.start)

    def flagged_terms(self, caption: str) -> List[str]:
        """Distinct flagged words (lower case) in order of first appearance."""
        seen: List[str] = []
        for hit in self.check(caption):
            term = hit.term.lower()
            if term not in seen:
                seen.append(term)
        return seen

    def passes(self, caption: str) -> bool:
        """True if the caption has no colour or visible-texture word."""
        return not self.check(caption)


class CoverageLexicon:
    """Attribute lexicons per caption kind, for coverage statistics.

    Args:
        lexicon_path: JSON ``{kind: {attribute: [terms]}}`` with kinds ``global`` and
            ``fine_grained``; defaults to the shipped ``lexicons/coverage.json``.
    """

    KINDS = BRANCHES  # the caption kinds are the branch names

    def __init__(self, lexicon_path: Optional[Union[str, Path]] = None):
        self.lexicon_path = Path(lexicon_path or LEXICON_DIR / "coverage.json")
        lexicon = _load_json(self.lexicon_path)
        self.version = lexicon.get("version")
        self.attributes: Dict[str, Dict[str, Pattern]] = {}
        for kind in self.KINDS:
            if not isinstance(lexicon.get(kind), dict) or not lexicon[kind]:
                raise ValueError(f"lexicon {self.lexicon_path} needs a non-empty {kind!r} object")
            self.attributes[kind] = {a: compile_terms(t) for a, t in lexicon[kind].items()}

    def attributes_of(self, caption: str, kind: str) -> Dict[str, bool]:
        """Which attributes of ``kind`` the caption mentions."""
        return {a: bool(p.search(caption)) for a, p in self._for_kind(kind).items()}

    def coverage(self, captions: Sequence[str], kind: str) -> Dict[str, float]:
        """Share of ``captions`` mentioning each attribute of ``kind`` (0 for no captions)."""
        patterns = self._for_kind(kind)
        if not captions:
            return {a: 0.0 for a in patterns}
        return {a: sum(bool(p.search(c)) for c in captions) / len(captions)
                for a, p in patterns.items()}

    def _for_kind(self, kind: str) -> Dict[str, Pattern]:
        if kind not in self.attributes:
            raise ValueError(f"unknown caption kind {kind!r}; expected one of {self.KINDS}")
        return self.attributes[kind]


def lint_summary(lint: RGBHallucinationLint, captions: Sequence[Tuple[str, str]],
                 max_examples: int = 5) -> dict:
    """Lint a list of ``(record id, caption)``.

    Returns:
        dict with ``count``, ``flagged``, ``share_flagged``, ``top_terms`` (term -> count, most
        frequent first) and ``examples`` (up to ``max_examples`` of ``{id, terms}``).
    """
    term_counts: Dict[str, int] = {}
    flagged = 0
    examples = []
    for record_id, caption in captions:
        terms = lint.flagged_terms(caption)
        if not terms:
            continue
        flagged += 1
        for t in terms:
            term_counts[t] = term_counts.get(t, 0) + 1
        if len(examples) < max_examples:
            examples.append({"id": record_id, "terms": terms})
    top = dict(sorted(term_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    count = len(captions)
    return {"count": count, "flagged": flagged, "share_flagged": flagged / count if count else 0.0,
            "top_terms": top, "examples": examples}
