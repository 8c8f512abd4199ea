"""HTTP client of a ``selfj serve`` judge server: what ``SelfJReward(judge_server_url=...)`` calls.

One request carries a whole call (every completion of a TRL step), in the server's ``responses`` extension of the
OpenRLHF ``/get_reward`` protocol, so no chat template has to be parsed back. Overload (503), timeouts (504) and
refused connections (a restarting server) are retried with a doubling pause; anything else is raised at once.
"""

from __future__ import annotations

import asyncio
import os
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

    def __init__(self, server_url: str, api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 5):
        url = server_url.rstrip("/")
        self.url = url if url.endswith("/get_reward") else url + "/get_reward"
        self.api_key = api_key if api_key is not None else os.environ.get("SELFJ_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries

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

        for attempt in range(self.max_retries + 1):
            try:
                response = httpx.post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
                if response.status_code not in RETRIED_STATUS:
                    return self._answer(response)
                reason = f"status {response.status_code}"
            except _retried_errors() as err:
                reason = repr(err)
            if attempt < self.max_retries:
                time.sleep(_pause(attempt))
        raise JudgeServerError(f"{self.url} unavailable after {self.max_retries} retries ({reason})")

    async def apost(self, body: dict) -> dict:
        """``post`` as a coroutine."""
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            for attempt in range(self.max_retries + 1):
                try:
                    response = await client.post(self.url, json=body, headers=self._headers())
                    if response.status_code not in RETRIED_STATUS:
                        return self._answer(response)
                    reason = f"status {response.status_code}"
                except _retried_errors() as err:
                    reason = repr(err)
                if attempt < self.max_retries:
                    await asyncio.sleep(_pause(attempt))
        raise JudgeServerError(f"{self.url} unavailable after {self.max_retries} retries ({reason})")

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


def _pause(attempt: int) -> float:
    return min(2.0 ** attempt, 30.0)
