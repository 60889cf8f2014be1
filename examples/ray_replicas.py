"""
Replicas of a NumPy model on Ray, fed by one BatchScope: throughput with 1 and 2 replicas.

Many concurrent callers each submit one token sequence; the scope forms batches of
similar lengths (``policy="length"``) where the requests arrive and sends each batch to
the least-loaded replica, a Ray actor holding the model. The model embeds the tokens, pads
the batch to its longest sequence and multiplies it by a weight matrix, so a batch costs
its *padded* tokens, as a transformer's does. The program runs the same items through 1
replica, then 2, and prints the throughput of each.

Run it on this machine (starts a local Ray cluster, bound to 127.0.0.1 only)::

    pip install 'batchscope[ray]' numpy
    python examples/ray_replicas.py
    python examples/ray_replicas.py --backend trio --items 4000

On a real multi-node cluster, the same code runs with more replicas, one GPU each (the
model's module must be importable on the workers, or shipped with ``runtime_env``)::

    ray start --head                                # on the head node
    ray start --address=HEAD_IP:6379                # on every other node
    python examples/ray_replicas.py --address auto --replicas 8 --num-gpus 1

``--address`` is passed to ``ray.init(address=...)`` (``"auto"`` on a cluster node,
``"ray://HEAD_IP:10001"`` through Ray Client); nothing else changes: batches form on
the driver and run wherever Ray places the actors.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import anyio
import numpy as np

import batchscope as bs

DIM = 256
VOCAB = 5_000


class PaddedMatmulModel:
    """A stand-in for an encoder: embed, pad, one dense layer, mean-pool. Sync, CPU."""

    def __init__(self, dim: int = DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((VOCAB, dim), dtype=np.float32)
        self.weight = rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        longest = max(len(tokens) for tokens in batch)
        ids = np.zeros((len(batch), longest), dtype=np.int64)
        mask = np.zeros((len(batch), longest, 1), dtype=np.float32)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1.0
        hidden = np.tanh(self.table[ids] @ self.weight)  # (batch, padded length, dim)
        pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        return list(pooled)


def make_items(count: int, seed: int = 1) -> list[np.ndarray]:
    """Token sequences with lognormal lengths (median 32, at most 256)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(32), 0.8, count).astype(int), 1, 256)
    return [rng.integers(0, VOCAB, length, dtype=np.int32) for length in lengths]


def start_ray(address: str | None) -> None:
    """Connect to *address*, or start a small local cluster on 127.0.0.1 only."""
    if address is None:
        # Ray reads this when imported: without it, a local cluster also listens on the
        # machine's external interface, even when given 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if address is None:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)


async def measure(
    items: list[np.ndarray], replicas: int, num_gpus: float, callers: int
) -> dict[str, Any]:
    """Serve *items* from *callers* concurrent tasks through *replicas* actors."""
    from batchscope.ray import RayReplicaPool

    actor_options: dict[str, Any] = {
        # One BLAS thread per replica: replicas, not threads, use the cores.
        "runtime_env": {"env_vars": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}},
    }
    if num_gpus:
        actor_options["num_gpus"] = num_gpus
    async with (
        RayReplicaPool(
            PaddedMatmulModel,
            num_replicas=replicas,
            max_concurrent_batches_per_replica=2,  # the next batch waits at the actor
            actor_options=actor_options,
        ) as pool,
        bs.BatchScope(
            pool,
            max_batch_size=32,
            max_wait=0.005,
            cost=len,
            policy="length",
            max_concurrent_batches=pool.capacity,
        ) as scope,
    ):
        await scope.submit_many(items[:64])  # warm up: the actors' first calls
        started = time.perf_counter()
        send, receive = anyio.create_memory_object_stream[np.ndarray](len(items))
        for tokens in items:
            send.send_nowait(tokens)
        send.close()

        async def caller() -> None:
            async for tokens in receive:
                vector = await scope.submit(tokens)
                assert vector.shape == (DIM,)

        with receive:
            async with anyio.create_task_group() as tg:
                for _ in range(callers):
                    tg.start_soon(caller)
        elapsed = time.perf_counter() - started
        stats = scope.statistics()
    return {
        "replicas": replicas,
        "items_per_s": len(items) / elapsed,
        "mean_batch_size": stats.mean_batch_size,
        "padding_efficiency": stats.padding_efficiency,
        "batches_per_replica": pool.statistics().batches_per_replica,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=256)
    parser.add_argument("--replicas", type=int, default=2, help="the most replicas to try")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    parser.add_argument("--address", default=None, help="ray.init(address=...)")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()

    start_ray(args.address)
    import ray

    items = make_items(args.items)
    try:
        results = []
        for replicas in sorted({1, args.replicas}):
            result = anyio.run(
                measure, items, replicas, args.num_gpus, args.callers, backend=args.backend
            )
            results.append(result)
            print(
                f"{replicas} replica(s): {result['items_per_s']:8.0f} items/s, "
                f"mean batch {result['mean_batch_size']:.1f}, "
                f"padding efficiency {result['padding_efficiency']:.2f}, "
                f"batches per replica {result['batches_per_replica']}"
            )
        if len(results) > 1:
            speedup = results[-1]["items_per_s"] / results[0]["items_per_s"]
            print(f"speed-up with {results[-1]['replicas']} replicas: {speedup:.2f}x")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
