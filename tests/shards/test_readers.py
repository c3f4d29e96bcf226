"""Real runs read by the readers users already have, unchanged: Hugging Face `datasets`, Ray Data's
`read_webdataset`, webdataset's `WebLoader` with 2 workers, and the README's snippet.

Three runs, each made once: `configs/default.yaml` over videos of different lengths (so samples store different
frame counts), one with a variable frame rate and one rotated, with a held-out split; a LLaVA import with int
ids and extra fields; and the demo (captions and QA from a tiny model). For every run and reader: every sample
is read once, its json has the model's fields and types (no nulls, floats stay floats), and the frames cut at
its offsets are the tar's own, in time order. A hand-written layout-1 shard still reads as the same frames.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.videos import CLOCK_RATE
from pipeline.core.sample import SampleMeta
from shards.layout import Sample
from shards.split import split_of
from tests.shards import reader_runs as rr

pytestmark = pytest.mark.slow  # three real runs, the demo's vLLM server included: ~3 minutes on 2 CPUs

RUNS = ["default", "llava", "demo"]


@pytest.fixture(scope="module")
def default_run(video_dir, tmp_path_factory) -> Path:
    return rr.default_run(video_dir, tmp_path_factory.mktemp("readers-default"))


@pytest.fixture(scope="module")
def llava_run(video_dir, tmp_path_factory) -> Path:
    return rr.llava_run(video_dir, tmp_path_factory.mktemp("readers-llava"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    from fixtures.local_vllm import NoVLLM, vllm_python

    try:
        vllm_python()
    except NoVLLM as e:
        pytest.skip(str(e))
    return rr.demo_run(tmp_path_factory.mktemp("readers-demo"))


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, rr.Expected]]:
    return {}


@pytest.fixture(params=RUNS)
def run(request, references) -> tuple[Path, dict[str, rr.Expected]]:
    """(run folder, the reference of each of its samples), the reference read once per run."""
    out = request.getfixturevalue(f"{request.param}_run")
    if request.param not in references:
        references[request.param] = rr.reference(out)
    return out, references[request.param]


def split_keys(expected: dict[str, rr.Expected], split: str) -> list[str]:
    return sorted(k for k, e in expected.items() if e.split == split)


def test_each_run_holds_what_the_readers_must_handle(run):
    out, expected = run
    index = rr.index_rows(out)
    assert sorted(r["key"] for r in index) == sorted(expected)  # the tars hold exactly the index's samples
    assert {r["key"]: r.get("split") or "train" for r in index} == {k: e.split for k, e in expected.items()}
    assert {r["key"]: r["frames_stored"] for r in index} == {k: e.meta.frames.count for k, e in expected.items()}
    assert len(rr.shard_paths(out)) >= 2  # each of webdataset's 2 workers gets a shard (else it raises)
    assert split_keys(expected, "train")


def test_the_default_run_has_different_frame_counts_vfr_rotation_and_a_held_out_split(default_run):
    expected = rr.reference(default_run)
    by_name = {Path(e.meta.source).stem: e for e in expected.values()}
    assert sorted(by_name) == sorted(v.name for v in rr.DEFAULT_INPUT)
    counts = {name: e.meta.frames.count for name, e in by_name.items()}
    assert len(set(counts.values())) >= 3, counts  # the union of the 32/128/192 picks depends on the length
    assert all(e.meta.stored_set().stage(k) is not None for e in expected.values() for k in (32, 128, 192))
    assert by_name["vfr_motion_10s"].meta.video.variable_frame_rate
    assert by_name["rotated_motion_10s"].meta.video.rotation in (90, 270)
    for e in expected.values():
        assert e.split == split_of(e.key, rr.DEFAULT_EVAL_FRACTION)
    assert split_keys(expected, "eval") and len(split_keys(expected, "train")) >= 2


def test_hugging_face_datasets_reads_each_split_without_features(run, tmp_path):
    out, expected = run
    for split in ("train", "eval"):
        paths = rr.shard_paths(out, split)
        if not paths:
            assert not split_keys(expected, split)
            continue
        reads = rr.read_hf(paths, tmp_path / "hf-cache")
        rr.check_reader({k: expected[k] for k in split_keys(expected, split)}, reads, f"datasets[{split}]")


def test_ray_data_read_webdataset_reads_every_sample(run, ray_local):
    out, expected = run
    rr.check_reader(expected, rr.read_ray(rr.shard_paths(out)), "ray.data")


def test_webdataset_webloader_with_two_workers_reads_every_sample(run):
    out, expected = run
    rr.check_reader(expected, rr.read_webloader(rr.shard_paths(out)), "wds.WebLoader")


def test_the_readme_snippet_reads_the_training_split_only(run):
    out, expected = run
    reads = rr.read_readme_snippet(out)
    assert all(isinstance(r.meta, dict) and isinstance(r.frames, bytes) for r in reads)
    rr.check_reader({k: expected[k] for k in split_keys(expected, "train")}, reads, "README snippet")


def test_the_llava_run_keeps_int_ids_and_extra_fields_as_text(llava_run):
    by_name = {Path(e.meta.source).stem: e for e in rr.reference(llava_run).values()}
    h264 = by_name["h264_10s"].conversations
    assert [c.id for c in h264] == ["1", "2"] and h264[0].turns() == rr.LLAVA_RECORDS[0]["conversations"]
    assert [json.loads(c.extra_json) for c in h264] == [{"data_source": "demo", "score": 0.5}, {"tags": ["a", "b"]}]
    assert json.loads(by_name["vfr_10s"].conversations[0].extra_json) == {"meta": {"n": 3, "ok": True}}
    assert by_name["vfr_10s"].meta.video.variable_frame_rate and by_name["rotated_10s"].meta.video.rotation in (90, 270)


def test_the_stored_frames_show_the_times_the_json_says_and_stand_upright(llava_run):
    """The clock videos' grey level tells when a frame was shown: the stored frames, cut from `frames.mjpeg` at
    the json's offsets, show their recorded timestamps (a variable-frame-rate video included)."""
    from PIL import Image

    reads = {r.key: r for r in rr.read_webloader(rr.shard_paths(llava_run))}
    clocks = [r for r in reads.values() if Path(r.meta["source"]).stem in rr.CLOCK_VIDEOS]
    assert len(clocks) == 2
    for read in clocks:
        meta = SampleMeta.model_validate(read.meta)
        frames = [read.frames[o : o + n] for o, n in zip(meta.frames.offsets, meta.frames.sizes)]
        grey = np.array([np.asarray(Image.open(io.BytesIO(f)).convert("L"), dtype=np.float64).mean() for f in frames])
        shown = grey * 219 / 255 / CLOCK_RATE
        np.testing.assert_allclose(shown, meta.stored_set().timestamps_s, atol=0.15)
    rotated = next(r for r in reads.values() if Path(r.meta["source"]).stem == "rotated_10s")
    meta = SampleMeta.model_validate(rotated.meta)
    first = rotated.frames[: meta.frames.sizes[0]]
    image = np.asarray(Image.open(io.BytesIO(first)).convert("L"), dtype=np.float64)
    assert abs(image[: image.shape[0] // 2].mean() - image[image.shape[0] // 2 :].mean()) > 150  # turned upright


def test_a_layout1_shard_reads_as_the_same_frames_and_positions(llava_run, tmp_path):
    """Layout 1 (one `NNNN.jpg` member per frame, dict-shaped metadata with nulls, raw LLaVA records) reads
    through `shards.layout.Sample` as the format-2 sample it was made from."""
    expected = rr.reference(llava_run)
    originals = {}
    for path in rr.shard_paths(llava_run):
        originals.update(rr.tar_samples(Path(path)))
    records = {}
    for record in rr.LLAVA_RECORDS:
        records.setdefault(Path(record["video"]).stem, []).append({k: v for k, v in record.items() if k != "video"})
    old = []
    for key, members in originals.items():
        sample = Sample(members)
        old.append((key, sample.frames(), rr.layout1_meta(sample.meta), records[Path(sample.meta.source).stem]))
    shard = tmp_path / "layout1-000.tar"
    rr.write_layout1_tar(shard, old)
    read = rr.tar_samples(shard)
    assert sorted(read) == sorted(expected)
    for key, members in read.items():
        assert "frames.mjpeg" not in members and "0000.jpg" in members and b"format_version" not in members["json"]
        assert json.loads(members["json"])["video"]["declared_duration_s"] is None  # a layout-1 null
        one, two = Sample(members), Sample(originals[key])
        assert one.meta.format_version == "1.0" and two.meta.format_version == "2.0"
        assert one.num_frames == two.num_frames == len(expected[key].frame_hashes)
        assert [rr.digest(f) for f in one.frames()] == expected[key].frame_hashes
        old_set, new_set = one.meta.stored_set(), two.meta.stored_set()
        assert old_set.timestamps_s == new_set.timestamps_s and old_set.indices == new_set.indices
        for k in (32, 128, 192):
            positions = new_set.stage(k).positions
            assert old_set.stage(k).positions == positions
            assert one.frames(positions) == two.frames(positions)
        assert one.meta.video.keyframe_interval_s == two.meta.video.keyframe_interval_s
        assert one.meta.video.declared_duration_s == 0.0  # the null read as the typed default
        assert one.meta.video.file_identity == two.meta.video.file_identity
        assert one.meta.scores == two.meta.scores and one.meta.tokens == two.meta.tokens
        assert one.conversations == two.conversations  # int ids and extra fields come out as the importer made them
