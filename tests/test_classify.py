"""Zero-shot classification: metrics against hand-computed values, crop helpers, the CLI on a tiny tree."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_thermal.classify.cli import main
from open_clip_thermal.classify.crops import coco_crops
from open_clip_thermal.classify.metrics import classification_metrics
from open_clip_thermal.classify.synthetic_tree import synthetic_crops
from open_clip_thermal.classify.templates import TemplateError, load_templates, prompts_for
from open_clip_thermal.classify.zeroshot import FUSED, scores_from_embeddings
from open_clip_thermal.contracts import FINE_GRAINED, FUSION_FEATURE, FUSION_SCORE, GLOBAL

CLASSES = ["a", "b", "c", "d", "e", "f"]


def fixed_embeddings():
    """6 classes on the axes of R^6, 8 images with hand-placed scores (targets below)."""
    classes = np.eye(6)
    images = np.array([
        [1.0, 0.2, 0, 0, 0, 0],   # a -> a (top1)
        [0.1, 0.9, 0, 0, 0, 0],   # a -> b, a is 2nd (top5 hit)
        [0, 1.0, 0, 0, 0, 0],     # b -> b
        [0, 0, 1.0, 0, 0, 0],     # c -> c
        [0.5, 0.4, 0.3, 0.2, 0.1, 0],  # f -> a, f ranked 6th (top5 miss)
        [0, 0, 0, 0.9, 0.1, 0],   # e -> d, e 2nd
        [0, 0, 0, 0, 0.3, 1.0],   # e -> f, e 2nd
        [0, 0, 0, 0, 0, 1.0],     # f -> f
    ])
    targets = [0, 0, 1, 2, 5, 4, 4, 5]
    return images @ classes.T, targets


def test_metrics_equal_hand_computed_reference():
    scores, targets = fixed_embeddings()
    m = classification_metrics(scores, targets, CLASSES)
    assert m["acc1"] == pytest.approx(4 / 8)  # images 0, 2, 3, 7
    assert m["acc5"] == pytest.approx(7 / 8)  # all but image 4
    per = {name: m["per_class"][name]["acc1"] for name in CLASSES}
    assert per == {"a": 0.5, "b": 1.0, "c": 1.0, "d": None, "e": 0.0, "f": 0.5}
    assert m["per_class"]["d"]["n"] == 0
    # mean over the 5 classes with images (class d has none), as balanced accuracy
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 1 + 0 + 0.5) / 5)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 8 and cm[0, 1] == 1 and cm[5, 0] == 1 and cm[4, 3] == 1 and cm[4, 5] == 1
    assert np.trace(cm) == 4


def test_acc5_is_none_below_five_classes_and_ties_go_to_lower_index():
    m = classification_metrics(np.array([[0.5, 0.5, 0.1], [0.1, 0.2, 0.9]]), [0, 2], ["x", "y", "z"])
    assert m["acc5"] is None and m["acc1"] == 1.0


def test_score_fusion_is_lambda_weighted_sum_of_branch_cosines():
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    images = {GLOBAL: unit(5, 8), FINE_GRAINED: unit(5, 8)}
    classes = {GLOBAL: unit(3, 8), FINE_GRAINED: unit(3, 8)}
    from open_clip_thermal.model import fuse_features
    classes[FUSED] = fuse_features(classes, 0.3, FUSION_SCORE)
    scores = scores_from_embeddings(images, classes, 0.3, FUSION_SCORE)
    expected = 0.3 * images[GLOBAL] @ classes[GLOBAL].T + 0.7 * images[FINE_GRAINED] @ classes[FINE_GRAINED].T
    assert np.allclose(scores[FUSED], expected.numpy(), atol=1e-6)
    assert np.allclose(scores[GLOBAL], (images[GLOBAL] @ classes[GLOBAL].T).numpy())
    classes[FUSED] = fuse_features({b: classes[b] for b in (GLOBAL, FINE_GRAINED)}, 0.3, FUSION_FEATURE)
    assert scores_from_embeddings(images, classes, 0.3, FUSION_FEATURE)[FUSED].shape == (5, 3)


def test_templates_shipped_and_checked(tmp_path):
    templates = load_templates()
    assert "an infrared thermal image of a {}." in templates
    assert prompts_for("car", ["a {c} in heat", "a {}."]) == ["a car in heat", "a car."]
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps(["no slot here"]))
    with pytest.raises(TemplateError, match="t.json"):
        load_templates(str(bad))


def test_coco_crops_cut_right_number_sizes_and_folders(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).save(images / "f1.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(images / "f2.jpg")
    coco = {"images": [{"id": 1, "file_name": "f1.png"}, {"id": 2, "file_name": "f2.jpg"},
                       {"id": 3, "file_name": "missing.png"}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]},
                {"id": 11, "image_id": 1, "category_id": 3, "bbox": [30.5, 20.2, 20, 20]},  # clipped to 10x10
                {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 6]},
                {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]},  # too small
                {"id": 14, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5]},  # unknown category
                {"id": 15, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]},  # unreadable image
                {"id": 16, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "tree"
    report = coco_crops(path, images, out, min_size=4)
    assert dict(report.written) == {"person": 1, "car": 2}
    assert report.skipped == {"smaller than 4 px": 1, "unknown category_id": 1, "unreadable image": 1, "iscrowd": 1}
    assert len(report.unreadable) == 1 and "missing.png" in report.unreadable[0]
    with Image.open(out / "person" / "f1_10.png") as crop:
        assert crop.size == (10, 12) and crop.mode.startswith("I")  # 16-bit kept
        assert np.asarray(crop)[0, 0] == (3 * 40 + 2) * 50
    with Image.open(out / "car" / "f1_11.png") as crop:
        assert crop.size == (10, 10)
    with Image.open(out / "car" / "f2_12.png") as crop:
        assert crop.size == (5, 6)
    assert main(["crops", "--coco", str(path), "--images", str(images), "--out", str(tmp_path / "t2")]) == 0
    assert main(["crops", "--coco", str(tmp_path / "nope.json"), "--images", str(images), "--out", str(out)]) == 2


@pytest.fixture(scope="module")
def synthetic_tree(tmp_path_factory):
    from open_clip_thermal.synthetic import generate_dataset, read_scene_records
    root = tmp_path_factory.mktemp("synthetic")
    annotations = generate_dataset(root / "data", num_train=0, num_val=0, num_test=6, size=64, seed=0, progress=False)
    report = synthetic_crops(root / "data", root / "tree", split="test", min_size=4)
    objects = [o for r in read_scene_records(annotations) for o in r["objects"]]
    return root, report, objects


def test_synthetic_tree_has_one_crop_per_large_enough_object(synthetic_tree):
    root, report, objects = synthetic_tree
    big = [o for o in objects if min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) >= 4]
    assert report.total == len(big) and report.skipped.get("smaller than 4 px", 0) == len(objects) - len(big)
    files = sorted((root / "tree").rglob("*.png"))
    assert len(files) == len(big)
    first = big[0]
    x0, y0, x1, y1 = first["box"]
    matches = [f for f in files if f.parent.name == first["label"] and f.stem.endswith(f"_{first['label']}_{first['index']}")]
    with Image.open(matches[0]) as crop:
        assert crop.size == (x1 - x0, y1 - y0)


def test_cli_on_synthetic_tree_writes_clip_benchmark_json(synthetic_tree, tmp_path, capsys):
    root, report, _ = synthetic_tree
    bad = root / "tree" / "car" / "zz_broken.png"
    bad.write_bytes(b"not a png")
    try:
        status = main(["--data", str(root / "tree"), "--model", "tclip-tiny-dual", "--model", "base=thermal-vit-tiny:none",
                       "--per-branch", "--fusion", FUSION_SCORE, "--out", str(tmp_path / "out"), "--batch-size", "16",
                       "--max-unreadable-fraction", "0.5"])
    finally:
        bad.unlink()
    assert status == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "tclip-tiny-dual:none" in printed and "base" in printed and "mean per-class recall" in printed
    # Both rows are untrained networks: said on the console (the log goes to a file), once per model.
    said = [line for line in captured.err.splitlines() if "built with random weights" in line]
    assert len(said) == 2 and all(line.startswith("warning: base model 'thermal-vit-tiny'") for line in said)
    assert "built with random weights" in (tmp_path / "out" / "classify.log").read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["task"] == "zeroshot_classification" and len(results["results"]) == 2
    dual, base = results["results"]
    for entry in (dual, base):
        assert {"model", "pretrained", "task", "dataset", "metrics"} <= set(entry)
        m = entry["metrics"]
        assert {"acc1", "acc5", "mean_per_class_recall", "per_class", "confusion_matrix"} <= set(m)
        assert m["n_samples"] == report.total and m["n_unreadable"] == 1
        assert "zz_broken.png" in m["unreadable"][0]["path"]
        assert sum(map(sum, m["confusion_matrix"])) == report.total
        assert sum(c["n"] for c in m["per_class"].values()) == report.total
    assert set(dual["branches"]) == {GLOBAL, FINE_GRAINED} and dual["metrics"]["fusion"] == FUSION_SCORE
    assert "branches" not in base
    assert (tmp_path / "out" / "classify.log").is_file() and (tmp_path / "out" / "results.md").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["--data", "/nonexistent/tree", "--model", "tclip-tiny-dual"], "/nonexistent/tree"),
    (["--data", "TREE", "--model", "no-such-model"], "no-such-model"),
    (["--data", "TREE", "--model", "tclip-tiny-dual", "--lam", "2"], "--lam"),
])
def test_cli_bad_input_is_one_line_exit_2(synthetic_tree, tmp_path, capsys, argv, needle):
    argv = [str(synthetic_tree[0] / "tree") if a == "TREE" else a for a in argv] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args", [["--help"], ["eval", "--help"], ["crops", "--help"]])
def test_help_imports_no_torch(args):
    code = ("import sys, runpy; sys.argv = ['x'] + %r\n"
            "try:\n    runpy.run_module('open_clip_thermal.classify', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)") % (args,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().endswith("CLEAN"), done.stderr
    assert "usage:" in done.stdout


def test_classnames_inline_json_maps_folders(synthetic_tree, tmp_path):
    tree = synthetic_tree[0] / "tree"
    out = tmp_path / "o"
    assert main(["--data", str(tree), "--model", "tclip-tiny-dual", "--classes", "car,pedestrian",
                 "--classnames", '{"pedestrian": "person"}', "--no-plots", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["classnames"] == ["car", "person"] and results["class_folders"] == ["car", "pedestrian"]
    assert results["results"][0]["metrics"]["acc5"] is None  # fewer than five classes
