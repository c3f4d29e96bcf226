"""Near-duplicate removal: the algorithm on planted duplicates, and `prolongvid dedup` on a real run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from filters.dedup import choose_survivors, exact_pairs, find_duplicates, normalise
from filters.config import DedupConfig
from pipeline.run import run_pipeline
from shards.layout import RunDir
from shards.reader import open_run, read_index, read_rejects
from shards.verify import verify_run
from tests.conftest import pipeline_config
from tests.filters.test_clip import tiny_clip  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def planted(n=3000, dups=150, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(30, dim)))
    base = normalise(centres[rng.integers(0, 30, n)] + rng.normal(scale=0.5, size=(n, dim)))  # clustered corpus
    src = rng.choice(n, dups, replace=False)
    copies = normalise(base[src] + rng.normal(scale=0.01, size=(dups, dim)))
    keys = [f"v{i:06d}" for i in range(n + dups)]
    return keys, np.concatenate([base, copies]), {keys[n + i]: keys[s] for i, s in enumerate(src)}


@pytest.mark.parametrize("method", ["exact", "ann"])
def test_planted_duplicates_are_found_and_the_original_is_kept(method):
    keys, emb, truth = planted()
    found = find_duplicates(keys, emb, DedupConfig(method=method, threshold=0.95))
    got = {d.removed: d.kept for d in found}
    assert got == truth  # every planted copy, nothing else; the lower key (the original) survives
    assert all(d.cosine >= 0.95 for d in found)


def test_the_approximate_path_keeps_its_recall_where_it_is_approximate():
    """Many more lists than probes (204 lists of ~100 videos, 4 searched: 2% of the corpus per query), unlike the
    test above where every list is searched. Against the exact pairs: nearly all found, none invented."""
    keys, emb, _ = planted(n=20000, dups=400, seed=1)
    cfg = DedupConfig(method="ann", threshold=0.95, list_size=100, nprobe=4)
    assert len(keys) // cfg.list_size >= 50 * cfg.nprobe  # the approximate regime
    ann = {(d.removed, d.kept) for d in find_duplicates(keys, emb, cfg)}
    exact = {(d.removed, d.kept) for d in find_duplicates(keys, emb, cfg.model_copy(update={"method": "exact"}))}
    assert len(exact) >= 400
    recall = len(ann & exact) / len(exact)
    assert recall >= 0.95, f"ANN recall {recall:.3f} of {len(exact)} exact pairs"
    assert ann <= exact, sorted(ann - exact)[:5]


def test_blocked_products_match_one_big_product():
    keys, emb, _ = planted(n=500, dups=40)
    emb = normalise(emb)
    full = emb @ emb.T
    i, j = np.nonzero(np.triu(full >= 0.9, k=1))
    assert sorted((a, b) for a, b, _ in exact_pairs(emb, 0.9, block=64)) == sorted(zip(i.tolist(), j.tolist()))


def test_survivor_choice_is_deterministic_and_never_chains():
    keys = ["a", "b", "c"]
    pairs = [(0, 1, 0.96), (1, 2, 0.96)]  # a~b, b~c, but a and c are not near each other
    removed = choose_survivors(keys, pairs, [0, 0, 0])
    assert [(d.removed, d.kept) for d in removed] == [("b", "a")]  # c stays: nothing kept is that close to it
    by_priority = choose_survivors(keys, pairs, [1, 0, 1])  # b preferred (e.g. the larger copy)
    assert [(d.removed, d.kept) for d in by_priority] == [("a", "b"), ("c", "b")]


def test_dedup_command_removes_a_reencoded_copy_and_keeps_other_content(tiny_clip, video, tmp_path, ray_local):  # noqa: F811
    videos = tmp_path / "videos"
    videos.mkdir()
    original = video("testsrc2_20s")
    shutil.copy(original, videos / "original.mp4")
    shutil.copy(video("mandelbrot_10s"), videos / "other.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(original), "-vf", "scale=256:144", "-c:v", "libx264",
                    "-crf", "35", str(videos / "copy.mp4")], check=True, timeout=120)
    sets = [f"filters.clip.{k}={v}" for k, v in tiny_clip.items()] + ["filters.clip.enabled=true",
                                                                       "filters.visual.score_only=true"]
    out = tmp_path / "out"
    run_pipeline(pipeline_config(videos, out, *sets))
    assert len(read_index(open_run(out))) == 3
    cli = [sys.executable, "-m", "pipeline", "dedup", str(out), "--set", "filters.dedup.threshold=0.999"]
    dry = subprocess.run(cli + ["--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert dry.returncode == 0 and "would remove 1" in dry.stdout, dry.stderr
    assert len(read_index(open_run(out))) == 3
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "removed 1" in done.stdout, done.stderr
    run = open_run(out)
    names = sorted(Path(r["source"]).name for r in read_index(run))
    assert names == ["original.mp4", "other.mp4"]  # the larger original survives the smaller re-encode
    reject = next(r for r in read_rejects(run) if r["reason"] == "near_duplicate")
    assert Path(reject["source"]).name == "copy.mp4" and reject["stage"] == "dedup"
    kept_key = next(r["key"] for r in read_index(run) if r["source"].endswith("original.mp4"))
    assert f"with kept key {kept_key}" in reject["detail"] and ">= threshold 0.999" in reject["detail"]
    assert verify_run(run) == []
    again = run_pipeline(pipeline_config(videos, out, *sets))  # the removed copy is not brought back
    assert again.accepted == 0 and len(read_index(open_run(out))) == 2


def test_an_interrupted_dedup_is_finished_by_the_next_run(tiny_clip, video, tmp_path, ray_local):  # noqa: F811
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("testsrc2_20s", "mandelbrot_10s"):
        shutil.copy(video(name), videos)
    out = tmp_path / "out"
    sets = [f"filters.clip.{k}={v}" for k, v in tiny_clip.items()] + ["filters.clip.enabled=true",
                                                                       "filters.visual.score_only=true"]
    run_pipeline(pipeline_config(videos, out, *sets))
    run = RunDir(out)
    victim = read_index(open_run(out))[0]
    # A dedup that died right after writing its decision: the journal exists, nothing else changed.
    journal = {"threshold": 0.9, "removed": {victim["key"]: {"kept": "other", "cosine": 0.93, "source": victim["source"]}}}
    (run.ledger / "dedup-journal.json").write_text(json.dumps(journal))
    again = run_pipeline(pipeline_config(videos, out, *sets))  # the next run finishes it before anything else
    assert again.accepted == 0 and again.samples_total == 1
    assert victim["key"] not in {r["key"] for r in read_index(open_run(out))} and verify_run(open_run(out)) == []
    assert any(r["key"] == victim["key"] and r["reason"] == "near_duplicate" for r in read_rejects(open_run(out)))
    assert not (run.ledger / "dedup-journal.json").exists()


def test_dedup_enabled_in_the_config_runs_at_the_end_of_the_run(tiny_clip, video, tmp_path, ray_local):  # noqa: F811
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(video("testsrc2_20s"), videos / "a.mp4")
    shutil.copy(video("testsrc2_20s"), videos / "b.mp4")  # a byte-identical copy under another name
    sets = [f"filters.clip.{k}={v}" for k, v in tiny_clip.items()] + [
        "filters.clip.enabled=true", "filters.visual.score_only=true", "filters.dedup.enabled=true"]
    summary = run_pipeline(pipeline_config(videos, tmp_path / "out", *sets))
    assert summary.rejected == {"near_duplicate": 1} and summary.samples_total == 1
    run = open_run(tmp_path / "out")
    assert [Path(r["source"]).name for r in read_index(run)] == ["a.mp4"] and verify_run(run) == []


def test_dedup_without_clip_is_a_config_error():
    from pipeline.core.config_load import ConfigError
    from pipeline.run_config import load_run_config

    with pytest.raises(ConfigError, match="filters.dedup.enabled needs filters.clip.enabled"):
        load_run_config(None, ["input.path=.", "output.dir=.", "filters.dedup.enabled=true"])
