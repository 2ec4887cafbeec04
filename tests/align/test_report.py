"""`align report`: the HTML page for a run directory, checked as text and rendered in headless Chromium.

The run directory is written by hand in the formats the stages and `align eval` write (no model is trained);
eval results come from `align.eval.score_completions`, the scorer `align eval` itself uses.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from align.report import load_stage, stage_charts, write_report

HOSTILE_PROMPT = 'Explain the <script>alert("pwned")</script> tag in lowercase letters and without commas.'
HOSTILE_PROMPT_ESCAPED = "Explain the &lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; tag"
HOSTILE_COMPLETION = "the script tag runs code <img src=x onerror=alert(1)> inside a page."
TITLE_PROMPT = "Give me a title for a poem about rain, wrapped in double angular brackets."
END_PROMPT = "Name two fruits. End your answer with the exact phrase 'Anything else?'"
CONSTRAINTS = {
    HOSTILE_PROMPT: [{"type": "punctuation:no_comma"}, {"type": "change_case:english_lowercase"}],
    TITLE_PROMPT: [{"type": "detectable_format:title"}],
    END_PROMPT: [{"type": "startend:end_checker", "end_phrase": "Anything else?"}],
}
# label -> prompt -> completion.  The ppo model answers the prompts in another order: rows match by text.
COMPLETIONS = {
    "base": {HOSTILE_PROMPT: "Sure, The SCRIPT tag runs JavaScript.", TITLE_PROMPT: "Rain falls softly.",
             END_PROMPT: "Apples and pears."},
    "sft": {HOSTILE_PROMPT: "the script tag runs code, mostly.", TITLE_PROMPT: "<<Rain Song>>\nDrops on glass.",
            END_PROMPT: "Apples and pears."},
    "ppo": {END_PROMPT: "Apples and pears. Anything else?", TITLE_PROMPT: "<<Rain Song>>\nDrops on glass.",
            HOSTILE_PROMPT: HOSTILE_COMPLETION},
}
STARTED, FINISHED = "2026-11-21T12:54:20+00:00", "2026-11-21T12:56:26+00:00"


def write_jsonl(path: Path, records: list[dict], torn_tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + torn_tail, encoding="utf-8")


def write_stage(run_dir: Path, name: str, metrics: list[dict], *, status: str = "complete",
                tables: dict[str, list[dict]] | None = None, torn_tail: str = "", **manifest_fields) -> Path:
    stage_dir = run_dir / name
    stage_dir.mkdir(parents=True)
    manifest = {
        "stage": name, "status": status, "config_sha256": "ab" * 32, "started": STARTED, "resumed_from": None,
        "base_model": "tiny-random" if name == "sft" else str(run_dir / "sft"),
        "data_fingerprint": f"{name}-fingerprint", "versions": {"python": "3.11.7", "align": "0.1.0"},
        "metrics": {key: value for key, value in metrics[-1].items() if key != "step"}, "steps": metrics[-1]["step"],
    }
    if status == "complete":
        manifest["finished"] = FINISHED
    manifest.update(manifest_fields)
    if name != "sft":
        manifest["parents"] = {"policy": str(run_dir / "sft")}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    write_jsonl(stage_dir / "metrics.jsonl", metrics, torn_tail)
    for table_name, records in (tables or {}).items():
        write_jsonl(stage_dir / "tables" / f"{table_name}.jsonl", records)
    return stage_dir


def sft_metrics() -> list[dict]:
    rows = [{"step": 0, "sft/data/truncated": 0, "sft/data/dropped": 0}, {"step": 0, "sft/eval_loss": 3.1}]
    for step in range(1, 7):
        rows.append({"step": step, "sft/loss": 3.0 - 0.3 * step, "sft/learning_rate": 2e-4, "sft/grad_norm": 1.5})
        if step % 3 == 0:
            rows.append({"step": step, "sft/eval_loss": 3.0 - 0.25 * step})
    rows.append({"step": 6, "sft/eval_loss": 1.45, "sft/train_loss": 1.2})  # final summary line, same step
    return rows


def write_eval(path: Path, label: str) -> dict:
    from align.eval import score_completions

    prompts = list(COMPLETIONS[label])
    completions = [COMPLETIONS[label][prompt] for prompt in prompts]
    constraints = [CONSTRAINTS[prompt] for prompt in prompts]
    results = score_completions(prompts, completions, constraints)
    results.update(model="smollm2-135m-instruct" if label == "base" else f"runs/demo/{label}",
                   samples=[{"prompt": p, "completion": c, "constraints": k, "followed": s["strict"]}
                            for p, c, k, s in zip(prompts, completions, constraints, results["per_prompt"])])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


PPO_WINDOWS = [{"steps": [1, 2], "kl": 0.015, "eos_rate": 0.25, "loop_share": None},
               {"steps": [3, 4], "kl": 0.035, "eos_rate": 0.75, "loop_share": 0.0}]


def build_run(run: Path) -> Path:
    """sft, rm, ppo complete; dpo still running (its last metrics line cut off); base, sft and ppo evaluated."""
    write_stage(run, "sft", sft_metrics(), tables={"sft/samples": [
        {"step": 6, "columns": ["prompt", "completion"], "rows": [[HOSTILE_PROMPT, "<b>not bold</b>"]]}]})
    write_stage(run, "rm", [
        {"step": step, "rm/loss": 0.7 / step, "rm/accuracy": 0.5 + 0.05 * step, "rm/margin": 0.2 * step}
        for step in range(1, 9)] + [{"step": 8, "rm/eval/accuracy": 0.9, "rm/eval/margin": 1.4}])
    ppo_rows = [{"step": step, "ppo/reward/total": 0.1 * step, "ppo/reward/instruction_following": 0.2 * step,
                 "ppo/reward/instruction_following/applies": 1.0, "ppo/reward/reward_model": -0.1 * step,
                 "ppo/kl": 0.01 * step, "ppo/policy_loss": -0.01, "ppo/value_loss": 0.5 / step,
                 "ppo/constraint/punctuation:no_comma": 0.5} for step in range(1, 5)]
    write_stage(run, "ppo", ppo_rows, tables={"ppo/samples": [
        {"step": 4, "columns": ["iteration", "prompt", "completion", "total"],
         "rows": [[4, TITLE_PROMPT, "<<Rain>>", 0.75]]}]}, windows=PPO_WINDOWS)
    write_stage(run, "dpo", [
        {"step": step, "dpo/loss": 0.69 - 0.01 * step, "dpo/rewards/chosen": 0.01 * step,
         "dpo/rewards/rejected": -0.01 * step, "dpo/rewards/margin": 0.02 * step, "dpo/rewards/accuracy": 0.6}
        for step in range(1, 4)], status="running", torn_tail='{"step": 4, "dpo/lo')
    write_eval(run / "eval" / "base" / "results.json", "base")
    write_eval(run / "sft" / "eval" / "results.json", "sft")
    write_eval(run / "ppo" / "eval" / "results.json", "ppo")
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fresh run directory, for tests that change it."""
    return build_run(tmp_path / "demo")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """(run directory, page text) of one report that tests only read (plotting takes about a second)."""
    run = build_run(tmp_path_factory.mktemp("report") / "demo")
    index = write_report(run)
    assert index == run / "report" / "index.html"
    return run, index.read_text(encoding="utf-8")


EXPECTED_PLOTS = {
    "eval-headline.png", "eval-per-type.png", "sft-loss.png", "rm-loss.png", "rm-accuracy.png", "rm-margin.png",
    "ppo-reward.png", "ppo-kl.png", "ppo-policy-value-loss.png",
    "dpo-loss.png", "dpo-accuracy.png", "dpo-margin.png", "dpo-implicit-rewards.png",
}


def test_report_files_and_embedded_plots(report):
    run_dir, page = report
    plots = {path.name: path.read_bytes() for path in (run_dir / "report").glob("*.png")}
    assert set(plots) == EXPECTED_PLOTS
    for name, png in plots.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
        # The page is self-contained: each plot file is also in the HTML, byte for byte.
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page, name
    assert page.count("<img ") == len(EXPECTED_PLOTS)
    for section in ("stages", "eval", "samples", "stage-sft", "stage-rm", "stage-ppo", "stage-dpo"):
        assert f'id="{section}"' in page


def test_text_from_the_run_is_escaped(report):
    _, page = report
    assert page.count("<script") == 1  # the page's own readiness script, nothing from the data
    assert "<img src=x" not in page and "<b>not bold</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page
    assert HOSTILE_PROMPT_ESCAPED in page


def test_headline_table_compares_each_model_with_base(report):
    run_dir, page = report
    base = json.loads((run_dir / "eval" / "base" / "results.json").read_text())
    ppo = json.loads((run_dir / "ppo" / "eval" / "results.json").read_text())
    ppo_row = re.search(r"<tr><th>ppo</th>.*?</tr>", page).group()
    for key in ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"):
        assert f"{ppo[key]:.3f}" in ppo_row and f"({ppo[key] - base[key]:+.3f})" in ppo_row
    assert ppo["prompt_level_strict"] == 1.0 and base["prompt_level_strict"] == 0.0  # the fixture's premise
    assert "<th>punctuation:no_comma</th>" not in page and "<td>punctuation:no_comma</td>" in page  # per-type row


def test_an_rl_stage_shows_its_iteration_windows(report):
    _, page = report
    table = re.search(r"<h3>By iteration window</h3>.*?</table>", page, re.S).group()
    assert "<th>steps</th><th>kl</th><th>eos_rate</th><th>loop_share</th>" in table
    assert "<td>[1, 2]</td><td>0.015</td><td>0.25</td><td>—</td>" in table
    assert "<td>[3, 4]</td><td>0.035</td><td>0.75</td><td>0</td>" in table
    assert page.count("By iteration window") == 1  # only the ppo stage has windows


def test_samples_are_matched_by_prompt_text(report):
    _, page = report
    blocks = re.findall(r'<div class="sample">.*?</div></div></div>', page, flags=re.S)
    assert len(blocks) == 3
    hostile = next(block for block in blocks if HOSTILE_PROMPT_ESCAPED in block)
    for label in ("base", "sft", "ppo"):
        column = re.search(rf'<div class="completion" data-model="{label}">.*?</pre></div>', hostile, re.S).group()
        assert f"<pre>{_html(COMPLETIONS[label][HOSTILE_PROMPT])}</pre>" in column
    assert "2/2 followed" in hostile and "0/2 followed" in hostile  # ppo follows both, base neither


def test_missing_pieces_are_notes(report):
    _, page = report
    assert "Stage dpo has no eval results" in page
    assert "Stage rm has no eval results" not in page  # a reward model is not a policy to evaluate
    assert "metrics.jsonl: the last line is incomplete" in page
    assert "Status is running" in page


def test_chart_series_come_from_the_metrics(report):
    run_dir, _ = report
    sft = {chart.filename: chart for chart in stage_charts(load_stage(run_dir / "sft"))}
    # Step 6's eval loss was logged twice; the later value wins and the step appears once.
    assert sft["sft-loss.png"].series["eval_loss"] == [(0, 3.1), (3, 2.25), (6, 1.45)]
    assert list(sft) == ["sft-loss.png"]
    ppo = {chart.filename: chart for chart in stage_charts(load_stage(run_dir / "ppo"))}
    assert list(ppo["ppo-reward.png"].series) == [
        "reward/total", "reward/instruction_following", "reward/reward_model"]  # no ".../applies" flag


def test_grpo_metrics_as_trl_logs_them_get_charts(tmp_path):
    write_stage(tmp_path, "grpo", [
        {"step": step, "grpo/loss": 0.1 / step, "grpo/reward": 0.2 * step, "grpo/reward_std": 0.1,
         "grpo/reward/total": 0.2 * step, "grpo/reward/instruction_following": 0.3 * step, "grpo/kl": 0.01 * step,
         "grpo/constraint/punctuation:no_comma": 0.5, "grpo/completions/mean_length": 40.0}
        for step in (2, 4)])
    charts = {chart.filename: chart for chart in stage_charts(load_stage(tmp_path / "grpo"))}
    assert list(charts) == ["grpo-loss.png", "grpo-reward.png", "grpo-kl.png"]
    assert list(charts["grpo-reward.png"].series) == ["reward", "reward/total", "reward/instruction_following"]
    assert charts["grpo-kl.png"].series == {"kl": [(2, 0.02), (4, 0.04)]}


def test_a_run_with_only_sft_renders_with_notes(tmp_path):
    write_stage(tmp_path / "run", "sft", sft_metrics())
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert {path.name for path in (tmp_path / "run" / "report").glob("*.png")} == {"sft-loss.png"}
    assert "No eval results in this run" in page and "Stage sft has no eval results" in page
    assert "No eval samples to compare" in page


def test_plots_of_removed_stages_do_not_linger(tmp_path):
    run = tmp_path / "run"
    write_stage(run, "sft", sft_metrics())
    (run / "report").mkdir()
    (run / "report" / "dpo-loss.png").write_bytes(b"from a report of when the run had a dpo stage")
    write_report(run)
    assert sorted(path.name for path in (run / "report").glob("*.png")) == ["sft-loss.png"]


def _corrupt_metrics_line(run: Path) -> None:
    path = run / "sft" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))


def _text_metric(run: Path) -> None:
    with open(run / "sft" / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": 7, "sft/loss": "low"}) + "\n")


def _drop_eval_key(run: Path) -> None:
    path = run / "ppo" / "eval" / "results.json"
    results = json.loads(path.read_text())
    del results["prompt_level_loose"]
    path.write_text(json.dumps(results))


@pytest.mark.parametrize("corrupt, message", [
    (_corrupt_metrics_line, r"sft/metrics\.jsonl:2: not valid JSON"),
    (_text_metric, r"metrics\.jsonl:\d+: metric 'sft/loss' must be a number, got 'low'"),
    (_drop_eval_key, r"ppo/eval/results\.json: key 'prompt_level_loose' must be a number"),
])
def test_malformed_files_are_named(run_dir, corrupt, message):
    corrupt(run_dir)
    with pytest.raises(ValueError, match=message):
        write_report(run_dir)


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no stage directories"):
        write_report(tmp_path)


def _html(text: str) -> str:
    import html

    return html.escape(text, quote=True)


# ---------------------------------------------------------------------------------------------
# Rendering in a real browser

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); the report "
                             "is still checked as text by the other tests")


def run_chromium(page: Path, profile: Path, *mode: str) -> tuple[str, list[str]]:
    """Load `page` headless; (stdout, console lines).  With --enable-logging=stderr Chromium prints every
    console message and uncaught error from the page as an `INFO:CONSOLE` line; CSP violations included."""
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
         # Let the page's load handlers run (virtual time, so no real waiting) before dumping/capturing.
         "--virtual-time-budget=5000", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return completed.stdout, console


@needs_chromium
def test_page_renders_in_chromium_with_all_plots_and_no_console_errors(report, tmp_path):
    from PIL import Image

    index = report[0] / "report" / "index.html"
    dom, console = run_chromium(index, tmp_path / "profile-dom", "--dump-dom")
    assert console == []
    body = re.search(r"<body[^>]*>", dom).group()
    assert f'data-images-total="{len(EXPECTED_PLOTS)}"' in body
    assert f'data-ready="{len(EXPECTED_PLOTS)}"' in body  # every plot decoded, none broken

    screenshot = tmp_path / "report.png"
    _, console = run_chromium(index, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                              "--window-size=1280,4000")
    assert console == []
    image = Image.open(screenshot).convert("L")
    assert image.size == (1280, 4000)
    ink = sum(count for value, count in enumerate(image.histogram()) if value < 200)
    assert ink > 0.02 * 1280 * 4000, "the screenshot is (nearly) blank"


@needs_chromium
def test_console_check_catches_markup_that_slips_through(report, tmp_path):
    """The check above can fail: markup injected into the page trips the page's CSP, which Chromium logs."""
    _, page = report
    injected = tmp_path / "injected.html"
    injected.write_text(page.replace("</body>", '<script>document.title = "ran";</script></body>'))
    _, console = run_chromium(injected, tmp_path / "profile", "--dump-dom")
    assert any("Content Security Policy" in line for line in console), console
