"""Inputs and commands that must not reach outside a run or stop it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config_load import ConfigError

from pipeline.run_config import load_run_config
from pipeline.video.decode_pyav import PyAVBackend
from pipeline.core.errors import Reason, VideoError
from pipeline.video.probe import probe_video
from pipeline.run import RunLocked, check_output_dir, run_lock
from pipeline.core.sample_io import conversation_from_record, dump, dump_conversations, meta_from_sections
from pipeline.video.sources import load_sources
from shards import ledger
from shards.layout import RunDir
from shards.runfolder import claim
from shards.llava import export_llava

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_a_concat_list_named_like_a_video_cannot_pull_in_a_file_outside(video, tmp_path):
    inside = tmp_path / "allowed"
    inside.mkdir()
    outside = Path(video("h264_10s"))  # lives in another folder
    (inside / "part.bin").symlink_to(outside)  # a name the concat demuxer calls safe, leading outside
    sneaky = inside / "clip.mp4"
    sneaky.write_text("ffconcat version 1.0\nfile 'part.bin'\n")
    with pytest.raises(VideoError) as err:
        probe_video(sneaky)
    assert err.value.reason is Reason.INDIRECT_INPUT and "concat" in err.value.detail
    with pytest.raises(VideoError) as err:
        PyAVBackend(str(sneaky))
    assert err.value.reason in (Reason.INDIRECT_INPUT, Reason.NOT_MEDIA)


def _escaping_members(key: str, layout1: bool) -> list[tuple[str, bytes]]:
    frame = b"\xff\xd8x\xff\xd9"
    if layout1:
        return [(f"{key}.0000.jpg", frame), (f"{key}.json", b'{"source": "v.mp4"}'),
                (f"{key}.conversations.json", b'[{"conversations": []}]')]  # fmt: skip
    meta = dump(meta_from_sections(key, "v.mp4", "shard", "train", {}, [len(frame)]))
    conversations = dump_conversations([conversation_from_record({"conversations": []}, f"{key}-0")])
    return [(f"{key}.conversations.json", conversations), (f"{key}.frames.mjpeg", frame), (f"{key}.json", meta)]


@pytest.mark.parametrize("layout1", [False, True])
def test_export_refuses_members_that_would_escape_the_frames_folder(tmp_path, layout1):
    run = RunDir(tmp_path / "run").make()
    with tarfile.open(run.shards / "s.tar", "w") as tar:
        for key in ("../../evil", "good"):
            for name, data in _escaping_members(key, layout1):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"key": ["good"], "shard": ["s.tar"]}), run.index)
    frames = tmp_path / "a" / "b" / "frames"
    summary = export_llava(run.root, tmp_path / "out.json", frames)
    assert summary.records == 1 and [s.split(":")[0] for s in summary.skipped] == ["../../evil"]
    assert (frames / "shareVideoGPTV" / "good" / "0000.jpg").read_bytes() == b"\xff\xd8x\xff\xd9"
    assert not (tmp_path / "a" / "evil").exists() and not list(tmp_path.glob("**/evil*"))


@pytest.mark.parametrize("value, says", [("", "output.dir"), ("   ", "output.dir"), (".", "current directory"),
                                          ("..", "current directory")])
def test_an_empty_or_enclosing_output_dir_is_refused(value, says, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "mine.txt").write_text("keep me")
    done = cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={tmp_path}", "--set", "llm.enabled=false",
               "--set", f"output.dir={value}", "--force", cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "shards" / "mine.txt").read_text() == "keep me"


def test_an_output_dir_that_is_or_lies_under_a_file_is_refused(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    for target in (afile, afile / "run"):
        with pytest.raises(ConfigError, match="output.dir: .* is a file"):
            check_output_dir(str(target))


def test_force_deletes_only_what_the_ledger_names(tmp_path):
    run = RunDir(tmp_path / "run").make()
    (run.shards / "notes.txt").write_text("a user's file")
    (run.shards / "stray.tar").write_bytes(b"not ours")
    ledger.reset(run)
    assert (run.shards / "notes.txt").exists() and (run.shards / "stray.tar").exists()


def test_a_manifest_cannot_ask_for_unbounded_frames_or_bad_paths(tmp_path, video):
    manifest = tmp_path / "m.jsonl"
    rows = [{"path": str(video("h264_10s")), "id": "ok", "num_frames": 64},
            {"path": str(video("h264_10s")), "id": "huge", "num_frames": 20000},
            {"path": "a\u0000b.mp4", "id": "nul"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    sources = load_sources(load_run_config(None, [f"input.path={manifest}", "output.dir=unused"]).input)
    assert [t.key for t in sources.tasks] == ["ok"]
    reasons = {r.reason for r in sources.rejects}
    assert reasons == {"bad_source", "bad_path"}
    assert any("num_frames 20000 outside 1..1024" in r.detail for r in sources.rejects)


def test_the_loser_of_the_lock_leaves_it_alone_and_dedup_waits_its_turn(tmp_path):
    run = RunDir(tmp_path / "run")
    claim(run)
    with run_lock(run):
        holder = run.lock.read_text()
        with pytest.raises(RunLocked, match=f"pid {holder}"):
            with run_lock(run):
                pass
        assert run.lock.read_text() == holder == str(os.getpid())
        done = cli("dedup", run.root)
        assert done.returncode == 4 and "another run" in done.stderr
    assert not run.lock.exists()  # a run that ends removes its lock (while still holding it)
    run.lock.write_text("999999999")  # what a killed run leaves: the file, locked by no one
    with run_lock(run):
        assert run.lock.read_text() == str(os.getpid())
    assert not run.lock.exists()


def test_a_lock_file_removed_while_waiting_for_it_is_not_taken(tmp_path, monkeypatch):
    import pipeline.run

    run = RunDir(tmp_path / "run")
    claim(run)
    late = open(run.lock, "a+")  # opened by a run that will get its lock only after the holder removed the file
    real_open, opened = open, []

    def open_first_the_stale_one(path, mode="r", *a, **k):
        if path == run.lock and not opened:
            opened.append(path)
            run.lock.unlink()  # the holder ends: its file goes away
            return late
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(pipeline.run, "open", open_first_the_stale_one, raising=False)
    with run_lock(run):  # it locked the orphan, saw the path is not that file, and took a new one
        assert late.closed and run.lock.read_text() == str(os.getpid())  # (its inode number may be reused)
        with pytest.raises(RunLocked):
            with run_lock(run):
                pass
    assert not run.lock.exists()


def test_secrets_in_server_arguments_are_never_written(tmp_path):
    from dense_caption.managed import ManagedServer
    from pipeline.core.config_load import dump_config, write_resolved_config

    cfg = load_run_config(ROOT / "configs" / "demo.yaml", [
        f"output.dir={tmp_path}", "input.path=.",
        "llm.http.managed.args=[--api-key, sk-live-123, --max-model-len, '4096']",
        "llm.http.managed.env={HF_TOKEN: hf_secret_456, OMP_NUM_THREADS: '1'}",
        "llm.engine.engine_kwargs={api_key: sk-eng-789, gpu_memory_utilization: 0.9}",
    ])
    text = dump_config(cfg)
    for secret in ("sk-live-123", "hf_secret_456", "sk-eng-789"):
        assert secret not in text
    assert "--max-model-len" in text and "4096" in text and "OMP_NUM_THREADS" in text  # the rest is kept
    assert "max_tokens: 32768" in text and "tokens_per_frame: 156" in text  # token counts are not secrets
    write_resolved_config(cfg, tmp_path)
    assert "sk-live-123" not in (tmp_path / "config.resolved.yaml").read_text()
    server = ManagedServer("m", python=sys.executable, log_path=tmp_path / "log",
                           extra_args=["--api-key", "sk-live-123", "--max-model-len", "4096"])
    assert "sk-live-123" not in " ".join(server.command) and server.env["VLLM_API_KEY"] == "sk-live-123"


def test_exit_codes_through_the_command_line(video, tmp_path):
    import socket

    no_tools = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-m", "pipeline", "probe", str(video("h264_10s"))], capture_output=True,
                          text=True, cwd=ROOT, env=no_tools, timeout=120)
    assert done.returncode == 3 and "ffprobe not found" in done.stderr  # 3: ffmpeg missing

    out = tmp_path / "run"
    run = RunDir(out)
    claim(run)  # a run folder, as a run makes it
    with run_lock(run):  # 4: another run holds the folder
        done = cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={tmp_path}", "--set", "input.format=auto", "--set", "llm.enabled=false",
                   "--set", f"output.dir={out}")
    assert done.returncode == 4 and "another run" in done.stderr

    with socket.socket() as s:  # 5: the LLM server cannot be used (a port nothing listens on)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fresh = tmp_path / "fresh"
    done = cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={tmp_path}", "--set", "input.format=auto", "--set", f"output.dir={fresh}",
               "--set", "llm.http.mode=external", "--set", f"llm.http.url=http://127.0.0.1:{port}/v1",
               "--set", "llm.http.connect_timeout_s=2")
    assert done.returncode == 5 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not fresh.exists()  # nothing was written


def test_no_manifest_row_stops_the_run(tmp_path, video):
    good = str(video("h264_10s"))
    deep = "[" * 200_000 + "]" * 200_000
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join([json.dumps({"path": good, "id": "ok"}), '{"path": "x.mp4", "extra": ' + deep + "}",
                                "not json", json.dumps({"path": good, "id": "ok2"})]))
    csv_file = tmp_path / "m.csv"
    csv_file.write_text(f"path,id,note\n{good},ok,\n{good},big,{'x' * (2 << 20)}\n{good},ok2,\n")
    llava = tmp_path / "a.json"
    llava.write_text("[" + json.dumps({"id": "r0", "video": good, "conversations": []}) + ","
                     + '{"id": "r1", "video": "x.mp4", "conversations": ' + deep + "},"
                     + json.dumps({"id": "r2", "video": str(video("hevc_10s")), "conversations": []}) + "]")
    for path, kept, bad in ((jsonl, 2, 2), (csv_file, 2, 1), (llava, 2, 1)):
        sources = load_sources(load_run_config(None, [f"input.path={path}", "output.dir=unused"]).input)
        assert len(sources.tasks) == kept, path
        assert [r.reason for r in sources.rejects] == ["bad_source"] * bad, (path, sources.rejects)
        assert all(r.detail for r in sources.rejects)
