"""A default run reads the common containers beyond MP4 and MKV: a .3gp and a .wmv in a folder are stored, not
skipped by their suffix, and every stored frame is the frame its index names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import webdataset as wds

from fixtures.codec_corpus import CORPUS, can_make, encoder_of, make_coded
from pipeline.run_config import load_run_config
from pipeline.run import run_pipeline
from shards.layout import Sample
from shards.reader import open_run, read_index, read_rejects
from tests.pipeline.identity import read_jpeg


def test_a_default_folder_run_stores_3gp_and_wmv_files(ray_local, tmp_path):
    videos = tmp_path / "videos"
    for name in ("h263_3gp", "wmv2_wmv"):
        case = replace(CORPUS[name], frames=200)  # the default shard set wants 192 different frames
        if not can_make(case):
            pytest.skip(f"local ffmpeg has no {encoder_of(case)} encoder")
        make_coded(case, videos)
    out = tmp_path / "out"
    cfg = load_run_config(None, [f"input.path={videos}", f"output.dir={out}", "ray.progress=false"])
    summary = run_pipeline(cfg)

    assert summary.skipped_by_extension == 0, summary.skipped_suffixes
    assert read_rejects(open_run(out)) == []
    index = read_index(open_run(out))
    assert sorted(Path(r["source"]).name for r in index) == ["h263_3gp.3gp", "wmv2_wmv.wmv"]
    assert all(r["decoder"] == "pyav" and r["frames_stored"] >= 192 for r in index)
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 2
    for s in samples:
        sample = Sample(s)
        shard = sample.meta.stored_set()
        frames = sample.frames()
        assert sample.meta.frame_set == "shard" and len(frames) == sample.meta.frames.count == len(shard.indices) >= 192
        wrong = [(i, read_jpeg(jpg)) for i, jpg in zip(shard.indices, frames) if read_jpeg(jpg) != (i, 0)]
        assert not wrong, f"{s['__key__']}: stored frames that are not the frame their index names: {wrong[:5]}"
