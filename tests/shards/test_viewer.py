"""`prolongvid view`: the site's pages, the stratified pick, the filter, escaping, and reading only sampled members."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shards.layout import Sample
from shards.viewer import (FilterError, ShardSample, build_site, index_entries, load_shard, locate_members, parse_filter,
                           score_thresholds, stratified_sample, strip_positions)  # fmt: skip
from tests.shards.viewer_run import make_run

ROOT = Path(__file__).resolve().parents[2]


def site_data(out: Path) -> dict:
    text = (out / "data.js").read_text()
    return json.loads(text[text.index("=") + 1 : text.rindex(";")])


def test_site_has_an_index_of_every_row_and_pages_with_strip_timeline_and_evidence(tmp_path):
    run = make_run(tmp_path / "run")
    (run.root / "config.resolved.yaml").write_text(
        "filters:\n  clip: {enabled: true, score_only: false, min_aesthetic: 0.25}\n"
        "  visual: {enabled: true, score_only: true, min_brightness: 25.0}\n  length: {enabled: false, min_aesthetic: 9}\n"
    )
    done = subprocess.run([sys.executable, "-m", "pipeline", "view", str(run.root)], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = run.root / "viewer"
    assert "8 rows, 8 sample pages" in done.stdout and str(out / "index.html") in done.stdout
    data = site_data(out)
    assert len(data["rows"]) == 8 and {r["st"] for r in data["rows"]} == {"ok", "reject"}
    page = (out / "pages" / "vid003.html").read_text()
    assert page.count('class="frame"') == 8 and (out / "frames" / "vid003" / "0007.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert 'data-i="1" data-t="38.75"' in page and "<figcaption>0:38.8</figcaption>" in page  # 310 s / 8: its time
    for level in ("video", "segment", "clip"):
        assert f'class="cap cap-{level}"' in page
    # temporal QA spans 0.6..0.9 of 310 s: frames at 5/8 and 6/8 and 7/8 of it lie inside -> 5, 6, 7 (7/8=0.875)
    assert 'data-frames="5 6 7"' in page and 'class="evidence" style="left:60.0%' in page
    assert 'data-frames="0 1"' in page  # multiple choice: 0..0.2 holds frames 0 and 1 (0.125)
    assert "<tr><td>aesthetic</td><td>0.3</td><td>min 0.25 (clip)</td></tr>" in page  # index score, its threshold
    assert score_thresholds(run) == {"aesthetic": ["min 0.25 (clip)"], "brightness": ["min 25 (visual, score only)"]}
    reject = (out / "pages" / "reject-bad002.html").read_text()
    assert "llm_bad_json" in reject and "no JSON" in reject and "caption" in reject
    thumbs = {r["k"]: r.get("t") for r in data["rows"] if r["st"] == "ok"}
    assert thumbs == {f"vid{i:03d}": f"frames/vid{i:03d}/0004.jpg" for i in range(6)}  # the middle strip frame, reused
    # A second build replaces the first; a folder it did not write is refused.
    assert subprocess.run([sys.executable, "-m", "pipeline", "view", str(run.root), "--sample", "2"], cwd=ROOT,
                          capture_output=True).returncode == 0  # fmt: skip
    assert len(list((out / "pages").iterdir())) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = subprocess.run([sys.executable, "-m", "pipeline", "view", str(run.root), "--out", str(tmp_path / "mine")],
                             cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "no earlier site" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_every_text_from_a_model_or_a_file_name_is_escaped(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "site"
    build_site(run, out, sample=50)
    for page in (out / "pages").iterdir():
        text = page.read_text()
        assert "<script>window" not in text and "<img src=x" not in text, page.name
    sample = (out / "pages" / "vid000.html").read_text()
    assert "&lt;script&gt;window.PWNED=1&lt;/script&gt;" in sample  # caption, question and source, all shown as text
    assert sample.count("&lt;script&gt;window.PWNED=1") >= 4
    assert "&lt;script&gt;" in (out / "pages" / "reject-bad001.html").read_text()
    data_js = (out / "data.js").read_text()
    assert "</script>" not in data_js and "<img" not in data_js  # ensure_ascii JSON in a script file: no markup


def test_stratified_pick_covers_every_bucket_and_reason_and_is_stable(tmp_path):
    entries = index_entries(make_run(tmp_path / "run"))
    # durations 10, 110, 210, 310, 410, 510 s: buckets <1m, 1-2m, 2-5m (x2), 5-10m (x2); rejects: two reasons
    picked = stratified_sample(entries, 6)
    strata = {(e["status"], e["bucket"] if e["status"] == "ok" else e["reason"]) for e in picked}
    assert strata == {("ok", "<1m"), ("ok", "1-2m"), ("ok", "2-5m"), ("ok", "5-10m"), ("reject", "truncated"),
                      ("reject", "llm_bad_json")}  # fmt: skip
    assert [e["key"] for e in stratified_sample(entries, 6)] == [e["key"] for e in picked]
    assert len(stratified_sample(entries, 100)) == 8


def test_filter_expressions():
    keep = parse_filter("duration_s>=100, status=ok")
    assert keep({"duration_s": 110, "status": "ok"}) and not keep({"duration_s": 10, "status": "ok"})
    assert not keep({"status": "ok"})  # a row without the field fails
    assert parse_filter("reason=truncated")({"reason": "truncated"})
    assert parse_filter("source~clip_1")({"source": "/v/clip_12s.mp4"})
    assert parse_filter("")({"anything": 1})
    with pytest.raises(FilterError, match="FIELD OP VALUE"):
        parse_filter("duration_s")


def test_filter_limits_the_site_and_bad_filters_exit_2(tmp_path):
    run = make_run(tmp_path / "run")
    done = build_site(run, tmp_path / "site", filter_expr="score_aesthetic>=0.3")
    assert done["rows"] == 3 and {r["k"] for r in site_data(tmp_path / "site")["rows"]} == {"vid003", "vid004", "vid005"}
    bad = subprocess.run([sys.executable, "-m", "pipeline", "view", str(run.root), "--filter", "nonsense"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "bad filter term" in bad.stderr


@pytest.mark.parametrize("layout1", [False, True], ids=["format2", "layout1"])
def test_only_the_sampled_samples_json_and_strip_frames_are_read(tmp_path, layout1):
    run = make_run(tmp_path / "run", layout1=layout1)
    shard = run.shards / "w0-001.tar"  # vid001, vid003, vid005 in that order
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    read: list[int] = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def seek(self, *a):
            return self.f.seek(*a)

        def tell(self):
            return self.f.tell()

    with Counting(open(shard, "rb")) as f:
        where = locate_members(f, {"vid003"})
        headers = sum(1 for n in members if not n.startswith("vid005.")) + 1  # stops at vid005's first header
        assert sum(read) == 512 * headers  # headers only: no member's data
        mine = {n.split(".", 1)[1]: v for n, v in members.items() if n.startswith("vid003.")}
        assert sorted(where["vid003"]) == sorted(mine)
        assert dict(ShardSample(f, where["vid003"])) == mine  # each member's bytes, where the headers put them
    read.clear()
    vid005 = {n.split(".", 1)[1]: v for n, v in members.items() if n.startswith("vid005.")}
    shown, unreadable = load_shard(Counting(open(shard, "rb")), {"vid005"}, 3)
    assert unreadable == {} and [(f.name, f.pos) for f in shown["vid005"].frames] == [("0000.jpg", 0), ("0004.jpg", 4),
                                                                                      ("0007.jpg", 7)]  # fmt: skip
    strip = Sample(vid005, "vid005").frames([0, 4, 7])
    assert [f.jpeg for f in shown["vid005"].frames] == strip  # 48 px wide: under the strip's width, kept as stored
    # every header and the end block, then the json, the conversations and the three frames: nothing else
    assert sum(read) == 512 * (len(members) + 1) + len(vid005["json"]) + len(vid005["conversations.json"]) + sum(map(len, strip))
    assert strip_positions(8, 3) == [0, 4, 7] and strip_positions(2, 3) == [0, 1] and strip_positions(0, 3) == []


def test_shards_with_other_header_kinds_are_read_through_tarfile(tmp_path):
    key = "k" * 100  # "<key>.json" needs a GNU long-name header
    path = tmp_path / "gnu.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for suffix, data in (("json", b"{}"), ("0000.jpg", b"jpg")):
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        assert dict(ShardSample(f, locate_members(f, {key})[key])) == {"json": b"{}", "0000.jpg": b"jpg"}


def test_a_sample_that_does_not_read_gets_no_page_and_is_named(tmp_path):
    run = make_run(tmp_path / "run")
    shard = run.shards / "w0-000.tar"  # vid000, vid002, vid004
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            if name == "vid002.json":
                data = data.replace(b'"format_version": "2.0"', b'"format_version": "3.0"')
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = subprocess.run([sys.executable, "-m", "pipeline", "view", str(run.root)], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "7 sample pages" in done.stdout and "sample vid002 has no page" in done.stderr and "format_version 3.0" in done.stderr
    assert not (run.root / "viewer" / "pages" / "vid002.html").exists() and not (run.root / "viewer" / "frames" / "vid002").exists()


def test_a_layout1_run_gets_the_same_frames_and_strips(tmp_path):
    sites = {}
    for layout1 in (False, True):
        run = make_run(tmp_path / f"run{int(layout1)}", layout1=layout1)
        out = tmp_path / f"site{int(layout1)}"
        assert build_site(run, out)["pages"] == 8
        sites[layout1] = out
    frames = {layout1: {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "frames").rglob("*.jpg")}
              for layout1, out in sites.items()}  # fmt: skip
    assert frames[True] == frames[False] and len(frames[True]) == 6 * 8
    for key in ("vid000", "vid003"):
        pages = [(out / "pages" / f"{key}.html").read_text() for out in sites.values()]
        strips = [p[p.index('<div id="strip"') : p.index("<h2>Metadata")] for p in pages]
        assert strips[0] == strips[1] and strips[0].count('class="frame"') == 8  # strip, captions, QA and scores
    for layout1, version in ((True, "1.0"), (False, "2.0")):  # the metadata as the model reads it, escaped
        assert f"&quot;format_version&quot;: &quot;{version}&quot;" in (sites[layout1] / "pages" / "vid003.html").read_text()


def test_a_long_strip_shows_frames_spread_over_the_video_with_their_own_timestamps(tmp_path, monkeypatch):
    import shards.viewer

    monkeypatch.setattr(shards.viewer, "STRIP_MAX", 3)
    run = make_run(tmp_path / "run")
    build_site(run, tmp_path / "site")
    page = (tmp_path / "site" / "pages" / "vid001.html").read_text()  # 110 s, frames every 13.75 s
    assert page.count('class="frame"') == 3
    assert sorted(p.name for p in (tmp_path / "site" / "frames" / "vid001").iterdir()) == ["0000.jpg", "0004.jpg", "0007.jpg"]
    assert 'data-i="1" data-t="55.0"' in page and 'data-i="2" data-t="96.25"' in page


def test_the_stats_report_links_to_the_viewer_once_it_exists(tmp_path):
    run = make_run(tmp_path / "run")
    plots = tmp_path / "my plots"

    def report() -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline", "stats", str(run.root), "--plots", str(plots)],
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return (plots / "report.html").read_text()

    assert 'id="viewer"' not in report()
    build_site(run, run.root / "viewer")
    href = re.search(r'<p id="viewer"><a href="([^"]+)">', report()).group(1)
    assert href == "../run/viewer/index.html" and (plots / href).resolve() == (run.root / "viewer" / "index.html").resolve()
