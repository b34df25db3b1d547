"""Turn cached embeddings into the benchmark's numbers: recall tables, lambda sweep, gap, geometry."""
import itertools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..contracts import FINE_GRAINED, FUSION_FEATURE, FUSION_MODES, FUSION_SCORE, GLOBAL
from .cache import hash_state_dict
from .fused import fuse_branches
from .geometry import mean_feature_angle, mean_intra_group_cosine
from .retrieval import caption_groups, chance_recalls, retrieval_recalls
from .stats import matched_pair_cosine, pairwise_welch_tests
from .variants import REFERENCE_KIND, Row

DIRECTIONS = ("image_to_text", "text_to_image")
Embeddings = Mapping[Tuple[Optional[str], str], torch.Tensor]


def row_features(row: Row, embeddings: Embeddings, lam: float, mode: str = FUSION_FEATURE) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paired (image, text) features of one row for one seed; fused rows fuse cached branch features."""
    if not row.fused:
        return embeddings[(None, "image")], embeddings[(None, row.captions[0])]
    image = fuse_branches({GLOBAL: embeddings[(GLOBAL, "image")], FINE_GRAINED: embeddings[(FINE_GRAINED, "image")]}, lam, mode)
    text = fuse_branches({GLOBAL: embeddings[(GLOBAL, row.captions[0])],
                          FINE_GRAINED: embeddings[(FINE_GRAINED, row.captions[1])]}, lam, mode)
    return image, text


def summarise(per_seed: Sequence[Mapping[str, Mapping[int, float]]]) -> Dict[str, Dict[int, Dict]]:
    """Mean and sample std (ddof=1; None for one seed) over seeds of each direction and K."""
    out: Dict[str, Dict[int, Dict]] = {}
    for direction in DIRECTIONS:
        out[direction] = {}
        for k in per_seed[0][direction]:
            values = np.array([seed[direction][k] for seed in per_seed])
            out[direction][k] = {"mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if values.size > 1 else None,
                                 "per_seed": values.tolist()}
    return out


def mean_recall(summary: Mapping[str, Mapping[int, Mapping]]) -> float:
    """Average of the mean recalls over both directions and all K (the lambda-sweep criterion)."""
    return float(np.mean([cell["mean"] for direction in DIRECTIONS for cell in summary[direction].values()]))


def clip_benchmark_keys(summary: Mapping[str, Mapping[int, Mapping]]) -> Dict[str, float]:
    """CLIP_benchmark names: ``image_retrieval`` = text->image, ``text_retrieval`` = image->text."""
    keys = {}
    for k, cell in summary["text_to_image"].items():
        keys[f"image_retrieval_recall@{k}"] = cell["mean"]
    for k, cell in summary["image_to_text"].items():
        keys[f"text_retrieval_recall@{k}"] = cell["mean"]
    return keys


def duplicate_caption_groups(captions: Mapping[str, Sequence[str]]) -> List[int]:
    """Hit groups for ``--caption-match caption``: samples whose caption record is identical in every
    caption type (global and fine-grained alike) form one group. The same groups serve every row, so
    single-branch and fused rows are scored under one rule."""
    types = sorted(captions)
    return caption_groups(["\x1f".join(captions[t][i] or "" for t in types) for i in range(len(captions[types[0]]))])


def _row_recalls(row: Row, seeds: Sequence[Embeddings], lam: float, mode: str, ks, groups, options) -> Dict:
    per_seed = [retrieval_recalls(*row_features(row, emb, lam, mode), ks=ks, groups=groups, **options) for emb in seeds]
    return summarise(per_seed)


def relative_gains(rows: List[Dict]) -> Dict[str, Dict]:
    """Per row, ``100 * (R - R_ref) / R_ref`` against the first Global LoRA row (empty without one)."""
    reference = next((r for r in rows if r["kind"] == REFERENCE_KIND), None)
    if reference is None:
        return {}
    gains = {}
    for row in rows:
        gains[row["label"]] = {d: {k: (100.0 * (cell["mean"] - reference["recall"][d][k]["mean"]) / reference["recall"][d][k]["mean"]
                                       if reference["recall"][d][k]["mean"] > 0 else None)
                                   for k, cell in row["recall"][d].items()} for d in DIRECTIONS}
    return {"reference": reference["label"], "gains": gains}


def _geometry(variant_rows: Sequence[Row], seeds: Sequence[Embeddings], group_labels) -> Dict:
    fused = variant_rows[0].fused
    branches = (GLOBAL, FINE_GRAINED) if fused else (None,)
    result: Dict = {"branches": {}}
    for branch in branches:
        per_seed = [mean_intra_group_cosine(emb[(branch, "image")], group_labels) for emb in seeds]
        merged = {}
        for group in per_seed[0]:
            values = [s[group]["mean_cosine"] for s in per_seed if s[group]["mean_cosine"] is not None]
            merged[group] = {"count": per_seed[0][group]["count"],
                             "mean_cosine": float(np.mean(values)) if values else None}
        result["branches"][branch or "model"] = merged
    if fused:
        angles = [mean_feature_angle(emb[(GLOBAL, "image")], emb[(FINE_GRAINED, "image")]) for emb in seeds]
        result["branch_angle_deg"] = {"mean": float(np.mean(angles)),
                                      "std": float(np.std(angles, ddof=1)) if len(angles) > 1 else None}
    return result


def image_embeddings_id(seeds: Sequence[Embeddings]) -> Tuple[str, ...]:
    """What identifies a variant's image embeddings, and so its feature geometry: per seed, a hash of
    the branch names and the content of the image features.

    By content, not by tensor object: a variant whose embeddings were read from the disk cache holds
    other tensors than one encoded in this run (or read a second time), yet its geometry is the same.
    """
    return tuple(hash_state_dict({str(branch): tensor for (branch, what), tensor in emb.items() if what == "image"})
                 for emb in seeds)


# The paper's family of gap comparisons (Figure 1, appendix): zero-shot CLIP, Global LoRA and T-CLIP (Dual),
# three Welch tests adjusted together. Each role is the first table row of that kind.
PAPER_GAP_FAMILY = ("zeroshot", "lora-global", "tclip-dual")
GAP_TEST_FAMILIES = ("paper", "all")


def gap_test_pairs(rows: Sequence[Row], family: str) -> Tuple[Optional[List[Tuple[str, str]]], Optional[str]]:
    """The (label, label) comparisons of the gap tests and a note when the family had to change.

    ``family='paper'``: every pair among the first zero-shot, Global LoRA and T-CLIP (Dual) rows present;
    with fewer than two of them present, every pair of rows (said in the note). ``'all'``: every pair (None).
    """
    if family not in GAP_TEST_FAMILIES:
        raise ValueError(f"gap test family must be one of {GAP_TEST_FAMILIES}, got {family!r}")
    if family == "all":
        return None, None
    members = [next(r.label for r in rows if r.kind == kind) for kind in PAPER_GAP_FAMILY
               if any(r.kind == kind for r in rows)]
    if len(members) < 2:
        return None, (f"the paper's family (zero-shot, Global LoRA, T-CLIP Dual) has {len(members)} row(s) here; "
                      "every pair of rows is tested instead")
    return list(itertools.combinations(members, 2)), None


def evaluate(rows: Sequence[Row], embeddings: Mapping[str, Sequence[Embeddings]],
             groups: Optional[Sequence[int]],
             ks: Sequence[int], lam: float, lambdas: Sequence[float], group_labels: Optional[Sequence] = None,
             alpha: float = 0.05, memory_budget_mb: float = 256.0, device: Optional[str] = None,
             gap_tests: str = "paper") -> Dict:
    """All benchmark numbers.

    Args:
        rows: table rows in display order.
        embeddings: variant name -> one embedding dict per seed.
        groups: hit group per sample, the same for every row (``duplicate_caption_groups``); None: the
            paired item is the only hit (the paper's and CLIP_benchmark's protocol).
        ks: Recall@K values (already capped to the test-set size).
        lam: fusion weight of the global branch for the main table.
        lambdas: values for the sweep of ``tclip-dual`` rows.
        group_labels: per-sample metadata value for the geometry analysis (None skips it).
        alpha: false discovery rate for the gap tests.
        gap_tests: ``'paper'`` (zero-shot, Global LoRA, T-CLIP Dual: three comparisons, see
            :func:`gap_test_pairs`) or ``'all'`` (every pair of rows), the family Benjamini-Hochberg adjusts over.
        memory_budget_mb: working memory of one retrieval chunk.
        device: compute device for retrieval.

    Returns:
        dict with ``rows``, ``chance`` (Recall@K of a random ranking under the same hit rule), ``vs_global_lora``, ``fusion_modes``, ``lambda_sweep``, ``thermal_gap``
        and ``geometry`` (see docs/benchmark.md for the layout).
    """
    options = {"memory_budget_mb": memory_budget_mb, "device": device}
    table, fusion_modes, sweeps, cosines = [], [], {}, {}
    for row in tqdm(rows, desc="retrieval", unit="row", leave=False):
        seeds = embeddings[row.variant]
        summary = _row_recalls(row, seeds, lam, FUSION_FEATURE, ks, groups, options)
        pair_cos = np.mean([matched_pair_cosine(*row_features(row, emb, lam)) for emb in seeds], axis=0)
        cosines[row.label] = pair_cos
        table.append({"label": row.label, "variant": row.variant, "kind": row.kind, "captions": list(row.captions),
                      "fusion": FUSION_FEATURE if row.fused else None, "lam": lam if row.fused else None,
                      "n_seeds": len(seeds), "recall": summary, "mean_recall": mean_recall(summary),
                      "clip_benchmark": clip_benchmark_keys(summary)})
        if row.fused:
            by_mode = {FUSION_FEATURE: summary}
            by_mode[FUSION_SCORE] = _row_recalls(row, seeds, lam, FUSION_SCORE, ks, groups, options)
            fusion_modes.append({"label": row.label, "lam": lam,
                                 "modes": {m: {"recall": s, "mean_recall": mean_recall(s)} for m, s in by_mode.items()}})
        if row.kind == "tclip-dual" and lambdas:
            sweep = {"lambdas": [float(x) for x in lambdas]}
            for mode in FUSION_MODES:
                summaries = [_row_recalls(row, seeds, float(x), mode, ks, groups, options) for x in lambdas]
                scores = [mean_recall(s) for s in summaries]
                sweep[mode] = {"mean_recall": scores, "recall_at_1": {d: [s[d][min(ks)]["mean"] for s in summaries] for d in DIRECTIONS},
                               "best_lambda": float(lambdas[int(np.argmax(scores))]), "best_mean_recall": float(max(scores))}
            sweeps[row.label] = sweep
    n_pairs = min(c.size for c in cosines.values())
    note = None
    if len(cosines) > 1 and n_pairs < 2:  # a variance needs two values: no t-test on a one-pair test set
        note = (f"Welch's t-tests skipped: they need at least 2 pairs per row, "
                f"the test set has {n_pairs} pair{'s' if n_pairs != 1 else ''}.")
    gap = {"per_row": {label: {"mean": float(c.mean()), "std": float(c.std(ddof=1)) if c.size > 1 else None, "n": int(c.size)}
                       for label, c in cosines.items()},
           "tests": [], "family": gap_tests, "alpha": alpha, "note": note}
    if len(cosines) > 1 and note is None:
        pairs, gap["note"] = gap_test_pairs(rows, gap_tests)
        gap["tests"] = pairwise_welch_tests(cosines, alpha=alpha, pairs=pairs)
    geometry = {}
    if group_labels is not None:
        # Variants built from the same weights (tclip-global/-fg/-dual of one run) share image
        # embeddings; report their geometry once, under all their names.
        sources: Dict[tuple, List[str]] = {}
        for variant in dict.fromkeys(r.variant for r in rows):
            sources.setdefault(image_embeddings_id(embeddings[variant]), []).append(variant)
        for variants in sources.values():
            variant_rows = [r for r in rows if r.variant == variants[0]]
            geometry[", ".join(variants)] = _geometry(variant_rows, embeddings[variants[0]], group_labels)
    n_samples = len(row_features(rows[0], embeddings[rows[0].variant][0], lam)[0])
    chance = chance_recalls(n_samples, ks, groups)
    return {"rows": table, "chance": {d: {k: {"mean": v, "std": None} for k, v in chance.items()} for d in DIRECTIONS},
            "vs_global_lora": relative_gains(table), "fusion_modes": fusion_modes,
            "lambda_sweep": sweeps, "thermal_gap": gap, "geometry": geometry}
