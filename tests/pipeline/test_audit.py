"""`prolongvid audit`: a clean run passes, a planted wrong frame is found and named."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from fixtures.codec_corpus import CORPUS, make_coded
from pipeline.cli import main
from pipeline.run import run_pipeline
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


def swap_frames(shard, key: str, a: int, b: int) -> None:
    """Rewrite a shard with two stored frames of one sample exchanged (what a wrong decoder would have done)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    names = {f"{key}.{a:04d}.jpg": f"{key}.{b:04d}.jpg", f"{key}.{b:04d}.jpg": f"{key}.{a:04d}.jpg"}
    data = {m.name: d for m, d in members}
    with tarfile.open(shard, "w") as tar:
        for m, d in members:
            body = data[names[m.name]] if m.name in names else d
            m.size = len(body)
            tar.addfile(m, io.BytesIO(body))


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
