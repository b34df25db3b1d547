"""The shared rules between the converter, the training loader, the model and the benchmark.

One place for the names several modules must agree on (the human-readable version is
docs/contracts.md). Standard library only: ``python -m open_clip_thermal.convert --help`` imports this
module and must stay torch-free (tests/test_imports.py, tests/test_contracts.py).

Shard URL expansion (brace patterns, ``::`` lists, repeated shards) lives in
:func:`open_clip_thermal.data.sources.expand_urls`, used by both the training loader and the benchmark:
it needs ``braceexpand``, which is not part of the standard library.
"""

# ----------------------------------------------------------------------------- branches and fusion
GLOBAL = "global"  # the global-caption LoRA branch / caption kind
FINE_GRAINED = "fine_grained"  # the fine-grained-caption LoRA branch / caption kind
MIXED = "mixed"  # training on a seeded 50:50 mix of the two captions
BRANCHES = (GLOBAL, FINE_GRAINED)  # in the order the fusion weights them: lam on GLOBAL

FUSION_FEATURE = "feature"  # normalize(lam * f_G + (1 - lam) * f_F)
FUSION_SCORE = "score"  # lam-weighted sum of the per-branch cosines
FUSION_MODES = (FUSION_FEATURE, FUSION_SCORE)

DEFAULT_LAM = 0.7  # fusion weight of the global branch

# ----------------------------------------------------------------------------- evaluation protocol
DEFAULT_RECALL_KS = (1, 5, 10, 25, 50, 100)  # the paper's Recall@K columns, both directions

# ----------------------------------------------------------------------------- shard schema
# One sample of a shard: KEY.<thermal ext>, KEY.txt, KEY.fg.txt (optional), KEY.rgb.<ext> (optional),
# KEY.json. Keys contain no dots.
SAMPLE_KEY = "__key__"
GLOBAL_CAPTION_KEY = "txt"  # global caption, UTF-8
FG_CAPTION_KEY = "fg.txt"  # fine-grained caption, UTF-8
METADATA_KEY = "json"  # id, dataset, split, image, thermal_mode, width, height, meta fields...
RGB_PREFIX = "rgb."  # paired RGB image member: rgb.<ext>
CAPTION_FIELDS = {GLOBAL: GLOBAL_CAPTION_KEY, FINE_GRAINED: FG_CAPTION_KEY}  # caption kind -> shard member

# The thermal members a reader accepts (a superset of what the converter writes), in order of
# preference: the training loader and the benchmark decode the same member of a sample.
THERMAL_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp", "ppm", "pgm", "npy")

# PIL format name -> the extension the converter stores (what webdataset/OpenCLIP tools look for).
STANDARD_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "WEBP": "webp", "BMP": "bmp", "PPM": "ppm"}

# ----------------------------------------------------------------------------- annotation records
# Caption kind -> field of an annotation record (converter input, IR-Cap output, simulator output).
ANNOTATION_CAPTION_FIELDS = {GLOBAL: "global_caption", FINE_GRAINED: "fg_caption"}

# ----------------------------------------------------------------------------- derived model names
# `train --model <stock OpenCLIP name>` trains LoRA under the name PREFIX + base and records it in the
# adapter folder; the registry rebuilds such a name from that record in any later process.
TCLIP_CUSTOM_PREFIX = "tclip-custom-"
