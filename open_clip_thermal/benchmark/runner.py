"""The benchmark run: encode every variant's test embeddings (cached), score them and write the report.

Called by :func:`open_clip_thermal.benchmark.cli.main` after the arguments are parsed."""
import argparse
import gc
import logging
import warnings
from typing import Dict, List, Sequence, Tuple

import torch

from ..base_model import activation_of
from ..contracts import CAPTION_FIELDS
from ..evaluation.cache import EmbeddingCache, cache_key
from ..data.decode import norm_from_args
from ..evaluation.encode import encode_test_set, norm_record, seed_norm
from ..evaluation.errors import BenchmarkError
from ..evaluation.evaluate import duplicate_caption_groups, evaluate
from ..evaluation.report import write_report
from ..evaluation.retrieval import cap_ks
from ..evaluation.shard_reader import data_fingerprint, expand_urls, read_sample_index, unlisted_shards
from ..evaluation.variants import VariantSpec, build_model, check_spec, needed_embeddings, parse_variant, rows_for, zeroshot_spec
from .options import CAPTION_MATCH_RULES


def _check_captions(rows, index) -> None:
    for row in rows:
        for caption_type in dict.fromkeys(row.captions):
            missing = index.missing_captions(caption_type)
            if missing:
                raise BenchmarkError(f"variant {row.variant} needs {caption_type} captions, but {missing} of "
                                     f"{len(index)} samples in the shards lack '.{CAPTION_FIELDS[caption_type]}'")


def _check_counts(encoded: Dict[tuple, torch.Tensor], n_samples: int, who: str) -> None:
    """Every embedding covers the whole test set: a shard that yields fewer samples when its images are
    read than when it was indexed (rewritten or cut in between) would otherwise score part of it."""
    for (branch, what), tensor in sorted(encoded.items(), key=str):
        if tensor.shape[0] != n_samples:
            kind = f"{what if what == 'image' else what + ' caption'} embeddings" + (f" of branch {branch}" if branch else "")
            raise BenchmarkError(f"{who}: {tensor.shape[0]} {kind} for the {n_samples} samples indexed in the "
                                 "shards; did a shard change during the run? Run the benchmark again")


def _warn_repeated_keys(keys: Sequence[str]) -> None:
    seen, repeated = set(), []
    for key in keys:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    if repeated:
        warnings.warn(f"{len(repeated)} sample key(s) occur more than once in the shards (e.g. {repeated[0]!r}): "
                      "if they are the same pairs, they weigh more than once in every recall; name each test "
                      "shard once and check the converter's output")


def _group_labels(index, field: str):
    """Per-sample geometry group labels (None: skip the analysis) and how many samples lack the field."""
    if not field:
        return None, None
    labels = [meta.get(field) for meta in index.metas]
    missing = sum(label is None for label in labels)
    if missing == len(labels):
        warnings.warn(f"no sample has metadata field {field!r}; skipping the geometry analysis")
        return None, missing
    if missing:
        warnings.warn(f"{missing} of {len(labels)} samples have no metadata field {field!r}: the feature geometry "
                      "leaves them out (the recall tables use every sample); recorded as config.group_field_missing")
    return labels, missing


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
                who = f"{who} (model {spec.model!r}, weights {weights!r})"
                encoded = encode_test_set(model, spec.model, label, needs | set(have), urls, index, data_id, cache,
                                          batch_size=args.batch_size, device=args.device, norm=norm, who=who)
                _check_counts(encoded, len(index), who)
                # entries already held stay the same objects (a cache read returns a new copy each time)
                have.update({need: tensor for need, tensor in encoded.items() if need not in have})
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
    if args.device is None:  # the parser leaves it open so that --help imports no torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
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
    _warn_repeated_keys(index.keys)
    rows = [row for spec in specs for row in rows_for(spec)]
    _check_captions(rows, index)
    ks = cap_ks(args.recall_k, len(index), what="test set")
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or args.out / "embedding_cache"))
    data_id = cache_key(shards=data_fingerprint(urls), keys=index.keys)
    norms = {s.name: [seed_norm(s.kind, seed, override, s.name) for seed in s.seeds] for s in specs}
    _warn_mixed_norms(norms)
    embeddings, activations = _encode_all(specs, args, urls, index, data_id, cache, norms)
    group_labels, group_missing = _group_labels(index, args.group_field)
    groups = None if args.caption_match == "pair" else duplicate_caption_groups(index.captions)
    results = evaluate(rows, embeddings, groups, ks, args.lam, args.lambdas, group_labels,
                       alpha=args.alpha, memory_budget_mb=args.memory_budget_mb, device=args.device,
                       gap_tests=args.gap_tests)
    results["config"] = {"shards": urls, "left_out_shards": partial, "n_samples": len(index), "ks": ks, "lam": args.lam, "lambdas": args.lambdas,
                         "caption_match": args.caption_match, "protocol": CAPTION_MATCH_RULES[args.caption_match],
                         "group_field": args.group_field or None, "group_field_missing": group_missing,
                         "base_model": args.base_model, "base_pretrained": args.base_pretrained,
                         "variants": [{"name": s.name, "kind": s.kind, "model": s.model, "seeds": [list(x) for x in s.seeds],
                                       "activation": activations[s.name]} for s in specs],
                         "clip_benchmark_key_meaning": {"image_retrieval_recall@k": "text->image",
                                                        "text_retrieval_recall@k": "image->text"}}
    _record_norms(results, norms)
    write_report(results, args.out, plots=not args.no_plots)
    return results
