"""`prolongvid view RUN_DIR`: a static site to look at a run's samples (opens from disk, no server).

The index lists every index and reject row from the two parquet tables (a compact `data.js` beside
`index.html`); pages, frames and thumbnails are made for a stratified sample only, so a large run builds
in seconds: only the sampled samples' tar members are read (tar headers of the others are skipped over).
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import re
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from shards.layout import CONVERSATIONS_MEMBER, FRAME_MEMBER, META_MEMBER, RunDir, check_key, frame_member
from shards.reader import read_index, read_rejects
from shards.stats import DURATION_BINS_S, DURATION_LABELS
from shards.tarformat import BLOCK
from shards.viewer_dir import TOP_FILES, SiteDir, ViewError

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


def strip_members(frames_stored: int | None, limit: int) -> set[str]:
    """The frame members a page shows: all, or `limit` spread evenly over the video (a long strip says no more)."""
    n = int(frames_stored or 0)
    picks = range(n) if n <= limit else {round(i * (n - 1) / (limit - 1)) for i in range(limit)}
    return {frame_member(i) for i in picks} | {META_MEMBER, CONVERSATIONS_MEMBER}


def read_members(shard: Path, wanted: dict[str, set[str] | None]) -> dict[str, dict[str, bytes]]:
    """The wanted members (None: all) of the wanted keys in one shard; every other member's data is seeked over.

    Shards are plain USTAR (shards/tarformat.py) with each sample's members together, so headers are parsed
    here (tarfile spends ~50 us on each) and the scan stops once the last wanted sample is behind it; any other
    header kind (pax, GNU long names) leaves the shard to tarfile.
    """
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    left, current = set(wanted), None
    with open(shard, "rb") as f:
        while left:
            header = f.read(BLOCK)
            if len(header) < BLOCK or not header.strip(b"\0"):
                break
            if header[156:157] not in (b"0", b"\0") or header[345:500].strip(b"\0") or header[124] & 0x80:
                return _read_members_tarfile(shard, wanted)
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            key, dot, suffix = name.partition(".")
            if key != current:
                left.discard(current)  # type: ignore[arg-type]
                current = key
            want = wanted.get(key, set()) if dot else set()
            if want is None or suffix in want:
                found[key][suffix] = f.read(size)
                f.seek(-size % BLOCK, 1)
            else:
                f.seek(size + (-size % BLOCK), 1)
    return dict(found)


def _read_members_tarfile(shard: Path, wanted: dict[str, set[str] | None]) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            key, dot, suffix = info.name.partition(".")
            if key in wanted and dot and info.isfile() and (wanted[key] is None or suffix in wanted[key]):  # type: ignore[operator]
                f = tar.extractfile(info)
                found[key][suffix] = f.read() if f else b""
    return dict(found)


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


def load_sample(members: dict[str, bytes]) -> dict[str, Any]:
    """Meta, conversations and frames (in time order, with the frame set's timestamps) of one sample."""
    meta = json.loads(members.get(META_MEMBER) or b"{}")
    conversations = json.loads(members.get(CONVERSATIONS_MEMBER) or b"[]")
    names = sorted((s for s in members if FRAME_MEMBER.match(s)), key=lambda s: int(s.split(".")[0]))
    fs = ((meta.get("decode") or {}).get("sets") or {}).get(meta.get("frame_set") or "") or {}
    times = list(fs.get("timestamps_s") or [])
    frames = []
    for name in names:
        pos = int(name.split(".")[0])  # the frame's place in the stored set, whose timestamps the meta lists
        frames.append({"name": name, "pos": pos, "jpeg": members[name], "t": float(times[pos]) if pos < len(times) else None})
    return {"meta": meta, "conversations": conversations, "frames": frames}


def score_thresholds(run: RunDir) -> dict[str, list[str]]:
    """Per score, the limits the run's resolved config sets on it (`filters.visual.min_brightness` -> brightness:
    `min 25 (visual)`), marked when the filter only scored (`score_only`) and rejected nothing."""
    path = run.root / "config.resolved.yaml"
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


def build_site(run: RunDir, out: Path, sample: int = 200, filter_expr: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the site into `out` (new, empty, or an earlier site's: only its files are replaced; shards/viewer_dir.py);
    returns counts of what was written."""
    from shards.viewer_html import index_page, reject_page, sample_page, site_assets

    site = SiteDir(out)  # refuses a folder that is not ours before anything is read or written
    keep = parse_filter(filter_expr)
    entries = [e for e in index_entries(run) if keep(e)]
    picked = stratified_sample(entries, sample, seed)
    by_shard: dict[str, dict[str, set[str] | None]] = defaultdict(dict)
    planned = {*TOP_FILES} | {f"pages/{_page_name(e)}.html" for e in picked}
    for e in picked:
        if e["status"] == "ok" and e.get("shard"):
            members = strip_members(e.get("frames_stored"), STRIP_MAX)
            by_shard[e["shard"]][e["key"]] = members
            planned |= {f"frames/{e['key']}/{m}" for m in members if FRAME_MEMBER.match(m)}
    site.plan(planned)
    thresholds = score_thresholds(run)
    loaded: dict[str, dict[str, bytes]] = {}
    for shard, keys in sorted(by_shard.items()):
        path = run.shards / shard
        if path.exists():
            loaded.update(read_members(path, keys))
    site.begin()
    pages = 0
    for e in picked:
        page = f"pages/{_page_name(e)}.html"
        if e["status"] == "reject":
            site.put(page, reject_page(e))
        elif e["key"] in loaded:
            s = load_sample(loaded[e["key"]])
            for f in s["frames"]:
                site.put(f"frames/{e['key']}/{f['name']}", _scaled_jpeg(f["jpeg"], FRAME_WIDTH))
            if s["frames"]:  # the index's thumbnail is the middle strip frame: one small file, used twice
                e["thumb"] = f"frames/{e['key']}/{s['frames'][len(s['frames']) // 2]['name']}"
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
    return {"rows": len(entries), "pages": pages, "out": str(out)}


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

    from shards.reader import open_run

    run = open_run(args.run_dir)
    out = Path(args.out) if args.out else run.root / "viewer"
    start = time.monotonic()
    try:
        done = build_site(run, out, sample=args.sample, filter_expr=args.filter, seed=args.seed)
    except ViewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{done['rows']} rows, {done['pages']} sample pages in {time.monotonic() - start:.1f}s: "
          f"open {out / 'index.html'}")  # fmt: skip
    return 0
