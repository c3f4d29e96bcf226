"""The shard writer as a Ray Data sink: each write task turns its rows into finished shards and ledger records.

Ray hands every write task at least `max_samples` rows (`min_rows_per_write`),
so shards come out near the count limit; the byte limit splits a task's rows
into several shards when needed. Names carry the run's time stamp, the write
task index and a random id, so parallel writers (and resumed runs) never
collide. Rejected videos arrive here too and become one rejects part per task.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable

from ray.data import Datasink
from ray.data.block import BlockAccessor

from pipeline.core.records import Rejection, WriteTotals
from pipeline.core.sample import Conversation, SampleMeta
from pipeline.core.sample_io import conversation_from_record, meta_from_sections
from pipeline.core.task import VideoTask
from shards.config import ShardsConfig
from shards.layout import build_sample
from shards.split import EVAL, split_of
from shards.runfolder import writer_shard_name
from shards.target import shard_target
from shards.tarwriter import ShardFile


def sample_meta(task: VideoTask, frame_set: str, split: str, frames: list[bytes]) -> SampleMeta:
    """The sample's `json` member (`pipeline/core/sample.py`): everything known about the video except conversations
    and the embedding, and which frame set the sample's frames are."""
    return meta_from_sections(task.key, task.source, frame_set, split, task.meta, [len(f) for f in frames])


def sample_conversations(task: VideoTask) -> list[Conversation]:
    return [conversation_from_record(r, f"{task.key}-{n}") for n, r in enumerate(task.meta.get("conversations") or [])]


def index_row(task: VideoTask, meta: SampleMeta, shard: str, nbytes: int) -> dict[str, Any]:
    """The sample's index.parquet row, from the model the sample was written from."""
    stored = meta.stored_set()
    needed = max((s.frames for s in stored.stages), default=0) if stored is not None else 0
    row: dict[str, Any] = {
        "key": task.key,
        "shard": shard,
        "source": task.source,
        "duration_s": meta.video.duration_s,
        "fps": meta.video.avg_fps,
        "width": meta.video.width,
        "height": meta.video.height,
        "codec": meta.video.codec,
        "frames_stored": meta.frames.count,
        # what the largest stage takes: frames_stored / frames_needed is what storing every stage's exact frames costs
        "frames_needed": needed or meta.frames.count,
        "decoder": meta.decode.decoder,
        "sample_bytes": nbytes,
        "num_conversations": len(task.meta.get("conversations") or []),
        "source_row": task.source_row,  # the input row it came from, and how many it stands for (LLaVA: records)
        "source_rows": task.source_rows,
    }
    for t in meta.tokens:
        row[f"tokens_{t.name}"] = t.count
    for c in meta.counts:  # caption / QA counts from the LLM stages
        row[c.name] = c.count
    for s in meta.scores:
        row[f"score_{s.name}"] = s.value
    if task.meta.get("embedding"):
        row["embedding"] = task.meta["embedding"]  # split into embeddings.parquet by the ledger
    return row


class ShardSink(Datasink):
    def __init__(self, out_dir: str, shards: ShardsConfig, run_stamp: str, generation: int):
        self.out_dir = out_dir
        self.cfg = shards
        self.run_stamp = run_stamp
        self.generation = generation  # the run attempt this sink writes for: commits of any other are refused
        self.results: list[WriteTotals] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.cfg.max_samples

    def get_name(self) -> str:
        return "WriteShards"

    def write(self, blocks: Iterable[Any], ctx: Any) -> WriteTotals:
        target = shard_target(self.out_dir)
        folder = target.open()
        task_idx, uid = getattr(ctx, "task_idx", 0), uuid.uuid4().hex[:8]
        summary = WriteTotals()
        rejects: list[Rejection] = []
        open_shards: dict[str, ShardFile] = {}  # one open shard per split: eval samples never share a train shard
        rows: dict[str, list[dict[str, Any]]] = {}
        seq = 0
        start = time.perf_counter()
        held_out = self.cfg.eval_fraction > 0

        def finish(split: str) -> None:
            current = open_shards.pop(split, None)
            if current is None:
                return
            target.pause_before_commit()
            info = current.close()
            # The commit point: refused for an older run attempt, and a key already committed is dropped.
            committed, kept = target.commit(self.generation, info, rows.pop(split, []), fsync=self.cfg.fsync)
            if committed is not None:
                summary.shards.append(committed.__dict__)
            target.kill_after_commit()
            summary.samples += len(kept)
            summary.frames += sum(r["frames_stored"] for r in kept)

        try:
            for block in blocks:
                for raw in BlockAccessor.for_block(block).iter_rows(public_row_format=True):
                    task = VideoTask.from_row(dict(raw))
                    summary.add_video(task.metrics, task.meta.get("llm") or {},  # kept and rejected
                                      (task.meta.get("video") or {}).get("duration_s") or 0.0)
                    if task.error is not None:
                        rejects.append(task.error)
                        continue
                    if target.committed_in(task.key):  # a retried task's second copy: the first is in the run
                        summary.already_committed += 1
                        continue
                    split = split_of(task.key, self.cfg.eval_fraction)
                    frames = task.frames.get(self.cfg.frame_set, [])
                    meta = sample_meta(task, self.cfg.frame_set, split, frames)
                    sample = build_sample(task.key, frames, meta, sample_conversations(task))
                    current = open_shards.get(split)
                    if current is not None and (
                        current.samples >= self.cfg.max_samples or current.payload >= self.cfg.max_bytes
                    ):
                        finish(split)
                    if split not in open_shards:
                        name = writer_shard_name(self.cfg.prefix, self.run_stamp, task_idx, uid, split == EVAL, seq)
                        open_shards[split] = ShardFile(folder, name, fsync=self.cfg.fsync)
                        seq += 1
                    current = open_shards[split]
                    current.write(sample)
                    nbytes = sum(len(f) for f in frames)
                    row = index_row(task, meta, current.final.name, nbytes)
                    rows.setdefault(split, []).append({**row, "split": split} if held_out else row)
            for split in sorted(open_shards):
                finish(split)
            target.commit_rejects(self.generation, rejects)
        except BaseException:
            for current in open_shards.values():
                current.abort()
            raise
        finally:
            target.close()
        summary.count_rejects(r.reason for r in rejects)
        summary.add_time("write", time.perf_counter() - start, summary.samples)
        summary.last_written_at = time.time()
        return summary

    def on_write_complete(self, write_result: Any) -> None:
        self.results = list(write_result.write_returns)
