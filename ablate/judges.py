"""Judges: is a challenger's answer to a prompt better than the baseline's answer to the same prompt?

Each comparison gives the challenger an outcome: 1 win, 0.5 tie, 0 loss. Identical answers tie without
asking anyone.
- `builtin` (the builtin `letters` task): the task's truth is that preferred answers are written in the
  letters a–m. An answer scores the share of a–m letters among its non-space characters (a chosen
  held-out answer scores about `signal`, a rejected one about 1 − signal, bytes that are not letters 0);
  the higher score wins, equal scores tie.
- `{reward_model: DIR_OR_HUB_ID}`: a sequence-classification model with one output scores prompt + answer
  (through its chat template when it has one); the higher score wins. The scoring runs on a Ray worker
  (ablate/worker/reward.py), since the driver never loads torch.
- `{openai_compatible: {base_url, model}}`: an LLM behind any OpenAI-compatible /chat/completions endpoint
  is asked twice, once with each answer in position A (position swapping): the outcome is the mean of the
  two verdicts, so a judge that always says "A" gives ties. The key comes from the environment variable
  named by `api_key_env` (default OPENAI_API_KEY), never from the matrix. Each request is retried with
  backoff; a request that still fails (refused, timed out, unreadable) fails the judge step, which is then
  reported, never skipped.

This module is torch-free: it runs on the driver. Its checks run before training (matrix/plan.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .config import stable_hash
from .inputs.letters import FAVOURED
from .inputs.models import model_identity
from .schema import MatrixSpec, ModelSpec, OpenAIEndpoint, OpenAIJudge, RewardModelJudge

JUDGE_PROMPT = (
    "You compare two answers to the same instruction. Judge which answer follows the instruction better: "
    "helpful, correct and to the point; length alone is no merit.\n\n"
    "[Instruction]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Reply with exactly one word: A, B, or tie."
)
NO_RETRY = {400, 401, 403, 404, 422}  # the request itself is wrong: asking again cannot help


class JudgeFailed(Exception):
    """A judge could not give a verdict after its retries; the message says why (never the key)."""


# ----------------------------------------------------------------------------------------------- identity


def describe(judge) -> str:
    if judge == "builtin":
        return "builtin (share of a–m letters)"
    if isinstance(judge, RewardModelJudge):
        return f"reward model {judge.reward_model}"
    return f"LLM {judge.openai_compatible.model} at {judge.openai_compatible.base_url}"


def judge_info(spec: MatrixSpec) -> dict[str, Any] | None:
    """What plan.json records about the judge: its settings, a readable name, and the key that names its
    verdicts (settings + reward-model files + the generation settings, not the cells: those are in the files)."""
    j = spec.judge
    if j is None:
        return None
    ident: dict[str, Any] = {"judge": j if isinstance(j, str) else j.model_dump(mode="json")}
    if isinstance(j, RewardModelJudge):
        ident["model"] = model_identity(ModelSpec(path=j.reward_model, revision=j.revision))
        ident["judge"].pop("batch_size")  # how it is batched does not change a score beyond rounding
    if isinstance(j, OpenAIJudge):
        ident["judge"] = {k: ident["judge"]["openai_compatible"][k] for k in ("base_url", "model")}
    return {"spec": ident["judge"] if isinstance(j, str) else j.model_dump(mode="json"), "name": describe(j),
            "key": stable_hash(ident)}  # fmt: skip


# ----------------------------------------------------------------------------------------- checks (plan)


def check(spec: MatrixSpec, n_heldout: int | None) -> list[str]:
    """Generation and judge problems that can be known before training, each naming its field."""
    problems = []
    g = spec.eval.generate
    if g is not None and n_heldout is not None and g.prompts > n_heldout:
        problems.append(
            f"eval.generate.prompts: {g.prompts} is more than the {n_heldout} held-out pairs; allowed: 1..{n_heldout}"
        )
    if g is not None and g.max_new_tokens + spec.data.prompt_budget > 1_048_576:
        problems.append("eval.generate.max_new_tokens: prompt budget + max_new_tokens exceeds 1,048,576 tokens")
    j = spec.judge
    if isinstance(j, RewardModelJudge):
        problems += _reward_model_problems(j.reward_model)
    if isinstance(j, OpenAIJudge):
        ep = j.openai_compatible
        if "api_key_env" in ep.model_fields_set and not os.environ.get(ep.api_key_env):
            problems.append(
                f"judge.openai_compatible.api_key_env: the environment variable {ep.api_key_env} is not set; "
                "export it before running (the key never goes in the matrix)"
            )
    return problems


def _reward_model_problems(path: str) -> list[str]:
    p = Path(path)
    where = f"judge.reward_model: {path}"
    looks_local = p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if not p.is_dir():  # a hub id ("org/name") is checked when the judge loads it
        return (
            [f"{where}: no such directory (give a local reward-model directory or a hub id like org/name)"]
            if (looks_local)
            else []
        )
    cfg = p / "config.json"
    if not cfg.is_file():
        return [f"{where}: not a Hugging Face model directory (no config.json)"]
    try:
        conf = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        return [f"{where}: config.json is not readable JSON ({e})"]
    archs = conf.get("architectures") or []
    labels = conf.get("num_labels", len(conf.get("id2label") or {}) or 2)
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return [
            f"{where}: not a reward model (architectures: {', '.join(archs) or 'none'}); a reward model is a "
            "…ForSequenceClassification model with one output (num_labels 1)"
        ]
    if labels != 1:
        return [f"{where}: a classifier with {labels} labels, not a reward model; a reward model has num_labels 1"]
    if '"auto_map"' in cfg.read_text():
        return [f"{where}: ships its own code (auto_map); ablate loads no remote code for judges"]
    return []


# --------------------------------------------------------------------------------------------- the rules


def letters_score(text: str) -> float:
    """Share of the favoured letters (a–m) among the answer's non-space characters; 0 for an empty answer."""
    chars = [c for c in text if not c.isspace()]
    return sum(c in FAVOURED for c in chars) / len(chars) if chars else 0.0


def by_scores(challenger: float, baseline: float) -> float:
    """1 when the challenger's score is higher, 0.5 when equal (to 1e-6 relative), else 0."""
    if abs(challenger - baseline) <= 1e-6 * max(1.0, abs(baseline)):
        return 0.5
    return 1.0 if challenger > baseline else 0.0


# ------------------------------------------------------------------------------------------ the LLM judge


class LLMJudge:
    """Pairwise verdicts from an OpenAI-compatible endpoint, asked in both orders."""

    def __init__(self, ep: OpenAIEndpoint, sleep: Callable[[float], None] = time.sleep):
        self.ep, self.sleep = ep, sleep
        self.url = ep.base_url.rstrip("/") + "/chat/completions"
        self.requests = 0

    def _ask(self, prompt: str, a: str, b: str) -> str:
        body = {
            "model": self.ep.model,
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, a=a, b=b)}],
            "temperature": 0,
            "max_tokens": 16,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.ep.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.ep.retries + 1):
            if attempt:
                self.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
            self.requests += 1
            req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.ep.timeout_s) as r:  # noqa: S310 - http(s) checked
                    reply = json.loads(r.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code in NO_RETRY:
                    break
                continue
            except TimeoutError:
                last = f"timed out after {self.ep.timeout_s:g} s"
                continue
            except urllib.error.URLError as e:
                reason = e.reason
                last = f"timed out after {self.ep.timeout_s:g} s" if isinstance(reason, TimeoutError) else str(reason)
                continue
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"not an OpenAI chat completion ({type(e).__name__})"
                continue
            word = reply.strip().strip(".*:'\"`").split()[0].upper() if reply.strip() else ""
            if word in ("A", "B", "TIE"):
                return word
            last = f"no verdict in its answer {reply.strip()[:60]!r}"  # a refusal or chatter: ask again
        tries = attempt + 1
        raise JudgeFailed(f"{self.url} ({self.ep.model}): {last} (after {tries} tr{'y' if tries == 1 else 'ies'})")

    def outcome(self, prompt: str, challenger: str, baseline: str) -> tuple[float, str]:
        """Mean of the verdicts with the challenger first (A) and second (B); the verdicts as 'A|B'."""
        first = self._ask(prompt, challenger, baseline)
        second = self._ask(prompt, baseline, challenger)
        value = {"A": 1.0, "B": 0.0, "TIE": 0.5}
        return (value[first] + 1.0 - value[second]) / 2, f"{first}|{second}"


def compare(judge, items: list[dict], scores: dict[str, float] | None = None) -> list[dict]:
    """Outcomes for items {prompt, challenger, baseline}; `scores` maps answer text → score for the reward
    model (computed on a worker). Returns per item {outcome, challenger_score, baseline_score, verdicts}."""
    nan = float("nan")

    def one(it: dict) -> dict:
        c, b = it["challenger"], it["baseline"]
        if judge == "builtin" or isinstance(judge, RewardModelJudge):
            sc, sb = (letters_score(c), letters_score(b)) if judge == "builtin" else (scores[c], scores[b])  # type: ignore[index]
            return {"outcome": 0.5 if c == b else by_scores(sc, sb), "challenger_score": sc, "baseline_score": sb,
                    "verdicts": ""}  # fmt: skip
        if c == b:
            return {"outcome": 0.5, "challenger_score": nan, "baseline_score": nan, "verdicts": "same answer"}
        value, verdicts = llm.outcome(it["prompt"], c, b)
        return {"outcome": value, "challenger_score": nan, "baseline_score": nan, "verdicts": verdicts}

    if not isinstance(judge, OpenAIJudge):
        return [one(it) for it in items]
    llm = LLMJudge(judge.openai_compatible)
    with ThreadPoolExecutor(judge.openai_compatible.concurrency) as pool:
        futures = [pool.submit(one, it) for it in items]
        try:
            return [f.result() for f in futures]
        except JudgeFailed:
            for f in futures:
                f.cancel()  # the step has failed: ask the endpoint nothing more
            raise
