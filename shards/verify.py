"""`prolongvid stats --verify`: re-read every shard and check it against what the run recorded.

Checks: each listed shard exists with the recorded size and sha256; each tar
parses; every sample holds exactly format 2's members (`frames.mjpeg`, `json`,
`conversations.json`) or layout 1's (a run of `NNNN.jpg` frames, `json`,
`conversations.json`); its json and conversations parse through the sample model
(`pipeline/core/sample.py`; a newer major format is named, not read); a format-2 sample's
frame offsets tile its `frames.mjpeg` exactly and every frame is a whole JPEG
(SOI/EOI markers); the index and the shards hold the same keys in the same shards,
with the same frame counts; no key appears twice and no unlisted tar sits in
shards/. Returns human-readable problems (empty: OK).
"""

from __future__ import annotations

import tarfile
from collections import Counter
from typing import Any

from pipeline.core.sample import FramesLayout, NewerFormat, SampleMeta
from pipeline.core.sample_io import parse_conversations, parse_meta
from shards.layout import (CONVERSATIONS_MEMBER, FRAME_MEMBER, FRAMES_MEMBER, MEMBERS, META_MEMBER, RunDir,
                           layout1_frame_names)  # fmt: skip
from shards.access import Tars, local_tars
from shards.rows import row_totals
from shards.reader import HashingReader, iter_tar_samples, read_index, read_run_json, read_shard_list

# What a damaged json member raises in the model's readers: not JSON, not the model (pydantic's ValidationError is
# a ValueError), or a layout-1 section of the wrong JSON type.
DAMAGED = (ValueError, TypeError, AttributeError, KeyError)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _whole_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _member_set(where: str, members: dict[str, bytes]) -> list[str]:
    """Format 2's three members, or layout 1's frames beside json and conversations.json: nothing else."""
    jpegs = layout1_frame_names(members)
    problems = []
    if jpegs and FRAMES_MEMBER in members:
        problems.append(f"{where}: holds both {FRAMES_MEMBER} (format 2) and {len(jpegs)} NNNN.jpg frames (layout 1)")
    needed = (META_MEMBER, CONVERSATIONS_MEMBER) + (() if jpegs else (FRAMES_MEMBER,))
    problems += [f"{where}: missing {name}" for name in needed if name not in members]
    unknown = sorted(k for k in members if not FRAME_MEMBER.match(k) and k not in MEMBERS)
    if unknown:
        problems.append(f"{where}: unexpected members {unknown}")
    return problems


def _parsed_meta(shard: str, key: str, members: dict[str, bytes], problems: list[str]) -> SampleMeta | None:
    where = f"{shard}: sample {key}"
    if META_MEMBER not in members:
        return None
    try:
        return parse_meta(members[META_MEMBER])
    except NewerFormat as e:  # its message names the sample: "sample K has format_version 3.0; ..."
        problems.append(f"{shard}: {e}")
    except DAMAGED as e:
        problems.append(f"{where}: {META_MEMBER} is not a sample's metadata ({_first_line(e)})")
    return None


def _check_tiling(where: str, data: bytes, layout: FramesLayout) -> list[str]:
    """Frame i is bytes [offsets[i], offsets[i] + sizes[i]) of frames.mjpeg: back to back from 0 to its end."""
    offsets, sizes = layout.offsets, layout.sizes
    if not len(offsets) == len(sizes) == layout.count:
        return [f"{where}: json says {layout.count} frames but lists {len(offsets)} offsets and {len(sizes)} sizes"]
    at = 0
    for i, (offset, size) in enumerate(zip(offsets, sizes)):
        if offset != at or size <= 0:
            return [f"{where}: frame offsets do not tile {FRAMES_MEMBER} (frame {i} at {offset}+{size}, expected at {at})"]
        at += size
    if at != len(data):
        return [f"{where}: {FRAMES_MEMBER} holds {len(data)} bytes but its frames cover {at} (truncated or padded)"]
    for i, (offset, size) in enumerate(zip(offsets, sizes)):
        if not _whole_jpeg(data[offset : offset + size]):
            return [f"{where}: frame {i} of {FRAMES_MEMBER} is not a complete JPEG"]
    return []


def _check_layout1(where: str, members: dict[str, bytes]) -> list[str]:
    names = layout1_frame_names(members)
    if [int(n.split(".")[0]) for n in names] != list(range(len(names))):
        return [f"{where}: frames are not numbered 0..{len(names) - 1} without gaps"]
    bad = next((n for n in names if not _whole_jpeg(members[n])), None)
    return [f"{where}: frame {bad} is not a complete JPEG"] if bad else []


def _check_sample(shard: str, key: str, members: dict[str, bytes]) -> tuple[list[str], int | None]:
    """The sample's problems and its stored frame count (as its metadata records it, or its layout-1 members;
    None when its metadata does not read and it has no frame members to count)."""
    where = f"{shard}: sample {key}"
    problems = _member_set(where, members)
    if CONVERSATIONS_MEMBER in members:
        try:
            parse_conversations(members[CONVERSATIONS_MEMBER], key)
        except DAMAGED as e:
            problems.append(f"{where}: {CONVERSATIONS_MEMBER} is not a list of conversations ({_first_line(e)})")
    meta = _parsed_meta(shard, key, members, problems)
    layout1 = layout1_frame_names(members)
    if meta is None:
        return problems, len(layout1) or None
    if not meta.frames.member:  # layout-1 metadata: the frames are members of their own
        if FRAMES_MEMBER in members:
            problems.append(f"{where}: layout-1 {META_MEMBER} (no format_version) beside a {FRAMES_MEMBER}")
        return problems + _check_layout1(where, members), len(layout1)
    if meta.frames.member != FRAMES_MEMBER:
        problems.append(f"{where}: {META_MEMBER} puts the frames in {meta.frames.member!r}, not {FRAMES_MEMBER}")
    elif FRAMES_MEMBER in members:
        problems += _check_tiling(where, members[FRAMES_MEMBER], meta.frames)
    elif layout1:  # without frame members a missing frames.mjpeg is named by the member-set check
        problems.append(f"{where}: format {meta.format_version} {META_MEMBER} beside layout-1 frames, no {FRAMES_MEMBER}")
    return problems, meta.frames.count


def verify_run(run: RunDir, tars: Tars | None = None) -> list[str]:
    """The run's tables read from `run`, its shards from `tars` (by default the tars in `run`'s shards/)."""
    tars = tars or local_tars(run)
    problems: list[str] = []
    try:
        listed = read_shard_list(run)
    except NewerFormat as e:
        return [f"shards.json: {e}"]
    index = read_index(run)
    by_shard: dict[str, dict[str, Any]] = {}
    for row in index:
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    dupes = [k for k, n in Counter(r["key"] for r in index).items() if n > 1]
    if dupes:
        problems.append(f"index.parquet: keys listed more than once: {dupes[:5]}")
    names = {s["name"] for s in listed}
    for extra in sorted(set(by_shard) - names):
        problems.append(f"index.parquet: shard {extra} is not in shards.json")
    for stray in sorted(set(tars.sizes) - names):
        problems.append(f"shards/{stray}: not listed in shards.json (left by another run?)")
    seen: set[str] = set()
    for shard in listed:
        name = shard["name"]
        if name not in tars.sizes:
            problems.append(f"shards/{name}: missing")
            continue
        size = tars.sizes[name]
        if size != shard["bytes"]:
            problems.append(f"shards/{name}: {size} bytes, {shard['bytes']} recorded (truncated or altered)")
        expected = by_shard.get(name, {})
        found: set[str] = set()
        with tars.open(name) as raw:
            stream = HashingReader(raw)  # one read of the shard: parsed and hashed together
            try:
                for key, members in iter_tar_samples(stream):
                    if key in found or key in seen:
                        problems.append(f"shards/{name}: sample {key} appears more than once")
                    found.add(key)
                    sample_problems, nframes = _check_sample(f"shards/{name}", key, members)
                    problems.extend(sample_problems)
                    row = expected.get(key)
                    if row is None:
                        problems.append(f"shards/{name}: sample {key} is not in index.parquet")
                    elif nframes is not None and row.get("frames_stored") is not None and row["frames_stored"] != nframes:
                        problems.append(f"shards/{name}: sample {key} has {nframes} frames, index says {row['frames_stored']}")
            except (tarfile.TarError, OSError, EOFError) as e:
                problems.append(f"shards/{name}: unreadable tar after {len(found)} samples ({e})")
            digest = stream.hexdigest()
        if digest != shard["sha256"]:
            problems.append(f"shards/{name}: sha256 {digest[:16]}... differs from the recorded {shard['sha256'][:16]}...")
        for missing in sorted(set(expected) - found):
            problems.append(f"shards/{name}: index.parquet lists {missing} but the shard does not hold it")
        if len(found) != shard.get("samples", len(found)):
            problems.append(f"shards/{name}: {len(found)} samples, {shard['samples']} recorded")
        seen |= found
    return problems + _row_accounting(run)


def _row_accounting(run: RunDir) -> list[str]:
    """Every input row ends as a sample's, a reject's or a skipped one: the tables must add up to the input."""
    totals = read_run_json(run).get("totals") or {}
    if "input_rows" not in totals:
        return []  # a run of a version that did not count its input
    have = row_totals(run)
    if have["unnumbered_rows"]:
        return []  # rows of an older version, merged by key: what they stood for is not known
    accounted = have["sample_rows"] + have["reject_rows"] + int(totals.get("skipped_rows", 0))
    if accounted == totals["input_rows"]:
        return []
    return [f"rows: the input has {totals['input_rows']} rows but {have['sample_rows']} are samples', "
            f"{have['reject_rows']} rejects' and {totals.get('skipped_rows', 0)} skipped ({accounted}): "
            "rows were lost or counted twice"]
