"""``selfj serve``: the SELF-J judge as an HTTP reward service for distributed RL engines.

The protocol is OpenRLHF's remote reward model (``--reward.remote_url http://HOST:PORT/get_reward``)::

    POST /get_reward  {"query": [str], "prompts": [str], "labels": [any], "responses": [str]?, "use_reference": bool?}
                   -> {"rewards": [float], "scores": [float], "extra_logs": {name: [float]}}
    POST /get_reward  {"prompt": str, "response": str, "label": any?}        (slime's form)
                   -> {"reward": float, "score": float, ...}
    GET  /health      {"status": "ok", "judge": ..., "template": ..., "device": ...}
    GET  /metrics     Prometheus text (``?format=json``: the same samples as JSON)

``query`` is the templated prompt plus the response, decoded with special tokens, as OpenRLHF sends it; the
response is ``query[len(prompt):]`` (see ``split_query`` for a left-truncated prompt), and the instruction is the
prompt with its chat template removed (``prompt_from_template``). ``responses`` (an extension) skips that
recovery. ``scores`` are the expected digit / 9, in [0, 1]; ``rewards`` are the server's reward options (transform,
length penalty) applied to the expected digit over the request.

Concurrent requests are coalesced by ``DynamicBatcher`` into judge batches: engines send one sample per request,
and without coalescing the judge would run at batch size 1. The forward runs in one worker thread, off the event
loop; responses to the same prompt that land in one batch share the prompt's KV cache (``SelfJudge`` prefix sharing).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import re
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the routes' (postponed) annotations here

from ..core.errors import ConfigError, SelfJError
from ..judge.reward_signal import JudgedItem, SelfJRewardConfig, judged_items, prompt_instruction, reward_values

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Where the judge server listens and how it batches (the judge options are ``SelfJRewardConfig``'s)."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "Bind address; loopback by default. Binding elsewhere without --api_key prints a warning."})
    port: int = field(default=5000, metadata={"help": "Port."})
    max_batch_size: int = field(default=32, metadata={"help": "Most responses in one judge forward (1: no batching)."})
    max_batch_tokens: int = field(default=32768, metadata={
        "help": "Most padded judge-prompt tokens in one batch (items x the longest item; a single longer item runs "
                "alone). Coalescing and the judge's own batching follow this one rule (judge.token_budget_batches)."})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "How long the first item of a batch waits for others while the judge is idle (ms)."})
    max_queue: int = field(default=4096, metadata={"help": "Most responses waiting; beyond it requests get 503."})
    max_body_bytes: int = field(default=16 * 2**20, metadata={
        "help": "Largest request body in bytes; a larger one is answered 413 without being read to its end."})
    request_timeout_s: float = field(default=300.0, metadata={"help": "Per-request timeout; past it the answer is 504."})
    api_key: str | None = field(default=None, metadata={
        "help": "Bearer token required on /get_reward and /metrics (default: SELFJ_API_KEY if set; else no auth)."})
    graceful_shutdown_s: float = field(default=30.0, metadata={
        "help": "On SIGTERM, how long in-flight requests may take to finish."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})

    def __post_init__(self):
        if min(self.max_batch_size, self.max_batch_tokens, self.max_queue, self.max_body_bytes) < 1:
            raise ConfigError("max_batch_size, max_batch_tokens, max_queue and max_body_bytes must be >= 1")
        if self.max_wait_ms < 0 or not self.request_timeout_s > 0:
            raise ConfigError("max_wait_ms must be >= 0 and request_timeout_s > 0")


class RequestError(SelfJError):
    """A malformed request body: answered 400 with this one-line reason."""


class Overloaded(Exception):
    """The queue is full: answered 503 with a Retry-After of ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BodyTooLarge(Exception):
    """The body is longer than ``max_body_bytes``: answered 413."""


# the per-call transforms that standardise over the responses of one call: over one request, in a server
GROUP_TRANSFORMS = ("centered", "zscore")


def refuse_group_transform(transform: str) -> None:
    """A server scores whatever one request holds, and RL engines send one sample per request: a transform over the
    request would make every reward 0. Group baselines belong in the trainer (GRPO and RLOO compute them)."""
    if transform in GROUP_TRANSFORMS:
        raise ConfigError(f"transform '{transform}' standardises the rewards within one request, and RL engines send "
                          "one sample per request, so every reward would be 0: serve with --transform raw and let the "
                          "trainer normalise within its groups (GRPO's and RLOO's advantages do)")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``BodyTooLarge``) as soon as it is known to exceed ``limit`` bytes: from the
    Content-Length header, or while a body without one streams in, so a huge body is never buffered."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body has {int(declared)} bytes (max_body_bytes {limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds max_body_bytes {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_reward_request(raw: bytes, use_reference: bool, special_tokens: tuple[str, ...] = ()
                          ) -> tuple[list[RewardItem], bool]:
    """``parse_reward_request`` of a raw body; invalid JSON, including nesting too deep to parse, is a
    ``RequestError``. Runs on a worker thread: parsing a large body must not hold up the event loop."""
    import json

    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError("the body is not valid JSON") from None
    return parse_reward_request(body, use_reference, special_tokens)


# --------------------------------------------------------------------------- recovering instruction and response
# (role, content) turns of the common chat templates; the first that matches a prompt is used
CHAT_TURNS = (
    re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?=<\|im_end\|>|<\|im_start\|>|$)", re.S),  # ChatML (SmolLM2, Qwen)
    re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>|$)",
               re.S),  # Llama 3
    re.compile(r"<start_of_turn>(\w+)\n(.*?)(?=<end_of_turn>|<start_of_turn>|$)", re.S),  # Gemma
)


def mistral_user_turns(prompt: str) -> list[str]:
    """The ``[INST] ... [/INST]`` turns, by a forward scan (a lazy regex rescans the rest of the prompt from every
    unclosed ``[INST]``: quadratic)."""
    turns, position = [], 0
    while (start := prompt.find("[INST]", position)) != -1:
        end = prompt.find("[/INST]", start + 6)
        if end == -1:
            break  # no turn closes after this one, so none after the later ones either
        turns.append(prompt[start + 6:end])
        position = end + 7
    return turns

# end-of-turn and padding strings that engines leave at the end of a decoded query
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>", "</s>",
               "<|end|>", "<pad>", "<|pad|>")


def prompt_from_template(prompt: str, special_tokens: tuple[str, ...] = ()) -> str:
    """The instruction inside a templated prompt: its turns without system turns (``prompt_instruction``), or
    the prompt without special-token strings when no known chat template matches."""
    for pattern in CHAT_TURNS:
        turns = [{"role": role.lower(), "content": content.strip()} for role, content in pattern.findall(prompt)]
        if turns:
            if turns[-1]["role"] in ("assistant", "model") and not turns[-1]["content"]:
                turns.pop()  # the generation prompt
            if turns:
                return prompt_instruction([{**t, "role": "assistant" if t["role"] == "model" else t["role"]}
                                           for t in turns])
    users = mistral_user_turns(prompt)
    if users:
        return "\n\n".join(u.strip() for u in users) if len(users) > 1 else users[0].strip()
    for token in sorted(special_tokens, key=len, reverse=True):
        prompt = prompt.replace(token, "")
    return prompt.strip()


def strip_end_markers(response: str, special_tokens: tuple[str, ...] = ()) -> str:
    """The response without the end-of-turn / EOS / padding strings (and the whitespace between them) at its end.

    One backward scan, linear in the length of what it removes (a regex anchored at the end retries every start
    position: quadratic on a response of 100,000 spaces)."""
    markers = sorted(set(END_MARKERS) | set(special_tokens), key=len, reverse=True)
    end = cut = len(response)
    while True:
        while end and response[end - 1].isspace():
            end -= 1
        marker = next((m for m in markers if response.endswith(m, 0, end)), None)
        if marker is None:
            return response[:cut]
        end -= len(marker)
        while end and response[end - 1].isspace():
            end -= 1
        cut = end


def split_query(query: str, prompt: str) -> str:
    """The response part of ``query`` (prompt + response): ``query[len(prompt):]`` when the query starts with the
    prompt. An engine that left-truncated a long prompt sends a query that starts with a *suffix* of the prompt
    (at least its last 64 characters): then the response starts after the longest such suffix (a shorter one
    can also begin the query when the prompt repeats itself, as padding does, but the engine kept the longest).

    The suffixes of the prompt that begin the query are the borders of ``query[:len(prompt)] + sentinel + prompt``
    (Knuth-Morris-Pratt prefix function): linear in the prompt's length, whatever the query repeats."""
    if query.startswith(prompt):
        return query[len(prompt):]
    tail = min(64, len(prompt))
    if tail:
        text = [*map(ord, query[:len(prompt)]), -1, *map(ord, prompt)]  # -1: no character, so no border crosses it
        border = [0] * len(text)
        for i in range(1, len(text)):
            k = border[i - 1]
            while k and text[i] != text[k]:
                k = border[k - 1]
            border[i] = k + (text[i] == text[k])
        if border[-1] >= tail:  # the longest prefix of the query that is a suffix of the prompt
            return query[border[-1]:]
    raise ValueError("does not start with its prompt (nor with a left-truncated part of it)")


@dataclass
class RewardItem:
    instruction: str
    response: str
    reference: str | None


def _string_list(body: dict, name: str, count: int | None) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError(f"field '{name}' must be a list, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(f"field '{name}[{index}]' must be a string, got {type(item).__name__}")
    if count is not None and len(value) != count:
        raise RequestError(f"field '{name}' has {len(value)} items but '{'responses' if 'responses' in body else 'query'}'"
                           f" has {count}")
    return value


def parse_reward_request(body: Any, use_reference: bool, special_tokens: tuple[str, ...] = ()
                         ) -> tuple[list[RewardItem], bool]:
    """(items, single) of a request body; ``single`` for slime's ``{"prompt", "response"}`` form.
    Raises ``RequestError`` naming the offending field."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
    if "query" not in body and "responses" not in body and "prompt" in body:
        prompt, response = body.get("prompt"), body.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise RequestError("fields 'prompt' and 'response' must be strings")
        body = {"prompts": [prompt], "responses": [response], "labels": [body.get("label")],
                "use_reference": body.get("use_reference", use_reference)}
        return parse_reward_request(body, use_reference, special_tokens)[0], True
    flag = body.get("use_reference", use_reference)
    if not isinstance(flag, bool):
        raise RequestError(f"field 'use_reference' must be true or false, got {flag!r}")
    responses = _string_list(body, "responses", None)
    queries = _string_list(body, "query", None if responses is None else len(responses))
    if responses is None and queries is None:
        raise RequestError("field 'query' (or 'responses') is required")
    count = len(responses if responses is not None else queries)
    prompts = _string_list(body, "prompts", count)
    if prompts is None:
        raise RequestError("field 'prompts' is required")
    labels = body.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != count):
        raise RequestError(f"field 'labels' must be a list of {count} items")
    items = []
    for index in range(count):
        if responses is not None:
            response = responses[index]
        else:
            try:
                response = split_query(queries[index], prompts[index])
            except ValueError as err:
                raise RequestError(f"field 'query[{index}]' {err}") from None
        reference = None
        if flag:
            reference = labels[index] if labels is not None else None
            if not isinstance(reference, str) or not reference.strip():
                raise RequestError(f"field 'labels[{index}]' must be a non-empty reference string when use_reference "
                                   "is on")
        items.append(RewardItem(prompt_from_template(prompts[index], special_tokens),
                                strip_end_markers(response, special_tokens), reference))
    return items, False


# --------------------------------------------------------------------------- dynamic batching
@dataclass
class _Pending:
    item: RewardItem
    tokens: int
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    """Coalesces the items of concurrent requests into judge batches.

    Items are tokenised (to bound a batch) on a worker thread, never on the event loop. The first waiting item opens
    a batch. While the judge is busy with the previous batch, items join until the batch is full or the judge is
    free (pipeline depth 2: one batch runs, the next fills). When the judge is idle, items join until the batch is
    full or no item arrived for ``max_wait_ms``; and while the batch is smaller than the last one the judge ran,
    until half that batch's forward time (at least ten ``max_wait_ms``) from the first item: engines send the next
    sample when they have the answer to the last, so the clients of a batch come back together, and a client left
    out of a batch waits a whole forward more, which costs more than the wait. A batch holds at most ``max_batch_size`` items and
    ``max_batch_tokens`` padded tokens (``judge.token_budget_batches``' rule); the judge then runs it in one call of
    that size (on a device each call has a fixed cost), or in forwards of ``judge_batch_size`` when one is given.
    Items of requests that timed out are skipped.
    """

    def __init__(self, judge, config: ServeConfig, metrics: "ServerMetrics | None" = None,
                 judge_batch_size: int | None = None):
        self.judge = judge
        self.config = config
        self.metrics = metrics
        self.judge_batch_size = judge_batch_size
        self.waiting = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfj-judge")
        # a fast tokenizer must not be used by two threads at once ("Already borrowed"): token counting has its own
        # copy and its own thread, off the event loop and off the judge's thread
        self._counter = copy.deepcopy(judge.tokenizer)
        self._count_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfj-count")
        self._template_tokens = judge.template_token_count()
        self._task: asyncio.Task | None = None
        self._busy: asyncio.Task | None = None
        self._last_batch = 1  # clients answered by the last batch: how many are expected back
        self._last_forward_s = 0.0

    def count_tokens(self, item: RewardItem) -> int:
        """Judge-prompt length of an item, near enough to bound a batch (tokenized piecewise)."""
        texts = [item.instruction, item.response] + ([item.reference] if item.reference is not None else [])
        total = self._template_tokens + sum(len(self._counter.encode(t, add_special_tokens=False)) for t in texts)
        return min(total, self.judge.max_length)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._busy):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._executor.shutdown(wait=True)
        self._count_executor.shutdown(wait=True)

    def retry_after_s(self) -> int:
        """Seconds until the waiting responses have likely been scored (the last forward's time per batch)."""
        batches = math.ceil(self.waiting / self.config.max_batch_size)
        return max(1, math.ceil(batches * self._last_forward_s))

    async def submit(self, items: list[RewardItem]) -> list[JudgedItem]:
        if self.waiting + len(items) > self.config.max_queue:
            raise Overloaded(f"{self.waiting} responses waiting (max_queue {self.config.max_queue})",
                             self.retry_after_s())
        loop = asyncio.get_running_loop()
        self.waiting += len(items)
        try:
            counts = await loop.run_in_executor(self._count_executor, lambda: [self.count_tokens(i) for i in items])
        except BaseException:
            self.waiting -= len(items)
            raise
        now = time.perf_counter()
        pending = [_Pending(item, tokens, loop.create_future(), now) for item, tokens in zip(items, counts)]
        for entry in pending:
            self._queue.put_nowait(entry)
        try:
            return await asyncio.gather(*(entry.future for entry in pending))
        finally:
            for entry in pending:
                entry.future.cancel()  # no-op when done; marks the rest of a timed-out request as not needed

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout is not None and timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _next_while_busy(self, busy: asyncio.Task) -> _Pending | None:
        """The next item, or None as soon as the judge finishes its batch."""
        if self._carry is not None or not self._queue.empty():
            return await self._next(0)
        getter = asyncio.ensure_future(self._queue.get())
        await asyncio.wait({getter, busy}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _collect(self) -> list[_Pending]:
        first = await self._next(None)
        batch, longest = [first], first.tokens
        wait = self.config.max_wait_ms / 1000
        cap = time.perf_counter() + max(10 * wait, 0.5 * self._last_forward_s)
        while len(batch) < self.config.max_batch_size:
            if self._busy is not None and not self._busy.done():
                entry = await self._next_while_busy(self._busy)
                if entry is None:
                    continue  # the judge is free now: go on filling as below
            else:
                # below the last batch's size, its clients are still on their way back: wait for them up to the cap
                gap = cap - time.perf_counter() if len(batch) < self._last_batch else min(wait, cap - time.perf_counter())
                entry = await self._next(gap)
                if entry is None:
                    break
            if (len(batch) + 1) * max(longest, entry.tokens) > self.config.max_batch_tokens:
                self._carry = entry
                break
            batch.append(entry)
            longest = max(longest, entry.tokens)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            self.waiting -= len(batch)
            live = [entry for entry in batch if not entry.future.done()]
            if not live:
                continue
            if self._busy is not None:
                await self._busy  # one batch on the judge at a time; this one is ready the moment it is free
            self._last_batch = len(live)
            self._busy = asyncio.ensure_future(self._score_batch(live))

    async def _score_batch(self, live: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._score, [entry.item for entry in live])
        except Exception as err:  # a judge failure fails these requests, never the server
            logger.exception("judge batch of %d failed", len(live))
            for entry in live:
                if not entry.future.done():
                    entry.future.set_exception(err)
            return
        self._last_forward_s = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_batch(len(live), sum(e.tokens for e in live),
                                       [started - e.enqueued for e in live], self._last_forward_s)
        for entry, result in zip(live, results):
            if not entry.future.done():
                entry.future.set_result(result)

    def _score(self, items: list[RewardItem]) -> list[JudgedItem]:
        references = [i.reference for i in items]
        details = self.judge.score_details([i.instruction for i in items], [i.response for i in items],
                                           references if any(r is not None for r in references) else None,
                                           batch_size=self.judge_batch_size or self.config.max_batch_size,
                                           max_batch_tokens=self.config.max_batch_tokens)
        return judged_items(details, [i.response for i in items], self.judge.tokenizer)


# --------------------------------------------------------------------------- metrics
class ServerMetrics:
    """Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("selfj_requests", "Reward requests by HTTP status.", ["status"], registry=self.registry)
        self.items = Counter("selfj_items", "Responses scored.", registry=self.registry)
        self.batch_size = Histogram("selfj_batch_size", "Responses per judge batch.", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_tokens = Histogram("selfj_batch_tokens", "Judge-prompt tokens per batch.", registry=self.registry,
                                      buckets=(256, 1024, 4096, 16384, 65536, 262144))
        self.queue_wait = Histogram("selfj_queue_wait_seconds", "Time from arrival to the start of its batch.",
                                    registry=self.registry)
        self.score_time = Histogram("selfj_score_seconds", "Judge forward time per batch.", registry=self.registry)

    def observe_batch(self, size: int, tokens: int, waits: list[float], seconds: float) -> None:
        self.items.inc(size)
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.score_time.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def as_json(self) -> dict[str, float]:
        """Every sample, named as in the Prometheus text (labels in braces)."""
        out = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out


# --------------------------------------------------------------------------- the app
def create_app(judge, reward: SelfJRewardConfig | None = None, config: ServeConfig | None = None):
    """The FastAPI app serving ``judge`` (a loaded ``SelfJudge``) with ``reward``'s options."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    reward = reward or SelfJRewardConfig()
    config = config or ServeConfig()
    refuse_group_transform(reward.transform)
    api_key = config.api_key
    metrics = ServerMetrics()
    batcher = DynamicBatcher(judge, config, metrics, judge_batch_size=reward.judge_batch_size)
    special = tuple(t for t in getattr(judge.tokenizer, "all_special_tokens", []) if t and len(t) > 1)

    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="selfj judge server", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics

    def unauthorized(request: Request) -> bool:
        if not api_key:
            return False
        header = request.headers.get("authorization", "")
        return not secrets.compare_digest(header.encode(), f"Bearer {api_key}".encode())

    def error(status: int, reason: str, headers: dict | None = None, **extra):
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": reason, **extra}, status_code=status, headers=headers)

    @app.get("/health")
    @app.get("/health/")
    async def health():
        return {"status": "ok", "judge": reward.judge, "template": judge.template.name,
                "device": str(judge.device), "use_reference": reward.use_reference,
                "length_control": judge.length_control}

    @app.get("/metrics")
    async def metrics_route(request: Request, format: str = "prometheus"):
        if unauthorized(request):
            return error(401, "missing or wrong bearer token")
        if format == "json":
            return metrics.as_json()
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/get_reward")
    async def get_reward(request: Request):
        if unauthorized(request):
            return error(401, "missing or wrong bearer token")
        try:
            raw = await read_body(request, config.max_body_bytes)
        except BodyTooLarge as err:
            return error(413, str(err))
        loop = asyncio.get_running_loop()
        try:  # off the event loop: a large body must not stall the other requests or /health
            items, single = await loop.run_in_executor(None, decode_reward_request, raw, reward.use_reference, special)
        except RequestError as err:
            return error(400, str(err))
        try:
            scored = await asyncio.wait_for(batcher.submit(items), config.request_timeout_s) if items else []
        except Overloaded as err:
            return error(503, f"overloaded: {err}", headers={"Retry-After": str(err.retry_after_s)})
        except asyncio.TimeoutError:
            return error(504, f"not scored within request_timeout_s={config.request_timeout_s}")
        except Exception:  # the judge failed on this batch: the details go to the log, not to the client
            error_id = secrets.token_hex(6)
            logger.exception("judge error %s", error_id)
            return error(500, f"the judge failed on this batch; the server log has the details under id {error_id}",
                         error_id=error_id)
        rewards = reward_values(scored, reward.transform, reward.length_penalty)
        scores = [s.score / 9 for s in scored]
        logs = {"expected_digit": [s.score for s in scored], "digit_mass": [s.digit_mass for s in scored],
                "truncated": [float(s.truncated) for s in scored],
                "response_tokens": [float(s.response_tokens) for s in scored]}
        metrics.requests.labels("200").inc()
        if single:
            return {"reward": rewards[0], "score": scores[0], **{k: v[0] for k, v in logs.items()}}
        return {"rewards": rewards, "scores": scores, "extra_logs": logs}

    return app


def check_bind(config: ServeConfig) -> str | None:
    """The warning to print when the server listens beyond loopback without a key."""
    if config.host not in LOOPBACK_HOSTS and not config.api_key:
        return (f"warning: binding {config.host} without --api_key: anyone who can reach port {config.port} can "
                "use this judge")
    return None


def serve(reward: SelfJRewardConfig, config: ServeConfig) -> None:
    """Load the judge and serve it until SIGTERM/SIGINT (in-flight requests finish first)."""
    import os
    import sys

    import uvicorn

    if reward.judge_server_url:
        raise ConfigError("judge_server_url is a client option; a judge server loads its judge itself")
    if config.api_key is None:
        config.api_key = os.environ.get("SELFJ_API_KEY") or None
    warning = check_bind(config)
    if warning:
        print(warning, file=sys.stderr)
    judge = reward.load_judge()
    app = create_app(judge, reward, config)
    print(f"selfj judge server: {reward.judge} on http://{config.host}:{config.port}/get_reward "
          f"(device {judge.device}, max_batch_size {config.max_batch_size})", file=sys.stderr, flush=True)
    # uvicorn finishes in-flight requests on SIGTERM and then re-raises the signal under the handler found at start:
    # this one makes that a normal exit (status 0) instead of a death by signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=math.ceil(config.graceful_shutdown_s))
