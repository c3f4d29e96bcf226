"""Pixel benchmark: how close the stored frames come to the paper's SigLIP input, per storage option, same run.

  reference   the paper's path: the video decoded to RGB at native size (decord when installed, else PyAV
              rgb24), then transformers' SigLIP processor with PIL (bicubic to 384x384, 1/255, mean = std = 0.5;
              `SiglipImageProcessorPil` on transformers 5, whose plain `SiglipImageProcessor` resizes with
              torchvision), nothing lossy.
  candidates  the pipeline's own extraction (`extract_frames`, one uniform set with the option) and the training
              loader's `train.data.decode_frames` on the stored bytes. Lossless ones (PNG, WebP lossless), which
              the loader does not read, take the pipeline's PIL-resized RGB and decode with torchvision.
  content     frame-coded identity corpus cases (grey codes, upscaled), and 1280x720 testsrc2, mandelbrot,
              cellauto and a blurred testsrc2.

Per candidate: PSNR (peak-to-peak 2, the normalised range) and max |difference| of the normalised tensor against
the reference, mean bias per channel (8-bit levels), bytes per frame, extract ms per frame (the pipeline's
decode + resize + encode, one thread), encode ms per frame (the encoder alone), loader decode ms per frame (one
torch thread). Targets: the default within 1.5x today's bytes and loader time, and closer than today everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.codec_corpus import CORPUS, can_make, make_coded  # noqa: E402
from fixtures.videos import SynthVideo, ffmpeg_binary, make_video  # noqa: E402
from pipeline.video.config_video import DecodeConfig, FrameSetConfig, ResizeConfig, SamplingConfig  # noqa: E402
from pipeline.video.extract import extract_frames  # noqa: E402
from pipeline.video.frames import rotate_upright  # noqa: E402
from pipeline.video.imageops import encode_jpeg, pil_resize  # noqa: E402
from pipeline.video.probe import preflight  # noqa: E402

SIZE = 384
TODAY = "swscale q90 4:2:0"  # the shard set before this option existed


@dataclass(frozen=True)
class Candidate:
    name: str
    scaler: str
    quality: int = 90
    subsampling: str = "4:2:0"
    lossless: str = ""  # PNG / WEBP: bench only, the loader reads JPEG


def candidates() -> list[Candidate]:
    d = FrameSetConfig(name="d", num_frames=1)
    jpeg = [Candidate(TODAY, "swscale"), Candidate("swscale q90 4:4:4", "swscale", 90, "4:4:4")]
    jpeg += [Candidate(f"pil q{q} {s}", "pil", q, s)
             for q, s in ((90, "4:2:0"), (95, "4:2:0"), (90, "4:2:2"), (80, "4:4:4"), (85, "4:4:4"), (90, "4:4:4"),
                          (95, "4:4:4"), (100, "4:4:4"))]
    chosen = (d.resize.scaler, d.jpeg_quality, d.jpeg_subsampling)
    jpeg = [replace(c, name=c.name + " (default)") if (c.scaler, c.quality, c.subsampling) == chosen else c
            for c in jpeg]
    return jpeg + [Candidate("pil png", "pil", lossless="PNG"), Candidate("pil webp lossless", "pil", lossless="WEBP")]


# ---------------------------------------------------------------- content

def make_content(work: Path, quick: bool) -> list[tuple[str, Path]]:
    seconds = 2 if quick else 4
    out = []
    for name in (["h264_gop12", "vp9_webm"] if quick else ["h264_gop12", "vp9_webm", "h264_rot90", "mjpeg_avi"]):
        if can_make(CORPUS[name]):
            out.append((f"identity/{name}", make_coded(CORPUS[name], work)))
    for pattern in ("testsrc2", "mandelbrot", "blurred"):
        spec = SynthVideo(name=f"{pattern}_1280", duration_s=seconds, width=1280, height=720, audio=False,
                          pattern=pattern)
        out.append((pattern, make_video(spec, work)))
    cells = work / "cellauto_1280.mp4"  # a cellular automaton: one-pixel black and white detail, the hardest case
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"cellauto=size=1280x720:rate=30:rule=110:random_fill_ratio=0.5,trim=duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(cells)],
                   check=True, timeout=300, capture_output=True)
    out.append(("cellauto", cells))
    return out


# ---------------------------------------------------------------- the paper's path

def decord_rgb(path: Path, indices: list[int]) -> np.ndarray | None:
    try:
        import decord
    except ImportError:
        return None
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(indices).asnumpy()


def pyav_rgb(path: Path, indices: list[int], rotation: int) -> np.ndarray:
    """Frames by decode order at native size, rgb24 (PyAV's `to_ndarray`), turned upright."""
    import av

    want, out = set(indices), {}
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n in want:
                out[n] = rotate_upright(frame.to_ndarray(format="rgb24"), rotation)
            if n >= max(indices):
                break
    return np.stack([out[i] for i in indices])


def siglip_processors() -> tuple:
    """(the paper's PIL processor, transformers' default one), constructed here: nothing is downloaded."""
    import transformers

    pil = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    size = {"height": SIZE, "width": SIZE}
    return pil(size=size), transformers.SiglipImageProcessor(size=size)


def processed(processor, frames: np.ndarray):
    import torch

    return torch.as_tensor(np.stack(processor(list(frames), return_tensors="np")["pixel_values"]))


# ---------------------------------------------------------------- measures

def compare(got, ref) -> dict:
    diff = (got.float() - ref.float()).double()
    mse = float((diff**2).mean())
    return {"psnr_db": round(99.0 if mse == 0 else 10 * np.log10(4.0 / mse), 2),
            "max_abs": round(float(diff.abs().max()), 4),
            "bias_levels": [round(float(b) * 127.5, 3) for b in diff.mean(dim=(0, 2, 3))]}


def median_time(fn, repeats: int) -> float:
    fn()  # warm: the first call pays imports and allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extract_set(path: Path, c: Candidate, k: int):
    spec = FrameSetConfig(name="c", num_frames=k, resize=ResizeConfig(policy="square", size=SIZE, scaler=c.scaler),
                          jpeg_quality=c.quality, jpeg_subsampling=c.subsampling)
    return extract_frames(preflight(path), SamplingConfig(sets=[spec]), DecodeConfig(isolate=False, threads=1)).sets["c"]


def lossless_bytes(rgb: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=kind, **({"lossless": True} if kind == "WEBP" else {}))
    return buf.getvalue()


def lossless_decode(data: list[bytes], cfg):
    """What the loader would do with lossless frames: torchvision decodes, then decode_frames' normalisation."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    images = torch.stack([decode_image(torch.frombuffer(bytearray(d), dtype=torch.uint8), mode=ImageReadMode.RGB)
                          for d in data]).float()
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1).mul_(255.0)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1).mul_(255.0)
    return images.sub_(mean).div_(std)


def measure(name: str, path: Path, cands: list[Candidate], k: int, repeats: int, processors: tuple) -> dict:
    from train.data import DataConfig, decode_frames

    cfg = DataConfig(shards=".", image_size=SIZE)
    base = extract_set(path, cands[0], k)
    info = preflight(path)
    with_pyav = pyav_rgb(path, base.indices, info.rotation)
    with_decord = decord_rgb(path, base.indices)
    native = with_decord if with_decord is not None else with_pyav
    ref = processed(processors[0], native)
    checks = {"reference_decoder": "decord" if with_decord is not None else "pyav",
              "torchvision_processor": compare(processed(processors[1], native), ref)}
    if with_decord is not None:
        checks["pyav_vs_decord_rgb_max_abs"] = int(np.abs(with_pyav.astype(int) - with_decord.astype(int)).max())
    resized = np.stack([pil_resize(f, SIZE, SIZE, "bicubic") for f in native])
    per_frame = lambda seconds: None if seconds is None else round(1000 * seconds / k, 3)  # noqa: E731
    rows = []
    for c in cands:
        if c.lossless:
            store = lambda: [lossless_bytes(f, c.lossless) for f in resized]  # noqa: E731
            stored, extract_s = store(), None
            decode = lambda: lossless_decode(stored, cfg)  # noqa: E731
        else:
            fs = extract_set(path, c, k)
            assert fs.indices == base.indices, (name, c.name)
            stored = fs.jpegs
            extract_s = median_time(lambda: extract_set(path, c, k), max(1, repeats // 2))
            store = lambda: [encode_jpeg(f, c.quality, c.subsampling) for f in resized]  # noqa: E731
            decode = lambda: decode_frames(stored, cfg)  # noqa: E731
        encode_s, loader_s = median_time(store, repeats), median_time(decode, repeats)
        rows.append({"candidate": c.name, **compare(decode(), ref),
                     "bytes_per_frame": round(float(np.mean([len(s) for s in stored]))),
                     "extract_ms_per_frame": per_frame(extract_s), "encode_ms_per_frame": per_frame(encode_s),
                     "loader_ms_per_frame": per_frame(loader_s)})
    return {"content": name, "source": f"{info.width}x{info.height} {info.codec}", "frames": k, **checks, "rows": rows}


# ---------------------------------------------------------------- summary

def summarise(results: list[dict], cands: list[Candidate]) -> list[dict]:
    out = []
    for i, c in enumerate(cands):
        rows = [r["rows"][i] for r in results]
        today = [r["rows"][0] for r in results]
        mean = lambda key, rs=rows: statistics.fmean(r[key] for r in rs)  # noqa: E731
        out.append({
            "candidate": c.name, "worst_psnr_db": min(r["psnr_db"] for r in rows),
            "mean_psnr_db": round(mean("psnr_db"), 2),
            "max_abs": max(r["max_abs"] for r in rows),
            "bias_levels": [round(statistics.fmean(r["bias_levels"][ch] for r in rows), 3) for ch in range(3)],
            "bytes_per_frame": round(mean("bytes_per_frame")),
            "bytes_over_today": round(max(r["bytes_per_frame"] / t["bytes_per_frame"] for r, t in zip(rows, today)), 3),
            "extract_ms_per_frame": None if c.lossless else round(mean("extract_ms_per_frame"), 3),
            "encode_ms_per_frame": round(mean("encode_ms_per_frame"), 3),
            "loader_ms_per_frame": round(mean("loader_ms_per_frame"), 3),
            "loader_over_today": round(mean("loader_ms_per_frame") / mean("loader_ms_per_frame", today), 3),
            "loader_over_today_worst": round(max(r["loader_ms_per_frame"] / t["loader_ms_per_frame"]
                                                 for r, t in zip(rows, today)), 3),
            "gain_db_min": round(min(r["psnr_db"] - t["psnr_db"] for r, t in zip(rows, today)), 2),
        })
    return out


def print_report(report: dict) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [[s["candidate"], f"{s['worst_psnr_db']:.2f}", f"{s['mean_psnr_db']:.2f}", f"{s['max_abs']:.3f}",
             " ".join(f"{b:+.2f}" for b in s["bias_levels"]), f"{s['bytes_per_frame']:,}", f"{s['bytes_over_today']:.2f}",
             fmt(s["extract_ms_per_frame"], ".2f"), f"{s['encode_ms_per_frame']:.2f}", f"{s['loader_ms_per_frame']:.3f}",
             f"{s['loader_over_today']:.2f}"] for s in report["summary"]]
    print(table(["candidate", "worst dB", "mean dB", "max |d|", "bias R G B", "bytes/f", "x today (worst)",
                 "extract ms/f", "encode ms/f", "loader ms/f", "x today"], rows))
    print()
    names = [r["content"] for r in report["content"]]
    cell = lambda rows, i: f"{rows[i]['psnr_db']:.2f} / {rows[i]['bytes_per_frame'] / rows[0]['bytes_per_frame']:.2f}"  # noqa: E731
    rows = [[s["candidate"]] + [cell(r["rows"], i) for r in report["content"]] for i, s in enumerate(report["summary"])]
    print(table(["dB / bytes x today"] + names, rows))
    print()
    rows = [[r["content"], r["source"], r["reference_decoder"], str(r.get("pyav_vs_decord_rgb_max_abs", "-")),
             f"{r['torchvision_processor']['psnr_db']:.2f}", f"{r['torchvision_processor']['max_abs']:.4f}"]
            for r in report["content"]]
    print(table(["content", "source", "reference", "PyAV vs decord max |d| (uint8)", "torchvision processor dB",
                 "its max |d|"], rows))
    print()
    print(targets_table(report["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s clips, 16 frames, two identity cases, 3 repeats")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a loader worker's share
    k, repeats = (16, 3) if args.quick else (48, 5)
    cands = candidates()
    work = Path(tempfile.mkdtemp(prefix="pixels-", dir=args.workdir))
    try:
        processors = siglip_processors()
        results = [measure(name, path, cands, k, repeats, processors) for name, path in make_content(work, args.quick)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(results, cands)
    default = next(s for s in summary if s["candidate"].endswith("(default)"))
    targets = [target("default/bytes_over_today_worst_content", default["bytes_over_today"], "<=", 1.5),
               target("default/loader_over_today", default["loader_over_today"], "<=", 1.5),
               target("default/psnr_gain_db_every_content", default["gain_db_min"], ">=", 0.0)]
    report = {"machine": machine(("av", "decord", "numpy", "pillow", "torch", "torchvision", "transformers")),
              "config": {"frames": k, "repeats": repeats, "size": SIZE}, "summary": summary, "content": results,
              "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
