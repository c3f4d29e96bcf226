"""Frame layout benchmark: format 2 (one `frames.mjpeg` member, frame offsets in the json) against layout 1 (one
`NNNN.jpg` member per frame), on the same samples, in the same run.

Shards: the pipeline's, from N 1-minute 640x360 30 fps videos and one 20-second one, with the union frame set
(`stage_frames` [32, 128, 192]: 324 frames at 384x384 a 1-minute sample, 302 the short one); then a layout-1
copy of them (the same JPEGs, one member each, the layout-1 json), written by the same tar writer.
  disk        bytes a sample takes in its tar, headers and padding included (and that overhead alone)
  stage k     the permutation loader's read of one k-frame stage (`train.order.LazySample` under
              `shards.layout.Sample(...).frames(positions)`): bytes read from the tar per item (a counting
              `TarMembers.read`) and wall time per item, median; the tar header scan once per shard, apart
  sequential  webdataset `WebDataset(urls)` over every shard (and with `Sample(...).frames()` on top), samples/s
  HF          `datasets.load_dataset("webdataset", data_files=...)`: rows and frames loaded, or the error raised,
              with the short sample among the first 5 (the ones `datasets` infers its columns from), after
              them, or alone in the first shard: a layout-1 sample's frame count is its column count
All reads hit the page cache (the shards were just written): this compares the layouts' CPU and read-size cost,
not disk seeks. Targets: format 2 / layout 1 bytes read per 32-frame item <= 1.05; sequential samples/s >= 0.9.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import webdataset as wds  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.core.sample import FRAMES_MEMBER, LAYOUT1_VERSION, SampleMeta  # noqa: E402
from pipeline.core.sample_io import parse_meta  # noqa: E402
from shards.layout import FRAME_MEMBER, Sample, frame_member  # noqa: E402
from shards.tarwriter import ShardFile  # noqa: E402

STAGES = (32, 192)
TURNS = [{"from": "human", "value": "<image>\nWhat happens in the video?"},
         {"from": "gpt", "value": "A test pattern moves across the screen."}]
SHARD_SET = "[{name: shard, mode: uniform, num_frames: 192, stage_frames: [32, 128, 192]}]"


def make_run(work: Path, cache: Path, n: int, seconds: int, short_s: int) -> Path:
    """The pipeline's format-2 shards of n copies of a `seconds` video and one `short_s` video."""
    from pipeline.run_config import load_run_config
    from pipeline.run import run_pipeline

    spec = SynthVideo(name=f"bench_{seconds}s_640x360", duration_s=seconds, width=640, height=360, fps=30, audio=False)
    short = SynthVideo(name=f"bench_{short_s}s_640x360", duration_s=short_s, width=640, height=360, fps=30, audio=False)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    sources = {f"v{i}": make_video(spec, cache) for i in range(n)} | {"short": make_video(short, cache)}
    for key, source in sources.items():
        shutil.copy(source, videos / f"{key}.mp4")
    records = [{"id": key, "video": f"{key}.mp4", "conversations": TURNS} for key in sources]
    (videos / "ann.json").write_text(json.dumps(records))
    cfg = load_run_config(None, [f"input.path={videos / 'ann.json'}", "input.format=llava", f"output.dir={work / 'out'}",
                             "filters.visual.enabled=false", "ray.progress=false", f"sampling.sets={SHARD_SET}"])
    run_pipeline(cfg)
    return work / "out" / "shards"


# ---- the layout-1 copy ---------------------------------------------------------------------------------------


def _or_none(value: Any) -> Any:
    return value if value else None


def layout1_json(meta: SampleMeta) -> dict[str, Any]:
    """The sample's json as layout 1 wrote it: dict-shaped maps and frame sets, nulls, no format_version."""
    doc = meta.model_dump(mode="json", by_alias=True)
    for name in ("format_version", "frames", "split", "extra_json"):
        doc.pop(name)
    identity = doc["video"].pop("file_identity")
    fields = ("device", "inode", "size", "mtime_ns")
    doc["video"]["file_identity"] = [identity[k] for k in fields] if identity["size"] else None
    doc["video"]["keyframe_interval_s"] = _or_none(doc["video"]["keyframe_interval_s"])
    decode = doc["decode"]
    decode["fallback_reason"] = _or_none(decode["fallback_reason"])
    decode["declared_duration_s"] = _or_none(decode["declared_duration_s"])
    decode["sets"] = {s["name"]: {**s, "stages": {str(p["frames"]): p["positions"] for p in s["stages"]}}
                      for s in decode["sets"]}  # fmt: skip
    doc["scores"] = {s["name"]: s["value"] for s in doc["scores"]}
    for name in ("counts", "tokens"):
        doc[name] = {c["name"]: c["count"] for c in doc[name]}
    doc["qa"]["declined"] = [t for t in doc["qa"]["declined"].split(",") if t]
    doc["would_reject"] = [r for r in doc["would_reject"].split(",") if r]
    doc["extra"] = meta.extra()
    return doc


def layout1_sample(sample: Sample) -> dict[str, Any]:
    """The same sample as layout 1: one `NNNN.jpg` member per stored frame, the same JPEG bytes."""
    doc = layout1_json(sample.meta)
    back = parse_meta(json.dumps(doc))
    assert back.format_version == LAYOUT1_VERSION and back.frames.member == "", "not read back as layout 1"
    assert back.stored_set() == sample.meta.stored_set(), "the layout-1 json lost the stored set or its stages"
    members: dict[str, Any] = {"__key__": sample.key}
    for i, jpg in enumerate(sample.frames()):
        members[frame_member(i)] = jpg
    members["json"] = json.dumps(doc, sort_keys=True).encode()
    members["conversations.json"] = json.dumps([{**json.loads(c.extra_json), "id": c.id, "conversations": c.turns()}
                                                for c in sample.conversations]).encode()  # fmt: skip
    return members


def write_layout1(urls: list[str], out: Path) -> list[str]:
    """A layout-1 copy of the shards: the same samples in the same shards and order."""
    out.mkdir(parents=True, exist_ok=True)
    for url in urls:
        shard = ShardFile(out, Path(url).name, fsync=False)
        for members in wds.WebDataset([url], shardshuffle=False, empty_check=False):
            shard.write(layout1_sample(Sample(members)))
        shard.close()
    return sorted(str(p) for p in out.glob("*.tar"))


def write_shards(shards: list[list[dict[str, Any]]], out: Path) -> list[str]:
    """Tars holding the given samples (webdataset dicts) in the given order, one tar a list."""
    out.mkdir(parents=True, exist_ok=True)
    for i, samples in enumerate(shards):
        shard = ShardFile(out, f"shard-{i:06d}.tar", fsync=False)
        for members in samples:
            shard.write({k: v for k, v in members.items() if k == "__key__" or not k.startswith("__")})
        shard.close()
    return [str(out / f"shard-{i:06d}.tar") for i in range(len(shards))]


def arrangements(urls: list[str]) -> dict[str, list[list[dict[str, Any]]]]:
    """Where the short sample sits, for `datasets`, which infers the columns from the first shard's first 5 samples:
    among them, after them, or alone in the first shard."""
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    short = min(samples, key=lambda m: Sample(m).num_frames)
    full = [m for m in samples if m is not short]
    assert len(full) >= 5 and all(Sample(m).num_frames > Sample(short).num_frames for m in full)
    return {"short sample first": [[short, *full]], "short sample 6th": [[*full[:5], short, *full[5:]]],
            "short sample alone in shard 1": [[short], full]}  # fmt: skip


# ---- measurements ----------------------------------------------------------------------------------------------


def disk(urls: list[str]) -> dict[str, float]:
    """Per sample: members, bytes on disk (headers + data + padding) and the headers + padding alone."""
    spans: dict[str, int] = {}
    payload: dict[str, int] = {}
    members: dict[str, int] = {}
    for url in urls:
        with tarfile.open(url, "r:") as tar:
            for info in tar:
                key = info.name.partition(".")[0]
                spans[key] = spans.get(key, 0) + info.offset_data - info.offset + -(-info.size // 512) * 512
                payload[key] = payload.get(key, 0) + info.size
                members[key] = members.get(key, 0) + 1
    n = len(spans)
    return {"samples": n, "members": sum(members.values()) / n, "bytes": sum(spans.values()) / n,
            "overhead": (sum(spans.values()) - sum(payload.values())) / n,
            "file_bytes": sum(os.path.getsize(u) for u in urls) / n}  # fmt: skip


def counting_tars() -> Any:
    from train.order import TarMembers

    class Counting(TarMembers):
        """`TarMembers` that counts what the loader reads from the tars."""

        bytes_read = 0
        reads = 0

        def read(self, path: str, offset: int, size: int) -> bytes:
            data = super().read(path, offset, size)
            self.bytes_read += len(data)
            self.reads += 1
            return data

    return Counting()


def where(urls: list[str]) -> dict[str, str]:
    found = {}
    for url in urls:
        with tarfile.open(url, "r:") as tar:
            found |= {info.name.partition(".")[0]: url for info in tar}
    return found


def permuted(urls: list[str], k: int, repeats: int) -> dict[str, float]:
    """The permutation loader's read of stage k, item by item; the header scan (once a shard) timed apart."""
    from train.order import LazySample, epoch_keys

    keys = where(urls)
    scans, items, read, calls = [], [], [], []
    for epoch in range(repeats):
        tars = counting_tars()
        start = time.perf_counter()
        for url in urls:
            tars.members(url, next(key for key, u in keys.items() if u == url))
        scans.append((time.perf_counter() - start) / len(keys))
        for key in epoch_keys(list(keys), 0, epoch):
            tars.bytes_read = tars.reads = 0
            start = time.perf_counter()
            sample = Sample(LazySample(key, keys[key], tars))
            pick = sample.meta.stored_set().stage(k)
            assert pick is not None, f"sample {key} has no {k}-frame stage"
            frames = sample.frames(pick.positions)
            items.append(time.perf_counter() - start)
            assert len(frames) == k and all(f[:2] == b"\xff\xd8" for f in frames)
            read.append(tars.bytes_read)
            calls.append(tars.reads)
        tars.close()
    return {"bytes": statistics.mean(read), "reads": statistics.mean(calls), "ms": statistics.median(items) * 1e3,
            "scan_ms": statistics.median(scans) * 1e3}  # fmt: skip


def sequential(urls: list[str], frames: bool, min_s: float) -> float:
    """Samples/s of full webdataset passes (every stored frame's JPEG taken out too when `frames`), passes
    repeated for at least `min_s` so a few small shards still time well."""
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < min_s:
        for members in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            if frames:
                sample = Sample(members)
                assert len(sample.frames()) == sample.num_frames
            n += 1
    return n / (time.perf_counter() - start)


def hf_load(urls: list[str], cache: Path, stored: int) -> dict[str, Any]:
    """What `datasets` makes of the shards: rows and frames loaded (of `stored`), or the error class (its cause's)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train", cache_dir=str(cache))
    except Exception as e:  # the outcome is the measurement
        cause = e.__cause__ or e.__context__
        name = type(e).__name__ + (f" ({type(cause).__name__})" if cause is not None else "")
        return {"loads": False, "error": name, "message": str(cause or e).splitlines()[0][:160]}
    table, loaded, nulls = ds.data, 0, 0
    if FRAMES_MEMBER in ds.column_names:  # format 2: a row's frames are whole when the mjpeg matches its json
        for data, doc in zip(table.column(FRAMES_MEMBER).to_pylist(), table.column("json").to_pylist()):
            meta = parse_meta(doc)
            loaded += meta.frames.count if len(data) == sum(meta.frames.sizes) else 0
    else:  # layout 1: one image column per frame number seen while inferring the columns; absent frames are null
        for column in (table.column(c) for c in ds.column_names if FRAME_MEMBER.match(c)):
            loaded += len(column) - column.null_count
            nulls += column.null_count
    return {"loads": True, "rows": ds.num_rows, "columns": len(ds.column_names), "frames": loaded, "stored": stored,
            "null_frames": nulls}  # fmt: skip


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and repeats")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    n, seconds, short_s, repeats, min_s = (5, 60, 20, 5, 0.3) if args.quick else (8, 60, 20, 9, 1.0)
    work = args.workdir / f"layout_{seconds}s_{n}"
    shutil.rmtree(work, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    shards = timed("pipeline", lambda: make_run(work, args.workdir, n, seconds, short_s))
    from train.data import shard_urls

    urls = {"format 2": shard_urls(str(shards))}
    urls["layout 1"] = timed("layout-1 copy", lambda: write_layout1(urls["format 2"], work / "layout1"))
    counts = {name: [Sample(m).num_frames for m in wds.WebDataset(u, shardshuffle=False, empty_check=False)]
              for name, u in urls.items()}  # fmt: skip
    assert counts["format 2"] == counts["layout 1"] and len(set(counts["layout 1"])) > 1, f"not mixed: {counts}"
    names = ("layout 1", "format 2")
    res: dict[str, dict[str, Any]] = {name: {"disk": disk(urls[name])} for name in names}
    for k in STAGES:
        for name in names:  # interleaved
            res[name][f"stage{k}"] = timed(f"stage {k} {name}", lambda: permuted(urls[name], k, repeats))
    rates: dict[tuple[str, bool], list[float]] = {(name, f): [] for name in names for f in (False, True)}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for name, frames in rates:
            rates[name, frames].append(sequential(urls[name], frames, min_s))
    for (name, frames), values in rates.items():
        res[name]["seq_frames" if frames else "seq"] = statistics.median(values)
    for name in names:
        res[name]["hf"] = {}
    for place, shards in arrangements(urls["format 2"]).items():
        copies = {"format 2": shards, "layout 1": [[layout1_sample(Sample(m)) for m in s] for s in shards]}
        for name in names:
            tars = write_shards(copies[name], work / "hf" / "tars")
            res[name]["hf"][place] = timed(f"HF {name}, {place}",
                                           lambda: hf_load(tars, work / "hf" / "cache", sum(counts[name])))  # fmt: skip
            shutil.rmtree(work / "hf")  # a fresh cache each time, and no gigabytes left behind
    l1, f2 = res["layout 1"], res["format 2"]
    ratio32 = f2["stage32"]["bytes"] / l1["stage32"]["bytes"]
    report = {"machine": machine(("webdataset", "datasets", "pyarrow", "av", "numpy")),
              "config": {"videos": n + 1, "video_s": seconds, "short_video_s": short_s,
                         "stored_frames": sorted(set(counts["format 2"])), "repeats": repeats,
                         "sequential_min_s": min_s},
              "results": res,
              "targets": [target("layout/format2_vs_layout1_bytes_read_32_frame_item", ratio32, "<=", 1.05),
                          target("layout/format2_vs_layout1_sequential_samples_per_s", f2["seq"] / l1["seq"], ">=",
                                 0.9)]}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(render(report, n, seconds, short_s, repeats))
    return 0


def render(report: dict[str, Any], n: int, seconds: int, short_s: int, repeats: int) -> str:
    l1, f2 = report["results"]["layout 1"], report["results"]["format 2"]
    rows: list[list[str]] = []

    def row(label: str, a: float, b: float, fmt: str = "{:,.0f}") -> None:
        rows.append([label, fmt.format(a), fmt.format(b), f"{b / a:.3f}" if a else "-"])

    row("members / sample", l1["disk"]["members"], f2["disk"]["members"], "{:,.1f}")
    row("bytes on disk / sample", l1["disk"]["bytes"], f2["disk"]["bytes"])
    row("  tar headers + padding / sample", l1["disk"]["overhead"], f2["disk"]["overhead"])
    row("shard file bytes / sample", l1["disk"]["file_bytes"], f2["disk"]["file_bytes"])
    row("tar header scan, ms / sample", l1["stage32"]["scan_ms"], f2["stage32"]["scan_ms"], "{:.3f}")
    for k in STAGES:
        a, b = l1[f"stage{k}"], f2[f"stage{k}"]
        row(f"stage {k}: bytes read / item", a["bytes"], b["bytes"])
        row(f"stage {k}: reads / item", a["reads"], b["reads"], "{:.1f}")
        row(f"stage {k}: ms / item (median)", a["ms"], b["ms"], "{:.3f}")
    row("sequential WebDataset, samples/s", l1["seq"], f2["seq"], "{:.1f}")
    row("  + Sample.frames(), samples/s", l1["seq_frames"], f2["seq_frames"], "{:.1f}")

    def outcome(hf: dict[str, Any]) -> str:
        if not hf["loads"]:
            return f"fails: {hf['error']}"
        lost = hf["stored"] - hf["frames"]
        nulls = f", {hf['null_frames']} null" if hf["null_frames"] else ""
        return f"{hf['rows']} rows, " + (f"{lost} frames lost" if lost else "all frames") + nulls

    for place, hf in l1["hf"].items():
        rows.append([f"HF load_dataset, {place}", outcome(hf), outcome(f2["hf"][place]), ""])
    frames = report["config"]["stored_frames"]
    head = (f"{n} x {seconds}s + 1 x {short_s}s 640x360 30 fps videos, {frames} frames stored at 384x384, "
            f"median of {repeats} passes (page cache warm)\n")  # fmt: skip
    errors = [f"HF {name}, {place}: {hf['message']}" for name, r in report["results"].items()
              for place, hf in r["hf"].items() if not hf["loads"]]  # fmt: skip
    return "\n".join([head, table(["", "layout 1", "format 2", "f2 / l1"], rows), *errors, "",
                      targets_table(report["targets"])])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
