"""The documentation that is generated from code is up to date, and the README's commands name real things."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    result = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_config_key_has_a_description():
    sys.path.insert(0, str(REPO / "scripts"))
    from config_reference import undescribed

    assert undescribed() == []


def test_every_config_file_the_readme_names_exists():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"configs/[\w./-]+\.yaml", readme))
    assert named, "the README names its configs"
    assert [n for n in sorted(named) if not (REPO / n).is_file()] == []


def test_shipped_accelerate_configs_parse_with_accelerate():
    from accelerate.commands.config.config_args import ClusterConfig

    paths = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
    assert paths
    for path in paths:
        config = ClusterConfig.from_yaml_file(path)
        assert config.num_processes > 1, path.name


def readme_block(after: str, language: str) -> str:
    """The first ```language block after the line containing `after`."""
    readme = (REPO / "README.md").read_text()
    start = readme.index(after)
    block = readme.index(f"```{language}\n", start) + len(f"```{language}\n")
    return readme[block : readme.index("```", block)]


def test_the_readme_reward_function_example_runs_as_written(tmp_path):
    """Write the README's user file and YAML as a user would, build the composite reward and call it."""
    import yaml

    from align.config import from_dict
    from align.rewards import RewardConfig
    from reward.compose import CompositeReward

    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(readme_block("### Your own reward functions", "python"))
    section = yaml.safe_load(readme_block("### Your own reward functions", "yaml"))["reward"]
    cfg = from_dict(RewardConfig, {**section, "reward_model": None})
    reward = CompositeReward.from_config(cfg.functions, base_dir=tmp_path, columns={"constraints", "topic"})
    constraints = '[{"type": "change_case:english_lowercase"}]'
    breakdown = reward(["Describe tea, in lowercase."] * 2, ["tea is a hot drink.", "TEA IS A HOT DRINK."],
                       constraints=[constraints] * 2, topic=["tea", None])
    assert set(breakdown.components) == {"instruction_following", "no_repetition", "brevity", "mentions_topic"}
    assert breakdown.components["instruction_following"] == [1.0, 0.0]
    assert breakdown.components["mentions_topic"] == [1.0, None]
    assert breakdown.total[0] > breakdown.total[1]
