"""Text embeddings for the service: an in-memory LRU in front of the estimator's encoder and disk cache, and
micro-batching of new texts (requests that arrive together are encoded in one call).

A request asks for its texts; those in memory are answered at once. The rest go on an asyncio queue; one
worker task takes the first waiting request, collects more for up to ``max_wait`` seconds or until
``max_texts`` texts, and hands their union to ``embed_texts`` (disk cache first, then the encoder) on a
single dedicated thread, so the encoder and the cache (neither is thread-safe) are only ever used from that
thread. If a batch fails (e.g. one request has a text a precomputed encoder lacks), each of its requests is
retried alone, so one bad request does not fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pluralign.encoders import EmbeddingCache, Encoder, embed_texts

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future


@dataclass
class EmbedStats:
    batches: int = 0
    texts_encoded: int = 0
    largest_batch: int = 0
    memo_hits: int = 0
    batch_sizes: list[int] = field(default_factory=list, repr=False)


class MicroBatchEmbedder:
    """``await embed(texts)`` -> float32 [len(texts), dim]; must be awaited from one event loop."""

    def __init__(
        self,
        encoder: Encoder,
        cache: EmbeddingCache | None = None,
        *,
        max_wait: float = 0.005,
        max_texts: int = 64,
        memo_size: int = 50_000,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.max_wait = max_wait
        self.max_texts = max_texts
        self.memo_size = memo_size
        self.stats = EmbedStats()
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pluralign-embed")
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- public -----------------------------------------------------------------------------------------
    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` in order; raises what the encoder raises for bad texts."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            vector = self._memo.get(text)
            if vector is None:
                missing.append(text)
            else:
                self._memo.move_to_end(text)
                found[text] = vector
        self.stats.memo_hits += len(found)
        if missing:
            found.update(await self._submit(missing))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` computed on the encoder thread, for use outside the event loop (startup)."""
        return self._executor.submit(self._encode, list(texts)).result()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None
        self.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- internals --------------------------------------------------------------------------------------
    def _remember(self, text: str, vector: np.ndarray) -> None:
        self._memo[text] = vector
        self._memo.move_to_end(text)
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)

    async def _submit(self, texts: list[str]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._worker(), name="pluralign-embed-batcher")
        request = _Request(texts, loop.create_future())
        self._queue.put_nowait(request)
        return await request.future

    def _encode(self, texts: list[str]) -> np.ndarray:
        return embed_texts(texts, self.encoder, cache=self.cache)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            n = len(batch[0].texts)
            deadline = loop.time() + self.max_wait
            while n < self.max_texts:
                try:
                    request = queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        request = await asyncio.wait_for(queue.get(), timeout)
                    except TimeoutError:
                        break
                batch.append(request)
                n += len(request.texts)
            await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        texts = list(dict.fromkeys(t for request in batch for t in request.texts))
        try:
            vectors = await loop.run_in_executor(self._executor, self._encode, texts)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            for request in batch:  # find the bad request(s): each alone
                await self._run_batch(loop, [request])
            return
        self.stats.batches += 1
        self.stats.texts_encoded += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        if len(self.stats.batch_sizes) < 10_000:
            self.stats.batch_sizes.append(len(texts))
        table = {text: np.array(vectors[i], dtype=np.float32) for i, text in enumerate(texts)}
        for text, vector in table.items():
            self._remember(text, vector)
        for request in batch:
            _settle(request.future, result={t: table[t] for t in request.texts})


def _settle(future: asyncio.Future, *, result: object = None, exc: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
