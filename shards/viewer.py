"""`prolongvid view RUN_DIR`: a static site to look at a run's samples (opens from disk, no server).

The index lists every index and reject row from the two parquet tables (a compact `data.js` beside
`index.html`); pages, frames and thumbnails are made for a stratified sample only, so a large run builds
in seconds: of a sampled sample only its json, conversations and the strip's frames are read (a byte range
of a format-2 `frames.mjpeg` each, or a layout-1 frame member), and tar headers of the others are skipped over.
"""

from __future__ import annotations

import hashlib
import io
import operator
import re
import tarfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from shards.access import Tars, local_tars, reading_run
from shards.layout import CONFIG_FILE, RunDir, Sample, check_key
from shards.reader import read_index, read_rejects
from shards.stats import DURATION_BINS_S, DURATION_LABELS
from shards.tarformat import BLOCK
from shards.viewer_dir import TOP_FILES, SiteDir, ViewError
from shards.viewer_html import ShownFrame, ShownSample

FRAME_WIDTH = 192  # strip frames (and thumbnails): stored JPEGs wider are downscaled once, smaller ones copied
STRIP_MAX = 32  # frames on a page

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "!=": operator.ne, "==": operator.eq,
    "=": operator.eq, "<": operator.lt, ">": operator.gt, "~": lambda a, b: str(b) in str(a),
}  # fmt: skip
_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|==|=|<|>|~)\s*(.*?)\s*$")


class FilterError(ViewError):
    pass


def parse_filter(expr: str | None) -> Callable[[dict[str, Any]], bool]:
    """`FIELD OP VALUE[, ...]` (all must hold; OP one of = != < <= > >= ~ (contains)): which rows the site keeps.

    Fields are index/reject columns (`duration_s`, `score_aesthetic`, `qa_temporal`, `reason`, `stage`, `source`)
    plus `status` (`ok` or `reject`) and `bucket` (the stats' duration label); a row without the field fails.
    """
    if not expr or not expr.strip():
        return lambda row: True
    terms = []
    for part in expr.split(","):
        m = _TERM.match(part)
        if not m or not m.group(3):
            raise FilterError(f"bad filter term {part.strip()!r}: want FIELD OP VALUE, OP one of {' '.join(_OPS)}")
        name, op, raw = m.groups()
        try:
            value: Any = float(raw)
        except ValueError:
            value = raw.strip("'\"")
        terms.append((name, _OPS[op], value))

    def keep(row: dict[str, Any]) -> bool:
        for name, fn, value in terms:
            have = row.get(name)
            if have is None:
                return False
            try:
                if not fn(float(have) if isinstance(value, float) else str(have), value):
                    return False
            except (TypeError, ValueError):
                return False
        return True

    return keep


def duration_bucket(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for label, upper in zip(DURATION_LABELS, DURATION_BINS_S[1:]):
        if seconds < upper:
            return label
    return DURATION_LABELS[-1]


def index_entries(run: RunDir) -> list[dict[str, Any]]:
    """One compact record per index and reject row: what the index page shows, sorts and filters on."""
    entries = []
    for row in read_index(run):
        qa = {c[3:]: int(v) for c, v in row.items() if c.startswith("qa_") and v}
        scores = {c[6:]: round(float(v), 4) for c, v in row.items() if c.startswith("score_") and v is not None}
        entries.append({**row, "status": "ok", "bucket": duration_bucket(row.get("duration_s")), "qa": qa,
                        "scores": scores})  # fmt: skip
    for row in read_rejects(run):
        key = _file_safe(row.get("key")) or hashlib.sha1(str(row.get("source")).encode()).hexdigest()[:16]
        entries.append({**row, "key": key, "status": "reject", "bucket": "?", "qa": {}, "scores": {}})
    for e in entries:
        e.pop("embedding", None)
    return entries


def _file_safe(key: Any) -> str | None:
    """A key usable as a file name (the writer checks sample keys; reject rows may hold anything)."""
    try:
        return check_key(str(key)) if key else None
    except ValueError:
        return None


def stratum(entry: dict[str, Any]) -> str:
    return f"reject:{entry.get('reason')}" if entry["status"] == "reject" else f"ok:{entry['bucket']}"


def stratified_sample(entries: list[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to n entries spread evenly over strata (duration bucket, reject reason): round-robin over the strata,
    each in a seeded hash order, so a rare reason or a short bucket is always seen and reruns pick the same."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        groups[stratum(e)].append(e)
    for g in groups.values():
        g.sort(key=lambda e: hashlib.sha1(f"{seed}:{e['key']}".encode()).hexdigest())
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < n and any(depth < len(g) for g in groups.values()):
        for name in sorted(groups):
            if depth < len(groups[name]) and len(picked) < n:
                picked.append(groups[name][depth])
        depth += 1
    return picked


def strip_positions(stored: int, limit: int) -> list[int]:
    """The stored frames a page shows: all, or `limit` spread evenly over the video (a long strip says no more)."""
    if stored <= limit:
        return list(range(stored))
    return sorted({round(i * (stored - 1) / (limit - 1)) for i in range(limit)})


Where = dict[str, tuple[int, int]]  # a sample's members: suffix -> (offset of its data in the tar, size)


def locate_members(shard: BinaryIO, keys: set[str]) -> dict[str, Where]:
    """Where each member of the wanted keys lies in one open shard; only tar headers are read, data is seeked over.

    Shards are plain USTAR (shards/tarformat.py) with each sample's members together, so headers are parsed
    here (tarfile spends ~50 us on each) and the scan stops once the last wanted sample is behind it; any other
    header kind (pax, GNU long names) leaves the shard to tarfile.
    """
    found: dict[str, Where] = defaultdict(dict)
    left, current = set(keys), None
    shard.seek(0)
    while left:
        header = shard.read(BLOCK)
        if len(header) < BLOCK or not header.strip(b"\0"):
            break
        if header[156:157] not in (b"0", b"\0") or header[345:500].strip(b"\0") or header[124] & 0x80:
            return _locate_members_tarfile(shard, keys)
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        key, dot, suffix = name.partition(".")
        if key != current:
            left.discard(current)  # type: ignore[arg-type]
            current = key
        if dot and key in keys:
            found[key][suffix] = (shard.tell(), size)
        shard.seek(size + (-size % BLOCK), 1)
    return dict(found)


def _locate_members_tarfile(shard: BinaryIO, keys: set[str]) -> dict[str, Where]:
    found: dict[str, Where] = defaultdict(dict)
    shard.seek(0)
    with tarfile.open(fileobj=shard, mode="r:") as tar:  # type: ignore[call-overload]
        for info in tar:
            key, dot, suffix = info.name.partition(".")
            if key in keys and dot and info.isfile():
                found[key][suffix] = (info.offset_data, info.size)
    return dict(found)


class ShardSample(Mapping[str, bytes]):
    """One sample's members in an open shard, read when looked up: `Sample` reads a format-2 sample's frames as
    byte ranges of its `frames.mjpeg` (`read_range`), so a strip of a long video reads only the frames it shows."""

    def __init__(self, shard: BinaryIO, where: Where):
        self._shard, self._where = shard, where

    def _read(self, offset: int, size: int) -> bytes:
        self._shard.seek(offset)
        data = self._shard.read(size)
        if len(data) != size:
            raise ValueError(f"the shard ends inside a member ({len(data)} of {size} bytes)")
        return data

    def __getitem__(self, name: str) -> bytes:
        return self._read(*self._where[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def read_range(self, name: str, start: int, size: int) -> bytes:
        offset, total = self._where[name]
        if start < 0 or size < 0 or start + size > total:
            raise ValueError(f"bytes {start}+{size} lie outside member {name} ({total} bytes)")
        return self._read(offset + start, size)


def _scaled_jpeg(data: bytes, width: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.width <= width:
            return data
        im = im.convert("RGB")
        im.thumbnail((width, width * 4))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue()


def load_sample(sample: Sample, limit: int) -> ShownSample:
    """What a page shows of a sample: its metadata, conversations and the strip's frames (in time order, each
    with its time from the stored frame set's record, scaled to the strip's width)."""
    positions = strip_positions(sample.num_frames, limit)
    record = sample.meta.stored_set()
    times = record.timestamps_s if record is not None else []
    frames = [ShownFrame(f"{pos:04d}.jpg", pos, _scaled_jpeg(jpeg, FRAME_WIDTH), times[pos] if pos < len(times) else None)
              for pos, jpeg in zip(positions, sample.frames(positions))]  # fmt: skip
    return ShownSample(sample.meta, sample.conversations, frames)


def load_shard(shard: BinaryIO, keys: set[str], limit: int) -> tuple[dict[str, ShownSample], dict[str, str]]:
    """The wanted samples of one shard (a seekable file) as pages show them, and why any of them could not be read."""
    shown: dict[str, ShownSample] = {}
    unreadable: dict[str, str] = {}
    with shard as f:
        for key, where in locate_members(f, keys).items():
            try:
                shown[key] = load_sample(Sample(ShardSample(f, where), key), limit)
            except (KeyError, ValueError, IndexError, OSError) as e:  # a member missing, damaged, or a newer format
                unreadable[key] = f"{type(e).__name__}: {e}"
    return shown, unreadable


def score_thresholds(run: RunDir) -> dict[str, list[str]]:
    """Per score, the limits the run's resolved config sets on it (`filters.visual.min_brightness` -> brightness:
    `min 25 (visual)`), marked when the filter only scored (`score_only`) and rejected nothing."""
    path = run.root / CONFIG_FILE
    if not path.exists():
        return {}
    import yaml

    filters = (yaml.safe_load(path.read_text()) or {}).get("filters") or {}
    out: dict[str, list[str]] = defaultdict(list)
    for name, cfg in filters.items():
        if not isinstance(cfg, dict) or not cfg.get("enabled", True):
            continue
        for k, v in cfg.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k.startswith(("min_", "max_")):
                note = ", score only" if cfg.get("score_only") else ""
                out[k[4:]].append(f"{k[:3]} {v:g} ({name}{note})")
    return dict(out)


def build_site(run: RunDir, out: Path, sample: int = 200, filter_expr: str | None = None, seed: int = 0,
               tars: Tars | None = None) -> dict[str, Any]:
    """Write the site into `out` (new, empty, or an earlier site's: only its files are replaced; shards/viewer_dir.py);
    the shards are read from `tars` (by default `run`'s shards/). Returns counts of what was written."""
    from shards.viewer_html import index_page, reject_page, sample_page, site_assets

    site = SiteDir(out)  # refuses a folder that is not ours before anything is read or written
    keep = parse_filter(filter_expr)
    entries = [e for e in index_entries(run) if keep(e)]
    picked = stratified_sample(entries, sample, seed)
    by_shard: dict[str, set[str]] = defaultdict(set)
    for e in picked:
        if e["status"] == "ok" and e.get("shard"):
            by_shard[e["shard"]].add(e["key"])
    loaded: dict[str, ShownSample] = {}
    unreadable: dict[str, str] = {}
    tars = tars or local_tars(run)
    for shard, keys in sorted(by_shard.items()):
        if shard in tars.sizes:
            shown, bad = load_shard(tars.open_seekable(shard), keys, STRIP_MAX)
            loaded.update(shown)
            unreadable.update(bad)
    planned = {*TOP_FILES} | {f"pages/{_page_name(e)}.html" for e in picked}
    for key, s in loaded.items():
        planned |= {f"frames/{key}/{f.name}" for f in s.frames}
    site.plan(planned)
    thresholds = score_thresholds(run)
    site.begin()
    pages = 0
    for e in picked:
        page = f"pages/{_page_name(e)}.html"
        if e["status"] == "reject":
            site.put(page, reject_page(e))
        elif e["key"] in loaded:
            s = loaded[e["key"]]
            for f in s.frames:
                site.put(f"frames/{e['key']}/{f.name}", f.jpeg)
            if s.frames:  # the index's thumbnail is the middle strip frame: one small file, used twice
                e["thumb"] = f"frames/{e['key']}/{s.frames[len(s.frames) // 2].name}"
            site.put(page, sample_page(e, s, thresholds))
        else:
            continue
        e["page"] = page
        pages += 1
    about = {"run_dir": str(run.root), "filter": filter_expr or "", "sampled": pages, "rows": len(entries)}
    for name, text in site_assets([_compact(e) for e in entries], about).items():
        site.put(name, text)
    site.put("index.html", index_page())
    site.finish()
    return {"rows": len(entries), "pages": pages, "out": str(out), "unreadable": unreadable}


def _page_name(e: dict[str, Any]) -> str:
    return ("reject-" if e["status"] == "reject" else "") + str(e["key"])


def _compact(e: dict[str, Any]) -> dict[str, Any]:
    """The index row as the page's script sees it: short names, file names not paths, no empty fields."""
    c = {"k": e["key"], "st": e["status"], "d": e.get("duration_s"), "b": e["bucket"], "q": e["qa"], "sc": e["scores"],
         "src": Path(str(e.get("source") or "")).name, "r": e.get("reason"), "sg": e.get("stage"),
         "p": e.get("page"), "t": e.get("thumb"), "nq": e.get("num_qa")}  # fmt: skip
    return {k: v for k, v in c.items() if v not in (None, {}, "")}


def cmd_view(args: Any) -> int:
    """The `view` subcommand: build the site and say where it is."""
    import sys
    import time

    from pipeline.core.config_load import ConfigError
    from pipeline.core.storage import is_remote

    if is_remote(args.run_dir) and not args.out:
        raise ConfigError(f"view {args.run_dir}: the site is written on this machine; give --out, a local folder")
    start = time.monotonic()
    try:
        with reading_run(args.run_dir) as (run, tars):
            out = Path(args.out) if args.out else run.root / "viewer"
            done = build_site(run, out, sample=args.sample, filter_expr=args.filter, seed=args.seed, tars=tars)
    except ViewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, why in sorted(done["unreadable"].items()):
        print(f"warning: sample {key} has no page: it does not read ({why})", file=sys.stderr)
    print(f"{done['rows']} rows, {done['pages']} sample pages in {time.monotonic() - start:.1f}s: "
          f"open {out / 'index.html'}")  # fmt: skip
    return 0
