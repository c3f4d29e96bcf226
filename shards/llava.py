"""Export a run as LLaVA annotations that the ProLongVid paper's trainer (LLaVA-NeXT's `LazySupervisedDataset`,
ruiwang2021/ProLongVid `llava/train/train.py`) reads.

That trainer opens `os.path.join(video_folder, record["video"])` and, on any error, silently trains on the next
record instead, so an export it cannot read shrinks the data without a word. Hence:

- `video` is relative to one video root, which the summary names (the trainer's `--video_folder`); `absolute`
  writes absolute paths (the trainer's join then ignores its folder). A source outside the root is written
  absolute whatever the option.
- `frames_dir`: the trainer reads a folder of frames only when "shareVideoGPTV" is in the joined path (anything
  else goes to decord, which fails on a folder), lists the folder's files, sorts the names as text, samples
  `linspace(0, n-1, max(n, 64))` of them (or its frame-count arguments) and takes frame i to be at i/2 s (2 fps).
  So the frames go to `DIR/shareVideoGPTV/<key>/` under zero-padded names, nothing else in the folder; a union
  sample (several stages' exact frames) writes its largest stage's frames, in time order.
- Only the requested split (default train): the held-out eval videos stay out of training data.
- Sources that decord (the trainer's video reader) cannot open are listed in the summary.

The summary is returned, and written next to the annotations (`OUT.json` -> `OUT.summary.json`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterator

import pyarrow.parquet as pq
from pydantic import ValidationError

from pipeline.core.storage import is_remote
from pipeline.video.config_video import InputConfig
from pipeline.core.sample import LAYOUT1_VERSION, Conversation
from shards.access import Tars, reading_run
from shards.layout import RunDir, Sample, check_key
from shards.reader import read_run_json, read_shard_list
from shards.remote import register_webdataset_schemes
from shards.split import EVAL, TRAIN, split_name

FRAMES_FOLDER = "shareVideoGPTV"  # the path text LLaVA-NeXT's `_get_item` looks for to read a folder as frames
TRAINER_FRAMES_FPS = 2.0  # the rate that branch assumes: stored frame i is stated to be at i / 2 s
SPLITS = (TRAIN, EVAL, "all")
_WRITTEN_FRAME = re.compile(r"^\d+\.jpg$")
REMOTE_SOURCE = "a URL: the trainer opens local files; export with --frames-dir (frames from the shards) instead"


@dataclass
class Unreadable:
    """A source the trainer's video reader (decord) cannot open: the trainer would train on another record."""

    key: str
    video: str
    error: str


@dataclass
class ExportSummary:
    """What was exported, and what the trainer needs to read it (`video_root` is its `--video_folder`)."""

    out_json: str
    split: str
    samples: int = 0
    records: int = 0
    video_root: str = ""
    video_root_from: str = ""  # samples (their sources), config (run.json's input), frames_dir, or "" when unknown
    absolute: bool = False
    absolute_records: int = 0
    frames_dir: str = ""
    frames_written: int = 0
    frames_fps_min: float = 0.0  # the written frames' real rate (frames / duration); the trainer assumes 2
    frames_fps_max: float = 0.0
    left_out: dict[str, int] = field(default_factory=dict)  # samples of other splits, by split
    no_conversations: int = 0  # samples in the split with no records (nothing to train on)
    skipped: list[str] = field(default_factory=list)  # "key: why" for samples that could not be exported
    decord: str = ""  # how the sources were checked
    unreadable: list[Unreadable] = field(default_factory=list)
    read_as_frames: list[str] = field(default_factory=list)  # file paths the trainer would take for frame folders

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        out = [f"{self.records} LLaVA records of {self.samples} samples ({self.split} split) -> {self.out_json}"]
        if self.video_root and not self.absolute:
            out.append(f"video paths are relative to {self.video_root}: train with --video_folder {self.video_root}")
        elif self.video_root:
            out.append(f"video paths are absolute (under {self.video_root}): --video_folder must be set, to any folder")
        else:
            out.append("video root unknown: the run records none; the paths are as the input named them")
        if self.absolute_records and not self.absolute:
            out.append(f"{self.absolute_records} records name a source outside the root by its absolute path")
        if self.frames_dir:
            out.append(f"{self.frames_written} frames in {self.frames_dir}/{FRAMES_FOLDER}/<key>/ (read as frames; "
                       f"the trainer states frame i at i/{TRAINER_FRAMES_FPS:g} s, these run at "
                       f"{self.frames_fps_min:.2f}-{self.frames_fps_max:.2f} frames/s)")
        if self.left_out:
            out.append("left out: " + ", ".join(f"{n} {s} samples" for s, n in sorted(self.left_out.items())) +
                       " (--split eval|all to export them)")
        if self.no_conversations:
            out.append(f"{self.no_conversations} samples have no conversations: no records")
        out += [f"skipped {s}" for s in self.skipped]
        out.append(f"decord: {self.decord}")
        out += [f"UNREADABLE by the trainer (decord): {u.video}: {u.error}" for u in self.unreadable]
        if self.unreadable:
            out.append("the trainer silently trains on another record instead: --frames-dir exports these as frames")
        out += [f"READ AS A FRAME FOLDER by the trainer ('{FRAMES_FOLDER}' in its path): {p}"
                for p in self.read_as_frames]  # fmt: skip
        return out


@dataclass
class _Entry:
    key: str
    source: str
    rel: str
    conversations: list[Conversation]
    folder: str = ""  # frames folder relative to frames_dir (frames export)


def summary_path(out_json: str | Path) -> Path:
    out = Path(out_json)
    return out.with_name((out.stem if out.suffix == ".json" else out.name) + ".summary.json")


def export_llava(run_dir: str | Path, out_json: str | Path, frames_dir: str | Path | None = None,
                 split: str = TRAIN, absolute: bool = False, check_decord: bool = True) -> ExportSummary:  # fmt: skip
    """Write the run's `split` samples' conversations as LLaVA records to `out_json`, and the summary beside it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    with reading_run(run_dir) as (run, tars):
        return _export(run, tars, out_json, frames_dir, split, absolute, check_decord)


def _export(run: RunDir, tars: Tars, out_json: str | Path, frames_dir: str | Path | None, split: str, absolute: bool,
            check_decord: bool) -> ExportSummary:
    wanted = {TRAIN, EVAL} if split == "all" else {split}
    frames_root = Path(frames_dir).resolve() if frames_dir is not None else None
    summary = ExportSummary(out_json=str(out_json), split=split, absolute=absolute,
                            frames_dir=str(frames_root) if frames_root else "")  # fmt: skip
    splits, left_out = _Splits(run), Counter[str]()
    entries: list[_Entry] = []
    rates: list[float] = []
    for members, shard_split in _samples(run, tars, wanted, left_out):
        try:
            sample = Sample(members)
            key = check_key(sample.key)  # a key like `../../x` would write outside frames_dir
        except (KeyError, ValueError) as e:  # no json member, a bad one, or an unsafe key
            summary.skipped.append(f"{members.get('__key__', '?')}: {e}")
            continue
        this_split = splits.of(sample, shard_split)
        if this_split not in wanted:
            left_out[this_split] += 1
            continue
        summary.samples += 1
        if not sample.conversations:
            summary.no_conversations += 1
            continue
        entry = _Entry(key, sample.meta.source, sample.meta.video_rel, sample.conversations)
        if frames_root is not None:
            written = _write_frames(sample, frames_root, key)
            if isinstance(written, str):
                summary.skipped.append(f"{key}: {written}")
                continue
            entry.folder = f"{FRAMES_FOLDER}/{key}"
            summary.frames_written += written
            if sample.meta.video.duration_s > 0:
                rates.append(written / sample.meta.video.duration_s)
        entries.append(entry)
    summary.left_out = dict(left_out)
    if rates:
        summary.frames_fps_min, summary.frames_fps_max = round(min(rates), 3), round(max(rates), 3)

    if frames_root is not None:
        root, summary.video_root_from = frames_root, "frames_dir"
    else:
        root, summary.video_root_from = _video_root(entries, run)
    summary.video_root = str(root) if root else ""
    records: list[dict[str, Any]] = []
    opened: dict[str, str] = {}  # the path the trainer opens -> key, once per sample
    for entry in entries:
        video = _video(entry, root, absolute)
        opened[os.path.join(str(root or ""), video)] = entry.key
        summary.absolute_records += len(entry.conversations) if os.path.isabs(video) else 0
        records += [c.llava(video) for c in entry.conversations]
    summary.records = len(records)
    if frames_root is None:
        summary.read_as_frames = [p for p in opened if FRAMES_FOLDER in p]
        summary.decord, summary.unreadable = _check_sources(opened, check_decord)
    else:
        summary.decord = "not needed: the trainer reads frame folders with PIL"
    _write_json(Path(out_json), records)
    _write_json(summary_path(out_json), summary.to_json())
    return summary


def _samples(run: RunDir, tars: Tars, wanted: set[str], left_out: Counter[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """(members, the shard's split) of every sample in shards that may hold `wanted` splits; a shard
    shards.json gives to another split is not read (its samples are counted in `left_out`)."""
    import webdataset as wds

    listed = read_shard_list(run)
    shard_split = {e["name"]: split_name(e) for e in listed}
    for e in listed:
        if split_name(e) not in wanted:
            left_out[split_name(e)] += int(e.get("samples") or 0)
    names = [e["name"] for e in listed if split_name(e) in wanted] if listed else sorted(tars.sizes)
    if not names:
        return
    register_webdataset_schemes()  # a run on an object store: its shards streamed from their URLs
    for members in wds.WebDataset([tars.location(n) for n in names], shardshuffle=False, empty_check=False):
        yield members, shard_split.get(Path(str(members.get("__url__", ""))).name, "")


class _Splits:
    """The split of each sample: a format-2 sample names its own; a layout-1 one takes the index's `split`
    column (read once, when the first such sample comes), else its shard's."""

    def __init__(self, run: RunDir):
        self.run = run
        self.index: dict[str, str] | None = None

    def of(self, sample: Sample, shard_split: str) -> str:
        if sample.meta.format_version != LAYOUT1_VERSION:
            return sample.meta.split or TRAIN
        if self.index is None:
            has_split = "split" in pq.read_schema(self.run.index).names
            rows = pq.read_table(self.run.index, columns=["key", "split"]).to_pylist() if has_split else []
            self.index = {r["key"]: split_name(r) for r in rows}
        return self.index.get(sample.key) or shard_split or TRAIN


def _largest_stage(sample: Sample) -> list[int] | None:
    """Positions of the largest training stage's frames of a union sample; None (every frame) otherwise."""
    stored = sample.meta.stored_set()
    if stored is None or not stored.stages:
        return None
    return list(max(stored.stages, key=lambda s: s.frames).positions)


def _write_frames(sample: Sample, frames_root: Path, key: str) -> int | str:
    """Write the frames the trainer should see to `frames_root/shareVideoGPTV/<key>/`: the count, or why not.

    Names are zero-padded to one width, so the trainer's text sort is time order; earlier exports' frames are
    replaced, and any other file there is refused (the trainer would read it as a frame).
    """
    parent = frames_root / FRAMES_FOLDER
    folder = parent / key
    parent.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or (folder.exists() and folder.resolve().parent != parent.resolve()):
        return f"{folder} is a link: its frames would land outside {parent}"
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder of frames"
    folder.mkdir(exist_ok=True)
    others = [p.name for p in folder.iterdir() if not (_WRITTEN_FRAME.match(p.name) and p.is_file())]
    if others:
        return f"{folder} holds other entries the trainer would read as frames: {', '.join(sorted(others)[:3])}"
    for old in folder.iterdir():
        old.unlink()
    frames = sample.frames(_largest_stage(sample))
    width = max(4, len(str(len(frames) - 1)))
    for n, jpeg in enumerate(frames):
        (folder / f"{n:0{width}d}.jpg").write_bytes(jpeg)
    return len(frames)


def _derived_root(source: str, rel: str) -> str:
    """The folder `rel` was taken relative to, when `source` is that folder joined with `rel`."""
    if not rel or os.path.isabs(rel) or not os.path.isabs(source):
        return ""
    rel_parts, src_parts = PurePath(rel).parts, PurePath(source).parts
    if len(src_parts) <= len(rel_parts) or src_parts[-len(rel_parts):] != rel_parts:
        return ""
    return str(PurePath(*src_parts[: -len(rel_parts)]))


def _video_root(entries: list[_Entry], run: RunDir) -> tuple[Path | None, str]:
    """The folder the samples' `video_rel` paths are relative to: from the samples themselves (the resolved
    source ends with its relative path), else from run.json's input config."""
    derived = Counter(r for r in (_derived_root(e.source, e.rel) for e in entries) if r)
    if derived:
        return Path(derived.most_common(1)[0][0]), "samples"
    configured = _config_root(run)
    return (configured, "config") if configured else (None, "")


def _config_root(run: RunDir) -> Path | None:
    """Where the run resolved relative video paths: a folder input's folder, else `input.video_root`, else the
    input file's folder (a relative one resolved from the current folder, as the run did from its own)."""
    doc = read_run_json(run)
    try:
        cfg = InputConfig.model_validate(doc["config"]["input"])
    except (KeyError, TypeError, ValidationError):
        return None
    if is_remote(cfg.path) or "://" in cfg.video_root:
        return None  # the sources are URLs, written as they are
    path = Path(cfg.path)
    if doc.get("input_kind") == "folder":
        return path.resolve()
    return Path(cfg.video_root).resolve() if cfg.video_root else path.resolve().parent


def _video(entry: _Entry, root: Path | None, absolute: bool) -> str:
    """The record's `video`: relative to `root` where that names the source, else the source's absolute path."""
    if entry.folder:
        return str(root / entry.folder) if absolute and root else entry.folder
    rel, source = entry.rel, entry.source
    if "://" in source:
        return source
    if not absolute and root is not None and rel and not os.path.isabs(rel):
        joined = os.path.join(str(root), rel)
        if os.path.normpath(joined) == os.path.normpath(source) or os.path.exists(joined):
            return rel
    if os.path.isabs(source):
        return source
    return os.path.join(str(root), rel) if root and rel else rel or source


def _check_sources(paths: dict[str, str], check_decord: bool) -> tuple[str, list[Unreadable]]:
    """Open every source as the trainer does (`decord.VideoReader`); without decord only existence is checked."""
    missing = [Unreadable(key, p, REMOTE_SOURCE if "://" in p else "no such file") for p, key in paths.items()
               if not os.path.isfile(p)]
    if not check_decord:
        return "not checked (asked not to): only missing files are listed", missing
    try:
        import decord
    except ImportError:
        return ("not installed here: the sources were not opened with decord, only missing files are listed "
                "(install decord, e.g. decord==0.6.0, and export again to check)"), missing  # fmt: skip
    gone = {u.video for u in missing}
    unreadable = list(missing)
    for path, key in paths.items():
        if path in gone:
            continue
        error = _decord_error(decord, path)
        if error:
            unreadable.append(Unreadable(key, path, error))
    return f"checked {len(paths)} sources with decord {getattr(decord, '__version__', '?')}", unreadable


def _decord_error(decord: Any, path: str) -> str:
    """Why decord cannot read `path` as the trainer does (its open, a frame count, a usable rate); "" when it can."""
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        frames, fps = len(reader), reader.get_avg_fps()
        del reader
    except Exception as e:  # decord raises DECORDError and plain RuntimeErrors alike; the trainer catches them all
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {(text[0] if text else '')[:300]}"
    if frames <= 0:
        return "decord reads no frames"
    return "" if fps > 0 else "decord reads no frame rate"


def _write_json(path: Path, doc: Any) -> None:
    """Written whole, then renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    partial.replace(path)
