"""Test-wide settings: no hub, offline W&B, deliberate threads, and shared tiny-model fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The `tiny-random` alias, built once into the user's align cache."""
    from align.models import resolve_model_path

    return Path(resolve_model_path("tiny-random"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from align.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversational_tiny_model(out: Path) -> Path:
    """`tiny-random` with every weight but the norms scaled by 16, saved with its tokenizer to `out`: its greedy
    answers depend on the prompt (the plain tiny model answers every prompt with the same newlines), so a lost turn
    of history or the wrong snapshot shows in what it says."""
    import torch
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer, resolve_model_path

    source = resolve_model_path("tiny-random")
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(16.0)
    model.save_pretrained(out)
    load_tokenizer(source).save_pretrained(out)
    return out


def hub_snapshots(cache: Path, monkeypatch, main: str) -> Path:
    """The snapshots folder of the hub id "tiny/llama" in a local Hugging Face cache at `cache`, laid out as the hub
    client lays it out, its `main` naming commit `main` (the caller writes the snapshots); the cache is the one the
    hub client and transformers read, in this process and in the processes it starts."""
    import huggingface_hub.constants

    repo = cache / "models--tiny--llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(main)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return repo / "snapshots"


PINNED, MAIN = "a" * 40, "b" * 40  # commit hashes (a hash of digits alone would read as a number in YAML)


def pinned_and_main_snapshots(cache: Path, monkeypatch) -> Path:
    """`hub_snapshots` holding two snapshots of "tiny/llama" that answer differently: commit MAIN (the cache's
    `main`) is `tiny-random`, commit PINNED the conversational tiny model. Returns the snapshots folder."""
    import shutil

    from align.models import resolve_model_path

    snapshots = hub_snapshots(cache, monkeypatch, main=MAIN)
    shutil.copytree(resolve_model_path("tiny-random"), snapshots / MAIN)
    conversational_tiny_model(snapshots / PINNED)
    return snapshots


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Tiny, learnable conversations ('what is a plus b?' -> 'the answer is c.') for end-to-end tests."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"messages": [
            {"role": "user", "content": f"What is {a} plus {b}? Answer in lowercase words."},
            {"role": "assistant", "content": f"the answer is {a + b}."},
        ]})
    return rows


@pytest.fixture
def arithmetic_data(tmp_path) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) of arithmetic conversations."""
    return (write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(64, seed=0)),
            write_jsonl(tmp_path / "eval.jsonl", arithmetic_rows(16, seed=1)))
