"""Oracle diagnostic: how well each caption type can identify an image in principle, with no model.

Retrieval here uses the generator's own facts (:mod:`.facts`) instead of learned features: a
query's candidates are the images whose facts equal the query's, ranked in random order among
themselves and ahead of all others. With ``g`` images sharing the query's facts, the expected
Recall@K is ``min(1, K / g)``. This is the best any model can do from a caption that states exactly
those facts (and perfect perception of the image). If "both" is no better than "global", fusing a
fine-grained branch cannot help, whatever the model.

The same module measures how many 8 x 8 patches the parts that fine-grained captions talk about
cover at the quickstart's image size, so the layout can be checked against the vision tower.
"""
from collections import Counter
from typing import Dict, Hashable, List, Sequence

import numpy as np

from ..contracts import GLOBAL
from .facts import fine_grained_facts, global_facts
from .layout import rasterize
from .scene import sample_scene, scene_rng

ORACLE_KS = (1, 5, 10)
# the report's keys and table rows: the global caption's facts, the fine-grained caption's, and both
FINE_GRAINED_FACTS = "fine-grained"  # spelt as the printed table shows it, not the branch name
BOTH_FACTS = "both"
CAPTION_TYPES = (GLOBAL, FINE_GRAINED_FACTS, BOTH_FACTS)
# Parts whose thermal state a fine-grained caption describes (the engine is the smallest).
EVIDENCE_PARTS = ("vehicle_engine", "vehicle_window", "ped_torso", "building_wall", "road_vacated",
                  "road_shade", "road_damp")


def fact_retrieval(facts: Sequence[Hashable], ks: Sequence[int] = ORACLE_KS) -> Dict[str, object]:
    """Expected retrieval scores when queries and images are matched by identical facts.

    Args:
        facts: one hashable fact set per image (and per paired caption).
        ks: the K of Recall@K.

    Returns:
        dict with ``distinct`` (number of different fact sets), ``unique`` (share of images whose
        facts no other image has), ``recall`` ({K: expected Recall@K, the same in both
        directions}) and ``chance`` ({K: K / N}).
    """
    n = len(facts)
    if n == 0:
        raise ValueError("need at least one image")
    sizes = Counter(facts)
    group = np.array([sizes[f] for f in facts], dtype=np.float64)
    return {"n": n, "distinct": len(sizes), "unique": float(np.mean(group == 1)),
            "recall": {k: float(np.mean(np.minimum(1.0, k / group))) for k in ks},
            "chance": {k: min(1.0, k / n) for k in ks}}


def scene_facts(seed: int, split: str, count: int) -> Dict[str, List[Hashable]]:
    """Global, fine-grained and combined fact sets of scenes ``0 .. count-1`` of ``split``."""
    out: Dict[str, List[Hashable]] = {name: [] for name in CAPTION_TYPES}
    for index in range(count):
        scene = sample_scene(scene_rng(seed, split, index))
        g, f = global_facts(scene), fine_grained_facts(scene)
        out[GLOBAL].append(g)
        out[FINE_GRAINED_FACTS].append(f)
        out[BOTH_FACTS].append((g, f))
    return out


def evidence_coverage(seed: int, split: str, count: int, size: int = 64, patch: int = 8) -> Dict[str, Dict]:
    """Per evidence part: how many ``patch`` x ``patch`` cells one object's part touches, and its pixels.

    Returns:
        ``{kind: {"objects": n, "median_pixels": ..., "median_patches": ..., "min_patches": ...}}``
        over the visible instances (objects hidden behind others are skipped).
    """
    found: Dict[str, List] = {kind: [] for kind in EVIDENCE_PARTS}
    for index in range(count):
        raster = rasterize(sample_scene(scene_rng(seed, split, index)), size)
        for part_id, part in enumerate(raster.parts):
            if part.kind in found:
                rows, cols = np.nonzero(raster.part_map == part_id)
                if rows.size:
                    cells = len(set(zip((rows // patch).tolist(), (cols // patch).tolist())))
                    found[part.kind].append((rows.size, cells))
    summary = {}
    for kind, items in found.items():
        if items:
            pixels, cells = np.array(items).T
            summary[kind] = {"objects": len(items), "median_pixels": float(np.median(pixels)),
                             "median_patches": float(np.median(cells)), "min_patches": int(cells.min())}
    return summary


def oracle_report(seed: int = 0, split: str = "test", count: int = 300, ks: Sequence[int] = ORACLE_KS,
                  size: int = 64, patch: int = 8) -> Dict[str, object]:
    """The oracle diagnostic of one split: fact retrieval per caption type and evidence coverage."""
    facts = scene_facts(seed, split, count)
    return {"seed": seed, "split": split, "count": count,
            "retrieval": {name: fact_retrieval(facts[name], ks) for name in CAPTION_TYPES},
            "coverage": evidence_coverage(seed, split, count, size, patch), "size": size, "patch": patch}


def format_report(report: Dict[str, object]) -> str:
    """Plain-text tables of :func:`oracle_report`."""
    retrieval = report["retrieval"]
    ks = list(retrieval[GLOBAL]["recall"])
    lines = [f"Oracle retrieval from the generator's facts: seed {report['seed']}, split {report['split']}, "
             f"{report['count']} scenes (expected recall in %, ties broken at random)",
             "| facts | distinct sets | identified alone | " + " | ".join(f"R@{k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for name in CAPTION_TYPES:
        r = retrieval[name]
        lines.append(f"| {name} | {r['distinct']} | {100 * r['unique']:.1f}% | "
                     + " | ".join(f"{100 * r['recall'][k]:.2f}" for k in ks) + " |")
    chance = retrieval[GLOBAL]["chance"]
    lines.append("| chance | - | - | " + " | ".join(f"{100 * chance[k]:.2f}" for k in ks) + " |")
    lines += ["", f"Evidence size at {report['size']} px ({report['patch']} x {report['patch']} patches), "
                  "per visible object part:",
              "| part | objects | median pixels | median patches touched | min patches |", "|---|---|---|---|---|"]
    for kind, c in report["coverage"].items():
        lines.append(f"| {kind} | {c['objects']} | {c['median_pixels']:.0f} | {c['median_patches']:.0f} | "
                     f"{c['min_patches']} |")
    return "\n".join(lines)
