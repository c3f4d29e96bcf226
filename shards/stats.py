"""`prolongvid stats RUN_DIR`: what a run produced, from its index, rejects, shard list and run.json."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.sample import LAYOUT1_VERSION
from shards.layout import RunDir
from shards.reader import read_rejects, read_run_json, read_shard_list

DURATION_BINS_S = [0, 60, 120, 300, 600, 1800, 3600, float("inf")]
DURATION_LABELS = ["<1m", "1-2m", "2-5m", "5-10m", "10-30m", "30-60m", ">60m"]


def _summary(values: "np.ndarray | list[float]") -> dict[str, float]:
    if not len(values):
        return {"count": 0}
    a = np.asarray(values, dtype=float)
    return {
        "count": int(a.size),
        "sum": float(a.sum()),
        "mean": round(float(a.mean()), 3),
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "max": float(a.max()),
    }


class Columns:
    """The index read column-wise (Arrow): a million rows are never turned into a Python dict each."""

    def __init__(self, table: pa.Table):
        self.table, self.names, self.rows = table, table.column_names, table.num_rows

    def values(self, name: str) -> np.ndarray:
        """The column as floats, NaN where it is empty (absent column: all NaN)."""
        if name not in self.names:
            return np.full(self.rows, np.nan)
        col = self.table.column(name)
        if pa.types.is_boolean(col.type):
            col = col.cast(pa.int8())
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)

    def present(self, name: str) -> np.ndarray:
        v = self.values(name)
        return v[~np.isnan(v)]


def frame_cost(cols: Columns) -> dict[str, float]:
    """Bytes per sample of the stored frames, and what storing every stage's exact frames costs against storing
    only the largest stage's (`frames_needed`; rows of runs without it count as one pick)."""
    sample_bytes, stored_col, needed_col = cols.values("sample_bytes"), cols.values("frames_stored"), cols.values("frames_needed")
    have = ~np.isnan(sample_bytes) & ~np.isnan(stored_col) & (np.nan_to_num(stored_col) != 0)
    if not have.any():
        return {}
    n = int(have.sum())
    stored = int(stored_col[have].sum())
    needed_each = needed_col[have]
    needed = int(np.where(np.isnan(needed_each) | (needed_each == 0), stored_col[have], needed_each).sum())
    total = int(sample_bytes[have].sum())
    return {"bytes_per_sample": round(total / n, 1), "bytes_per_frame": round(total / stored, 1),
            "frames_per_sample": round(stored / n, 2), "largest_stage_frames_per_sample": round(needed / n, 2),
            "stored_over_largest_stage": round(stored / needed, 4),
            "largest_stage_only_bytes_per_sample": round(total / stored * needed / n, 1)}  # fmt: skip


def compute_stats(run: RunDir) -> dict[str, Any]:
    cols = Columns(pq.read_table(run.index))
    rejects = read_rejects(run)
    shards = read_shard_list(run)
    run_json = read_run_json(run)
    durations = cols.present("duration_s")
    hist, _ = np.histogram(durations, bins=DURATION_BINS_S) if len(durations) else (np.zeros(len(DURATION_LABELS)), None)
    columns = sorted(cols.names)
    decoders = cols.table.column("decoder").to_pylist() if "decoder" in cols.names else [None] * cols.rows
    stats: dict[str, Any] = {
        "run_dir": str(run.root),
        "samples": cols.rows,
        "hours_of_video": round(float(durations.sum()) / 3600, 4),
        "duration_s": _summary(durations),
        "duration_histogram": dict(zip(DURATION_LABELS, (int(h) for h in hist))),
        "frames_stored": _summary(cols.present("frames_stored")),
        "sample_bytes": _summary(cols.present("sample_bytes")),
        "frame_cost": frame_cost(cols),
        "tokens": {c[len("tokens_") :]: _summary(cols.present(c)) for c in columns if c.startswith("tokens_")},
        "conversations": _summary(cols.present("num_conversations")),
        "qa_by_type": {c[len("qa_") :]: int(cols.present(c).sum()) for c in columns if c.startswith("qa_")},
        "captions": {c: _summary(cols.present(c)) for c in columns if c.startswith("caption_")},
        "qa_per_sample": _summary(cols.present("num_qa")),
        "llm_tokens": {c[len("llm_") :]: int(cols.present(c).sum()) for c in columns if c.startswith("llm_") and "tokens" in c},
        "scores": {c[len("score_") :]: _summary(cols.present(c)) for c in columns if c.startswith("score_")},
        "filter_counts": {c[len("visual_") :]: _summary(cols.present(c)) for c in columns if c.startswith("visual_")},
        "decoders": dict(Counter(d or "?" for d in decoders)),
        "rejects": len(rejects),
        "rejects_by_reason": dict(Counter(r["reason"] for r in rejects).most_common()),
        "rejects_by_stage": dict(Counter(r["stage"] for r in rejects).most_common()),
        "shards": {"count": len(shards), "bytes": _summary([s["bytes"] for s in shards]),
                   "samples": _summary([s["samples"] for s in shards]),
                   # sample format version -> shards written in it (a resumed older run holds two)
                   "formats": dict(sorted(Counter(s.get("format_version", LAYOUT1_VERSION) for s in shards).items()))},
    }
    if "split" in cols.names:  # a run with held-out videos: both splits, samples and conversations
        splits = [s or "train" for s in cols.table.column("split").to_pylist()]
        talks = cols.values("num_conversations")
        stats["splits"] = {name: {"samples": splits.count(name),
                                  "conversations": int(np.nansum([t for t, s in zip(talks, splits) if s == name]))}
                           for name in sorted(set(splits))}  # fmt: skip
    this_run = run_json.get("this_run", {})
    if this_run:
        stats["last_run"] = {k: this_run.get(k) for k in ("started", "wall_s", "accepted", "rejected", "videos_per_hour")}
        if this_run.get("llm"):
            stats["last_run"]["llm"] = this_run["llm"]
    return stats


def _fmt(s: dict[str, float], unit: str = "", scale: float = 1.0) -> str:
    if not s.get("count"):
        return "-"
    return f"mean {s['mean'] / scale:.1f}{unit}  min {s['min'] / scale:.1f}{unit}  max {s['max'] / scale:.1f}{unit}"


def stats_table(stats: dict[str, Any]) -> str:
    from pipeline.core.tables import table

    rows: list[list[Any]] = [
        ["samples", stats["samples"]],
        *[[f"  split {name}", f"{n['samples']} samples, {n['conversations']} conversations"]
          for name, n in stats.get("splits", {}).items()],
        ["hours of video", f"{stats['hours_of_video']:.3f}"],
        ["duration", _fmt(stats["duration_s"], "s")],
        ["duration histogram", "  ".join(f"{k}:{v}" for k, v in stats["duration_histogram"].items() if v)],
        ["frames stored", _fmt(stats["frames_stored"])],
    ]
    cost = stats.get("frame_cost") or {}
    if cost:
        rows += [["frame bytes per sample", f"{cost['bytes_per_sample'] / 2**20:.2f} MiB ({cost['frames_per_sample']:g} "
                  f"frames, {cost['bytes_per_frame'] / 1024:.1f} KiB each)"],
                 ["  vs the largest stage alone", f"{cost['stored_over_largest_stage']:.2f}x "
                  f"({cost['largest_stage_only_bytes_per_sample'] / 2**20:.2f} MiB for "
                  f"{cost['largest_stage_frames_per_sample']:g} frames)"]]  # fmt: skip
    rows += [[f"tokens {name}", _fmt(s)] for name, s in stats["tokens"].items()]
    rows += [["conversations per sample", _fmt(stats["conversations"])]]
    if stats["qa_per_sample"].get("count"):
        rows += [["QA pairs per sample", _fmt(stats["qa_per_sample"])]]
    rows += [[f"QA {t}", n] for t, n in stats["qa_by_type"].items()]
    rows += [[name.replace("_", " "), _fmt(s)] for name, s in stats["captions"].items()]
    rows += [[f"score {name}", _fmt(s)] for name, s in stats["scores"].items()]
    rows += [[f"visual filter {name} per sample", _fmt(s)] for name, s in stats.get("filter_counts", {}).items()]
    rows += [["decoders", ", ".join(f"{k} {v}" for k, v in stats["decoders"].items())]]
    rows += [["rejects", stats["rejects"]]]
    rows += [[f"  {reason}", n] for reason, n in stats["rejects_by_reason"].items()]
    sh = stats["shards"]
    rows += [["shards", f"{sh['count']} ({sh['bytes'].get('sum', 0) / 2**20:.1f} MiB)"]]
    rows += [["shard size", _fmt(sh["bytes"], " MiB", 2**20)], ["samples per shard", _fmt(sh["samples"])]]
    rows += [["sample format", ", ".join(f"{v} ({n} shards)" for v, n in sh.get("formats", {}).items())]]
    if "last_run" in stats:
        lr = stats["last_run"]
        rows += [["last run", f"{lr['started']}  {lr['wall_s']}s  {lr['videos_per_hour']} videos/hour"]]
        if lr.get("llm"):
            llm = lr["llm"]
            rows += [["last run LLM", f"{llm.get('requests', 0)} requests ({llm.get('retries', 0)} retried, "
                      f"{llm.get('failures', 0)} failed)  {llm.get('tokens_per_s', 0)} tokens/s"]]  # fmt: skip
            if llm.get("video_minutes"):
                rows += [["last run LLM per video-minute", f"{llm.get('prefilled_tokens_per_video_minute', 0)} prefilled "
                          f"+ {llm.get('completion_tokens_per_video_minute', 0)} completion tokens; prefix cache served "
                          f"{100 * llm.get('prefix_cache_hit_rate', 0):.1f}% of prompt tokens"]]  # fmt: skip
    rows += [[f"LLM {name.replace('_', ' ')} (kept samples)", n] for name, n in stats["llm_tokens"].items()]
    return table(["run " + stats["run_dir"], ""], rows)
