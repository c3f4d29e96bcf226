from pathlib import Path

import pytest
import yaml

from pipeline.core.config_load import ConfigError, dump_config, write_resolved_config

from pipeline.run_config import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ["input.path=videos", "output.dir=out"]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_take_the_standard_overrides(name, tmp_path):
    cfg = load_run_config(ROOT / "configs" / name, [f"input.path={tmp_path}", f"output.dir={tmp_path / 'o'}"])
    assert cfg.input.path == str(tmp_path)
    assert cfg.output.dir == str(tmp_path / "o")


def test_overrides_are_typed_and_reach_list_items():
    cfg = load_run_config(
        None,
        BASE + ["decode.threads=3", "sampling.sets.0.num_frames=128", "sampling.sets.1.fps=0.5", "probe.count_frames=true"],
    )
    assert cfg.decode.threads == 3
    assert cfg.sampling.sets[0].num_frames == 128
    assert cfg.sampling.sets[1].fps == 0.5
    assert cfg.probe.count_frames is True


def test_a_whole_list_can_be_replaced_with_yaml():
    cfg = load_run_config(None, BASE + ['sampling.sets=[{name: only, mode: uniform, num_frames: 8}]', 'shards.frame_set=only'])
    assert [s.name for s in cfg.sampling.sets] == ["only"]


@pytest.mark.parametrize(
    "override, path_in_message",
    [
        ("decode.backnd=pyav", "decode.backnd: unknown key"),
        ("decode.backend=ffmpeg", "decode.backend: Input should be 'pyav' or 'decord'"),
        ("sampling.sets.0.num_frames=-3", "sampling.sets.0.num_frames: Input should be greater than 0"),
        ("sampling.sets.1.jpeg_quality=101", "sampling.sets.1.jpeg_quality"),
        ("sampling.sets.0.resize.policy=crop", "sampling.sets.0.resize.policy"),
        ("limits.max_width=wide", "limits.max_width"),
        ("sampling.sets.1.mode=uniform", "sampling.sets.1: Value error, mode 'uniform' needs num_frames"),
        ("sampling.sets.0.name=caption", "frame set names must be unique"),
        ("sampling.sets.0.min_frames=10", None),  # valid: no max bound
        ("sampling.sets.0.max_frames=4", "sampling.sets.0: Value error, min_frames"),
    ],
)
def test_bad_values_fail_at_load_naming_the_field(override, path_in_message):
    extra = ["sampling.sets.0.min_frames=10"] if "max_frames" in override else []
    if path_in_message is None:
        load_run_config(None, BASE + [override])
        return
    with pytest.raises(ConfigError) as err:
        load_run_config(None, BASE + extra + [override])
    assert path_in_message in str(err.value)


def test_missing_required_sections_are_named():
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [])
    assert "input: Field required" in str(err.value)
    assert "output: Field required" in str(err.value)


def test_unknown_key_in_yaml_file_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("input: {path: x}\noutput: {dir: y}\nsampling:\n  sets:\n    - {name: a, num_frames: 4, sek: exact}\n")
    with pytest.raises(ConfigError, match=r"sampling\.sets\.0\.sek: unknown key"):
        load_run_config(f)


@pytest.mark.parametrize(
    "text, message",
    [("- a\n- b\n", "top level must be a mapping"), ("input: [unclosed\n", "not valid YAML")],
)
def test_malformed_files_fail_clearly(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_run_config(f)


@pytest.mark.parametrize(
    "override, message",
    [
        ("novalue", "must look like key.path=value"),
        ("sampling.sets.9.fps=1", "sampling.sets.9 is not an index of a 2-item list"),
        ("decode.threads.x=1", "decode.threads is a value, not a section"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(ROOT / "configs" / "demo.yaml", [override])


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_run_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_run_config(ROOT / "configs" / "demo.yaml", ["decode.backend=pyav", "output.dir=" + str(tmp_path)])
    path = write_resolved_config(cfg, tmp_path)
    again = RunConfig.model_validate(yaml.safe_load(path.read_text()))
    assert again == cfg
    assert "backend: pyav" in dump_config(cfg)


def test_default_yaml_lists_every_key_with_its_default():
    import yaml

    root = Path(__file__).resolve().parents[2]
    listed = yaml.safe_load((root / "configs/default.yaml").read_text())
    defaults = load_run_config(None, [f"input.path={listed['input']['path']}", f"output.dir={listed['output']['dir']}"])
    assert load_run_config(root / "configs/default.yaml") == defaults

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(listed) == keys(defaults.model_dump(mode="json"))


def test_a_typo_names_its_source_and_the_nearest_key(tmp_path):
    from pipeline.core.config_load import ConfigError
    from pipeline.run_config import load_run_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {path: /v}\noutput: {dir: /o}\nfilters: {length: {min_duration_z: 3}}\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(cfg, ["output.dri=/tmp/x", "shards.max_samples=-1"])
    text = str(e.value)
    assert f"invalid config {cfg} with --set overrides:" in text
    assert "output.dri: unknown key; did you mean output.dir? [from --set output.dri=/tmp/x]" in text
    assert f"filters.length.min_duration_z: unknown key; did you mean filters.length.min_duration_s? [from {cfg}]" in text
    assert "shards.max_samples: Input should be greater than 0 (got -1) [from --set shards.max_samples=-1]" in text


def test_a_missing_key_says_how_to_give_it():
    from pipeline.core.config_load import ConfigError
    from pipeline.run_config import load_run_config

    with pytest.raises(ConfigError) as e:
        load_run_config(None, ["output.dir=/o"])
    assert "input: Field required [set it in the file or with --set input=...]" in str(e.value)


def test_every_frame_set_name_is_checked_at_load():
    """A typo in a stage's frame set fails at load naming the field, not as `no_frames` rejects at run time."""
    for field in ("filters.clip.frame_set", "filters.visual.frame_set", "shards.frame_set"):
        with pytest.raises(ConfigError, match=f"{field} 'shrad' names no sampling set"):
            load_run_config(None, BASE + [f"{field}=shrad", "filters.clip.enabled=true"])
    with pytest.raises(ConfigError, match="llm.captions.frame_set 'captoin' names no sampling set"):
        load_run_config(None, BASE + ["llm.captions.frame_set=captoin", "llm.enabled=true", "llm.model=m"])
    assert load_run_config(None, BASE + ["filters.clip.frame_set=caption", "filters.clip.enabled=true"])


def test_tokens_per_frame_has_one_definition():
    from pipeline.core.video_tokens import TOKENS_PER_FRAME, frame_tokens
    from train.config import ModelConfig

    assert TOKENS_PER_FRAME == frame_tokens(ModelConfig(tiny=True).video_pool_size) == 12 * 13
    assert load_run_config(None, BASE).filters.token_budget.tokens_per_frame == TOKENS_PER_FRAME
