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
    """Write the README's user file and YAML as a user would, build the composite reward as a stage does and score
    conversational samples the way the stages call it (TRL's arguments)."""
    import yaml

    from align.config import from_dict
    from align.rewards import RewardConfig, build_reward, score_completions

    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(readme_block("### Your own reward functions", "python"))
    section = yaml.safe_load(readme_block("### Your own reward functions", "yaml"))["reward"]
    cfg = from_dict(RewardConfig, {**section, "reward_model": None, "config_dir": str(tmp_path)})
    reward = build_reward(cfg, run=None, columns=["constraints", "topic"])
    lowercase = '[{"type": "change_case:english_lowercase"}]'
    rows = [{"prompt": [{"role": "user", "content": "Describe tea, in lowercase."}], "constraints": lowercase,
             "topic": topic} for topic in ("tea", None)]
    texts = ["tea is a hot drink, brewed because it tastes good.", "TEA IS A HOT DRINK"]
    breakdown, log = score_completions(reward, rows, texts, [[1] * 10, [1] * 150], ["constraints", "topic"],
                                       state=None)
    assert breakdown.components == {
        "instruction_following": [1.0, 0.0], "no_repetition": [0.0, 0.0], "brevity": [1.0, 1.0],
        "mentions_topic": [1.0, None], "keyword_reward": [1.0, 0.0], "judge": [1.0, 0.0],
        "soft_overlong_punishment_reward": [0.0, -1.0]}
    assert log.metric_means() == {"samples_with_topic": 0.5}
    assert breakdown.total[0] > breakdown.total[1]


def test_the_readme_chat_examples_use_real_options():
    """Every `align chat` flag the README uses is one the command accepts."""
    readme = (REPO / "README.md").read_text()
    used = {flag for line in readme.splitlines() if "align chat" in line for flag in re.findall(r"--[a-z-]+", line)}
    assert used >= {"--prompt", "--prompts", "--out"}
    result = subprocess.run([sys.executable, "-m", "align", "chat", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(used - set(re.findall(r"--[a-z-]+", result.stdout))) == []
