"""Thermal data: IR-Cap annotations -> WebDataset shards, and a thermal-aware streaming loader.

Modules (imported on demand, so the converter does not pay for torch or the trainer):

* ``annotations``: read JSON / JSONL / CSV / TSV annotation files into validated records.
* ``image_files``: resolve, inspect and read image files (local or fsspec URLs).
* ``shards``: shard keys, crash-safe ``ShardWriter`` wrapper and its journal.
* ``conversion``: the converter behind ``python -m open_clip_thermal.convert``.
* ``manifest``: ``manifest.json`` and ``sizes.json``.
* ``decode``: 8/16-bit thermal decoding and normalisation.
* ``sources``: shard URL expansion and opening (local, file://, http(s)://, pipe:, fsspec).
* ``loader``: ``make_thermal_dataset`` / ``make_thermal_dataloader``.
* ``layouts``: RGB/thermal pairs of the public KAIST, FLIR-aligned and FMB folder layouts.
"""
