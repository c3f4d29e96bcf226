"""Training data from the pipeline's shards: frame subsampling, decoding, the Qwen prompt and its loss mask."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fixtures.tiny_train_model import build_tokenizer
from pipeline.run import run_pipeline
from pipeline.video.sampling import uniform_indices
from shards.layout import MEMBERS, Sample, build_sample
from shards.reader import iter_tar_samples
from tests.conftest import pipeline_config
from tests.train.synth import frames_of, union_sections, write_run
from train.chat import IGNORE, ChatEncoder
from train.data import DataConfig, build_dataset, decode_frames, shard_urls, training_items
from train.frames import frame_indices
from train.position import WorkerEnd

TURNS = [
    {"from": "human", "value": "<image>\nWhat happens in the video?"},
    {"from": "gpt", "value": "A person walks across the room."},
    {"from": "human", "value": "How many objects are visible?"},
    {"from": "gpt", "value": "Two."},
]


def with_frame(members: dict, position: int, jpeg: bytes) -> dict:
    """A copy of a format-2 sample with one stored frame replaced: the frames member and its offsets redone."""
    sample = Sample(members)
    frames = sample.frames()
    frames[position] = jpeg
    sizes = [len(f) for f in frames]
    layout = sample.meta.frames.model_copy(update={"sizes": sizes, "offsets": [sum(sizes[:i]) for i in range(len(sizes))]})
    out = build_sample(sample.key, frames, sample.meta.model_copy(update={"frames": layout}), sample.conversations)
    assert Sample(out).frames([position]) == [jpeg]
    return out


@pytest.fixture(scope="module")
def encoder():
    return ChatEncoder(build_tokenizer())


@pytest.fixture(scope="module")
def shards(tmp_path_factory, video, ray_local):
    """Shards made by the pipeline from a LLaVA file: 2 videos, 3 conversations, 40 frames stored."""
    root = tmp_path_factory.mktemp("llava")
    (root / "v").mkdir()
    for name in ("clock_10s", "h264_10s"):
        shutil.copy(video(name), root / "v" / f"{name}.mp4")
    records = [{"id": "c0", "video": "v/clock_10s.mp4", "conversations": TURNS},
               {"id": "c1", "video": "v/clock_10s.mp4", "conversations": TURNS[:2]},
               {"id": "h0", "video": "v/h264_10s.mp4", "conversations": TURNS[:2]}]
    (root / "ann.json").write_text(json.dumps(records))
    out = root / "out"
    run_pipeline(pipeline_config(root / "ann.json", out, "input.format=llava", f"input.video_root={root}",
                                 "sampling.sets.0.num_frames=40", "sampling.sets.0.resize.size=64",
                                 "filters.visual.enabled=false"))
    return out


def test_the_assistant_only_mask_is_exactly_the_assistant_answers(encoder):
    encoder = ChatEncoder(encoder.tok, mask="assistant_only")
    enc = encoder.encode(TURNS, video_tokens=7)
    assert len(enc.input_ids) == len(enc.labels) and enc.video_positions == 7
    assert enc.input_ids.count(encoder.video_token_id) == 7
    spans, current = [], []
    for tid, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            assert label == tid
            current.append(tid)
        elif current:
            spans.append(current)
            current = []
    tok = encoder.tok
    assert [tok.decode(s) for s in spans] == ["A person walks across the room.<|im_end|>", "Two.<|im_end|>"]
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>")


def test_unknown_roles_are_refused(encoder):
    with pytest.raises(ValueError, match="role"):
        encoder.encode([{"from": "narrator", "value": "x"}], 0)


@pytest.mark.parametrize("stored,k", [(192, 32), (192, 128), (192, 192), (40, 8), (10, 32)])
def test_frame_subsampling_is_the_papers_uniform_linspace(stored, k):
    assert frame_indices(stored, k).tolist() == uniform_indices(stored, k).tolist()


def test_items_from_pipeline_shards(shards, encoder):
    cfg = DataConfig(shards=str(shards), frames=8, image_size=64, shuffle_buffer=0)
    *tagged, end = list(build_dataset(cfg, encoder, tokens_per_frame=10))
    assert end == WorkerEnd(0)  # the end marker of the (only) worker's stream
    items = [t.item for t in tagged]
    assert sorted(i["id"] for i in items) == ["c0", "c1", "h0"]  # one item per conversation
    assert sorted(t.index for t in tagged) == [0, 1, 2] and {t.worker for t in tagged} == {0}
    raw = {key: members for url in shard_urls(str(shards)) for key, members in iter_tar_samples(url)}
    for item in items:
        assert item["pixel_values"].shape == (8, 3, 64, 64) and item["pixel_values"].dtype == torch.float32
        assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
        assert item["frame_indices"] == uniform_indices(40, 8).tolist()
        assert int((item["input_ids"] == encoder.video_token_id).sum()) == 8 * 10
        members = raw[item["key"]]
        from torchvision.io import decode_jpeg

        stored = Sample(members, item["key"])
        assert stored.num_frames == 40 and item["meta"] == stored.meta  # the item's metadata is the sample's model
        jpeg = stored.frames([item["frame_indices"][-1]])[0]
        last = decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8))
        assert torch.allclose(item["pixel_values"][-1], (last.float() / 255 - 0.5) / 0.5, atol=1e-5)  # that very frame
    clock = next(i for i in items if i["id"] == "c0")
    grey = clock["pixel_values"].mean(dim=(1, 2, 3))
    assert torch.all(grey[1:] > grey[:-1])  # the clock video brightens with time: frames are in time order


def test_overlong_items_are_dropped_or_shortened_and_counted(shards, encoder):
    from train.data import LoaderCounts
    import webdataset as wds

    text = encoder.text_tokens(TURNS)
    limit = text + 5 * 10  # room for five 10-token frames
    for policy, expect_frames in (("fewer_frames", 5), ("drop", None)):
        cfg = DataConfig(shards=str(shards), frames=8, image_size=64, model_max_length=limit,
                         overlong=policy, shuffle_buffer=0)
        counts = LoaderCounts()
        samples = wds.WebDataset(shard_urls(str(shards)), shardshuffle=False, empty_check=False)
        items = list(training_items(iter(samples), cfg, encoder, counts, tokens_per_frame=10))
        assert counts.samples == 2
        if expect_frames is None:
            assert counts.reasons["dropped_overlong"] == 3 and items == []
        else:
            assert counts.reasons["fewer_frames"] >= 1
            long_item = next(i for i in items if i["id"] == "c0")
            assert long_item["pixel_values"].shape[0] == expect_frames and len(long_item["input_ids"]) <= limit


def test_a_huge_or_corrupt_frame_skips_its_sample_never_the_training(shards, encoder):
    """A 12000x12000 JPEG is refused from its header (never decoded); a corrupt one is counted and passed over."""
    import io

    from PIL import Image

    from train.data import LoaderCounts

    samples = [dict(s) for url in shard_urls(str(shards)) for s in
               ({"__key__": k, **m} for k, m in iter_tar_samples(url))]
    assert len(samples) == 2
    big = io.BytesIO()
    Image.new("RGB", (12000, 12000)).save(big, "JPEG", quality=10)
    assert uniform_indices(40, 8)[[0, -1]].tolist() == [0, 39]  # an 8-frame stage takes both frames replaced
    huge = with_frame(samples[0], 0, big.getvalue())
    broken = with_frame(samples[1], 39, b"\xff\xd8\xff\xe0" + b"\x00" * 300)  # a JPEG start, then nothing to decode
    again = with_frame(huge, 0, Sample(samples[1]).frames([0])[0]) | {"__key__": "again"}
    cfg = DataConfig(shards=str(shards), frames=8, image_size=64, shuffle_buffer=0)
    counts = LoaderCounts()
    items = list(training_items(iter([huge, broken, again]), cfg, encoder, counts, tokens_per_frame=10))
    assert counts.reasons["bad_frames"] == 2 and counts.samples == 3
    assert {i["key"] for i in items} == {"again"}  # training goes on with the next sample


STORED = 244  # the union of the 32-, 128- and 192-frame stages' picks over a 300-frame source (`synth.union_sections`)


def union_run(root, layout1: bool = False):
    return write_run(root, samples=3, per_shard=2, frames=STORED, layout1=layout1,
                     meta_of=lambda s: union_sections(f"video{s:03d}"))  # fmt: skip


def streamed_items(run, cfg: DataConfig, encoder) -> dict:
    import webdataset as wds

    samples = wds.WebDataset(shard_urls(str(run)), shardshuffle=False, empty_check=False)
    return {i["id"]: i for i in training_items(iter(samples), cfg, encoder, tokens_per_frame=1)}


def permuted_items(run, cfg: DataConfig, encoder) -> dict:
    permuted = cfg.model_copy(update={"shards": str(run), "order": "permutation"})
    tagged = list(build_dataset(permuted, encoder, tokens_per_frame=1))
    assert tagged[-1] == WorkerEnd(0)
    return {t.item["id"]: t.item for t in tagged[:-1]}


def test_a_layout1_shard_trains_on_the_same_frames_as_its_format2_twin(tmp_path, encoder):
    """Shards written before format 2 (one member per frame, dict-shaped json with nulls) still train, in both
    orders, on the very frames and pixels the same videos give in format 2."""
    new, old = union_run(tmp_path / "format2"), union_run(tmp_path / "layout1", layout1=True)
    key, members = next(iter_tar_samples(shard_urls(str(old))[0]))
    assert sorted(members)[:2] == ["0000.jpg", "0001.jpg"] and "frames.mjpeg" not in members
    assert "format_version" not in json.loads(members["json"]) and json.loads(members["json"])["captions"] is None
    assert Sample(members, key).num_frames == STORED and Sample(members, key).meta.frames.member == ""
    positions = union_sections("any")["decode"]["sets"]["shard"]["stages"]["32"]
    assert positions != uniform_indices(STORED, 32).tolist()  # the stored set's record decides, not a linspace over 244
    cfg = DataConfig(shards=str(new), frames=32, image_size=64, shuffle_buffer=0)
    for read in (streamed_items, permuted_items):
        got_new, got_old = read(new, cfg, encoder), read(old, cfg, encoder)
        assert sorted(got_new) == sorted(got_old) == ["s000c0", "s001c0", "s002c0"]
        for cid, item in got_new.items():
            twin, s = got_old[cid], int(cid[1:4])
            assert item["frame_indices"] == twin["frame_indices"] == positions and item["frame_offset"] == 0
            assert item["meta"].stored_set().indices == twin["meta"].stored_set().indices
            assert item["meta"].decode.num_frames == twin["meta"].decode.num_frames == 300
            expected = decode_frames([frames_of(s, STORED)[p] for p in positions], cfg)
            assert torch.equal(item["pixel_values"], expected) and torch.equal(twin["pixel_values"], expected)
            assert torch.equal(item["input_ids"], twin["input_ids"])


def test_the_permutation_loader_reads_only_the_frames_a_stage_takes(tmp_path, encoder, monkeypatch):
    """A format-2 sample's frames are one member; a 32-frame stage reads its 32 frames' byte ranges (and the two
    json members), never the other 212 frames."""
    import tarfile

    from train.order import TarMembers

    run = union_run(tmp_path / "run")
    reads: list[tuple[str, int, int]] = []
    real = TarMembers.read

    def counted(self, path, offset, size):
        reads.append((path, offset, size))
        return real(self, path, offset, size)

    monkeypatch.setattr(TarMembers, "read", counted)
    cfg = DataConfig(shards=str(run), frames=32, image_size=64, shuffle_buffer=0)
    items = permuted_items(run, cfg, encoder)
    monkeypatch.undo()
    assert len(items) == 3
    expected, sizes = [], {}
    for url in shard_urls(str(run)):
        with tarfile.open(url) as tar:
            where = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
        for key, members in iter_tar_samples(url):
            sample = Sample(members, key)
            layout, positions = sample.meta.frames, sample.meta.stored_set().stage(32).positions
            assert layout.count == STORED and len(positions) == 32
            start = where[f"{key}.frames.mjpeg"][0]
            frames = [(url, start + layout.offsets[p], layout.sizes[p]) for p in positions]
            whole = [(url, *where[f"{key}.{m}"]) for m in ("json", "conversations.json")]
            expected += whole + frames
            sizes[key] = (sum(s for _, _, s in whole + frames), sum(where[f"{key}.{m}"][1] for m in MEMBERS))
    assert sorted(reads) == sorted(expected)  # each range once: the json, the conversations, the stage's frames
    for key, (read, stored) in sizes.items():
        assert read < stored / 3, (key, read, stored)  # about 32 frames and the json of a 244-frame sample
