"""Retrieval math: hand-made ranks, chunked == brute force, perfect model, K capping."""
import numpy as np
import pytest
import torch

from open_clip_thermal.evaluation.retrieval import (
    caption_groups, cap_ks, first_hit_ranks, recall_from_ranks, retrieval_recalls)


def brute_force_ranks(queries, gallery, q_groups, g_groups):
    """Full matrix + stable sort: the reference definition of the ranking rule."""
    scores = (torch.as_tensor(queries, dtype=torch.float32) @ torch.as_tensor(gallery, dtype=torch.float32).T).numpy()
    ranks = []
    for i, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        hits = np.nonzero(np.asarray(g_groups)[order] == q_groups[i])[0]
        ranks.append(int(hits[0]))
    return np.asarray(ranks)


def test_hand_made_ranks():
    # Unit vectors at known angles: query 0 is nearest gallery 2, then 0, then 1.
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    queries = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    # Scores q0: [0.6, 0.8, 0.96] -> correct item 0 at rank 2.
    # q1: [0, 1, 0.6] -> item 1 rank 0.  q2: [1, 0, 0.8] -> item 2 rank 1.
    ranks = first_hit_ranks(queries, gallery)
    assert ranks.tolist() == [2, 0, 1]
    assert recall_from_ranks(ranks, [1, 2, 3]) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_ties_broken_by_gallery_index():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # All scores equal: correct item i sits behind the i items with lower index.
    assert first_hit_ranks(queries, gallery).tolist() == [0, 1, 2]


def test_repeated_captions_count_as_hits():
    captions = ["a hot car", "a person", "a hot car ", "a tree"]
    groups = caption_groups(captions)
    assert groups == [0, 1, 0, 2]
    text = torch.eye(4)
    text[2] = text[0]  # identical caption -> identical embedding
    image = torch.eye(4)
    image[2] = image[0]  # two frames of the same scene
    strict = first_hit_ranks(image, text)
    grouped = first_hit_ranks(image, text, groups, groups)
    # Image 2 ties with text 0 (lower index) under strict pairs; with groups text 0 is a hit.
    assert strict.tolist() == [0, 0, 1, 0]
    assert grouped.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("n,dim,chunk", [(97, 16, 7), (256, 32, 64), (50, 8, 1)])
def test_chunked_equals_brute_force(n, dim, chunk):
    generator = torch.Generator().manual_seed(n)
    image = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(image + 0.8 * torch.randn(n, dim, generator=generator), dim=-1)
    # Duplicate some texts so exact ties and shared groups occur.
    text[5] = text[3]
    groups = list(range(n))
    groups[5] = 3
    for queries, gallery in ((image, text), (text, image)):
        got = first_hit_ranks(queries, gallery, groups, groups, chunk_size=chunk)
        want = brute_force_ranks(queries, gallery, groups, groups)
        assert got.tolist() == want.tolist()
    assert first_hit_ranks(image, text, chunk_size=chunk).tolist() == \
        brute_force_ranks(image, text, list(range(n)), list(range(n))).tolist()


def test_perfect_model_scores_one():
    features = torch.nn.functional.normalize(torch.randn(40, 12, generator=torch.Generator().manual_seed(0)), dim=-1)
    result = retrieval_recalls(features, features.clone(), ks=[1, 5, 10])
    assert result == {"image_to_text": {1: 1.0, 5: 1.0, 10: 1.0}, "text_to_image": {1: 1.0, 5: 1.0, 10: 1.0}}


def test_k_larger_than_gallery_is_capped_with_warning():
    with pytest.warns(UserWarning, match="exceeds the gallery size 4"):
        assert cap_ks([1, 5, 100], 4) == [1, 4]
    features = torch.eye(4)
    with pytest.warns(UserWarning):
        result = retrieval_recalls(features, features, ks=[1, 10])
    assert list(result["image_to_text"]) == [1, 4]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="paired"):
        retrieval_recalls(torch.eye(3), torch.eye(4)[:2, :3], ks=[1])
    with pytest.raises(ValueError, match="NaN"):
        first_hit_ranks(torch.full((2, 2), float("nan")), torch.eye(2))
    with pytest.raises(ValueError, match="no correct item"):
        first_hit_ranks(torch.eye(2), torch.eye(2), [0, 7], [0, 1])


def test_chance_recalls_equal_exhaustive_enumeration_of_rankings():
    import itertools
    from open_clip_thermal.evaluation.retrieval import chance_recalls
    groups = [0, 0, 1, 2, 2, 2]  # group sizes 2, 1, 3
    n = len(groups)
    hits = {k: 0 for k in (1, 2, 3, 6)}
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        for q in range(n):
            first = next(pos for pos, item in enumerate(order) if groups[item] == groups[q])
            for k in hits:
                hits[k] += first < k
    expected = {k: v / (len(orders) * n) for k, v in hits.items()}
    got = chance_recalls(n, hits, groups)
    assert got == pytest.approx(expected, abs=1e-12)
    assert chance_recalls(2252, [1, 5, 100]) == pytest.approx({1: 1 / 2252, 5: 5 / 2252, 100: 100 / 2252})
