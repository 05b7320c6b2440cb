"""Several cells in one forward pass over one base model (resources.pack: auto; the runner forms the packs).

Cells that differ only in objective, its knobs, LoRA rank, seed, lr or epochs read the same base model and the
same encoded pairs. A pack loads the base once and adds one PEFT LoRA per cell, each seeded as a lone cell's (the
same initial weights). At each step every cell draws its own micro-batch in its own seeded order; the
micro-batches are concatenated along the batch dimension, the frozen base runs once over all rows, and each LoRA
layer adds each cell's adapter to that cell's rows only, computed on them cut to the length a lone cell's batch
would have (`routing`). The adapters are disjoint, so each gets exactly its own loss's gradient, and every sum over
tokens runs over a lone cell's shapes: on CPU a packed cell's numbers equal a lone cell's bit for bit
(tests/test_pack.py). Each cell keeps its own loss, optimizer, schedule, logs, evaluations, early stopping,
checkpoints, heartbeat and result.

A pack that cannot train together hands its unfinished cells back (status "unpacked") and the runner queues each
again alone, with its own OOM retries, failure record and fail-fast count, resuming from any checkpoint saved
here: when the base model has dropout (every cell's masks would come from one random stream), when its cells
resume from checkpoints of different steps, and when anything fails while they train together (an out-of-memory
error, one cell's error). So packing never turns one cell's failure into another's. STOP stops them all, each
after its step (and its checkpoint, when one is due); once one cell finds the run orphaned, none writes again.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CellConfig, Runtime
from ..results import storage
from ..results.storage import Store
from ..schema import ModelSpec
from .cell import (
    Heartbeat,
    StopRequested,
    _discard,
    _Hooks,
    _node_id,
    new_cell_json,
    publish_done,
    stage,
)
from .checkpoint import Checkpointer
from .forward import collate
from .generate import CellGeneration
from .recipe import Recipe, TrainState

UNPACKED = "unpacked"  # a cell its pack could not train: the runner queues it again, alone

# An adapter, the rows of the pass it serves, and the length of those rows in a lone cell's batch.
Route = tuple[str, slice, int]


@contextlib.contextmanager
def routing(model, routes: list[Route] | str) -> Iterator[None]:
    """Every LoRA layer of `model` adds each adapter's update to its own rows only, computed on those rows cut to
    their own length (a lone cell's shapes exactly: the weight gradient's sum over tokens then runs as a lone
    cell's does, bit for bit on CPU). One name: that adapter for every row (an evaluation)."""
    from peft.tuners.lora import LoraLayer

    def base_only(module, args, kwargs):  # PEFT's mixed-batch path, with no adapter: just the base layer
        return args, {**kwargs, "adapter_names": ["__base__"] * len(args[0] if args else kwargs["x"])}

    def add_adapters(module, args, kwargs, out):
        x = args[0] if args else kwargs["x"]
        if x.dim() != 3 or not hasattr(module, "lora_A"):  # e.g. a LoRA on lm_head or the embeddings: alone
            raise RuntimeError(f"packing routes [rows, length, features] inputs of LoRA linears, not {type(module)}")
        for name, rows, length in [(routes, slice(None), x.shape[1])] if isinstance(routes, str) else routes:
            sub = x[rows, :length]
            update = module.lora_B[name](module.lora_A[name](module.lora_dropout[name](sub))) * module.scaling[name]
            out[rows, :length] = out[rows, :length] + update
        return out

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    handles = [m.register_forward_pre_hook(base_only, with_kwargs=True) for m in layers]
    handles += [m.register_forward_hook(add_adapters, with_kwargs=True) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def dropout_in(model) -> str | None:
    """Where the base model draws dropout masks while training, if anywhere (a module or a config setting)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0 and "lora_" not in name:
            return name

    def walk(d: dict) -> str | None:
        for k, v in d.items():
            if isinstance(v, dict):
                found = walk(v)
                if found:
                    return found
            elif isinstance(v, float) and v > 0 and ("dropout" in k or "pdrop" in k):
                return f"config.{k}"
        return None

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return walk(base.config.to_dict())


@dataclass
class _Member:
    cell: CellConfig
    ref: dict | None
    cell_json: dict
    beat: Heartbeat
    ckpt: Checkpointer
    recipe: Recipe | None = None
    state: TrainState = field(default_factory=TrainState)
    resumed_from: int | None = None
    hooks: _Hooks | None = None
    gen: CellGeneration | None = None
    t0: float = 0.0
    out: dict | None = None  # its cell.json, once published


def run_pack(
    cells: list[CellConfig],
    model_spec: ModelSpec,
    train_rows: list[dict],
    heldout_rows: list[dict],
    results: str,
    runtime: Runtime,
    refs: list[dict | None],
) -> list[dict]:
    """Train `cells` together and publish each; returns their cell.json, in order (see the module docstring)."""
    store, node = Store(results), _node_id()
    info = {**storage.host_info(), "node_id": node, "started": time.time()}
    members = [
        _Member(
            c,
            r,
            new_cell_json(c, model_spec, node),
            Heartbeat(store, c.id, info, runtime.run_token).start(),
            Checkpointer(store, c.id, runtime.checkpoint_every_steps),
        )
        for c, r in zip(cells, refs)
    ]
    try:
        if any(m.beat.stop_requested for m in members):  # queued before the driver stopped the run
            raise StopRequested
        try:
            why = _train_together(members, model_spec, train_rows, heldout_rows, runtime, store)
        except Exception as e:  # noqa: BLE001 - each cell gets its own try, alone, and its own failure record
            if storage.unwritable(store, e):
                raise
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        finally:
            if members[0].recipe is not None:
                members[0].recipe.release()  # the first cell borrowed the base: every adapter goes with it
    except StopRequested:
        return [m.out or {"id": m.cell.id, "status": "stopped"} for m in members]
    except Exception as e:
        reason = storage.unwritable(store, e)
        if reason:  # full, read-only: nothing about these cells can be written; the driver stops the run
            raise storage.ResultsUnwritable(reason) from None
        raise
    finally:
        for m in members:
            m.beat.stop()
    # Not trained together: the runner queues each unfinished cell again, alone (its own OOM retries, failure
    # record and fail-fast count), resuming from any checkpoint saved here.
    return [m.out or {"id": m.cell.id, "status": UNPACKED, "why": why} for m in members]


def _train_together(members: list[_Member], model_spec, train_rows, heldout_rows, runtime, store) -> str:
    """Set up, train and publish every member in one pass per micro-batch; returns why the unpublished ones
    must train alone instead, if any does."""
    first = None
    for k, m in enumerate(members):
        m.recipe = Recipe(m.cell, model_spec, runtime, adapter="default" if k == 0 else f"pack{k}")
        m.recipe.setup(train_rows, heldout_rows, m.ref, onto=first)
        first = first or m.recipe
        m.recipe.pack_size = len(members)
    assert first is not None
    model = first.model
    for m in members:  # adding an adapter makes PEFT re-freeze all but its active one: every cell's trains
        for param in _recipe(m).params:
            param.requires_grad_(True)
    where = dropout_in(model)
    if where:
        return f"the base model has dropout ({where})"
    for m in members:
        assert m.recipe is not None
        m.recipe.route = functools.partial(routing, model, m.recipe.adapter)
        restored = m.ckpt.restore(m.recipe)
        m.resumed_from = restored.step if restored else None
        m.state = restored or TrainState()
        m.gen = CellGeneration.maybe(m.cell, model_spec, heldout_rows)
        m.hooks = _Hooks(m.ckpt, m.beat, restored is not None, m.gen)
        m.t0 = time.perf_counter() - m.state.seconds
    if len({m.state.step for m in members}) > 1:
        return "its cells resume from checkpoints of different steps"
    model.train()
    active = [m for m in members if not _recipe(m).done(m.state)]
    while active:
        stats = _step(active, first)
        stop = None
        for m, st in zip(active, stats):  # every cell ends its step (and checkpoints it) before a stop
            if any(other.beat.orphaned for other in active):  # another driver owns the results: none writes again
                for other in active:
                    other.beat.orphaned = True
            try:
                _recipe(m).end_step(m.state, st, m.hooks, m.t0)  # type: ignore[arg-type]
            except StopRequested as e:
                stop = e
        if stop is not None:
            raise stop
        for m in active:
            if _recipe(m).done(m.state):
                _publish(m, store)
        active = [m for m in active if m.out is None]
    return ""


def _recipe(m: _Member) -> Recipe:
    assert m.recipe is not None
    return m.recipe


def _step(active: list[_Member], first: Recipe) -> list[list]:
    """One optimizer step's forward and backward passes for every active member, one pass per micro-batch."""
    recipes = [_recipe(m) for m in active]
    idxs = [r.next_batch(m.state) for r, m in zip(recipes, active)]
    micro = first.micro
    stats: list[list] = [[] for _ in active]
    pairs = first.train_pairs
    for j in range(0, len(idxs[0]), micro):
        parts = [idx[j : j + micro] for idx in idxs]
        for m in active:
            m.hooks.before_batch(micro)  # type: ignore[union-attr]
        rows = [i for p in parts for i in p]
        b = collate(pairs, rows, first.pad, first.share).to(first.device)
        with routing(first.model, _routes(recipes, parts, pairs)):
            total, avg, n = first.fwd(b)
        B, at, losses = len(rows), 0, []
        for k, (r, m, p) in enumerate(zip(recipes, active, parts)):
            sel = torch.cat([torch.arange(at, at + len(p)), torch.arange(B + at, B + at + len(p))]).to(total.device)
            tokens = sum(2 * len(pairs[i].prompt) + len(pairs[i].chosen) + len(pairs[i].rejected) for i in p)
            loss, st = r.micro_loss(m.state, total[sel], avg[sel], n[sel], len(p), p, tokens, len(idxs[k]))
            losses.append(loss)
            stats[k].append(st)
            at += len(p)
        torch.stack(losses).sum().backward()  # disjoint adapters: each gets exactly its own loss's gradient
    return stats


def _routes(recipes: list[Recipe], parts: list[list[int]], pairs) -> list[Route]:
    """Each cell's rows in the pass (one per pair: [prompt, chosen, rejected]) and the length a lone cell's batch
    of those pairs would have."""
    out: list[Route] = []
    at = 0
    for r, p in zip(recipes, parts):
        length = max(len(pairs[i].prompt) + len(pairs[i].chosen) + len(pairs[i].rejected) for i in p)
        out.append((r.adapter, slice(at, at + len(p)), length))
        at += len(p)
    return out


@contextlib.contextmanager
def merged_alone(model, adapter: str) -> Iterator[None]:
    """While inside, the base weights hold `adapter` merged in (PEFT's merge, as a lone cell's merge_and_unload
    does it) and every LoRA layer runs its base alone: the model generates as that cell's merged model. After,
    the weights are copied back bit for bit and the pack trains on."""
    from peft.tuners.lora import LoraLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    saved = [(w, w.detach().clone()) for w in (layer.get_base_layer().weight for layer in layers)]
    try:
        for layer in layers:
            layer.merge(adapter_names=[adapter])
        yield
    finally:
        with torch.no_grad():
            for w, copy in saved:
                w.copy_(copy)
        for layer in layers:
            layer.merged_adapters = []


def _publish(m: _Member, store: Store) -> None:
    recipe = _recipe(m)
    result = recipe.finish(m.state, m.resumed_from)
    staging = storage.new_cell_staging(store, m.cell.id)
    try:
        stage(result, recipe, staging)
        if m.gen is not None:  # last, as a lone cell's: the final generation merges its adapter
            with contextlib.ExitStack() as merges:

                def merge():
                    merges.enter_context(merged_alone(recipe.model, recipe.adapter))
                    return recipe.model

                recipe.merge_in_place = merge
                result.summary.update(m.gen.finish(recipe, m.state, staging))
        m.out = publish_done(store, m.cell_json, staging, result.summary, 0)
    except BaseException:
        _discard(staging)
        raise
    m.beat.stop()
