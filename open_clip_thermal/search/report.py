"""Query results as a console table, as JSON and as an HTML contact sheet.

The contact sheet is one HTML file: per query a row of thumbnails with rank and similarity. Thumbnails
are decoded with the index's thermal normalisation (what the model saw, before the preprocess
resize) and written as PNGs into ``<name>_thumbs/`` beside the HTML, linked relatively (the folder
can be moved with the page), or embedded as data URIs (``embed=True``: one self-contained file).
A file hit links to the original image (relative link); a shard sample, which has no file of its
own, links to its thumbnail.
"""
import base64
import hashlib
import html
import io
import os
from pathlib import Path
from typing import Dict, Optional, Sequence
from urllib.parse import quote

from ..data.decode import ThermalNorm, decode_with, thermal_to_pil
from ..files import atomic_write_json, atomic_write_text
from .sources import SHARD_SOURCE

THUMB_SIZE = 160  # px, longer side


def _shown_path(path: str, base: Optional[Path] = None) -> str:
    """A path relative to ``base`` (default: the working folder) when it lies below it."""
    base = Path(base or os.getcwd()).resolve()
    try:
        return str(Path(path).resolve().relative_to(base))
    except ValueError:
        return path


def format_results(results: Sequence, shown_below: Optional[Path] = None) -> str:
    """The console table: one block per query (rank, similarity, path)."""
    lines = []
    for number, result in enumerate(results, 1):
        query = result.query if result.kind == "text" else _shown_path(result.query, shown_below)
        lines.append(f"query {number}/{len(results)} ({result.kind}): {query!r}   [{result.backend} search "
                     f"{result.search_ms:.1f} ms, query embedding {result.embed_ms:.1f} ms]")
        lines.append(f"{'rank':>4}  {'similarity':>10}  path")
        for hit in result.hits:
            lines.append(f"{hit.rank:>4}  {hit.similarity:>10.4f}  {_shown_path(hit.path, shown_below)}")
        if not result.hits:
            lines.append("      (the index is empty)")
    return "\n".join(lines)


def results_json(results: Sequence, index_folder: Optional[str], model: Optional[Dict], k: int) -> Dict:
    """The JSON form of query results."""
    return {
        "index": index_folder, "model": (model or {}).get("spec"), "top_k": k,
        "queries": [{"query": r.query, "kind": r.kind, "backend": r.backend, "embed_ms": r.embed_ms,
                     "search_ms": r.search_ms,
                     "hits": [{"rank": h.rank, "similarity": h.similarity, "path": h.path, "record": h.record}
                              for h in r.hits]} for r in results],
    }


def write_json(results: Sequence, path, index_folder: Optional[str], model: Optional[Dict], k: int) -> Path:
    """Write :func:`results_json` to ``path`` (atomically)."""
    return atomic_write_json(path, results_json(results, index_folder, model, k))


# ----------------------------------------------------------------------------- thumbnails
def _thumbnail(image, size: int):
    image = image.copy()
    image.thumbnail((size, size))
    return image


def _file_thumbnails(paths: Sequence[str], norm: ThermalNorm, size: int) -> Dict[str, object]:
    out = {}
    for path in paths:
        try:
            out[path] = _thumbnail(thermal_to_pil(decode_with(Path(path).read_bytes(), Path(path).suffix.lstrip("."),
                                                              norm)), size)
        except Exception:  # a file deleted or rewritten since indexing: no thumbnail, still listed
            out[path] = None
    return out


def _shard_thumbnails(wanted: Dict[str, Dict[str, str]], norm: ThermalNorm, size: int) -> Dict[str, object]:
    """``wanted[shard][key] = id`` -> ``{id: thumbnail}``, one pass over each shard."""
    from webdataset.tariterators import group_by_keys

    from ..data.loader import thermal_member
    from ..data.sources import open_url, read_tar_files

    out: Dict[str, object] = {}
    for shard, keys in wanted.items():
        try:
            for sample in group_by_keys(read_tar_files(open_url(shard), shard)):
                if sample["__key__"] in keys:
                    ext, raw = thermal_member(sample)
                    out[keys[sample["__key__"]]] = _thumbnail(thermal_to_pil(decode_with(raw, ext, norm)), size)
        except Exception:  # shard gone or damaged since indexing: the rest have no thumbnail
            pass
    return out


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_contact_sheet(results: Sequence, path, norm: Optional[ThermalNorm] = None, embed: bool = False,
                        size: int = THUMB_SIZE, title: str = "Thermal search") -> Path:
    """Write the HTML contact sheet of ``results`` to ``path``; returns it.

    Args:
        results: :class:`~.index.QueryResult` list.
        path: the HTML file (its folder is created).
        norm: thermal normalisation for the thumbnails (the index's; default percentile 1:99).
        embed: embed the thumbnails as data URIs instead of writing ``<name>_thumbs/*.png``.
        size: thumbnail size in pixels (longer side).
    """
    path = Path(path)
    norm = norm or ThermalNorm()
    files = sorted({h.path for r in results for h in r.hits if h.record.get("source") != SHARD_SOURCE}
                   | {r.query for r in results if r.kind == "image"})
    wanted: Dict[str, Dict[str, str]] = {}
    for hit in (h for r in results for h in r.hits if h.record.get("source") == SHARD_SOURCE):
        wanted.setdefault(hit.record["shard"], {})[hit.record["key"]] = hit.path
    thumbs = {**_file_thumbnails(files, norm, size), **_shard_thumbnails(wanted, norm, size)}
    thumb_dir = path.parent / f"{path.stem}_thumbs"
    sources: Dict[str, str] = {}
    for ident, image in thumbs.items():
        if image is None:
            continue
        data = _png_bytes(image)
        if embed:
            sources[ident] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            name = hashlib.sha1(ident.encode("utf-8")).hexdigest()[:16] + ".png"
            thumb_dir.mkdir(parents=True, exist_ok=True)
            (thumb_dir / name).write_bytes(data)
            sources[ident] = quote(f"{thumb_dir.name}/{name}")

    def link(ident: str, record: Dict) -> Optional[str]:
        if record.get("source") == SHARD_SOURCE or not os.path.exists(ident):
            return sources.get(ident) if not embed else None
        return quote(Path(os.path.relpath(ident, path.parent.resolve())).as_posix())

    def card(ident: str, caption: str, record: Dict) -> str:
        img = (f'<img src="{html.escape(sources[ident])}" alt="{html.escape(Path(ident).name)}">'
               if ident in sources else '<div class="missing">no thumbnail</div>')
        target = link(ident, record)
        body = f'<a href="{html.escape(target)}">{img}</a>' if target else img
        return f'<figure>{body}<figcaption>{caption}</figcaption></figure>'

    sections = []
    for number, result in enumerate(results, 1):
        if result.kind == "text":
            head = f'<h2>{number}. text: &ldquo;{html.escape(result.query)}&rdquo;</h2>'
        else:
            head = (f'<h2>{number}. example image: {html.escape(Path(result.query).name)}</h2>'
                    f'<div class="example">{card(result.query, "query", {})}</div>')
        cards = [card(h.path, f"#{h.rank} &middot; {h.similarity:.3f}<br><span>{html.escape(Path(h.path).name)}</span>",
                      h.record) for h in result.hits]
        sections.append(f'<section>{head}<p class="meta">{result.backend} search, {len(result.hits)} hits</p>'
                        f'<div class="grid">{"".join(cards) or "<p>no hits (empty index)</p>"}</div></section>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; background: #fff; padding: 6px; border: 1px solid #ddd; width: {size}px; }}
figure img {{ width: 100%; height: auto; display: block; image-rendering: pixelated; }}
figcaption {{ font-size: 12px; text-align: center; word-break: break-all; }}
figcaption span {{ color: #666; }}
.missing {{ height: {size // 2}px; color: #a00; font-size: 12px; }}
.meta {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(sections)}
</body></html>
"""
    return atomic_write_text(path, page)

