"""Caption-quality report for an IR-Cap output file (JSON + Markdown).

Sections: RGB-hallucination lint per caption kind (and the re-asks recorded by
``--fix-hallucinations``), the "infrared thermal" prefix, attribute coverage beside the paper's
numbers, caption length in CLIP tokens, and run provenance (models, prompt versions, attempts).
"""
import json
from collections import Counter
from pathlib import Path
from typing import List, Optional, Union

from ..contracts import ANNOTATION_CAPTION_FIELDS, BRANCHES, FINE_GRAINED, GLOBAL
from ..text_stats import caption_token_stats
from .quality import CoverageLexicon, RGBHallucinationLint, lint_summary
from .records import iter_jsonl

# Coverage the T-CLIP paper reports for its IR-Cap captions (fractions); None = not reported.
PAPER_COVERAGE = {
    GLOBAL: {"illumination": 0.99, "time_of_day": 0.75, "weather": 0.65, "materials": None},
    FINE_GRAINED: {"heat_signatures": 1.00, "thermal_phenomena": 0.97},
}
CAPTION_PREFIX = "infrared thermal"


def _captions(records: List[dict], kind: str) -> List[tuple]:
    field = ANNOTATION_CAPTION_FIELDS[kind]
    return [(str(r.get("id")), r[field]) for r in records if isinstance(r.get(field), str)]


def _fix_summary(records: List[dict], kind: str) -> dict:
    asked = resolved = rounds = 0
    for r in records:
        fix = ((r.get("ircap") or {}).get("requests") or {}).get(kind, {}).get("fix")
        if fix:
            asked += 1
            resolved += bool(fix.get("resolved"))
            rounds += int(fix.get("rounds", 0))
    return {"re_asked": asked, "resolved": resolved, "rounds": rounds}


def _provenance(records: List[dict]) -> dict:
    models, servers, prompts = Counter(), Counter(), Counter()
    attempts, seconds = [], []
    truncated = 0
    for r in records:
        info = r.get("ircap") or {}
        truncated += sum(1 for q in (info.get("requests") or {}).values()
                         if isinstance(q, dict) and q.get("finish_reason") == "length")
        models[str(info.get("model"))] += 1
        servers[str(info.get("server"))] += 1
        for version in (info.get("prompts") or {}).values():
            prompts[version] += 1
        if "attempts" in info:
            attempts.append(info["attempts"])
        if "seconds" in info:
            seconds.append(info["seconds"])
    n = len(attempts)
    return {"models": dict(models), "servers": dict(servers), "prompt_versions": dict(prompts),
            "requests_total": sum(attempts),
            "captions_cut_by_max_tokens": truncated,
            "mean_attempts_per_record": sum(attempts) / n if n else 0.0,
            "mean_seconds_per_record": sum(seconds) / len(seconds) if seconds else 0.0}


def build_report(captions_path: Union[str, Path], errors_path: Optional[Union[str, Path]] = None,
                 context_length: int = 77, lint: Optional[RGBHallucinationLint] = None,
                 lexicon: Optional[CoverageLexicon] = None) -> dict:
    """Quality statistics of a caption JSONL.

    Args:
        captions_path: IR-Cap output (``id``, ``global_caption``, ``fg_caption``, ``ircap``...).
        errors_path: the run's errors file, counted when given and present.
        context_length: CLIP text context for the "over context" share.
        lint: RGB-hallucination lint (shipped lexicon by default).
        lexicon: coverage lexicon (shipped one by default).

    Returns:
        JSON-serialisable dict; see :func:`render_markdown` for its sections.
    """
    captions_path = Path(captions_path)
    if not captions_path.is_file():
        raise FileNotFoundError(f"captions file {captions_path} does not exist")
    lint = lint or RGBHallucinationLint()
    lexicon = lexicon or CoverageLexicon()
    records = list(iter_jsonl(captions_path))
    report = {"captions_file": str(captions_path), "records": len(records),
              "lint_lexicon_version": lint.version, "coverage_lexicon_version": lexicon.version,
              "kinds": {}}
    if errors_path is not None and Path(errors_path).is_file():
        errors = list(iter_jsonl(errors_path))
        report["errors"] = {"count": len(errors),
                            "by_stage": dict(Counter(str(e.get("stage")) for e in errors))}
    for kind in BRANCHES:
        pairs = _captions(records, kind)
        texts = [c for _, c in pairs]
        ours = lexicon.coverage(texts, kind)
        prefixed = sum(c.lower().startswith(CAPTION_PREFIX) for c in texts)
        report["kinds"][kind] = {
            "field": ANNOTATION_CAPTION_FIELDS[kind],
            "count": len(texts),
            "lint": lint_summary(lint, pairs),
            "fixes": _fix_summary(records, kind),
            "prefix_share": prefixed / len(texts) if texts else 0.0,
            "coverage": {a: {"ours": v, "paper": PAPER_COVERAGE[kind].get(a)}
                         for a, v in ours.items()},
            "length_clip_tokens": caption_token_stats(texts, context_length=context_length),
        }
    report["provenance"] = _provenance(records)
    return report


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def render_markdown(report: dict) -> str:
    """The report as Markdown tables."""
    lines = [f"# IR-Cap caption report: `{report['captions_file']}`", "",
             f"Records: {report['records']}"]
    if "errors" in report:
        stages = ", ".join(f"{k}: {v}" for k, v in report["errors"]["by_stage"].items())
        lines.append(f"Errors file: {report['errors']['count']} pairs failed ({stages or 'none'})")
    lines += ["", "## RGB-hallucination lint (colour / visible-texture words)", "",
              "| caption | count | flagged | share | re-asked | resolved | top terms |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for kind, k in report["kinds"].items():
        top = ", ".join(f"{t} ({n})" for t, n in list(k["lint"]["top_terms"].items())[:8])
        lines.append(f"| {kind} | {k['count']} | {k['lint']['flagged']} | "
                     f"{_pct(k['lint']['share_flagged'])} | {k['fixes']['re_asked']} | "
                     f"{k['fixes']['resolved']} | {top or '-'} |")
    lines += ["", "## Attribute coverage", "", "| caption | attribute | ours | paper |",
              "|---|---|---:|---:|"]
    for kind, k in report["kinds"].items():
        for attribute, v in k["coverage"].items():
            lines.append(f"| {kind} | {attribute} | {_pct(v['ours'])} | {_pct(v['paper'])} |")
    lines += ["", "## Length in CLIP tokens", "",
              "| caption | mean | p95 | max | over context | share over context | "
              "starts with \"infrared thermal\" |", "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, k in report["kinds"].items():
        s = k["length_clip_tokens"]
        lines.append(f"| {kind} | {s['mean']:.1f} | {s['p95']:.1f} | {s['max']} | "
                     f"{s['over_context']} (> {s['context_length']}) | "
                     f"{_pct(s['share_over_context'])} | {_pct(k['prefix_share'])} |")
    p = report["provenance"]
    lines += ["", "## Provenance", "",
              f"- models: {', '.join(f'{m} ({n})' for m, n in p['models'].items()) or '-'}",
              f"- servers: {', '.join(p['servers']) or '-'}",
              f"- prompt versions: {', '.join(p['prompt_versions']) or '-'}",
              f"- requests: {p['requests_total']} "
              f"(mean {p['mean_attempts_per_record']:.2f} per record, 2 without retries)",
              f"- mean seconds per record: {p['mean_seconds_per_record']:.2f}",
              f"- captions cut by --max-tokens (finish_reason 'length'): "
              f"{p['captions_cut_by_max_tokens']}", ""]
    return "\n".join(lines)


def write_report(report: dict, json_path: Union[str, Path], md_path: Union[str, Path]) -> None:
    """Write the report as JSON and Markdown."""
    Path(json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
    Path(md_path).write_text(render_markdown(report), encoding="utf-8")
