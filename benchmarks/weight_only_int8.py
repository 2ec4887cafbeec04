"""Weight-only int8 products (`torch._weight_int8pack_mm`) against the engine's bf16 ones, on SmolLM2-135M's weights.

    python benchmarks/weight_only_int8.py                    # rows 4, 16 and 64
    python benchmarks/weight_only_int8.py --rows 1 4 8 16 --repeats 100

A decode step of the generation engine runs five products per layer shape (fused QKV, the attention output, fused
gate/up, down; 30 layers) and the LM head once. At few rows a step reads every weight once, so halving the bytes
read (int8 weights, one bf16 scale per output row) could halve the products' time; at many rows the products are
bound by arithmetic instead. For each row count: the milliseconds of each product (median of `--repeats`, the two
sides taking turns), one decode step's products in all (each layer shape x 30, plus the head), and the int8
product's largest relative error against bf16 on the model's real weights. Prints a markdown table. Timings, not
tests: run it alone on the machine (docs/BENCHMARK.md, "Weight-only int8 products").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable (benchmarks/, align/, reward/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402

from align.engine import LAYER_PARAMETERS, Projection  # noqa: E402
from align.models import resolve_model_path  # noqa: E402
from benchmarks.measure import median_ms_in_turns  # noqa: E402


def decode_products(path: str) -> dict[str, tuple[torch.Tensor, int]]:
    """The engine's product weights of layer 0 (every layer has the same shapes), fused as `align.engine._layer`
    fuses them, and the LM head, in bf16, each with how many times a decode step runs it. Only these tensors are
    read from the model's safetensors file."""
    weights = next(iter(sorted(Path(path).glob("*.safetensors"))))
    with safe_open(str(weights), framework="pt") as model_file:
        names = set(model_file.keys())

        def read(name: str) -> torch.Tensor:
            return model_file.get_tensor(name).to(torch.bfloat16)

        w = {role: read(f"model.layers.0.{LAYER_PARAMETERS[role]}") for role in ("q", "k", "v", "out", "gate", "up",
                                                                                   "down")}
        head = read("lm_head.weight" if "lm_head.weight" in names else "model.embed_tokens.weight")  # tied or not
    layers = sum(1 for name in names if name.endswith(LAYER_PARAMETERS["q"]))
    return {
        "qkv": (torch.cat([w["q"], w["k"], w["v"]]), layers),
        "attention output": (w["out"], layers),
        "gate/up": (torch.cat([w["gate"], w["up"]]), layers),
        "down": (w["down"], layers),
        "LM head": (head, 1),
    }


def quantise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ~= q * scale, q in [-127, 127]; returns (q [N, K] int8, scale [N] bf16)."""
    scale = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127
    q = (weight.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.to(torch.bfloat16)


def measure(products: dict, rows: int, repeats: int) -> list[tuple[str, float, float, float, int]]:
    """(product, bf16 ms, int8 ms, int8's largest relative error, runs per step) for `rows` rows of input."""
    torch.manual_seed(0)
    results = []
    for name, (weight, per_step) in products.items():
        x = torch.randn(rows, weight.shape[1], dtype=torch.bfloat16)
        q, scale = quantise(weight)
        engine_product = Projection(weight)  # bf16, oneDNN's packed layout (the engine's before its own kernel)
        exact = F.linear(x, weight).float()
        approx = torch._weight_int8pack_mm(x, q, scale).float()
        error = ((approx - exact).abs().amax() / exact.abs().amax()).item()
        timed = median_ms_in_turns({"bf16": lambda: engine_product(x),
                                    "int8": lambda: torch._weight_int8pack_mm(x, q, scale)}, repeats, warmup=5)
        bf16, int8 = timed["bf16"], timed["int8"]
        results.append((name, bf16, int8, error, per_step))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="alias or model directory")
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16, 64], help="decode rows (the products' M)")
    parser.add_argument("--repeats", type=int, default=50, help="timings of each product (the median is kept)")
    args = parser.parse_args()
    products = decode_products(resolve_model_path(args.model))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}\n")
    print("| rows | product | N x K | runs a step | engine bf16 ms | int8 ms | int8 / bf16 "
          "| int8's largest rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        step_bf16 = step_int8 = 0.0
        for name, bf16, int8, error, per_step in measure(products, rows, args.repeats):
            n, k = products[name][0].shape
            print(f"| {rows} | {name} | {n} x {k} | {per_step} | {bf16:.3f} | {int8:.3f} | {int8 / bf16:.2f} | "
                  f"{error:.4f} |")
            step_bf16, step_int8 = step_bf16 + bf16 * per_step, step_int8 + int8 * per_step
        print(f"| {rows} | **a decode step's products** | | | **{step_bf16:.1f}** | **{step_int8:.1f}** | "
              f"**{step_int8 / step_bf16:.2f}** | |")


if __name__ == "__main__":
    main()
