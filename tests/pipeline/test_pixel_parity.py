"""The shard set's pixels against the paper's SigLIP input (decord RGB at native size -> PIL bicubic 384x384 ->
1/255, mean = std = 0.5): the resize is the processor's own, bit for bit; the stored default is within 35 dB of it
and clearly closer than the old path (libswscale from YUV, JPEG q90 4:2:0); the options are checked at load."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from fixtures.videos import SynthVideo, make_video
from pipeline.core.config_load import ConfigError
from pipeline.run_config import load_run_config
from pipeline.video.config_video import DecodeConfig, FrameSetConfig, ResizeConfig, SamplingConfig, default_sets
from pipeline.video.extract import extract_frames
from pipeline.video.frames import frame_rgb
from pipeline.video.probe import preflight
from train.data import DataConfig, decode_frames

DEFAULT_MIN_DB = 35.0  # the default's PSNR to the paper's tensors on sharp test-pattern content (bench: 38-39)
OLD = FrameSetConfig(name="s", num_frames=8, resize=ResizeConfig(scaler="swscale"), jpeg_quality=90,
                     jpeg_subsampling="4:2:0")


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    spec = SynthVideo(name="sharp_640x360", duration_s=2, width=640, height=360, audio=False)
    return make_video(spec, tmp_path_factory.mktemp("parity"))


def siglip(frames: list[np.ndarray]) -> torch.Tensor:
    """The paper's processor (transformers' PIL one), constructed here: nothing is downloaded."""
    import transformers

    processor = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    out = processor(size={"height": 384, "width": 384})(frames, return_tensors="np")["pixel_values"]
    return torch.as_tensor(np.stack(out))


def native_frames(path, indices: list[int]) -> tuple[list, list[np.ndarray]]:
    """The av frames at these decode positions, and their full-size RGB (what decord's get_batch returns)."""
    with av.open(str(path)) as container:
        frames = [f for n, f in enumerate(container.decode(video=0)) if n in set(indices)]
    return frames, [f.to_ndarray(format="rgb24") for f in frames]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / ((a.double() - b.double()) ** 2).mean()))


def stored(path, spec: FrameSetConfig, backend: str = "pyav"):
    decode = DecodeConfig(backend=backend, isolate=False)
    return extract_frames(preflight(path), SamplingConfig(sets=[spec]), decode).sets[spec.name]


def test_the_pil_scaler_is_the_processors_resize_bit_for_bit(sharp):
    frames, rgb = native_frames(sharp, [0, 17, 44])
    ours = np.stack([frame_rgb(f, 384, 384, "bicubic", scaler="pil") for f in frames])
    mine = (torch.from_numpy(ours).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    assert torch.allclose(mine, siglip(rgb), atol=1e-6)
    old = np.stack([frame_rgb(f, 384, 384, "bicubic") for f in frames])
    assert np.abs(old.astype(int) - ours.astype(int)).max() > 8  # the YUV path was never the processor's


def test_the_default_set_is_close_to_the_papers_tensors_and_closer_than_the_old_path(sharp):
    spec = FrameSetConfig(name="s", num_frames=8)
    shard = next(s for s in default_sets() if s.name == "shard")
    assert (spec.resize, spec.jpeg_quality, spec.jpeg_subsampling) == (shard.resize, shard.jpeg_quality,
                                                                       shard.jpeg_subsampling)
    new, old = stored(sharp, spec), stored(sharp, OLD)
    assert new.indices == old.indices
    _, rgb = native_frames(sharp, new.indices)
    reference = siglip(rgb)
    cfg = DataConfig(shards=".", image_size=384)
    new_db, old_db = psnr(decode_frames(new.jpegs, cfg), reference), psnr(decode_frames(old.jpegs, cfg), reference)
    assert new_db >= DEFAULT_MIN_DB, (new_db, old_db)
    assert new_db >= old_db + 5.0, (new_db, old_db)
    bias = (decode_frames(new.jpegs, cfg) - reference).mean(dim=(0, 2, 3)) * 127.5
    assert bias.abs().max() < 0.4, bias  # in 8-bit levels: no colour shift (JPEG alone leaves ~0.2 on green)


def test_both_backends_store_the_same_bytes_with_the_pil_scaler(sharp):
    pytest.importorskip("decord")
    spec = FrameSetConfig(name="s", num_frames=8)
    assert stored(sharp, spec, "decord").jpegs == stored(sharp, spec).jpegs


def test_the_caption_set_keeps_its_cheap_path():
    caption = next(s for s in default_sets() if s.name == "caption")
    assert (caption.resize.scaler, caption.jpeg_subsampling) == ("swscale", "4:2:0")


@pytest.mark.parametrize("override, field", [
    ("sampling.sets.0.resize.scaler=opencv", "sampling.sets.0.resize.scaler"),
    ("sampling.sets.0.jpeg_subsampling=4:1:1", "sampling.sets.0.jpeg_subsampling"),
    ("sampling.sets.1.jpeg_subsampling=yes", "sampling.sets.1.jpeg_subsampling"),
])
def test_bad_pixel_options_fail_at_load_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["input.path=videos", "output.dir=out", override])
    assert field in str(err.value)


def test_an_unquoted_subsampling_reads_as_written():
    """YAML 1.1 turns an unquoted 4:2:0 into the number 14520; the option takes it back."""
    cfg = load_run_config(None, ["input.path=videos", "output.dir=out", "sampling.sets.0.jpeg_subsampling=4:2:0",
                                 "sampling.sets.1.jpeg_subsampling=4:4:4"])
    assert [s.jpeg_subsampling for s in cfg.sampling.sets] == ["4:2:0", "4:4:4"]
