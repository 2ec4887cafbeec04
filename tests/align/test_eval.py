"""`align eval`: IFEval-style scoring by hand, the table, IFEval-format rows, and a real tiny run."""

import json

import pytest

from align.eval import EvalConfig, constraints_of, evaluate, markdown_table, score_completions

LOWER = {"type": "change_case:english_lowercase"}
NO_COMMA = {"type": "punctuation:no_comma"}


def test_prompt_and_instruction_level_accuracy_by_hand():
    """Prompt 1 follows both of its constraints, prompt 2 follows one of two:
    prompt-level = 1/2, instruction-level = 3/4; per type: lowercase 2/2, no_comma 1/2."""
    results = score_completions(
        ["p1", "p2"], ["all lower no comma", "lower, with a comma"], [[LOWER, NO_COMMA], [LOWER, NO_COMMA]]
    )
    assert results["prompt_level_strict"] == 0.5
    assert results["instruction_level_strict"] == 0.75
    assert results["per_type"]["punctuation:no_comma"] == {"strict": 0.5, "loose": 0.5, "count": 2}
    assert results["per_type"]["change_case:english_lowercase"]["strict"] == 1.0


def test_loose_forgives_a_leading_line():
    results = score_completions(["p"], ["Sure! Here you go:\nall lowercase here"], [[LOWER]])
    assert (results["prompt_level_strict"], results["prompt_level_loose"]) == (0.0, 1.0)


def test_ifeval_rows_are_converted_to_constraints():
    row = {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
           "kwargs": [{}, {"num_words": 10.0, "relation": "less than", "keyword": None}]}
    assert constraints_of(row) == [NO_COMMA, {"type": "length_constraints:number_words", "num_words": 10,
                                              "relation": "less than"}]


def test_markdown_table_has_one_column_per_model():
    results = score_completions(["p"], ["ok"], [[LOWER]])
    table = markdown_table({"base": results, "sft": results})
    assert table.splitlines()[0] == "| metric | base | sft |"
    assert "| change_case:english_lowercase | 1.00 (1) | 1.00 (1) |" in table


def test_each_type_reports_the_share_of_its_answers_that_loop(tokenizer):
    """Two prompts ask for lowercase, one of them also for no commas; only the answer to that one loops: lowercase
    1/2, no_comma 1/1."""
    from align.eval import split_results

    loop = tokenizer("one two three four five six " * 6, add_special_tokens=False)["input_ids"]
    done = tokenizer("all lowercase words here", add_special_tokens=False)["input_ids"]
    rows = [{"prompt": "p", "constraints": json.dumps([LOWER, NO_COMMA])},
            {"prompt": "q", "constraints": json.dumps([LOWER])}]
    per_type = split_results(rows, [loop, done], 40, tokenizer)["per_type"]
    assert per_type["change_case:english_lowercase"]["loop_share"] == 0.5
    assert per_type["punctuation:no_comma"]["loop_share"] == 1.0


def test_a_trained_type_keeps_its_in_distribution_score_when_unseen_prompts_also_ask_for_it():
    """Unseen prompts pair an unseen type with a trained one: the table's row for the trained type must be the
    in-distribution split's (3 instructions, 1.00), not the unseen split's (1, 0.00)."""
    seen = score_completions(["p"] * 3, ["lower"] * 3, [[LOWER]] * 3)
    unseen = score_completions(["p"], ["Upper"], [[LOWER, {"type": "align:no_digits"}]])
    table = markdown_table({"m": {**seen, "budgets": [8], "splits": {"unseen": {"budget_8": unseen}}}})
    assert "| change_case:english_lowercase | 1.00 (3) |" in table and "| align:no_digits | 1.00 (1) |" in table


def test_a_real_evaluation_on_the_tiny_model_writes_both_splits_at_both_budgets(tmp_path, tiny_model_dir):
    results = evaluate(EvalConfig(model="tiny-random", max_prompts=4, max_new_tokens=8, long_budget=12,
                                  out=str(tmp_path)))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["prompts"] == 4 and len(on_disk["samples"]) == 4
    assert 0 <= results["prompt_level_strict"] <= 1 and results["mean_new_tokens"] <= 8
    assert set(on_disk["splits"]) == {"in_distribution", "unseen"} and on_disk["budgets"] == [8, 12]
    unseen = on_disk["splits"]["unseen"]["budget_12"]
    assert unseen["prompts"] == 4 and all(t.startswith("align:") for t in unseen["per_type"])
    assert unseen["mean_new_tokens"] <= 12 and 0 <= unseen["loop_share"] <= 1 and 0 <= unseen["eos_share"] <= 1
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| model | in-dist. prompt strict |") and "| metric | tiny-random |" in table


def test_answers_are_scored_as_if_cut_at_each_budget(tokenizer):
    """One greedy generation serves both budgets: at 4 tokens the looping answer is cut before it loops and the
    answer whose EOS is its 6th token has not ended; at 40 tokens the first loops and the second ended."""
    from align.eval import split_results

    eos = tokenizer.eos_token_id
    loop = tokenizer("one two three four five six " * 6, add_special_tokens=False)["input_ids"]
    done = tokenizer("all lowercase words here", add_special_tokens=False)["input_ids"][:5] + [eos]
    rows = [{"prompt": "p", "constraints": json.dumps([LOWER])}] * 2
    short, long = (split_results(rows, [loop, done], budget, tokenizer) for budget in (4, 40))
    assert (short["loop_share"], short["eos_share"]) == (0.0, 0.0)
    assert (long["loop_share"], long["eos_share"]) == (0.5, 0.5)
    assert short["mean_new_tokens"] == 4 and long["mean_new_tokens"] == (len(loop) + len(done)) / 2


def test_a_stage_that_lowers_unseen_type_accuracy_below_its_parents_is_warned_about():
    from align.pipeline import generalisation_warnings

    def scored(unseen_loose):
        return {"budgets": [8], "splits": {"unseen": {"budget_8": {"prompt_level_loose": unseen_loose}}}}

    results = {"base": scored(0.2), "sft": scored(0.1), "ppo": scored(0.15), "dpo": scored(0.3)}
    warnings = generalisation_warnings(results, {"sft": "smollm2-135m-instruct", "ppo": "sft", "dpo": "sft"})
    assert len(warnings) == 1 and warnings[0].startswith("sft follows unseen constraint types worse than base")
    assert warnings[0].endswith("(prompt-level loose 0.100 < 0.200)")  # no per-prompt results: no standard error


def test_the_unseen_type_warning_gives_the_standard_error_of_the_paired_difference():
    from align.pipeline import generalisation_warnings, paired_standard_error

    def scored(followed):  # one prompt of two instructions per entry; followed: whether the second was
        per_prompt = [{"loose": [True, f]} for f in followed]
        loose = sum(followed) / len(followed)
        return {"budgets": [8], "splits": {"unseen": {"budget_8": {"prompt_level_loose": loose,
                                                                   "per_prompt": per_prompt}}}}

    # differences per prompt: 0, -1, 0, 0 -> mean -1/4, sample variance (3 x 1/16 + 9/16) / 3 = 1/4, SE sqrt(1/16)
    ours, theirs = scored([True, False, False, True]), scored([True, True, False, True])
    per_prompt = [split["splits"]["unseen"]["budget_8"]["per_prompt"] for split in (ours, theirs)]
    assert paired_standard_error(*per_prompt) == 0.25
    assert paired_standard_error(per_prompt[0], per_prompt[1][:3]) is None  # not the same prompts
    warnings = generalisation_warnings({"sft": theirs, "ppo": ours}, {"ppo": "sft"})
    assert warnings == ["ppo follows unseen constraint types worse than sft, the model it started from "
                        "(prompt-level loose 0.500 < 0.750; a standard error of 0.250 on these prompts)"]


def test_the_summary_shows_each_splits_loop_and_eos_shares_at_each_budget():
    from align.eval import summary_table

    def split(loose, loops, eos):
        return {"prompt_level_strict": loose, "prompt_level_loose": loose, "instruction_level_loose": loose,
                "loop_share": loops, "eos_share": eos, "prompts": 10}

    results = {"budgets": [8, 16], "splits": {
        "in_distribution": {"budget_8": split(0.5, 0.1, 0.6), "budget_16": split(0.5, 0.2, 0.7)},
        "unseen": {"budget_8": split(0.25, 0.3, 0.4), "budget_16": split(0.25, 0.4, 0.5)}}}
    header, _, row = summary_table({"m": results}).splitlines()
    assert header.endswith("| loops in-dist. / unseen @8 | EOS in-dist. / unseen @8 | loops in-dist. / unseen @16 | "
                           "EOS in-dist. / unseen @16 |")
    assert row == "| m | 0.500 | 0.500 | 0.500 | 0.250 | 0.250 | 10% / 30% | 60% / 40% | 20% / 40% | 70% / 50% |"


def test_a_missing_prompt_file_is_a_clear_error(tmp_path):
    from align.data import DataError

    with pytest.raises(DataError, match="file not found"):
        evaluate(EvalConfig(model="tiny-random", prompts=str(tmp_path / "nope.jsonl"), out=str(tmp_path)))


def test_align_eval_runs_from_the_command_line(tmp_path, tiny_model_dir):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "align", "eval", "configs/eval.yaml", "model=tiny-random",
                           "max_prompts=2", "max_new_tokens=4", "long_budget=6", f"out={tmp_path}"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| model | in-dist. prompt strict |" in done.stdout
    assert json.loads((tmp_path / "results.json").read_text())["budgets"] == [4, 6]
