"""``python -m open_clip_thermal.benchmark``: retrieval tables of trained variants on one test set."""
import argparse
import gc
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..base_model import activation_of
from ..contracts import CAPTION_FIELDS, DEFAULT_LAM
from ..evaluation.cache import EmbeddingCache, cache_key
from ..data.decode import add_norm_arguments, norm_from_args
from ..evaluation.encode import encode_test_set, norm_record, seed_norm
from ..evaluation.errors import BenchmarkError
from ..evaluation.evaluate import duplicate_caption_groups, evaluate
from ..evaluation.report import write_report
from ..evaluation.retrieval import DEFAULT_RECALL_KS, cap_ks
from ..evaluation.shard_reader import data_fingerprint, expand_urls, read_sample_index, unlisted_shards
from ..evaluation.variants import VariantSpec, build_model, check_spec, needed_embeddings, parse_variant, rows_for, zeroshot_spec

_EPILOG = """\
variant syntax: KIND[/TAG]=MODEL[:WEIGHTS[,WEIGHTS...]]
  KIND     lora-global | lora-fg | lora-mixed | tclip-global | tclip-fg | tclip-dual |
           tclip (= the three tclip rows) | clip-adapter | full | declip
  MODEL    name for open_clip_thermal.create_model (tclip-global, tclip-dual, ViT-B-16, ...)
  WEIGHTS  one seed: adapter folder or checkpoint, 'none' for random init, or for tclip kinds
           GLOBAL_DIR+FG_DIR (two single-branch adapter folders). Several seeds -> mean +- std.
examples:
  --variant lora-global=tclip-global:runs/g_s0/adapters,runs/g_s42/adapters,runs/g_s123/adapters
  --variant tclip=tclip-dual:runs/g_s0/adapters+runs/f_s0/adapters,runs/g_s42/adapters+runs/f_s42/adapters
  --variant full=ViT-B-16:runs/full/model.safetensors
definitions (ties, repeated captions, which caption is the query): docs/benchmark.md
"""


# --caption-match value -> the hit rule in words (written to results.json and results.md)
CAPTION_MATCH_RULES = {
    "pair": "paired item only",
    "caption": "paired item and every item with an identical caption record (global + fine-grained)",
}


def _ks(text: str) -> List[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--recall-k expects comma-separated integers, got {text!r}") from None


def parse_lambdas(text: str) -> List[float]:
    """``START:STOP:STEP`` (inclusive) or a comma list; every value must lie in [0, 1]."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            values = np.arange(start, stop + step / 2, step)
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambdas expects START:STOP:STEP or a comma list, got {text!r}") from None
    values = [round(float(v), 6) for v in values]
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--lambdas values must lie in [0, 1], got {values}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.benchmark", allow_abbrev=False,
        description="Thermal image-text retrieval benchmark: Recall@K tables (mean +- std over seeds), "
                    "'vs. Global LoRA' gains, lambda sweep, fusion modes, thermal perception gap "
                    "statistics and feature geometry. Writes results.json, results.md and PNG plots.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+",
                        help="test shards: brace pattern (test-{000000..000003}.tar), '::'-separated list or several paths")
    parser.add_argument("--variant", "--variants", dest="variants", action="append", default=[], metavar="SPEC",
                        help="a model to evaluate, repeatable; syntax below")
    parser.add_argument("--out", required=True, type=Path, help="output folder for results.json, results.md and plots")
    parser.add_argument("--base-model", default="ViT-B-16", help="OpenCLIP name of the zero-shot base (default: ViT-B-16)")
    parser.add_argument("--base-pretrained", default="openai",
                        help="weights of the zero-shot base: OpenCLIP tag or checkpoint, 'none' = random (default: openai)")
    parser.add_argument("--no-zeroshot", action="store_true", help="skip the zero-shot base rows (default: include them)")
    parser.add_argument("--recall-k", type=_ks, default=list(DEFAULT_RECALL_KS),
                        help="comma-separated K values; K above the test-set size is capped with a warning "
                             "(default: 1,5,10,25,50,100)")
    parser.add_argument("--lam", type=float, default=DEFAULT_LAM,
                        help=f"weight of the global branch in fused rows of the main table (default: {DEFAULT_LAM:g})")
    parser.add_argument("--lambdas", type=parse_lambdas, default=parse_lambdas("0:1:0.1"),
                        help="lambda sweep for tclip-dual rows, START:STOP:STEP inclusive or a comma list (default: 0:1:0.1)")
    parser.add_argument("--caption-match", choices=CAPTION_MATCH_RULES, default="pair",
                        help="what counts as a hit, the same rule for every row: 'pair' = only the paired item (the "
                             "paper's and CLIP_benchmark's protocol); 'caption' = also every item whose caption "
                             "record (global and fine-grained captions) is identical to the pair's (default: pair)")
    parser.add_argument("--group-field", default="time_of_day",
                        help="metadata field (from the shards' .json) grouping images for the geometry analysis; "
                             "'' disables it (default: time_of_day)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false discovery rate of the gap tests (default: 0.05)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for encoding and retrieval (default: cuda if available, else cpu)")
    parser.add_argument("--memory-budget-mb", type=float, default=256.0,
                        help="working memory of one similarity chunk; lower it for huge test sets (default: 256)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache folder (default: OUT/embedding_cache)")
    parser.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only (default: cache on disk)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: write them; needs matplotlib)")
    add_norm_arguments(parser.add_argument_group(  # override of the normalisation each variant recorded
        "thermal decoding", "By default every seed's test images are decoded with the normalisation its adapters "
                            "recorded at training (zero-shot rows and unrecorded weights: percentile); these flags "
                            "override it for every row."), default=None)
    return parser


def _check_captions(rows, index) -> None:
    for row in rows:
        for caption_type in dict.fromkeys(row.captions):
            missing = index.missing_captions(caption_type)
            if missing:
                raise BenchmarkError(f"variant {row.variant} needs {caption_type} captions, but {missing} of "
                                     f"{len(index)} samples in the shards lack '.{CAPTION_FIELDS[caption_type]}'")


def _encode_all(specs: Sequence[VariantSpec], args, urls, index, data_id, cache,
                norms) -> Tuple[Dict[str, List[dict]], Dict[str, List[str]]]:
    """One embedding dict per seed of every variant (models sharing weights reuse embeddings), and
    the activation each seed's model ran with (recorded in results.json: QuickGELU for 'openai')."""
    shared: Dict[tuple, dict] = {}  # (model, seed) -> embeddings computed so far
    activation_of_source: Dict[tuple, str] = {}
    embeddings: Dict[str, List[dict]] = {}
    activations: Dict[str, List[str]] = {}
    for spec in specs:
        needs = {need for row in rows_for(spec) for need in needed_embeddings(row)}
        embeddings[spec.name], activations[spec.name] = [], []
        for number, seed in enumerate(spec.seeds):
            norm = norms[spec.name][number][0]  # the thermal decoding of this seed (seed_norm)
            source = (spec.kind == "zeroshot", spec.model, seed, norm)
            have = shared.setdefault(source, {})
            if not needs <= set(have):
                model = build_model(spec, seed)
                activation_of_source[source] = activation_of(model)
                label = f"{spec.name}#{number}" if len(spec.seeds) > 1 else spec.name
                weights = "+".join("none" if w is None else str(w) for w in seed)
                who = f"variant {spec.name}" + (f", seed {number + 1} of {len(spec.seeds)}" if len(spec.seeds) > 1 else "")
                have.update(encode_test_set(model, spec.model, label, needs | set(have), urls, index, data_id, cache,
                                            batch_size=args.batch_size, device=args.device, norm=norm,
                                            who=f"{who} (model {spec.model!r}, weights {weights!r})"))
                del model
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            embeddings[spec.name].append({n: have[n] for n in needs})
            activations[spec.name].append(activation_of_source[source])
    return embeddings, activations


def _warn_mixed_norms(norms: Dict[str, List[tuple]]) -> None:
    used = {name: sorted({norm.describe() for norm, _ in seeds}) for name, seeds in norms.items()}
    if len({text for texts in used.values() for text in texts}) > 1:
        logging.getLogger(__name__).warning(
            "WARNING: variants decode the test images with different thermal normalisations (each its own): %s",
            "; ".join(f"{name}: {', '.join(texts)}" for name, texts in used.items()))


def _record_norms(results: Dict, norms: Dict[str, List[tuple]]) -> None:
    """results.json: the thermal normalisation of every seed (config.variants) and row (rows[].thermal_norm)."""
    per_variant = {name: [norm_record(norm, source) for norm, source in seeds] for name, seeds in norms.items()}
    for variant in results["config"]["variants"]:
        variant["thermal_norm"] = per_variant[variant["name"]]
    for row in results["rows"]:
        seeds = per_variant[row["variant"]]
        row["thermal_norm"] = seeds[0] if all(s == seeds[0] for s in seeds) else seeds


def run(args: argparse.Namespace) -> Dict:
    """Run the benchmark for parsed ``args``; returns the results written to ``args.out``."""
    try:
        override = norm_from_args(args)  # --thermal-norm/--thermal-range override, None: recorded per seed
    except ValueError as error:
        raise BenchmarkError(str(error)) from None
    specs: List[VariantSpec] = []
    if not args.no_zeroshot:
        specs.append(zeroshot_spec(args.base_model, None if args.base_pretrained.lower() == "none" else args.base_pretrained))
    for text in args.variants:
        specs.extend(parse_variant(text))
    if not specs:
        raise BenchmarkError("nothing to evaluate: give --variant specs or drop --no-zeroshot")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BenchmarkError(f"variant names {duplicates} repeat; give repeated kinds a tag, e.g. lora-global/r16=...")
    for spec in specs:
        check_spec(spec)
    if not 0 <= args.lam <= 1:
        raise BenchmarkError(f"--lam must lie in [0, 1], got {args.lam}")
    if not args.recall_k:
        raise BenchmarkError("--recall-k names no K value; give comma-separated integers >= 1, e.g. 1,5,10")
    bad_ks = [k for k in args.recall_k if k < 1]
    if bad_ks:
        raise BenchmarkError(f"--recall-k values must be >= 1 (Recall@K counts the top K items), got {bad_ks}")
    if args.batch_size < 1:
        raise BenchmarkError(f"--batch-size must be >= 1, got {args.batch_size}")
    urls = expand_urls(args.data)
    partial = unlisted_shards(urls)
    for stem, names in partial.items():
        warnings.warn(f"--data leaves out {len(names)} shard(s) of {stem}-* listed in its sizes.json (e.g. {names[0]}): "
                      "these recalls are for part of that split and not comparable with the full test set's; "
                      "name every shard of the split (a brace range such as STEM-{000000..NNNNNN}.tar)")
    index = read_sample_index(urls)
    rows = [row for spec in specs for row in rows_for(spec)]
    _check_captions(rows, index)
    ks = cap_ks(args.recall_k, len(index), what="test set")
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or args.out / "embedding_cache"))
    data_id = cache_key(shards=data_fingerprint(urls), keys=index.keys)
    norms = {s.name: [seed_norm(s.kind, seed, override, s.name) for seed in s.seeds] for s in specs}
    _warn_mixed_norms(norms)
    embeddings, activations = _encode_all(specs, args, urls, index, data_id, cache, norms)
    group_labels = None
    if args.group_field:
        group_labels = [meta.get(args.group_field) for meta in index.metas]
        if all(label is None for label in group_labels):
            warnings.warn(f"no sample has metadata field {args.group_field!r}; skipping the geometry analysis")
            group_labels = None
    groups = None if args.caption_match == "pair" else duplicate_caption_groups(index.captions)
    results = evaluate(rows, embeddings, groups, ks, args.lam, args.lambdas, group_labels,
                       alpha=args.alpha, memory_budget_mb=args.memory_budget_mb, device=args.device)
    results["config"] = {"shards": urls, "left_out_shards": partial, "n_samples": len(index), "ks": ks, "lam": args.lam, "lambdas": args.lambdas,
                         "caption_match": args.caption_match, "protocol": CAPTION_MATCH_RULES[args.caption_match],
                         "group_field": args.group_field or None,
                         "base_model": args.base_model, "base_pretrained": args.base_pretrained,
                         "variants": [{"name": s.name, "kind": s.kind, "model": s.model, "seeds": [list(x) for x in s.seeds],
                                       "activation": activations[s.name]} for s in specs],
                         "clip_benchmark_key_meaning": {"image_retrieval_recall@k": "text->image",
                                                        "text_retrieval_recall@k": "image->text"}}
    _record_norms(results, norms)
    write_report(results, args.out, plots=not args.no_plots)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad input, with a one-line message)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = run(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} "
          f"({len(results['rows'])} rows, {results['config']['n_samples']} pairs)")
    return 0
