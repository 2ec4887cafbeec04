"""Config loading: precedence, dotted overrides, unknown keys, wrong types, and every shipped YAML."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from align.config import ConfigError, config_hash, diff_configs, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    r: int = 8
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Train:
    learning_rate: float = 1e-3
    steps: int | None = None
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Example:
    name: str = "model"
    flag: bool = False
    lora: Inner = field(default_factory=Inner)
    train: Train = field(default_factory=Train)


def write(tmp_path, text) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_precedence_default_then_yaml_then_command_line(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.5\n  steps: 3\n")
    cfg = load_config(Example, path, ["train.steps=7", "lora.r=16"])
    assert cfg.train.learning_rate == 0.5  # YAML over default
    assert cfg.train.steps == 7  # command line over YAML
    assert cfg.lora.r == 16 and cfg.name == "model"  # default where nothing says otherwise


def test_override_values_are_parsed_as_yaml():
    assert parse_overrides(["a.b=1e-4", "c=true", "d=[x, y]", "e=null", "f=text"]) == {
        "a": {"b": 1e-4}, "c": True, "d": ["x", "y"], "e": None, "f": "text"
    }


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    cfg = load_config(Example, None, ["train.learning_rate=1"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


def test_misspelled_key_names_the_closest_valid_key(tmp_path):
    path = write(tmp_path, "train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Example, path)
    assert str(err.value) == f"{path}: unknown config key 'train.learning_rat' — did you mean 'train.learning_rate'?"


def test_unknown_key_with_no_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["zzz=1"])
    assert str(err.value) == "command line: unknown config key 'zzz' — valid keys here: flag, lora, name, train"


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["lora.r=abc"])
    assert str(err.value) == "command line: config key 'lora.r' = 'abc' is not of the expected type int"
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["train.steps=1.5"])
    assert str(err.value) == "command line: config key 'train.steps' = 1.5 is not of the expected type int | null"
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["flag=1"])
    assert str(err.value) == "command line: config key 'flag' = 1 is not of the expected type bool"


def test_text_that_yaml_reads_as_a_number_is_refused_with_how_to_quote_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["name=2.0"])
    assert str(err.value) == ("command line: config key 'name' = 2.0 is not of the expected type str (YAML reads 2.0 "
                              "as a number: quote it to pass text, \"2.0\" in a file, name='\"2.0\"' on the "
                              "command line)")
    assert load_config(Example, None, ['name="2.0"']).name == "2.0"  # what the shell passes for name='"2.0"'
    assert load_config(Example, write(tmp_path, 'name: "2.0"\n')).name == "2.0"


def test_literal_names_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(Example, None, ["train.schedule=linear"])
    assert str(err.value) == "command line: config key 'train.schedule' = 'linear' is not one of 'cosine', 'constant'"


def test_section_given_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'lora' = 3 is not of the expected type Inner"):
        load_config(Example, None, ["lora=3"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: [1\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(Example, path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Example, tmp_path / "nope.yaml")


def test_hash_and_diff_follow_the_resolved_values():
    a, b = load_config(Example), load_config(Example, None, ["lora.r=4"])
    assert config_hash(a) == config_hash(load_config(Example))
    assert config_hash(a) != config_hash(b)
    assert diff_configs({"lora": {"r": 8}, "x": 1}, {"lora": {"r": 4}, "x": 1}) == ["lora.r"]
    assert config_hash(a, ignore=("lora.r",)) == config_hash(b, ignore=("lora.r",))
    assert config_hash(a, ignore=("lora",)) == config_hash(b, ignore=("lora",))


def test_a_stage_moved_to_another_checkout_is_not_a_changed_config(tmp_path):
    """reward.config_dir (the absolute folder of the config file) is volatile: a PPO stage started from one
    checkout resumes from another; a real change (train.kl_coef) is still refused, by name."""
    from align.ppo import PPOConfig
    from align.stage import begin_stage, finish_stage

    def ppo(config_dir: str, kl_coef: float = 0.05) -> PPOConfig:
        cfg = load_config(PPOConfig, None, [f"run.root={tmp_path}", f"train.kl_coef={kl_coef}"])
        cfg.reward.config_dir = config_dir
        return cfg

    out, _, done = begin_stage(ppo("/home/me/align/configs"))
    assert not done
    finish_stage(out, "interrupted", steps=1)  # it trained: a changed config is refused, not started afresh
    assert begin_stage(ppo("/srv/checkout/configs"))[0] == out
    with pytest.raises(ConfigError, match=r"different config \(changed: train.kl_coef\)"):
        begin_stage(ppo("/srv/checkout/configs", kl_coef=0.1))
    # a manifest whose hash still covered reward.config_dir (earlier versions) is the same config too
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "config_sha256": config_hash(ppo("/elsewhere"))}))
    assert begin_stage(ppo("/srv/checkout/configs"))[0] == out


def test_a_key_added_by_a_newer_version_at_its_default_is_not_a_change(tmp_path):
    """A stage run before a key existed (its config.yaml lacks it) resumes when the key holds its default; the
    same key set to anything else is a change, by name."""
    import yaml

    from align.ppo import PPOConfig
    from align.stage import begin_stage, finish_stage

    cfg = load_config(PPOConfig, None, [f"run.root={tmp_path}"])
    out, _, _ = begin_stage(cfg)
    finish_stage(out, "interrupted", steps=1)  # it trained: a changed config is refused, not started afresh
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["policy_loss"]  # as an older version wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "config_sha256": "from an older version"}))
    assert begin_stage(cfg)[0] == out
    (out / "manifest.json").write_text(json.dumps({**manifest, "config_sha256": "from an older version"}))
    with pytest.raises(ConfigError, match=r"changed: train.max_new_tokens\)"):
        begin_stage(load_config(PPOConfig, None, [f"run.root={tmp_path}", "train.max_new_tokens=64"]))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Every YAML under configs/ parses into its stage's dataclass (litgpt-style)."""
    from align.cli import load_stage_config

    cfg = load_stage_config(str(path), [])
    assert cfg.stage == path.stem.split("-")[0]


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; a float key accepts it as the number everyone means."""
    cfg = load_config(Example, write(tmp_path, "train:\n  learning_rate: 1e-4\n"))
    assert cfg.train.learning_rate == 1e-4


@dataclass
class Stage:
    lora: Inner = field(default_factory=lambda: Inner(r=32))


def test_a_yaml_section_starts_from_the_stage_default_not_the_section_class_default(tmp_path):
    """Stage defaults live in the stage's dataclass; setting one key of a section must not reset the others."""
    cfg = load_config(Stage, write(tmp_path, "lora:\n  targets: [v_proj]\n"))
    assert cfg.lora.r == 32 and cfg.lora.targets == ["v_proj"]
