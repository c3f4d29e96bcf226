"""The demo: generate example videos (good and broken), run the whole pipeline on them, print the stats.

Writes under the run's output dir: `videos/` (the examples and
`annotations.json`, a LLaVA file with question-answer pairs known from how
each example was made, which is the run's input) and everything a run writes
(`shards/`, `index.parquet`, `rejects.parquet`, `run.json`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fixtures.videos import CATALOGUE, SynthError, can_encode, make_bad_file, make_video
from pipeline.run_config import RunConfig

EXAMPLES = ["h264_2min", "h264_10s", "hevc_10s", "vp9_10s", "theora_10s", "vfr_10s", "rotated_10s"]
BAD_EXAMPLES = ["zero_byte", "truncated", "truncated_index", "random_bytes", "audio_only", "png_as_mp4", "unknown_codec"]


def make_examples(video_dir: Path) -> list[Path]:
    paths = []
    for name in EXAMPLES:
        spec = CATALOGUE[name]
        if not can_encode(spec.codec):
            print(f"(skipping {name}: this ffmpeg cannot encode {spec.codec})")
            continue
        paths.append(make_video(spec, video_dir))
    for kind in BAD_EXAMPLES:
        try:
            paths.append(make_bad_file(kind, video_dir))
        except SynthError as e:
            print(f"(skipping bad file {kind}: {e})")
    return paths


def spec_conversations(name: str) -> list[dict[str, str]]:
    """Question-answer pairs whose answers are known from how the example was generated (not from the model).

    They make the demo's shards trainable (configs/train/tiny_debug.yaml) before captioning exists.
    """
    spec = CATALOGUE.get(name)
    if spec is None:
        return [{"from": "human", "value": "<image>\nWhat is in this file?"}, {"from": "gpt", "value": "Nothing usable."}]
    portrait = (spec.rotate % 180 == 90) != (spec.height > spec.width)
    seconds = f"{spec.duration_s:g} seconds" if spec.duration_s < 60 else f"{spec.duration_s / 60:g} minutes"
    return [
        {"from": "human", "value": "<image>\nHow long is this video?"},
        {"from": "gpt", "value": f"The video lasts about {seconds}."},
        {"from": "human", "value": "Is the picture in portrait or landscape orientation?"},
        {"from": "gpt", "value": "Portrait." if portrait else "Landscape."},
    ]


DURATION_OPTIONS = ["about 10 seconds", "about 2 minutes", "about half an hour", "about 2 hours"]


def spec_multiple_choice(name: str, n: int) -> dict | None:
    """A multiple-choice question on the example's length, in the pipeline's own format (so `prolongvid eval`
    scores it on the demo's held-out split whatever the random-weight captioner writes); the right option's
    letter turns with `n`."""
    from dense_caption.qa import conversation

    spec = CATALOGUE.get(name)
    if spec is None:
        return None
    right = min(range(len(DURATION_OPTIONS)), key=lambda i: abs(spec.duration_s - (10, 120, 1800, 7200)[i]))
    options = [o for i, o in enumerate(DURATION_OPTIONS) if i != right]
    options.insert(n % 4, DURATION_OPTIONS[right])
    pair = {"question": "How long is this video?", "options": options, "answer": "ABCD"[n % 4],
            "format": "multiple_choice", "type": "duration"}  # fmt: skip
    return conversation(f"demo-{name}", 0, pair)


def write_annotations(paths: list[Path], video_dir: Path) -> Path:
    """A LLaVA annotation file over the examples: the demo's input (bad files included, to be rejected)."""
    records = []
    for n, p in enumerate(paths):
        records.append({"id": f"demo-{p.stem}", "video": p.name, "conversations": spec_conversations(p.stem)})
        choice = spec_multiple_choice(p.stem, n)
        if choice is not None:
            records.append({**choice, "video": p.name})
    target = video_dir / "annotations.json"
    target.write_text(json.dumps(records, indent=1))
    return target


def prepare_tiny_llm(cfg: RunConfig) -> str | None:
    """With a managed server on a model folder that does not exist yet, build the tiny test VLM there first.

    Returns the python with vLLM the managed server runs on (None: no managed server)."""
    llm = cfg.llm
    if not (llm.enabled and llm.backend == "http" and llm.http.mode == "managed"):
        return None
    from fixtures.local_vllm import ensure_tiny_vlm, vllm_python

    managed = llm.http.managed
    python = Path(managed.python) if managed.python and Path(managed.python).exists() else vllm_python()
    if not Path(managed.model).exists():
        t0 = time.perf_counter()
        ensure_tiny_vlm(Path(managed.model), python)
        print(f"built the tiny random-weight VLM in {managed.model} ({time.perf_counter() - t0:.1f}s): its captions are noise")
    return str(python)


def run_demo(cfg: RunConfig) -> int:
    """Generate the examples under input.path, run the real pipeline on them (embedded Ray), print the stats."""
    from pipeline.run import check_output_dir, run_pipeline
    from pipeline.run_summary import print_run_summary
    from shards.layout import RunDir
    from shards.runfolder import claim
    from shards.reader import open_run
    from shards.stats import compute_stats, stats_table

    claim(RunDir(check_output_dir(cfg.output.dir)))  # the examples go inside: a folder that is not a run's is refused
    video_dir = Path(cfg.input.path)
    t0 = time.perf_counter()
    if video_dir.suffix == ".json":  # input.path names the annotation file the demo writes
        video_dir = video_dir.parent
    paths = make_examples(video_dir)
    write_annotations(paths, video_dir)
    llm_python = prepare_tiny_llm(cfg)
    print(f"{len(paths)} example files in {video_dir} ({time.perf_counter() - t0:.1f}s)\n")
    summary = run_pipeline(cfg, force=True, llm_python=llm_python)  # a demo always shows a whole run
    print_run_summary(summary)
    print()
    print(stats_table(compute_stats(open_run(cfg.output.dir))))
    print(f"\nshards in {Path(cfg.output.dir) / 'shards'}; try: prolongvid stats {cfg.output.dir} --verify --plots {cfg.output.dir}/plots")
    return 0
