"""What a cell writes: completions for a fixed, seeded sample of held-out prompts (`eval.generate`).

Batched generation with the KV cache and left padding (prompts sorted by length, so a batch pads little),
the chat template for conversational prompts (the same rendering and truncation training uses), greedy at
temperature 0 or seeded sampling. Per prompt it records the text, token and character length, why it
stopped (`eos` or `length`: the max_new_tokens cap) and a repetition measure, seq-rep-4 (Welleck et al.
2019): the share of the answer's token 4-grams that repeat an earlier 4-gram of the same answer (0 = none,
near 1 = the same phrase over and over).

Generation never changes training: it runs under no_grad in eval mode with the RNGs forked, so a cell
trains to exactly the same numbers with or without it. LoRA is merged into the weights for the final
generation only (after the adapter is saved): merging mid-training and unmerging would not give back the
exact float weights. On a GPU with vLLM installed, a non-builtin model's final generation goes through vLLM
(its LoRA support serves the saved adapter over the base); any vLLM error falls back to this path.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from dataclasses import dataclass

import torch

from ..errors import UserError

REPETITION_N = 4


def sample_prompts(n_heldout: int, k: int, seed: int) -> list[int]:
    """The held-out rows every cell of a matrix generates for: the same k indices for every cell."""
    return sorted(random.Random(f"generate/{seed}").sample(range(n_heldout), k))


def seq_rep(ids: list[int], n: int = REPETITION_N) -> float:
    """1 − distinct n-grams / n-grams within one answer (0 when it has fewer than n + 1 tokens)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0


def prompt_text(prompt) -> tuple[str, str | None]:
    """(plain text of the prompt, its messages as JSON or None): what judges and report.md show."""
    if isinstance(prompt, list):
        last = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), prompt[-1]["content"])
        return str(last), json.dumps(prompt, ensure_ascii=False)
    return prompt, None


def encode_prompts(rows: list[dict], tokenizer, prompt_budget: int) -> list[list[int]]:
    """Prompt token ids as training sees them: chat template for messages, BOS, the last prompt_budget tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for row in rows:
        text = row["prompt"]
        if isinstance(text, list):  # as inputs/tokenize.render does for training
            if not getattr(tokenizer, "chat_template", None):
                raise UserError(["eval.generate: conversational prompts need a tokenizer with a chat template"])
            text = tokenizer.apply_chat_template(text, tokenize=False, add_generation_prompt=True)
        ids = bos + tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append((ids or [tokenizer.eos_token_id or tokenizer.pad_token_id])[-prompt_budget:])
    return out


@dataclass
class Output:
    ids: list[int]  # generated tokens, EOS and what follows cut off
    finish: str  # "eos" or "length"


def _left_pad(batch: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_hf(
    model,
    prompts: list[list[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    device=None,
) -> list[Output]:
    """Batched `model.generate` with the KV cache over left-padded prompts, longest first; an out-of-memory
    error halves the batch. The RNG state around it is restored, so training that follows is unchanged."""
    from transformers import GenerationConfig

    device = device or next(model.parameters()).device
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p if temperature > 0 else None,
        top_k=0 if temperature > 0 else None,  # plain temperature / nucleus sampling, no hidden top-k
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Output | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        start = 0
        while start < len(order):
            idx = order[start : start + batch_size]
            ids, mask = _left_pad([prompts[i] for i in idx], pad_id, device)
            try:
                gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                torch.cuda.empty_cache()
                continue
            for row, i in zip(gen[:, ids.shape[1] :].tolist(), idx):
                cut = row.index(eos_id) if eos_id is not None and eos_id in row else None
                out[i] = Output(row[:cut] if cut is not None else row, "eos" if cut is not None else "length")
            start += len(idx)
    model.train(was_training)
    return out  # type: ignore[return-value]


def vllm_usable(device, builtin: bool) -> bool:
    """vLLM serves the final generation when it is installed, the cell is on a GPU and the model is a real
    checkpoint (vLLM loads weights from a directory or the hub, not from ablate's builtin configs)."""
    return device.type == "cuda" and not builtin and importlib.util.find_spec("vllm") is not None


def generate_vllm(model_path: str, adapter_dir: str, rank: int, prompts, *, eos_id, max_new_tokens, temperature,
                  top_p, seed, dtype: str) -> list[Output]:  # fmt: skip
    """The saved adapter served by vLLM over the base model (LoRARequest); one engine per call."""
    from vllm import LLM, SamplingParams  # type: ignore[import-not-found]
    from vllm.lora.request import LoRARequest  # type: ignore[import-not-found]

    llm = LLM(model=model_path, enable_lora=True, max_lora_rank=max(8, rank), dtype=dtype, seed=seed,
              gpu_memory_utilization=0.5, enforce_eager=True)  # fmt: skip
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    res = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], params, lora_request=LoRARequest("cell", 1, adapter_dir)
    )
    outs = []
    for r in res:
        ids = list(r.outputs[0].token_ids)
        cut = ids.index(eos_id) if eos_id is not None and eos_id in ids else None
        done = cut is not None or r.outputs[0].finish_reason == "stop"
        outs.append(Output(ids[:cut] if cut is not None else ids, "eos" if done else "length"))
    del llm
    return outs


class CellGeneration:
    """One cell's generations: the prompts, the settings, and the rows gathered at evals and at the end."""

    def __init__(self, cell, model_spec, heldout_rows: list[dict]):
        from ..inputs.models import load_tokenizer

        self.settings, self.cell, self.model_spec = cell.generate, cell, model_spec
        self.tok = load_tokenizer(model_spec)
        self.index = sample_prompts(len(heldout_rows), self.settings.prompts, self.settings.seed)
        chosen = [heldout_rows[i] for i in self.index]
        self.ids = encode_prompts(chosen, self.tok, cell.data.prompt_budget)
        self.texts = [prompt_text(r["prompt"]) for r in chosen]
        self.seconds, self.tokens, self.backend = 0.0, 0, "hf"

    @classmethod
    def maybe(cls, cell, model_spec, heldout_rows) -> CellGeneration | None:
        return cls(cell, model_spec, heldout_rows) if cell.generate is not None else None

    def run(self, model, device, step: int, final: bool, adapter_dir=None, merge=None) -> list[dict]:
        s = self.settings
        seed = s.seed * 1_000_003 + self.cell.seed  # the same stream for every configuration of a seed
        eos = self.tok.eos_token_id
        t0 = time.perf_counter()
        outs = None
        builtin = self.model_spec.path.startswith("builtin:")
        if final and adapter_dir is not None and vllm_usable(device, builtin):
            try:
                outs = generate_vllm(self.model_spec.path, str(adapter_dir), self.cell.rank, self.ids, eos_id=eos,
                                     max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                     seed=seed, dtype=self.model_spec.dtype)  # fmt: skip
                self.backend = "vllm"
            except Exception as e:  # noqa: BLE001 - vLLM is an accelerator, never a requirement
                self.backend = f"hf (vLLM failed: {type(e).__name__})"
        if outs is None:
            if final and merge is not None:
                model = merge()  # the adapter is saved; plain weights generate faster
            outs = generate_hf(model, self.ids, pad_id=self.tok.pad_token_id, eos_id=eos,
                               max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=seed,
                               batch_size=s.batch_size, device=device)  # fmt: skip
        self.seconds += time.perf_counter() - t0
        self.tokens += sum(len(o.ids) for o in outs)
        rows = []
        for j, (o, (text, messages)) in enumerate(zip(outs, self.texts)):
            answer = self.tok.decode(o.ids, skip_special_tokens=True)
            rows.append({"prompt_index": self.index[j], "prompt": text, "messages": messages, "text": answer,
                         "tokens": len(o.ids), "chars": len(answer), "finish": o.finish,
                         "repetition": seq_rep(o.ids), "step": step, "final": final})  # fmt: skip
        return rows

    def after_step(self, recipe, state) -> None:
        """At a held-out evaluation (every: eval), generate with the adapter as it is now."""
        if self.settings.every == "eval" and state.eval_log and state.eval_log[-1]["step"] == state.step:
            with recipe.route():  # in a pack, this cell's adapter for every row
                state.generations += self.run(recipe.model, recipe.device, state.step, final=False)

    def finish(self, recipe, state, staging) -> dict:
        """The final generation (after the adapter is saved); writes generations.parquet, returns summary fields."""
        import pandas as pd

        rows = state.generations + self.run(
            recipe.model, recipe.device, state.step, True, staging / "adapter", merge=recipe.merged
        )
        pd.DataFrame(rows).to_parquet(staging / "generations.parquet", index=False)
        return {
            "generation_seconds": self.seconds,
            "generated_tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else float("nan"),
            "generation_backend": self.backend,
        }
