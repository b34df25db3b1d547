"""evaluate(): feature geometry is reported once per set of image embeddings, under all the variants' names."""
import torch

from open_clip_thermal.contracts import FINE_GRAINED, GLOBAL
from open_clip_thermal.evaluation.evaluate import evaluate
from open_clip_thermal.evaluation.variants import parse_variant, rows_for, zeroshot_spec

N = 12
GROUPS = ["day", "night", "dusk"] * (N // 3)
TEXTS = (GLOBAL, FINE_GRAINED)


def _unit(generator):
    return torch.nn.functional.normalize(torch.randn(N, 6, generator=generator), dim=-1)


def realistic_benchmark():
    """The paper's variant list with two seeds: zero-shot, Global LoRA, Fine-grained LoRA, the three
    T-CLIP rows of one set of G+F folders, and a jointly trained dual model.

    tclip-global holds copies of the image embeddings tclip-fg/-dual hold (what a run reading the
    disk cache gets: every cache read is a new tensor), not the same objects."""
    generator = torch.Generator().manual_seed(0)
    specs = [zeroshot_spec("ViT-B-16", "openai"),
             *parse_variant("lora-global=tclip-global:g0,g1"), *parse_variant("lora-fg=tclip-fg:f0,f1"),
             *parse_variant("tclip=tclip-dual:g0+f0,g1+f1"), *parse_variant("tclip-dual/folder=tclip-dual:d0")]
    single = lambda: {(None, what): _unit(generator) for what in ("image",) + TEXTS}  # noqa: E731
    fused = lambda: {(b, what): _unit(generator) for b in (GLOBAL, FINE_GRAINED) for what in ("image",) + TEXTS}  # noqa: E731
    pair_seeds = [fused(), fused()]
    embeddings = {"zeroshot": [single()], "lora-global": [single(), single()], "lora-fg": [single(), single()],
                  "tclip-global": [{key: t.clone() for key, t in seed.items()} for seed in pair_seeds],
                  "tclip-fg": pair_seeds, "tclip-dual": pair_seeds, "tclip-dual/folder": [fused()]}
    return specs, embeddings


def test_geometry_once_per_set_of_image_embeddings_with_the_separate_values():
    specs, embeddings = realistic_benchmark()
    rows = [row for spec in specs for row in rows_for(spec)]
    geometry = evaluate(rows, embeddings, None, [1], 0.7, [], GROUPS)["geometry"]
    assert list(geometry) == ["zeroshot", "lora-global", "lora-fg", "tclip-global, tclip-fg, tclip-dual",
                              "tclip-dual/folder"]  # 5 entries for 7 variants (9 rows)
    alone = {name: [row for spec in specs if spec.name == name for row in rows_for(spec)]
             for name in embeddings}
    for label, entry in geometry.items():
        for name in label.split(", "):  # each name's entry equals its geometry computed on its own
            separate = evaluate(alone[name], {name: embeddings[name]}, None, [1], 0.7, [], GROUPS)["geometry"][name]
            assert entry == separate
    shared = geometry["tclip-global, tclip-fg, tclip-dual"]
    assert list(shared["branches"]) == [GLOBAL, FINE_GRAINED] and shared["branch_angle_deg"]["std"] is not None
    assert all(cell["count"] == 4 for cell in shared["branches"][GLOBAL].values())


def test_different_image_embeddings_are_never_merged():
    specs, embeddings = realistic_benchmark()
    embeddings["tclip-global"][1][(FINE_GRAINED, "image")][0, 0] += 1e-3  # one value of one seed differs
    rows = [row for spec in specs for row in rows_for(spec)]
    geometry = evaluate(rows, embeddings, None, [1], 0.7, [], GROUPS)["geometry"]
    assert list(geometry) == ["zeroshot", "lora-global", "lora-fg", "tclip-global", "tclip-fg, tclip-dual",
                              "tclip-dual/folder"]
    assert geometry["tclip-global"]["branches"][GLOBAL] == geometry["tclip-fg, tclip-dual"]["branches"][GLOBAL]
