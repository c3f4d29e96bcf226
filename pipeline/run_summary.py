"""What a finished run prints: the `prolongvid run` and `prolongvid demo` summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.core.tables import table

if TYPE_CHECKING:
    from pipeline.run import RunSummary


def print_run_summary(summary: RunSummary) -> None:
    """The table a run prints when it ends: outcomes, totals, speed, LLM use."""
    rows = [["accepted", summary.accepted]] + [[f"rejected: {r}", n] for r, n in sorted(summary.rejected.items())]
    rows += [["skipped (already done)", summary.skipped]]
    if summary.skipped_by_extension:
        kinds = ", ".join(f"{n} {s}" for s, n in sorted(summary.skipped_suffixes.items(), key=lambda kv: -kv[1])[:5])
        rows += [["skipped (not a video name)", f"{summary.skipped_by_extension} ({kinds})"]]
    rows += [["samples in shards (total)", summary.samples_total]]
    rows += [["rejects (total)", summary.rejects_total], ["wall time", f"{summary.wall_s:.1f}s"]]
    rows += [["videos/hour", f"{summary.videos_per_hour:.0f}"]]
    llm = summary.llm
    if llm:
        rows += [["LLM requests (retries, failed)", f"{llm.get('requests', 0)} ({llm.get('retries', 0)}, {llm.get('failures', 0)})"]]
        rows += [["LLM tokens prompt / completion", f"{llm.get('prompt_tokens', 0)} / {llm.get('completion_tokens', 0)}"]]
        rows += [["LLM tokens/s", llm.get("tokens_per_s", 0)]]
        if llm.get("video_minutes"):
            rows += [["LLM tokens per video-minute", f"{llm.get('prefilled_tokens_per_video_minute', 0)} prefilled, "
                      f"{llm.get('completion_tokens_per_video_minute', 0)} completion "
                      f"(prefix cache {100 * llm.get('prefix_cache_hit_rate', 0):.1f}% of prompt)"]]  # fmt: skip
    print(table(["run " + summary.out_dir, ""], rows))
