"""Each new decoding constraint (a JSON schema, a regex, a grammar) is compiled once here, in a worker process of
its own and within a time limit, before any engine is given it.

The engine compiles a request's grammar where nothing can stop it: vLLM's engine core on a thread of its own (a
compile abandoned by its caller runs on, slowing every other request), the hf engine on its generation thread.
The static bounds (chat.validation.schemas) keep single keywords cheap; what is slow only in combination is
caught here: a schema that does not compile within the limit is a 400 naming its field, and the worker compiling
it is killed, so the compile stops. A caller that goes away (or whose deadline passes) while its schema compiles
kills it too. Schemas that compiled are remembered, so a schema used again costs a dictionary lookup; the
engine compiles it again in about the same time, now known to be bounded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from chatgen.chat.validation.schemas import Grammar
from chatgen.engine.base import Constraint
from chatgen.errors import invalid

log = logging.getLogger(__name__)

# How long a worker may take to load the tokenizer before it counts as broken.
_START_SECONDS = 120.0


def _compile_forever(conn: Connection, tokenizer_dir: str) -> None:
    """The worker: compiles the constraints it is sent, answers None or the compiler's error; exits with its
    parent."""
    import xgrammar
    from transformers import AutoTokenizer

    from chatgen.engine.hf_logits import compile_constraint

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    conn.send("ready")
    while True:
        try:
            constraint = conn.recv()
        except EOFError:  # the server is gone
            return
        try:
            compile_constraint(compiler, constraint)
            conn.send(None)
        except Exception as exc:  # the compiler's verdict on this schema, not a fault of the worker
            conn.send(f"{type(exc).__name__}: {exc}"[:300])


class _Worker:
    def __init__(self, tokenizer_dir: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_compile_forever, args=(child, tokenizer_dir), name="chatgen-grammar", daemon=True
        )
        self.process.start()
        child.close()
        self.ready = False

    async def reply(self) -> object:
        """The worker's next message, awaited without blocking the event loop."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self._conn.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return self._conn.recv()

    async def started(self) -> None:
        if not self.ready:
            if await asyncio.wait_for(self.reply(), _START_SECONDS) != "ready":
                raise RuntimeError("the grammar worker did not start")
            self.ready = True

    async def compile(self, constraint: Constraint) -> object:
        self._conn.send(constraint)
        return await self.reply()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(1)
        self._conn.close()


class GrammarCheck:
    """Compiles schemas in a worker process within `seconds` each, one at a time; remembers the last `remembered`
    verdicts."""

    def __init__(self, tokenizer_dir: str, seconds: float, remembered: int = 1024) -> None:
        self._tokenizer_dir = tokenizer_dir
        self.seconds = seconds
        self._remembered = remembered
        self._verdicts: collections.OrderedDict[Constraint, str | None] = collections.OrderedDict()
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start the worker now (it loads the tokenizer), so the first schema does not wait for it."""
        if self._worker is None:
            self._worker = _Worker(self._tokenizer_dir)

    async def wait_started(self) -> None:
        """Until the worker has loaded the tokenizer (started if it was not)."""
        self.start()
        assert self._worker is not None
        await self._worker.started()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    async def check(self, grammar: Grammar) -> None:
        key = grammar.constraint
        verdict = self._verdicts.get(key, ...)
        if verdict is ...:
            async with self._lock:
                verdict = await self._compile(key)
            self._remember(key, verdict)
        else:
            self._verdicts.move_to_end(key)
        if verdict is not None:
            raise invalid(f"{grammar.param} cannot be used for decoding: {verdict}", grammar.param)

    async def _compile(self, constraint: Constraint) -> str | None:
        self.start()
        assert self._worker is not None
        worker = self._worker
        try:
            # The tokenizer loads once per worker; only the compile counts against the limit.
            await worker.started()
        except BaseException:
            self._stop(worker)
            raise
        try:
            async with asyncio.timeout(self.seconds):
                verdict = await worker.compile(constraint)
        except TimeoutError:
            self._stop(worker)
            return f"its grammar takes over {self.seconds:g} s to compile; simplify it"
        except (EOFError, OSError):
            # The worker died compiling it (the compiler is native code): this schema's doing, and now nobody
            # else's problem; a new worker serves the next one.
            self._stop(worker)
            log.warning("the grammar worker died compiling a schema (exit code %s)", worker.process.exitcode)
            return "the grammar compiler failed on it"
        except BaseException:
            # Cancelled (the caller left, or its deadline passed) or the worker broke: the compile stops with it.
            self._stop(worker)
            raise
        return verdict if isinstance(verdict, str) else None

    def _stop(self, worker: _Worker) -> None:
        worker.kill()
        if self._worker is worker:
            self._worker = None

    def _remember(self, constraint: Constraint, verdict: str | None) -> None:
        self._verdicts[constraint] = verdict
        while len(self._verdicts) > self._remembered:
            self._verdicts.popitem(last=False)
