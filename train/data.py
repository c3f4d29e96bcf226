"""Training samples straight from the pipeline's shards: webdataset in, tensors out, never an mp4.

Per sample: take the stage's k frames (`frames.py`: the paper's exact frames
where the shard recorded them), decode the JPEGs in one batched libjpeg-turbo
call (torchvision), normalise as SigLIP expects, and encode each conversation
with the Qwen template (`chat.py`): one training item per conversation. Every
item gets k frames (`frame_count: fixed`, the paper's `fixed_num_frames`:
short videos repeat frames) unless its record, or the sample, names its own
count. Items longer than `model_max_length` are dropped or given fewer frames,
as configured, and counted. Items come in one of three orders (`order.py`):
shards shuffled and split across readers and loader workers by webdataset with
a shuffle buffer, or a whole-epoch permutation of the (video, conversation)
items (the paper's sampler) or of the videos. A video's decoded frames are
kept in a small per-worker cache (`FrameCache`), so items that follow each
other on one video decode its frames once. `DataConfig`
holds only what a user sets; what the model and the run decide (the tokens a
frame costs, the seed, which reader a rank is: `train/topology.py`) is passed in.
"""

from __future__ import annotations

import functools
import glob
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import Field

from pipeline.core.config_base import Strict
from pipeline.core.recipe import MAX_LENGTH, PAPER_STAGES
from pipeline.core.sample import Conversation, NewerFormat, SampleMeta
from shards import reader
from pipeline.core.storage import in_fresh_process, is_remote
from shards.layout import RunDir, Sample
from shards.remote import register_webdataset_schemes, remote_shard_urls
from shards.split import TRAIN
from train.chat import ChatEncoder, RefusedConversation
from train.frame_cache import FrameCache
from train.frames import pick_frames
from train.position import WorkerEnd, WorkerItem
from train.topology import Topology

log = logging.getLogger(__name__)


class DataConfig(Strict):
    shards: str = Field(description="a pipeline output dir (its shards.json) or a folder / glob of .tar shards")
    frames: Annotated[int, Field(gt=0)] = PAPER_STAGES[0].frames  # the stage's frame count (pipeline/core/recipe.py)
    frame_count: Literal["fixed", "up_to_stored"] = Field(
        "fixed", description="fixed: always `frames` (short videos repeat frames, the paper); up_to_stored: at most stored"
    )
    mask: Literal["paper", "assistant_only"] = Field(
        "paper", description="paper: assistant messages whole + every <|im_start|>, <|im_end|>, newline token"
    )
    image_placement: Literal["front", "in_place"] = Field(
        "front", description="front: a human turn's <image> after some text moves to its front (the paper)"
    )
    order: Literal["shard_shuffle", "permutation", "video_permutation"] = Field(
        "shard_shuffle", description="permutation: every epoch a full permutation of the index's (video, conversation) "
        "items, as the paper's sampler; video_permutation: of its videos, each video's conversations back to back"
    )
    # Decoded frames kept per loader worker (MB); the latest video's are always kept.
    frame_cache_mb: Annotated[int, Field(ge=0)] = 1024
    image_size: Annotated[int, Field(gt=0)] = 384
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    model_max_length: Annotated[int, Field(gt=0)] = MAX_LENGTH
    overlong: Literal["drop", "fewer_frames"] = "fewer_frames"
    min_frames: Annotated[int, Field(gt=0)] = 4  # fewer_frames never goes below this
    shuffle_buffer: Annotated[int, Field(ge=0)] = 64
    length_bucket_tokens: Annotated[int, Field(ge=0)] = 0  # batch items whose lengths share this bucket (0: frames only)
    # A stored frame above this is refused before decoding (a 12000x12000 JPEG would take 1.7 GB); shards hold 384 px.
    max_frame_pixels: Annotated[int, Field(gt=0)] = 4096 * 4096


def split_by_reader(src: Iterator[Any], topology: Topology | None) -> Iterator[Any]:
    """webdataset's `split_by_node`, by reader (a sequence-parallel group shares one)."""
    from itertools import islice

    from train.order import reader_info

    rank, world, _, _ = reader_info(topology)
    yield from islice(src, rank, None, world) if world > 1 else src


def shard_urls(spec: str) -> list[str]:
    """The training shards `data.shards` names: a run's train split, a folder's tars, or a glob's matches; on an
    object store (`s3://bucket/run1`), the run's train split or the tars under the prefix."""
    if is_remote(spec):  # listed in a spawned process: this one forks the loader workers that read the shards
        return [spec] if spec.endswith(".tar") else in_fresh_process(remote_shard_urls, spec, TRAIN)
    path = Path(spec)
    if (path / "shards.json").exists():  # a run's held-out eval shards are never trained on
        return reader.shard_urls(RunDir(path), TRAIN)  # refuses shards of a newer sample format
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar")) or sorted(str(p) for p in (path / "shards").glob("*.tar"))
    return sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]  # absolute or relative patterns


_POOL: Any = None
register_webdataset_schemes()  # s3:// gs:// az:// shard URLs through the storage seam, in every loader process


def _decode_pool(threads: int) -> Any:
    global _POOL
    if _POOL is None or _POOL._max_workers != threads:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="jpeg")
    return _POOL


def decode_frames(jpegs: list[bytes], cfg: DataConfig) -> Any:
    """(k, 3, H, W) float32, normalised in place; batched libjpeg-turbo decodes on torch's thread count.

    In DataLoader workers torch uses one thread each, so workers never oversubscribe the cores.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    threads = max(1, min(torch.get_num_threads(), len(data)))
    if threads == 1:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB)
    else:
        chunks = [data[i::threads] for i in range(threads)]  # libjpeg releases the GIL: chunks decode in parallel
        parts = list(_decode_pool(threads).map(lambda c: decode_jpeg(c, mode=ImageReadMode.RGB), chunks))
        decoded = [None] * len(data)
        for i, part in enumerate(parts):
            decoded[i::threads] = part
    images = torch.stack(decoded).float()
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        images = torch.nn.functional.interpolate(images, size=(cfg.image_size, cfg.image_size),
                                                 mode="bicubic", align_corners=False).clamp_(0, 255)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1).mul_(255.0)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1).mul_(255.0)
    return images.sub_(mean).div_(std)


def frames_problem(jpegs: list[bytes], max_pixels: int) -> str | None:
    """Why these stored frames must not be decoded (too large, no JPEG header), from their headers alone."""
    from PIL import Image

    for n, data in enumerate(jpegs):
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                kind = img.format
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, ValueError, DecompressionBombError
            return f"frame {n}: unreadable header ({type(e).__name__})"
        if kind != "JPEG":
            return f"frame {n}: {kind}, not JPEG"
        if width * height > max_pixels:
            return f"frame {n}: {width}x{height} over max_frame_pixels {max_pixels}"
    return None


TRAINED_ON = ("fewer_frames", "nearest_frames")  # counted reasons whose items are still trained on


@dataclass
class LoaderCounts:
    samples: int = 0
    items: int = 0
    # no_conversations, bad_metadata, index_mismatch, dropped_overlong, fewer_frames, bad_frames, nearest_frames (a
    # k the shard has no record of), and RefusedConversation's reasons (empty, no_placeholder, ...: `train/chat.py`)
    reasons: Counter = field(default_factory=Counter)


def training_items(
    samples: Iterator[dict[str, Any]],
    cfg: DataConfig,
    encoder: ChatEncoder,
    counts: LoaderCounts | None = None,
    skip: int = 0,
    *,
    tokens_per_frame: int,
) -> Iterator[dict[str, Any]]:
    """webdataset samples (raw bytes) -> one item per conversation: pixel_values, input_ids, labels.

    `tokens_per_frame`: the model's (`train.model.tokens_per_frame`), what a frame costs in the sequence. `skip`
    items are passed over without decoding their frames (resuming mid-epoch); `counts.items` counts every item made,
    so while an item is yielded, `counts.items - 1` is its place in the stream.
    """
    import torch

    counts = counts if counts is not None else LoaderCounts()
    cache = FrameCache(cfg.frame_cache_mb << 20)
    for members in samples:
        counts.samples += 1
        try:
            sample = Sample(members)
        except (ValueError, KeyError) as e:  # a newer format is refused at load (`check_shard_formats`); this is damage
            if isinstance(e, NewerFormat):
                raise
            counts.reasons["bad_metadata"] += 1
            log.warning("skipping sample %s: unreadable metadata (%s)", members.get("__key__"), str(e)[:200])
            continue
        if not sample.conversations:
            counts.reasons["no_conversations"] += 1
            continue
        meta, stored = sample.meta, sample.num_frames
        only = getattr(members, "conversation", None)  # a (video, conversation) item of the permutation order
        if only is not None and only >= len(sample.conversations):
            counts.reasons["index_mismatch"] += 1
            log.warning("skipping %s#%d: the sample has %d conversations (the index and the shards disagree)",
                        sample.key, only, len(sample.conversations))
            continue
        for number, record in enumerate(sample.conversations):
            if only is not None and number != only:
                continue
            turns = record.turns()
            k = item_frames(cfg, record, meta, stored)
            try:
                enc = encoder.encode(turns, k * tokens_per_frame)
            except RefusedConversation as e:  # one the paper's rules cannot reproduce (`train/chat.py`)
                counts.reasons[e.reason] += 1
                continue
            if len(enc) > cfg.model_max_length:
                text = len(enc) - enc.video_positions
                fit = (cfg.model_max_length - text) // tokens_per_frame
                if cfg.overlong == "drop" or fit < cfg.min_frames:
                    counts.reasons["dropped_overlong"] += 1
                    continue
                counts.reasons["fewer_frames"] += 1
                k = fit
                enc = encoder.encode(turns, k * tokens_per_frame)
            pick = pick_frames(meta, stored, k)
            counts.items += 1
            if counts.items <= skip:
                continue
            if not pick.exact:
                counts.reasons["nearest_frames"] += 1
            where = (sample.key, tuple(pick.positions))
            found, pixels = cache.get(where)
            if not found:
                jpegs = sample.frames(pick.positions)
                problem = frames_problem(jpegs, cfg.max_frame_pixels)
                if problem is None:
                    try:
                        pixels = decode_frames(jpegs, cfg)
                    except (RuntimeError, ValueError) as e:  # torchvision's libjpeg errors on corrupt data
                        problem = f"frames do not decode ({str(e).splitlines()[0][:120]})"
                if problem is not None:
                    pixels = None  # its items stay counted (resume positions), none is yielded
                    counts.reasons["bad_frames"] += 1
                    log.warning("skipping sample %s: %s", sample.key, problem)
                cache.put(where, pixels)
            if pixels is None:
                continue
            yield {  # its place in this stream (exact resume) is counts.items - 1, as `worker_items` reads it
                "key": sample.key,
                "id": record.id or f"{sample.key}#{number}",
                "frame_indices": pick.positions,
                "frame_offset": pick.offset,
                "pixel_values": pixels,
                "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
                "labels": torch.tensor(enc.labels, dtype=torch.long),
                "meta": meta,  # the sample's metadata (`SampleMeta`)
            }


def item_frames(cfg: DataConfig, record: Conversation, meta: SampleMeta, stored: int) -> int:
    """Frames an item gets: the record's own count, else the sample's (a manifest's per-video count), else the stage's."""
    own = record.num_frames or meta.num_frames
    if own:
        return int(own)
    return cfg.frames if cfg.frame_count == "fixed" else min(cfg.frames, stored)


def worker_items(src: Iterator[dict[str, Any]], cfg: DataConfig, encoder: ChatEncoder, skips: list[int],
                 tokens_per_frame: int) -> Iterator[WorkerItem | WorkerEnd]:  # fmt: skip
    """One loader worker's items, each with its worker and place in the stream, then the end of the stream."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    counts = LoaderCounts()
    skip = skips[worker] if worker < len(skips) else 0
    reported: Counter = Counter()

    def passed() -> dict[str, int]:  # what was passed over since the last report, for the run's log
        new = Counter({k: n for k, n in (counts.reasons - reported).items() if k not in TRAINED_ON})
        reported.update(new)
        return dict(new)

    for item in training_items(src, cfg, encoder, counts, skip, tokens_per_frame=tokens_per_frame):
        yield WorkerItem(worker, counts.items - 1, item, passed())  # items dropped after counting keep their places
    yield WorkerEnd(worker, passed())


def build_dataset(cfg: DataConfig, encoder: ChatEncoder, *, tokens_per_frame: int, seed: int = 0,
                  topology: Topology | None = None, epoch: int = 0, skip: int | list[int] = 0) -> Any:  # fmt: skip
    """The items of this reader and loader worker: a webdataset pipeline over the shards (split by reader and
    worker, shuffled with `seed`), or the epoch's permutation of the index (`order.py`).

    `tokens_per_frame`: the model's; `seed`: the run's, the same on every rank; `topology`: which reader this rank
    is (None: the process group's rank and size); `skip`: items to pass over, per loader worker when a list.
    """
    import webdataset as wds

    skips = list(skip) if isinstance(skip, (list, tuple)) else [skip]

    def items(src: Iterator[Any]) -> Iterator[WorkerItem | WorkerEnd]:
        return worker_items(src, cfg, encoder, skips, tokens_per_frame)

    if cfg.order in ("permutation", "video_permutation"):
        from train.order import build_permuted

        return build_permuted(cfg.shards, seed, topology, epoch, items,
                              by="video" if cfg.order == "video_permutation" else "conversation")
    urls = shard_urls(cfg.shards)
    if not urls:
        raise FileNotFoundError(f"no shards found at {cfg.shards}")
    dataset = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if cfg.shuffle_buffer else False,
        nodesplitter=functools.partial(split_by_reader, topology=topology),
        workersplitter=wds.split_by_worker,
        empty_check=False,
        seed=seed + epoch,
        handler=wds.warn_and_continue,  # a damaged tar member is logged and passed over, never stops training
    )
    if cfg.shuffle_buffer:
        dataset = dataset.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, seed=seed + epoch)
    return dataset.compose(items)
