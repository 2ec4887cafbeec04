"""How likely each model is to open its answer with a given token, on the built-in prompts that ask for one
constraint type: asked in the prompts' own wording, and again with that constraint asked in another wording. Greedy
decoding writes the token wherever it is the most likely first token; a loop that opens an answer starts there
(docs/RESULTS.md, "Negatives that loop the way the answers loop"). The prompts are the validation split's (held-out
wordings), or with `--split rl` the RL-only split's, which tracks validation without looking at it (docs/RESULTS.md,
"RL prompts the SFT model has never seen").

    python scripts/first_token.py smollm2-135m-instruct runs/default/sft runs/default/ppo \
        --type length_constraints:number_paragraphs --token '***' \
        --wording 'Write exactly {num_paragraphs} paragraphs and separate them with ***.'
"""

from __future__ import annotations

import argparse
import json

import torch

from align.models import load_tokenizer, resolve_model_path
from reward import instruction_bank as bank
from reward.instructions import DEFAULT_SIZES, build_dataset, content_split


def prompts_asking(type_id: str, wording: str | None, n: int, split: str = "validation") -> list[str]:
    """The texts of the first `n` prompts of `split` that ask for `type_id`; with `wording`, that constraint's phrase
    is replaced by `wording` filled with the constraint's arguments (types whose arguments are numbers or strings)."""
    texts = []
    for row in build_dataset("prompts", split, n=n):
        constraint = next((c for c in json.loads(row["constraints"]) if c["type"] == type_id), None)
        if constraint is None:
            continue
        phrases = [p.format(**constraint) for p in bank.PHRASINGS[content_split(split)][type_id]]
        phrase = next((p for p in phrases if p in row["prompt"]), None)
        if phrase is None:
            raise SystemExit(f"a prompt does not use a {split} phrasing of {type_id}: {row['prompt']!r}")
        texts.append(row["prompt"] if wording is None else row["prompt"].replace(phrase, wording.format(**constraint)))
    return texts


def load(model_name: str):
    """(model in fp32, eval mode; its tokenizer)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_name)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path)


def first_token(model, tokenizer, prompts: list[str], token: str) -> tuple[float, int]:
    """(mean probability of `token` as the answer's first token, prompts where it is the most likely one)."""
    token_id = tokenizer(token, add_special_tokens=False)["input_ids"][0]
    probabilities, most_likely = [], 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float()
        probabilities.append(logits.softmax(-1)[token_id].item())
        most_likely += int(logits.argmax() == token_id)
    return sum(probabilities) / len(probabilities), most_likely


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="aliases, stage directories or hub ids")
    parser.add_argument("--type", required=True, help="a trained constraint type id")
    parser.add_argument("--token", required=True, help="text whose first token is looked at")
    parser.add_argument("--wording", help="another phrasing of the type, with its arguments as {fields}")
    parser.add_argument("--split", choices=list(DEFAULT_SIZES["prompts"]), default="validation",
                        help="the built-in prompts' split")
    parser.add_argument("--prompts", type=int, default=500, help="prompts of the split to pick from")
    args = parser.parse_args()
    wordings = {f"{args.split} wording": None, **({"--wording": args.wording} if args.wording else {})}
    prompt_sets = [prompts_asking(args.type, wording, args.prompts, args.split) for wording in wordings.values()]
    print(f"| model | {' | '.join(f'{w}: mean p, most likely' for w in wordings)} |")
    for model_name in args.models:
        model, tokenizer = load(model_name)
        cells = []
        for prompts in prompt_sets:
            mean, most_likely = first_token(model, tokenizer, prompts, args.token)
            cells.append(f"{mean:.2f}, {most_likely} of {len(prompts)}")
        print(f"| {model_name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
