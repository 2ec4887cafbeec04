"""The SFT stage end to end on `tiny-random`: stage directory, reload, EOS learnt, W&B offline run read back,
skip when finished, refusal on a changed config."""

import json
from pathlib import Path

import pytest
import torch

from align.cli import main
from align.config import load_config
from align.sft import SFTConfig, train

REPO = Path(__file__).resolve().parents[2]


def tiny_sft_config(tmp_path, train_file, eval_file, *overrides):
    return load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml", [
        f"run.root={tmp_path / 'runs'}", f"data.train={train_file}", f"data.eval={eval_file}",
        "data.max_rows=null", *overrides,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One SFT run, long enough for the tiny model to learn the answers and the end-of-turn token."""
    from tests.conftest import arithmetic_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("sft")
    train_file = write_jsonl(tmp / "train.jsonl", arithmetic_rows(64, seed=0))
    eval_file = write_jsonl(tmp / "eval.jsonl", arithmetic_rows(16, seed=1))
    cfg = tiny_sft_config(
        tmp, train_file, eval_file,
        "train.learning_rate=3e-3", "train.epochs=20", "train.pack_length=256", "train.grad_accum=1",
        "train.eval_every=100", "train.save_every=100", "train.log_every=10", "train.eos_check_prompts=4",
        "tracking.backend=wandb", "tracking.mode=offline",
    )
    return cfg, train(cfg)


def test_stage_directory_holds_model_config_metrics_and_manifest(trained):
    cfg, out = trained
    assert out == Path(cfg.run.root) / "tiny" / "sft"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.jsonl",
                 "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["status"] == "complete"
    assert manifest["base_model"] == "tiny-random" and len(manifest["data_fingerprint"]) == 16
    assert manifest["versions"]["torch"].startswith("2.") and manifest["started"] <= manifest["finished"]
    assert manifest["data"]["rows"] == 64 and manifest["data"]["truncated"] == 0


def test_heldout_loss_falls_and_the_model_learns_to_stop(trained):
    _, out = trained
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["sft/eval/loss"] < 0.5 * metrics["sft/eval/loss_before"]
    assert metrics["sft/eos_rate"] == 1.0


def test_saved_model_reloads_with_no_arguments_and_generation_ends_with_eos(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 7 plus 5? Answer in lowercase words."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    assert tokenizer.eos_token_id in new
    assert tokenizer.decode(new, skip_special_tokens=True).startswith("the answer is")


def test_wandb_offline_run_is_read_back_with_the_logged_values(trained):
    from align.tracking import read_offline_run

    cfg, out = trained
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["job_type"] == "sft" and run["group"] == "tiny"
    assert run["config"]["train"]["learning_rate"] == 3e-3
    on_disk = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses_on_disk = {r["step"]: r["sft/loss"] for r in on_disk if "sft/loss" in r}
    losses_in_wandb = {r["_step"]: r["sft/loss"] for r in run["history"] if "sft/loss" in r}
    assert len(losses_in_wandb) >= 5 and losses_in_wandb == pytest.approx(losses_on_disk)
    assert {"sft/learning_rate", "sft/grad_norm", "sft/tokens_per_s"} <= set().union(*run["history"])
    assert run["tables"]["sft/samples"][0]["columns"] == ["prompt", "completion"]


def test_rerun_skips_a_finished_stage_and_refuses_a_changed_config(trained, capsys):
    cfg, out = trained
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert train(cfg) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert "already complete with this config; skipping" in capsys.readouterr().out
    config_file = out.parent / "changed.yaml"
    config_file.write_text((out / "config.yaml").read_text())
    code = main(["sft", str(config_file), "train.learning_rate=1e-3"])
    assert code == 2
    assert ("stage 'sft' in " + str(out) + " was run with a different config (changed: train.learning_rate); "
            "rerun with --restart") in capsys.readouterr().err


def test_nan_loss_stops_the_stage_and_saves_nothing(tmp_path, arithmetic_data):
    cfg = tiny_sft_config(tmp_path, *arithmetic_data, "train.learning_rate=1e30", "train.max_grad_norm=1e30",
                          "train.precision=fp32", "train.epochs=20")
    stopped = r"sft: (loss|gradient norm|parameter \S+) is (nan|inf|not finite) at step \d+; stopped before saving"
    with pytest.raises(FloatingPointError, match=stopped):
        train(cfg)
    out = Path(cfg.run.root) / "tiny" / "sft"
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    assert not (out / "model.safetensors").exists()
    from safetensors.torch import load_file

    for checkpoint in (out / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "tensors.safetensors").values())


def test_lora_sft_merges_adapters_into_the_saved_model(tmp_path, arithmetic_data):
    cfg = tiny_sft_config(tmp_path, *arithmetic_data, "model.lora.enabled=true", "train.max_steps=2",
                          "train.eos_check_prompts=0")
    out = train(cfg)
    assert not (out / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"


def test_self_distilled_answers_are_kept_only_when_verified_finished_and_not_looping():
    """Answers to "in lowercase, no commas": the first follows both and ended; the second has a comma; the third
    never ended; the fourth loops. Only the first (and, if two pass, the shorter one) becomes a conversation."""
    import json

    from align.self_distill import select

    row = {"prompt": [{"role": "user", "content": "Describe tea in lowercase, without commas."}],
           "constraints": json.dumps([{"type": "change_case:english_lowercase"}, {"type": "punctuation:no_comma"}])}
    texts = ["tea is a warm drink.", "tea, a warm drink.", "tea is warm", "tea is a warm drink " * 8]
    conversations = select([row], texts, [True, True, False, True], samples=4, keep=2)
    assert [c["messages"][-1]["content"] for c in conversations] == ["tea is a warm drink."]
    assert conversations[0]["messages"][0] == row["prompt"][0] and conversations[0]["constraints"] == row["constraints"]


def test_sft_trains_on_the_models_own_verified_answers_and_caches_them(tmp_path):
    cfg = load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml", [
        f"run.root={tmp_path}", "train.max_steps=1", "train.eos_check_prompts=0", "self_distill.enabled=true",
        "self_distill.max_prompts=4", "self_distill.samples_per_prompt=2", "self_distill.max_new_tokens=8"])
    out = train(cfg)
    cache = out / "self_distilled.jsonl"
    assert cache.is_file()  # a tiny random model's answers rarely pass: the file may be empty, but it is written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["self_distilled"] == len(cache.read_text().splitlines())


def test_negatives_that_repeat_a_line_teach_the_model_not_to_repeat_it(tmp_path, arithmetic_data):
    """`train.repeated_line_negatives`: the same SFT run with every conversation's negative pushes the repeats of
    a held-out answer's line down, far below where the run without negatives leaves them."""
    from transformers import AutoModelForCausalLM

    from align.batching import IGNORE, tokenize_conversation
    from align.models import load_tokenizer
    from align.sft import repetition_negatives
    from tests.conftest import arithmetic_rows

    settings = ["train.learning_rate=3e-3", "train.epochs=6", "train.pack_length=256", "train.grad_accum=1",
                "train.eos_check_prompts=0", "train.precision=fp32"]
    plain = train(tiny_sft_config(tmp_path / "plain", *arithmetic_data, *settings))
    negatives = train(tiny_sft_config(tmp_path / "negatives", *arithmetic_data, *settings,
                                      "train.repeated_line_negatives=1.0"))
    tokenizer = load_tokenizer(str(plain))
    held_out = [tokenize_conversation(tokenizer, row["messages"]) for row in arithmetic_rows(8, seed=5)]
    probes = repetition_negatives(held_out, tokenizer, 1.0, 0, 512)

    def repeat_probability(model_dir) -> float:
        model, total, count = AutoModelForCausalLM.from_pretrained(model_dir).eval(), 0.0, 0
        with torch.no_grad():
            for probe in probes:
                probs = model(input_ids=torch.tensor([probe.input_ids])).logits[0, :-1].softmax(-1)
                marked = [(t, u) for t, u in enumerate(probe.unlikely[1:]) if u != IGNORE]
                total, count = total + sum(float(probs[t, u]) for t, u in marked), count + len(marked)
        return total / count

    with_negatives, without = repeat_probability(negatives), repeat_probability(plain)
    assert with_negatives < 0.5 * without, (with_negatives, without)


def test_a_share_of_negatives_outside_zero_to_one_is_refused_when_the_config_is_read():
    from align.config import ConfigError

    with pytest.raises(ConfigError, match=r"sft-tiny.yaml: train: train.repeated_line_negatives is a share of the "
                                          r"training conversations, between 0 and 1, got 1.5"):
        load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml", ["train.repeated_line_negatives=1.5"])
    assert load_config(SFTConfig, REPO / "configs" / "sft-tiny.yaml",
                       ["train.repeated_line_negatives=1"]).train.repeated_line_negatives == 1.0
