"""`prolongvid audit`: a clean run passes, a planted wrong frame is found and named, in format-2 shards and in
layout-1 shards (one member per frame, as runs before format 2 wrote them)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from fixtures.codec_corpus import CORPUS, make_coded
from pipeline.cli import main
from pipeline.run import run_pipeline
from pipeline.core.sample import FramesLayout, SampleMeta
from shards.layout import Sample, build_sample
from shards.reader import open_run, read_index
from tests.conftest import pipeline_config


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory, ray_local):
    src = tmp_path_factory.mktemp("audit_in")
    for name in ("h264_editlist", "hevc_mp4", "mpeg2_ts"):  # an edit list, open GOPs; the TS (150 frames) is too short
        make_coded(CORPUS[name], src)
    out = tmp_path_factory.mktemp("audit_out") / "run"
    summary = run_pipeline(pipeline_config(src, out))
    assert summary.accepted == 2 and summary.rejected == {"too_few_distinct_frames": 1}
    return out


def rewrite_shard(shard, edit) -> None:
    """Rewrite a shard with each sample's members passed through `edit(key, {suffix: bytes}) -> {suffix: bytes}`."""
    with tarfile.open(shard) as tar:
        names = [m.name for m in tar.getmembers()]
        data = {n: tar.extractfile(n).read() for n in names}
    samples: dict[str, dict[str, bytes]] = {}
    for name in names:
        key, _, suffix = name.partition(".")
        samples.setdefault(key, {})[suffix] = data[name]
    with tarfile.open(shard, "w") as tar:
        for key, members in samples.items():
            for suffix, body in sorted(edit(key, members).items()):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))


def swap_frames(shard, key: str, a: int, b: int) -> None:
    """Rewrite a shard with two stored frames of one sample exchanged (what a wrong decoder would have done); a
    format-2 sample keeps a well-formed frames.mjpeg (offsets and sizes follow the frames)."""

    def edit(k: str, members: dict[str, bytes]) -> dict[str, bytes]:
        if k != key:
            return members
        if "frames.mjpeg" not in members:  # layout 1: the two members trade names
            names = {f"{a:04d}.jpg": f"{b:04d}.jpg", f"{b:04d}.jpg": f"{a:04d}.jpg"}
            return {names.get(n, n): v for n, v in members.items()}
        sample = Sample(members, k)
        frames = sample.frames()
        frames[a], frames[b] = frames[b], frames[a]
        sizes = [len(f) for f in frames]
        layout = FramesLayout(count=len(frames), offsets=[sum(sizes[:i]) for i in range(len(sizes))], sizes=sizes)
        rebuilt = build_sample(k, frames, sample.meta.model_copy(update={"frames": layout}), sample.conversations)
        return {n: v for n, v in rebuilt.items() if n != "__key__"}

    rewrite_shard(shard, edit)


def layout1_json(meta: SampleMeta) -> bytes:
    """What the audit reads of a sample, as layout 1 wrote it: dict-shaped frame sets, the identity as a list."""
    ident = meta.video.file_identity
    sets = {s.name: {**s.model_dump(mode="json", exclude={"stages"}), "stages": {str(p.frames): p.positions for p in s.stages}}
            for s in meta.decode.sets}  # fmt: skip
    doc = {"key": meta.key, "source": meta.source, "frame_set": meta.frame_set,
           "video": {**meta.video.model_dump(mode="json"), "file_identity": [ident.device, ident.inode, ident.size, ident.mtime_ns]},
           "decode": {**meta.decode.model_dump(mode="json"), "sets": sets}}  # fmt: skip
    return json.dumps(doc).encode()


def to_layout1(shard) -> None:
    """Rewrite a format-2 shard as layout 1: one `NNNN.jpg` member per frame, the json without format_version."""

    def edit(key: str, members: dict[str, bytes]) -> dict[str, bytes]:
        sample = Sample(members, key)
        return {**{f"{i:04d}.jpg": f for i, f in enumerate(sample.frames())}, "json": layout1_json(sample.meta),
                "conversations.json": members["conversations.json"]}  # fmt: skip

    rewrite_shard(shard, edit)


def test_audit_passes_a_clean_run_and_finds_a_planted_wrong_frame(audited_run, capsys):
    assert main(["audit", str(audited_run), "--samples", "5", "--frames", "24", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["samples"]) == 2 and report["mismatched_frames"] == 0
    assert all(s["frames_checked"] == 24 and s["worst_psnr_db"] > 35 for s in report["samples"])

    row = next(r for r in read_index(open_run(audited_run)) if r["key"].startswith("hevc_mp4"))
    swap_frames(audited_run / "shards" / row["shard"], row["key"], 10, 100)
    assert main(["audit", str(audited_run), "--key", row["key"], "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    (sample,) = report["samples"]
    assert sample["frames_checked"] == 192
    assert [m["position"] for m in sample["mismatches"]] == [10, 100]
    assert all(m["psnr_db"] < 20 for m in sample["mismatches"])

    # The same run as layout 1: the swap back is a pass again, a swap among the 24 audited frames is named.
    shards = sorted((audited_run / "shards").glob("*.tar"))
    for shard in shards:
        to_layout1(shard)
    with tarfile.open(audited_run / "shards" / row["shard"]) as tar:
        names = [m.name for m in tar if m.name.startswith(row["key"] + ".")]
    assert len(names) == 192 + 2 and f"{row['key']}.0191.jpg" in names and f"{row['key']}.frames.mjpeg" not in names
    swap_frames(audited_run / "shards" / row["shard"], row["key"], 10, 100)  # restored
    audited = sorted(set(np.linspace(0, 191, 24).round().astype(int).tolist()))
    a, b = audited[3], audited[12]
    swap_frames(audited_run / "shards" / row["shard"], row["key"], a, b)
    assert main(["audit", str(audited_run), "--samples", "5", "--frames", "24", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    by_key = {s["key"]: s for s in report["samples"]}
    assert len(by_key) == 2 and all(s["frames_checked"] == 24 and s["error"] is None for s in by_key.values())
    assert [m["position"] for m in by_key[row["key"]]["mismatches"]] == [a, b]
    assert report["mismatched_frames"] == 2  # the other sample, read from its layout-1 members, passes
