"""`align chat` through the real command line: one answer (the `tiny-random` alias), a file of prompts and a
conversation through a pipe (a model directory whose answers depend on the conversation). Each answer must be the
one the generation engine gives for that conversation (greedy, as `align eval` decodes); a bad model path is one of
the user errors of tests/align/test_cli_errors.py."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.chat import Decoding, converse
from tests.conftest import PINNED, conversational_tiny_model, pinned_and_main_snapshots, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TOKENS = 6


def chat(model, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "align", "chat", str(model), "--max-new-tokens", str(TOKENS),
                           *map(str, args)], cwd=REPO, input=stdin, capture_output=True, text=True,
                          env={**os.environ}, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model whose greedy answers depend on the conversation (tests.conftest.conversational_tiny_model)."""
    return conversational_tiny_model(tmp_path_factory.mktemp("chat") / "model")


def load(model: str):
    """The engine `align chat` answers with, loaded the same way (threads included) in this process."""
    from align.eval import EvalConfig
    from align.rollout import load_generator
    from align.runtime import set_threads

    set_threads(None)
    return load_generator(model, EvalConfig().precision, EvalConfig().generation)


@pytest.fixture(scope="module")
def generator(model_dir):
    return load(str(model_dir))


def answer(generator, prompt) -> str:
    return generator.generate([prompt], max_new_tokens=TOKENS).texts[0]


def test_one_prompt_prints_its_answer_from_an_alias():
    assert chat("tiny-random", "--prompt", "Name a colour.").stdout == answer(load("tiny-random"),
                                                                              "Name a colour.") + "\n"


def test_a_jsonl_file_of_prompts_writes_one_answer_line_each(model_dir, generator, tmp_path):
    conversation = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Name a fruit."}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Name a colour."}, {"prompt": conversation}])
    out = tmp_path / "answers.jsonl"
    chat(model_dir, "--prompts", prompts, "--out", out)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    generations = generator.generate(["Name a colour.", conversation], max_new_tokens=TOKENS)
    assert written == [{"prompt": "Name a colour.", "completion": generations.texts[0],
                        "finished": generations.finished[0]},
                       {"prompt": conversation, "completion": generations.texts[1],
                        "finished": generations.finished[1]}]


def test_a_txt_file_has_one_prompt_per_line_and_answers_go_to_stdout(model_dir, generator, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\n\nName a fruit.\n")
    lines = [json.loads(line) for line in chat(model_dir, "--prompts", prompts).stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["Name a colour.", "Name a fruit."]
    assert [line["completion"] for line in lines] == [answer(generator, "Name a colour."),
                                                       answer(generator, "Name a fruit.")]


def test_a_hub_id_answers_from_the_snapshot_its_revision_names(model_dir, generator, tmp_path, monkeypatch):
    """`--revision` pins a hub id to a snapshot other than the cache's `main` (the tokenizer and the weights: both
    snapshots hold their own), as `model.revision` does for the stages and `revision` for `align eval`."""
    pinned_and_main_snapshots(tmp_path / "hub", monkeypatch)  # PINNED holds model_dir's weights, MAIN tiny-random's
    prompt = "Name a colour."
    pinned_answer, main_answer = answer(generator, prompt), answer(load("tiny-random"), prompt)
    assert pinned_answer != main_answer  # the two snapshots answer differently
    assert chat("tiny/llama", "--revision", PINNED, "--prompt", prompt).stdout == pinned_answer + "\n"
    assert chat("tiny/llama", "--prompt", prompt).stdout == main_answer + "\n"


def test_a_conversation_through_a_pipe_keeps_its_history_and_ends_at_an_empty_line(model_dir, generator):
    first = answer(generator, [{"role": "user", "content": "hi"}])
    second = answer(generator, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                                {"role": "user", "content": "bye"}])
    without_history = answer(generator, [{"role": "user", "content": "bye"}])
    assert second != without_history  # the model's answer depends on the history, so the check below means it
    assert chat(model_dir, stdin="hi\nbye\n\nnot read\n").stdout == f"{first}\n{second}\n"


def test_a_conversation_ends_at_the_end_of_its_input(generator):
    out = io.StringIO()
    history = converse(generator, Decoding(TOKENS), io.StringIO("hi"), out, interactive=False)
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hi"
    assert out.getvalue() == history[1]["content"] + "\n"
