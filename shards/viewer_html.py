"""The viewer's pages: index shell, one page per sample or reject. Every text from a model, a file or a table is
escaped here (html.escape), and the index's script builds rows with textContent, never markup from data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import Any

from pipeline.core.sample import Caption, Captions, Conversation, QAPair, SampleMeta
from shards.viewer_assets import INDEX_JS, SAMPLE_JS, VIEW_CSS


@dataclass(frozen=True)
class ShownFrame:
    name: str  # its file under frames/<key>/: NNNN.jpg, its place among the stored frames
    pos: int
    jpeg: bytes  # scaled to the strip's width
    t: float | None  # seconds into the video, from the stored frame set's record; None: not recorded


@dataclass(frozen=True)
class ShownSample:
    """What a sample's page shows: read through the sample model (`shards.layout.Sample`), either layout."""

    meta: SampleMeta
    conversations: list[Conversation]
    frames: list[ShownFrame]


def _levels(captions: Captions) -> list[tuple[str, list[Caption]]]:
    """Coarsest first; the whole-video caption is there when it has text (the model's default is empty)."""
    return [("video", [captions.video] if captions.video.text else []), ("segment", captions.segments),
            ("clip", captions.clips)]  # fmt: skip


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(float(seconds), 60)
    return f"{int(m)}:{s:04.1f}"


def _doc(title: str, body: str, script: str = "", depth: str = "../") -> str:
    tail = f'<script src="{depth}{script}"></script>' if script else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<link rel="stylesheet" href="{depth}view.css"></head><body>{body}{tail}</body></html>\n')  # fmt: skip


def _pct(t: float, duration: float) -> float:
    return round(100.0 * min(max(t, 0.0), duration) / duration, 3) if duration > 0 else 0.0


def _place(start: float, end: float, duration: float) -> str:
    a, b = _pct(start, duration), _pct(end, duration)
    return f"left:{a}%;width:{max(b - a, 0.4):.3f}%"


def _strip(key: str, frames: list[ShownFrame], duration: float) -> str:
    figs = []
    for i, f in enumerate(frames):
        t = f.t
        figs.append(f'<figure class="frame" data-i="{i}" data-t="{"" if t is None else t}">'
                    f'<img src="../frames/{_e(key)}/{_e(f.name)}" alt="frame {i} at {clock(t)}" loading="lazy">'
                    f"<figcaption>{clock(t)}</figcaption></figure>")  # fmt: skip
    ticks = "".join(f'<span class="tick" style="left:{_pct(f.t, duration)}%"></span>' for f in frames if f.t is not None)
    return (f'<div id="strip" class="strip" data-duration="{duration}">{"".join(figs)}</div>'
            f'<div class="axis" title="where the stored frames fall on the video">{ticks}</div>')


def _timeline(captions: Captions, duration: float) -> str:
    tracks, texts = [], []
    for level, items in _levels(captions):
        bars = []
        for c in items:
            span = f"{clock(c.start_s)}-{clock(c.end_s)}"
            bars.append(f'<div class="cap cap-{level}" style="{_place(c.start_s, c.end_s, duration)}" '
                        f'data-start="{_e(c.start_s)}" data-end="{_e(c.end_s)}" '
                        f'title="{_e(span)} {_e(c.text)}">{_e(c.text)}</div>')  # fmt: skip
            texts.append(f'<li class="text-{level}"><b>{level} {_e(span)}</b> {_e(c.text)}</li>')
        if bars:
            tracks.append(f'<div class="track" data-level="{level}"><span class="lvl">{level}</span>'
                          f'<div class="lane">{"".join(bars)}</div></div>')  # fmt: skip
    if not tracks:
        return '<p class="none">no captions in this sample</p>'
    return f'<div id="timeline" class="timeline">{"".join(tracks)}</div><details><summary>caption texts</summary><ol>{"".join(texts)}</ol></details>'


def _evidence_frames(frames: list[ShownFrame], start: float, end: float) -> list[int]:
    """The stored frames inside a QA pair's span; the nearest one when the span falls between two frames."""
    timed = [(i, f.t) for i, f in enumerate(frames) if f.t is not None]
    inside = [i for i, t in timed if start <= t <= end]
    if inside or not timed:
        return inside
    mid = (start + end) / 2
    return [min(timed, key=lambda it: abs(it[1] - mid))[0]]


def _ranges(idx: list[int]) -> str:
    """`[3, 4, 5, 9]` -> `3-5, 9`."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _qa(pairs: list[QAPair], frames: list[ShownFrame], duration: float) -> str:
    out = []
    for n, p in enumerate(pairs):
        start, end = p.start_s, p.end_s
        ev, axis = "", ""
        if p.format != "description" or end > start:  # a description (no span: 0 to 0) covers the whole video
            idx = _evidence_frames(frames, start, end)
            ev = f' data-start="{_e(start)}" data-end="{_e(end)}" data-frames="{" ".join(map(str, idx))}"'
            axis = (f'<div class="qa-axis"><div class="evidence" style="{_place(start, end, duration)}"></div></div>'
                    f'<span class="span">evidence {clock(start)}-{clock(end)}'
                    f'{" (frames " + _ranges(idx) + ")" if idx else ""}</span>')  # fmt: skip
        options = "".join(f"<li>{_e(o)}</li>" for o in p.options if o)
        out.append(f'<div class="qa" id="qa-{n}"{ev}><div class="qa-head"><span class="type">{_e(p.type)}</span>'
                   f' <span class="fmt">{_e(p.format)}</span> {axis}</div>'
                   f'<p class="q">{_e(p.question)}</p>{"<ol class=options type=A>" + options + "</ol>" if options else ""}'
                   f'<p class="a">{_e(p.answer)}</p></div>')  # fmt: skip
    return "".join(out) or '<p class="none">no QA pairs in this sample</p>'


def _scores(entry: dict[str, Any], meta: SampleMeta, thresholds: dict[str, list[str]]) -> str:
    scores = {**{s.name: s.value for s in meta.scores}, **entry.get("scores", {})}
    if not scores:
        return '<p class="none">no scores</p>'
    rows = []
    for name, value in sorted(scores.items()):
        limits = "; ".join(thresholds.get(name, []))
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(value)}</td><td>{_e(limits)}</td></tr>")
    return f'<table class="scores"><tr><th>score</th><th>value</th><th>threshold</th></tr>{"".join(rows)}</table>'


def sample_page(entry: dict[str, Any], sample: ShownSample, thresholds: dict[str, list[str]]) -> str:
    meta, frames = sample.meta, sample.frames
    duration = float(meta.video.duration_s or entry.get("duration_s") or 0)
    if duration <= 0 and frames and frames[-1].t is not None:
        duration = float(frames[-1].t) or 1.0
    pairs = meta.qa.pairs
    facts = [("duration", clock(duration)), ("frames", len(frames)), ("QA pairs", len(pairs)), ("shard", entry.get("shard")),
             ("frame set", meta.frame_set), ("size", f"{meta.video.width}x{meta.video.height}")]  # fmt: skip
    meta_json = json.dumps(meta.model_dump(mode="json", by_alias=True), indent=1)
    conversations_json = json.dumps([c.model_dump(mode="json", by_alias=True) for c in sample.conversations], indent=1)
    body = (f'<p><a href="../index.html">all samples</a></p><h1>{_e(entry["key"])}</h1>'
            f'<p class="src">{_e(entry.get("source"))}</p>'
            f'<dl class="facts">{"".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)}</dl>'
            f"<h2>Frames</h2>{_strip(entry['key'], frames, duration)}"
            f"<h2>Captions</h2>{_timeline(meta.captions, duration)}"
            f"<h2>Questions and answers ({len(pairs)})</h2><p class=hint>click a pair to mark its evidence on the frames</p>"
            f"{_qa(pairs, frames, duration)}<h2>Scores</h2>{_scores(entry, meta, thresholds)}"
            f"<h2>Metadata</h2><details><summary>json</summary><pre>{_e(meta_json)}</pre></details>"
            f"<details><summary>conversations</summary><pre>{_e(conversations_json)}</pre></details>")  # fmt: skip
    return _doc(str(entry["key"]), body, "sample.js")


def reject_page(entry: dict[str, Any]) -> str:
    facts = [("reason", entry.get("reason")), ("stage", entry.get("stage")), ("source", entry.get("source"))]
    body = (f'<p><a href="../index.html">all samples</a></p><h1 class="rejected">rejected: {_e(entry.get("reason"))}</h1>'
            f'<dl class="facts">{"".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)}</dl>'
            f'<h2>Detail</h2><pre class="detail">{_e(entry.get("detail"))}</pre>'
            f'<p class="none">a rejected video has no stored frames</p>')  # fmt: skip
    return _doc(f"rejected {entry.get('key')}", body)


def index_page() -> str:
    controls = (
        '<div id="controls"><label>reason <select id="f-reason"></select></label>'
        '<label>duration <select id="f-bucket"></select></label><label>QA type <select id="f-qa"></select></label>'
        '<label>score <select id="f-score"></select></label><input id="f-min" type="number" step="any" placeholder="min">'
        '<input id="f-max" type="number" step="any" placeholder="max"><label>text <input id="f-text"></label>'
        '<label><input id="f-pages" type="checkbox"> with a page</label> <span id="count"></span></div>'
    )
    body = (f'<h1>Samples of <span id="run"></span></h1><p id="about"></p>{controls}'
            '<table id="samples"><thead><tr><th></th><th data-sort="k">key</th><th data-sort="st">status</th>'
            '<th data-sort="d">duration</th><th data-sort="nq">QA</th><th data-sort="sc">scores</th>'
            '<th data-sort="src">source</th></tr></thead><tbody></tbody></table><button id="more" hidden>show more</button>'
            '<script src="data.js"></script>')  # fmt: skip
    return _doc("prolongvid samples", body, "index.js", depth="")


def site_assets(rows: list[dict[str, Any]], about: dict[str, Any]) -> dict[str, str]:
    """data.js (a script, not a JSON fetch: browsers refuse fetch() from file://), the scripts and the style, by name."""
    data = json.dumps({"about": about, "rows": rows}, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c")
    return {"data.js": f"window.VIEW_DATA={data};\n", "index.js": INDEX_JS, "sample.js": SAMPLE_JS, "view.css": VIEW_CSS}
