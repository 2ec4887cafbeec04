"""align.data: loading every accepted format, normalising per purpose, and exact errors for bad rows."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from align.config import ConfigError, load_config
from align.data import DataConfig, DataError, LoadReport, data_fingerprint, load_rows
from align.ppo import PPOConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
HH_TEST_FILE = REPO_ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

USER = {"role": "user", "content": "What colour is the sky?"}
ASSISTANT = {"role": "assistant", "content": "It is blue."}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def load(source: str, purpose: str, **cfg) -> tuple[list[dict], LoadReport]:
    return load_rows(source, purpose, DataConfig(**cfg))


def load_error(source: str, purpose: str, **cfg) -> str:
    with pytest.raises(DataError) as info:
        load_rows(source, purpose, DataConfig(**cfg))
    return str(info.value)


# --- formats and their normalised output -------------------------------------------------------------


def test_messages_for_sft_keeps_conversation_and_extra_columns(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [system, USER, ASSISTANT], "id": 7}])
    rows, report = load(src, "sft")
    assert rows == [{"messages": [system, USER, ASSISTANT], "id": 7}]
    assert (report.rows_read, report.rows_kept, report.bad_rows, report.format) == (1, 1, [], "messages")


def test_message_keys_other_than_role_and_content_are_dropped(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{**USER, "name": "x"}, ASSISTANT]}])
    rows, _ = load(src, "sft")
    assert rows[0]["messages"][0] == USER


def test_standard_prompt_completion_for_sft(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    rows, report = load(src, "sft")
    assert rows == [{"messages": [{"role": "user", "content": "The sky is"},
                                  {"role": "assistant", "content": " blue."}]}]
    assert report.format == "prompt_completion"


def test_conversational_prompt_completion_for_sft_and_prompt(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": [USER], "completion": [ASSISTANT], "tag": "a"}])
    assert load(src, "sft")[0] == [{"messages": [USER, ASSISTANT], "tag": "a"}]
    assert load(src, "prompt")[0] == [{"prompt": [USER], "tag": "a"}]


def test_explicit_preference_strings_and_conversational(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "pair_type": "x"},
        {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "Green."}]},
    ])
    rows, report = load(src, "preference")
    assert rows == [
        {"prompt": [{"role": "user", "content": "The sky is"}], "chosen": " blue.", "rejected": " green.",
         "pair_type": "x"},
        {"prompt": [USER], "chosen": "It is blue.", "rejected": "Green."},
    ]
    assert report.format == "preference"


def test_implicit_prompt_preference_splits_at_shared_prefix(tmp_path):
    history = [USER, ASSISTANT, {"role": "user", "content": "And at night?"}]
    src = write_jsonl(tmp_path / "d.jsonl", [{
        "chosen": history + [{"role": "assistant", "content": "Black."}],
        "rejected": history + [{"role": "assistant", "content": "Green."}],
    }])
    rows, _ = load(src, "preference")
    assert rows == [{"prompt": history, "chosen": "Black.", "rejected": "Green."}]


def test_preference_rows_give_sft_on_chosen_and_prompts(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    user = {"role": "user", "content": "Hi"}
    assert load(src, "sft")[0] == [{"messages": [user, {"role": "assistant", "content": "Hello!"}]}]
    assert load(src, "prompt")[0] == [{"prompt": "Hi"}]  # a prompt keeps TRL's standard form


def test_hh_text_is_split_at_the_last_assistant_turn(tmp_path):
    prefix = "\n\nHuman: Hi there\n\nAssistant:  Hello.\n\nHuman: Name a colour."
    src = write_jsonl(tmp_path / "d.jsonl", [{"chosen": prefix + "\n\nAssistant: Blue.",
                                              "rejected": prefix + "\n\nAssistant: No."}])
    prompt = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
              {"role": "user", "content": "Name a colour."}]
    rows, report = load(src, "preference")
    assert rows == [{"prompt": prompt, "chosen": "Blue.", "rejected": "No."}]
    assert report.format == "hh"
    assert load(src, "sft")[0] == [{"messages": prompt + [{"role": "assistant", "content": "Blue."}]}]
    assert load(src, "prompt")[0] == [{"prompt": prompt}]


def test_prompt_only_string_and_messages_become_prompts(tmp_path):
    """A string prompt stays a string (TRL's standard form: reward functions get strings), messages stay messages
    (conversational); generation applies the chat template to both."""
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Write a haiku.", "constraints": "[]"}])
    assert load(src, "prompt")[0] == [{"prompt": "Write a haiku.", "constraints": "[]"}]
    conversation = write_jsonl(tmp_path / "m.jsonl", [{"messages": [USER, ASSISTANT]}, {"messages": [USER]}])
    assert load(conversation, "prompt")[0] == [{"prompt": [USER]}, {"prompt": [USER]}]


def test_purpose_picks_its_columns_when_a_row_has_several_formats(tmp_path):
    # like HuggingFaceH4/ultrachat_200k: a `prompt` string and the full `messages`
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "messages": [USER, ASSISTANT]}])
    assert load(src, "sft")[0] == [{"messages": [USER, ASSISTANT], "prompt": "Hi"}]
    assert load(src, "prompt")[0] == [{"prompt": "Hi", "messages": [USER, ASSISTANT]}]


def test_explicit_format_reads_only_its_columns(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": ""}])
    rows, report = load(src, "prompt", format="prompt_only")  # the empty completion is just an extra column
    assert rows == [{"prompt": "Hi", "completion": ""}]
    assert report.format == "prompt_only"


# --- file types ------------------------------------------------------------------------------------------


def test_jsonl_gz_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [USER, ASSISTANT]}) + "\n\n" + json.dumps({"messages": [USER]}) + "\n")
    message = load_error(str(path), "sft")
    assert message == (f"{path}, line 3: field 'messages': must end with an assistant turn "
                       f"(the response to train on); its last turn is 'user'")


def test_json_list_and_json_lines(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(rows, indent=2))
    as_lines = tmp_path / "lines.json"
    as_lines.write_text("\n".join(json.dumps(r) for r in rows))
    assert load(str(as_list), "sft")[0] == load(str(as_lines), "sft")[0]
    assert len(load(str(as_list), "sft")[0]) == 2


def test_json_list_errors_name_row_or_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a"}, ["not", "an", "object"]]))
    assert load_error(str(path), "prompt") == f"{path}, row 2: expected a JSON object, got list"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]')
    assert load_error(str(path), "prompt") == (
        f"{path}, line 3: invalid JSON: Expecting property name enclosed in double quotes (column 18)")


def test_parquet_with_conversations(tmp_path):
    import pyarrow
    import pyarrow.parquet

    path = tmp_path / "d.parquet"
    bad = {"messages": [USER, {"role": "bot", "content": "x"}]}
    table = pyarrow.Table.from_pylist([{"messages": [USER, ASSISTANT]}, bad])
    pyarrow.parquet.write_table(table, path)
    assert load_error(str(path), "sft") == (
        f"{path}, row 2: field 'messages[1].role': unknown role 'bot'; expected one of 'system', 'user', 'assistant'")
    rows, report = load(str(path), "sft", skip_bad_rows=True)
    assert rows == [{"messages": [USER, ASSISTANT]}]
    assert report.bad_rows[0][0] == 2


def test_csv_string_formats_and_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"Say ""hi""",hi\nfoo\n', encoding="utf-8")
    assert load_error(str(path), "sft") == f"{path}, row 2: has 1 cells but the header has 2 columns"
    path.write_text('prompt,completion\n"Say ""hi""","line one\nline two"\n', encoding="utf-8")
    rows, _ = load(str(path), "sft")
    assert rows == [{"messages": [{"role": "user", "content": 'Say "hi"'},
                                  {"role": "assistant", "content": "line one\nline two"}]}]
    path.write_text("messages\nhello\n", encoding="utf-8")
    assert load_error(str(path), "sft") == (
        f"{path}: a 'messages' column cannot be read from CSV (cells are plain text, a conversation is a list); "
        f"use .jsonl, .json or .parquet for conversations")


def test_dataset_folder_is_loaded_with_datasets_and_split(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    write_jsonl(folder / "test.jsonl", [{"prompt": "q", "completion": ""}])
    assert len(load(str(folder), "sft")[0]) == 3
    assert load_error(str(folder), "sft", split="test") == (
        f"{folder}, row 1: field 'completion': empty response; expected non-blank text")


# --- errors: one per kind of problem, asserted exactly ---------------------------------------------------


def test_missing_field(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"completion": "b"}])
    # the second row is detected as prompt_completion (it has `completion`), so `prompt` is missing
    assert load_error(src, "sft") == (f"{src}, line 2: field 'prompt': missing (format 'prompt_completion' needs "
                                      f"'prompt' and 'completion'; the row has 'completion')")
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b"}])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'rejected': missing (format 'preference' needs 'chosen' and 'rejected'; "
        f"the row has 'prompt', 'chosen')")
    src = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user"}]}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: field 'messages[0].content': missing (every message needs 'role' and 'content')")


def test_explicit_format_reports_missing_column(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    assert load_error(src, "sft", format="messages") == (
        f"{src}, line 1: field 'messages': missing (format 'messages' needs 'messages'; "
        f"the row has 'prompt', 'completion')")


def test_wrong_types(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, {"role": "assistant", "content": 42}]}])
    assert load_error(src, "sft") == f"{src}, line 1: field 'messages[1].content': expected a string, got number"
    src = write_jsonl(tmp_path / "e.jsonl", [{"messages": "hello"}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: field 'messages': expected a list of {{'role', 'content'}} messages, got string")
    src = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "a", "chosen": None, "rejected": "b"}])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'chosen': expected a string or a list with one assistant message, got null")
    src = write_jsonl(tmp_path / "g.jsonl", [{"messages": [USER, "oops"]}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: field 'messages[1]': expected an object with 'role' and 'content', got string")


def test_empty_response(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, {"role": "assistant", "content": "  \n"}]}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: field 'messages[1].content': empty response; expected non-blank text")
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": ""}])
    assert load_error(src, "preference") == f"{src}, line 1: field 'rejected': empty response; expected non-blank text"


def test_conversation_must_end_with_assistant_for_sft(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, ASSISTANT]}, {"messages": [ASSISTANT, USER]}])
    assert load_error(src, "sft") == (
        f"{src}, line 2: field 'messages': must end with an assistant turn (the response to train on); "
        f"its last turn is 'user'")


def test_prompt_must_end_with_user(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": [USER, ASSISTANT]}])
    assert load_error(src, "prompt") == (
        f"{src}, line 1: field 'prompt': must end with a user turn (the model answers it); "
        f"its last turn is 'assistant'")


def test_unknown_role(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "human", "content": "hi"}, ASSISTANT]}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: field 'messages[0].role': unknown role 'human'; expected one of 'system', 'user', 'assistant'")


def test_mixed_formats(tmp_path):
    rows = [{"messages": [USER, ASSISTANT]}] * 6 + [{"prompt": "a", "completion": "b"}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    assert load_error(src, "sft") == (
        f"{src}, line 7: mixed formats: this row has the columns of format 'prompt_completion' but line 1 is format "
        f"'messages'; a dataset must use one format throughout (or set data.format to choose the columns to read)")


def test_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n\n" + '{"prompt": "b"\n' + "[1]\n")
    assert load_error(str(path), "prompt") == f"{path}, line 3: invalid JSON: Expecting ',' delimiter (column 15)"
    rows, report = load(str(path), "prompt", skip_bad_rows=True)
    assert len(rows) == 1
    assert report.bad_rows == [(3, f"{path}, line 3: invalid JSON: Expecting ',' delimiter (column 15)"),
                               (4, f"{path}, line 4: expected a JSON object, got list")]


def test_invalid_utf8_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert load_error(str(path), "prompt") == f"{path}, line 2: not valid UTF-8 (invalid start byte at byte 12)"


def test_no_recognised_columns(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "The sky is blue."}])
    assert load_error(src, "sft") == (
        f"{src}, line 1: no recognised columns (found 'text'); expected 'messages', 'prompt'+'completion', "
        f"'prompt'+'chosen'+'rejected', 'chosen'+'rejected', or 'prompt'")


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    assert load_error(str(path), "sft") == (
        f"{path}: unknown file extension '.txt'; expected one of .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv "
        f"(or a hub dataset id, or builtin:<kind>:<split>)")
    missing = tmp_path / "nope.jsonl"
    assert load_error(str(missing), "sft") == f"{missing}: file not found (looked for {missing.resolve()})"


def test_empty_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    assert load_error(str(path), "sft") == f"{path}: the dataset is empty (no rows)"
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,completion\n")
    assert load_error(str(csv_path), "sft") == f"{csv_path}: the dataset is empty (no rows)"


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": ""}] * 2)
    assert load_error(src, "sft", skip_bad_rows=True) == (
        f"{src}: no usable rows: all 2 rows are bad; first: {src}, line 1: field 'completion': empty response; "
        f"expected non-blank text")


def test_format_that_cannot_serve_the_purpose(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}])
    assert load_error(src, "sft") == (
        f"{src}: format 'prompt_only' (detected from line 1) cannot be used for purpose 'sft'; "
        f"it needs one of: messages, prompt_completion, preference, hh")
    assert load_error(src, "preference", format="messages") == (
        f"{src}: format 'messages' (set by data.format) cannot be used for purpose 'preference'; "
        f"it needs one of: preference, hh")


def test_plain_string_pairs_without_prompt_are_rejected_with_a_hint(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'chosen': expected Anthropic-HH text starting with '\\n\\nHuman:' "
        f"(for plain-string preference pairs add a 'prompt' column)")


def test_implicit_preference_must_differ_only_in_the_last_turn(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{
        "chosen": [USER, ASSISTANT, {"role": "user", "content": "x"}, ASSISTANT],
        "rejected": [USER, {"role": "assistant", "content": "other"}, {"role": "user", "content": "x"}, ASSISTANT],
    }])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'rejected': 'chosen' and 'rejected' must be the same conversation up to one final "
        f"assistant turn, but they first differ at turn 2 (chosen has 4 turns, rejected 4)")


def test_implicit_preference_prompt_must_end_with_a_user_turn(tmp_path):
    other = {"role": "assistant", "content": "Another answer."}
    pair = {"chosen": [USER, ASSISTANT, ASSISTANT], "rejected": [USER, ASSISTANT, other]}
    src = write_jsonl(tmp_path / "d.jsonl", [pair])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'chosen': the shared prefix of 'chosen' and 'rejected' must end with a user turn; "
        f"its last turn is 'assistant'")


def test_hh_pairs_with_different_prompts_are_bad(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b",
                                              "rejected": "\n\nHuman: z\n\nAssistant: c"}])
    assert load_error(src, "preference") == (
        f"{src}, line 1: field 'rejected': its prompt (the turns before the last 'Assistant:') differs from the "
        f"prompt in 'chosen'; the two must differ only in the last Assistant turn")


def test_hub_id_offline_says_how_to_use_a_local_file(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    message = load_error("someorg/some-dataset:test", "sft")
    assert message.startswith(
        "someorg/some-dataset:test: cannot load hub dataset 'someorg/some-dataset' (split 'test'): the Hugging Face "
        "hub is offline (HF_HUB_OFFLINE=1) and the dataset is not in the local cache; download it elsewhere and "
        "point data.train/data.eval at a local .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv file or dataset "
        "folder (no local file ")


# --- skipping, limits, config, fingerprint ---------------------------------------------------------------


def test_skip_bad_rows_counts_and_reports_each_one(tmp_path):
    good = {"messages": [USER, ASSISTANT]}
    rows = [good, {"messages": [USER]}, good, {"prompt": "a", "completion": "b"}, good]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, report = load(src, "sft", skip_bad_rows=True)
    assert kept == [good] * 3
    assert (report.rows_read, report.rows_kept) == (5, 3)
    assert [number for number, _ in report.bad_rows] == [2, 4]
    assert report.bad_rows[1][1].startswith(f"{src}, line 4: mixed formats:")
    assert report.summary().startswith(f"{src}: 3 rows kept of 5 read (format messages); 2 bad rows skipped, first: ")


def test_max_rows_keeps_the_first_valid_rows_and_still_validates_all(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(5)] + [{"prompt": "x", "completion": ""}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, report = load(src, "sft", max_rows=2, skip_bad_rows=True)
    assert [r["messages"][0]["content"] for r in kept] == ["p0", "p1"]
    assert (report.rows_read, report.rows_kept, len(report.bad_rows)) == (6, 2, 1)
    with pytest.raises(DataError, match=re.escape(f"{src}, line 6: field 'completion': empty response")):
        load(src, "sft", max_rows=2)


def test_a_list_of_sources_is_mixed_row_by_row_each_in_its_own_format(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    chats = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "c0"}, ASSISTANT]}])
    rows, report = load([questions, chats], "prompt")
    assert [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][0]["content"] for r in rows] == [
        "q0", "c0", "q1", "q2"]  # the shorter source drops out once it has run out
    assert (report.source, report.rows_read, report.rows_kept) == (f"{questions} + {chats}", 4, 4)
    assert report.format == "prompt_only, messages"
    # max_rows keeps the first rows of the mix: an even share of each source
    mixed, _ = load([questions, questions], "prompt", max_rows=3)
    assert [r["prompt"] for r in mixed] == ["q0", "q0", "q1"]


def test_a_bad_row_in_a_mix_is_named_by_its_own_source(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "fine"}])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": ""}])
    assert load_error([good, bad], "prompt").startswith(f"{bad}, line 2: ")
    rows, report = load([good, bad], "prompt", skip_bad_rows=True)
    assert len(rows) == 2 and report.bad_rows[0][1].startswith(f"{bad}, line 2: ")
    assert report.summary().startswith(f"{good} + {bad}: 2 rows kept of 3 read (format prompt_only); 1 bad rows ")


def test_a_mix_of_sources_from_yaml_and_from_an_override(tmp_path):
    config_file = tmp_path / "ppo.yaml"
    config_file.write_text("stage: ppo\ndata:\n  train: [builtin:prompts:train, builtin:prompts:rl]\n")
    cfg = load_config(PPOConfig, config_file)
    assert cfg.data.train == ["builtin:prompts:train", "builtin:prompts:rl"]
    cfg = load_config(PPOConfig, config_file, ["data.train=[a.jsonl, b.jsonl]"])
    assert cfg.data.train == ["a.jsonl", "b.jsonl"]
    with pytest.raises(ConfigError, match=re.escape("ppo.yaml: data: data.train is an empty list: name at least one")):
        load_config(PPOConfig, config_file, ["data.train=[]"])
    rows, report = load_rows(["builtin:prompts:train", "builtin:prompts:rl"], "prompt", DataConfig(builtin_size=3))
    assert len(rows) == 6 and report.source == "builtin:prompts:train + builtin:prompts:rl"
    assert rows[0::2] == load("builtin:prompts:train", "prompt", builtin_size=3)[0]
    assert rows[1::2] == load("builtin:prompts:rl", "prompt", builtin_size=3)[0]


def test_data_config_rejects_bad_values():
    with pytest.raises(DataError, match=re.escape("data.max_rows must be a positive integer or null, got 0")):
        DataConfig(max_rows=0)
    with pytest.raises(DataError, match=re.escape("data.format must be one of auto, messages, prompt_completion, "
                                                  "preference, prompt_only, hh; got 'chat'")):
        DataConfig(format="chat")
    purpose_error = "unknown data purpose 'rl'; expected one of sft, preference, prompt"
    with pytest.raises(DataError, match=re.escape(purpose_error)):
        load_rows("x.jsonl", "rl", DataConfig())


def test_data_fingerprint_is_canonical_and_content_sensitive():
    a = [{"prompt": "x", "chosen": "y"}, {"prompt": "z", "chosen": "w"}]
    same_keys_reordered = [{"chosen": "y", "prompt": "x"}, {"chosen": "w", "prompt": "z"}]
    fingerprint = data_fingerprint(a)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert data_fingerprint(same_keys_reordered) == fingerprint
    assert data_fingerprint(list(reversed(a))) != fingerprint
    assert data_fingerprint([{"prompt": "x", "chosen": "y!"}, a[1]]) != fingerprint


# --- builtin generator (reward.instructions) ------------------------------------------------------------


def test_builtin_source_must_name_kind_and_split():
    assert load_error("builtin:sft", "sft") == "builtin:sft: expected builtin:<kind>:<split>, e.g. builtin:sft:train"


def test_builtin_generator_errors_name_the_source():
    # the generator's own ValueError (unknown kind/split) comes back as a DataError prefixed by the source
    assert load_error("builtin:nope:train", "sft").startswith("builtin:nope:train: unknown dataset kind 'nope'")
    assert load_error("builtin:sft:nope", "sft").startswith("builtin:sft:nope: unknown split 'nope'")


def test_builtin_sft_pairs_and_prompts_load_and_are_deterministic():
    rows, report = load("builtin:sft:train", "sft", builtin_size=8, seed=3)
    assert (report.rows_read, report.rows_kept, report.bad_rows, report.format) == (8, 8, [], "messages")
    for row in rows:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].strip()
        assert isinstance(json.loads(row["constraints"]), (list, dict))
    again, _ = load("builtin:sft:train", "sft", builtin_size=8, seed=3)
    other_seed, _ = load("builtin:sft:train", "sft", builtin_size=8, seed=4)
    assert data_fingerprint(again) == data_fingerprint(rows) != data_fingerprint(other_seed)

    pairs, report = load("builtin:pairs:train", "preference", builtin_size=8)
    assert report.format == "preference" and len(pairs) == 8
    for pair in pairs:
        assert pair["prompt"][-1]["role"] == "user"
        assert isinstance(pair["chosen"], str) and isinstance(pair["rejected"], str)
        assert pair["chosen"] != pair["rejected"]
        assert "constraints" in pair and "pair_type" in pair

    prompts, report = load("builtin:prompts:train", "prompt", builtin_size=8)
    assert report.format == "prompt_only" and len(prompts) == 8
    assert all(p["prompt"][-1]["role"] == "user" and "constraints" in p for p in prompts)


def test_builtin_unseen_and_validation_splits_load_as_prompts():
    for source in ("builtin:unseen:heldout", "builtin:unseen:validation", "builtin:prompts:validation"):
        rows, report = load(source, "prompt", builtin_size=6)
        assert report.format == "prompt_only" and len(rows) == 6, source
        assert all(row["prompt"][-1]["role"] == "user" and "constraints" in row for row in rows)
    assert any('"align:' in row["constraints"] for row in load("builtin:unseen:heldout", "prompt", builtin_size=6)[0])


def test_heldout_types_reach_the_builtin_generator():
    def types(rows: list[dict]) -> set[str]:
        return {c["type"] for row in rows for c in json.loads(row["constraints"])}

    held = ["punctuation:no_comma", "startend:quotation"]
    assert set(held) <= types(load("builtin:sft:train", "sft", builtin_size=150)[0])
    assert not set(held) & types(load("builtin:sft:train", "sft", builtin_size=150, heldout_types=held)[0])
    unseen, _ = load("builtin:unseen:heldout", "prompt", builtin_size=150, heldout_types=held)
    assert set(held) <= types(unseen)


def test_heldout_types_are_validated_when_the_config_is_made():
    with pytest.raises(DataError) as info:
        DataConfig(heldout_types=["punctuation:no_coma"])
    message = str(info.value)
    assert message.startswith("data.heldout_types: heldout_types has unknown or untrained type ids "
                              "'punctuation:no_coma'; valid ids (the trained types): keywords:existence, ")
    assert "punctuation:no_comma" in message and "align:" not in message
    with pytest.raises(DataError, match="^data.heldout_types: heldout_types must be a list of constraint type ids"):
        DataConfig(heldout_types="punctuation:no_comma")  # type: ignore[arg-type]
    assert DataConfig(heldout_types=["punctuation:no_comma"]).heldout_types == ["punctuation:no_comma"]


# --- real data -------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HH_TEST_FILE.exists(), reason=f"shared HH-RLHF data not present at {HH_TEST_FILE}")
def test_real_anthropic_hh_loads_as_preference_pairs():
    source = str(HH_TEST_FILE)
    # the raw file has a few malformed pairs; strict loading stops at the first (an empty chosen response)
    assert load_error(source, "preference") == (
        f"{source}, line 87: field 'chosen': empty response after the last 'Assistant:'; expected non-blank text")
    rows, report = load(source, "preference", skip_bad_rows=True)
    assert report.format == "hh"
    assert (report.rows_read, report.rows_kept) == (2312, 2303)
    # 4 empty chosen responses, 5 pairs whose prompts differ (e.g. a turn glued on without "\n\nHuman:")
    assert [n for n, _ in report.bad_rows] == [87, 517, 926, 1104, 1255, 1689, 1951, 1953, 2037]
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
        assert all(m["role"] in ("user", "assistant") for m in row["prompt"])
        assert row["chosen"].strip() and row["rejected"].strip()
    first = rows[0]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert len(first["prompt"]) == 5  # Human, Assistant, Human, Assistant, Human
    assert first["chosen"].startswith("No, sorry!")
    multi_turn = sum(len(r["prompt"]) > 1 for r in rows)
    assert multi_turn > len(rows) // 3
    sft_rows, _ = load(source, "sft", skip_bad_rows=True, max_rows=10)
    assert sft_rows[0]["messages"] == first["prompt"] + [{"role": "assistant", "content": first["chosen"]}]
