"""HTTP client of a ``selfj serve`` judge server: what ``SelfJReward(judge_server_url=...)`` calls.

One request carries a whole call (every completion of a TRL step), in the server's ``responses`` extension of the
OpenRLHF ``/get_reward`` protocol, so no chat template has to be parsed back.

Failure semantics: overload (503), timeouts (504), a bad gateway (502) and refused or dropped connections (a
restarting server) are retried with a jittered, doubling pause (at least the server's Retry-After), until
``max_retries`` or the call's ``deadline_s`` runs out; then, and at once for anything else (400 bad input, 401, 413,
500 a judge failure), ``JudgeServerError`` is raised. A failed reward is never turned into a number: engines that
map a timeout to a reward of 0 bias every advantage of the group it lands in.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Sequence

from ..core.errors import SelfJError
from ..judge.reward_signal import JudgedItem

RETRIED_STATUS = (502, 503, 504)


def _retried_errors():
    import httpx

    return (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)


class JudgeServerError(SelfJError):
    """The judge server refused a request (bad input, authentication) or stayed unavailable after retries."""


class JudgeClient:
    """Sync and async scoring against ``{server_url}/get_reward``; picklable (connections are opened per call)."""

    def __init__(self, server_url: str, api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 5,
                 deadline_s: float | None = None):
        """``timeout_s`` bounds one HTTP request, ``deadline_s`` (default: unbounded) the whole call with its
        retries: past it the call raises instead of trying again."""
        url = server_url.rstrip("/")
        self.url = url if url.endswith("/get_reward") else url + "/get_reward"
        self.api_key = api_key if api_key is not None else os.environ.get("SELFJ_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.deadline_s = deadline_s

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @staticmethod
    def payload(instructions: Sequence[str], responses: Sequence[str],
                references: Sequence[str | None] | None) -> dict:
        body = {"prompts": list(instructions), "responses": list(responses), "use_reference": references is not None}
        if references is not None:
            body["labels"] = list(references)
        return body

    def _items(self, answer: dict, count: int):
        logs = answer["extra_logs"]
        items = [JudgedItem(score=d, digit_mass=m, truncated=bool(t), response_tokens=int(n))
                 for d, m, t, n in zip(logs["expected_digit"], logs["digit_mass"], logs["truncated"],
                                       logs["response_tokens"])]
        if len(items) != count:
            raise JudgeServerError(f"{self.url} returned {len(items)} scores for {count} responses")
        return items

    def _answer(self, response) -> dict:
        if response.status_code != 200:
            raise JudgeServerError(f"{self.url} answered {response.status_code}: {response.text.strip()[:500]}")
        return response.json()

    def post(self, body: dict) -> dict:
        """POST a ``/get_reward`` body and return the answer, retrying overload, timeouts and refused connections."""
        import httpx

        deadline = self._deadline()
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = httpx.post(self.url, json=body, headers=self._headers(),
                                      timeout=self._request_timeout(deadline))
                if response.status_code not in RETRIED_STATUS:
                    return self._answer(response)
                reason, retry_after = f"status {response.status_code}", _retry_after(response)
            except _retried_errors() as err:
                reason = repr(err)
            pause = self._next_pause(attempt, retry_after, deadline)
            if pause is None:
                break
            time.sleep(pause)
        raise self._gave_up(attempt, reason)

    async def apost(self, body: dict) -> dict:
        """``post`` as a coroutine."""
        import httpx

        deadline = self._deadline()
        async with httpx.AsyncClient() as client:
            for attempt in range(self.max_retries + 1):
                retry_after = None
                try:
                    response = await client.post(self.url, json=body, headers=self._headers(),
                                                 timeout=self._request_timeout(deadline))
                    if response.status_code not in RETRIED_STATUS:
                        return self._answer(response)
                    reason, retry_after = f"status {response.status_code}", _retry_after(response)
                except _retried_errors() as err:
                    reason = repr(err)
                pause = self._next_pause(attempt, retry_after, deadline)
                if pause is None:
                    break
                await asyncio.sleep(pause)
        raise self._gave_up(attempt, reason)

    def _deadline(self) -> float | None:
        return None if self.deadline_s is None else time.monotonic() + self.deadline_s

    def _request_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout_s
        return max(0.001, min(self.timeout_s, deadline - time.monotonic()))

    def _next_pause(self, attempt: int, retry_after: float | None, deadline: float | None) -> float | None:
        """The pause before the next try, or None when there is none: retries spent, or the deadline would pass."""
        if attempt >= self.max_retries:
            return None
        pause = _pause(attempt, retry_after)
        if deadline is not None and time.monotonic() + pause >= deadline:
            return None
        return pause

    def _gave_up(self, attempt: int, reason: str) -> JudgeServerError:
        within = "" if self.deadline_s is None else f" within the {self.deadline_s} s deadline"
        return JudgeServerError(f"{self.url} unavailable after {attempt + 1} tries{within} ({reason})")

    def score(self, instructions: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None):
        """``JudgedItem``s of the responses, in order."""
        if not responses:
            return []
        return self._items(self.post(self.payload(instructions, responses, references)), len(responses))

    async def ascore(self, instructions: Sequence[str], responses: Sequence[str],
                     references: Sequence[str | None] | None = None):
        """``score`` as a coroutine."""
        if not responses:
            return []
        return self._items(await self.apost(self.payload(instructions, responses, references)), len(responses))


def _pause(attempt: int, retry_after: float | None = None) -> float:
    """Doubling from 1 s up to 30 s, drawn from the upper half of that window so that clients refused together do
    not come back together; never shorter than the server's Retry-After."""
    ceiling = min(2.0 ** attempt, 30.0)
    pause = random.uniform(ceiling / 2, ceiling)
    return pause if retry_after is None else max(pause, retry_after)


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), 60.0)
    except ValueError:
        return None
