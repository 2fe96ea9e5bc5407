"""The dry run of a job's rewards before any GPU is spent (``POST /v1/rewards/validate``).

It goes through the engine's own scorers (``HTTPRewardClient``, and for a ``rewards`` list the graders and
``CompositeScorer``), so what passes here is what the job will see, each component by name.
Item errors come back per item (``on_error`` is forced to ``skip_sample``);
timeouts and retries are capped so that a dead endpoint answers in seconds, not minutes. The answer is
scrubbed of the request's header values (an endpoint may echo them in an error body or an item error).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from rlcore.errors import RLFTError
from rlcore.rewards.base import RewardItem
from rlcore.rewards.composite import CompositeScorer
from rlcore.rewards.graders import GraderScorer
from rlcore.rewards.http import HTTPRewardClient
from rlcore.rewards.secrets import Scrubber
from rlcore.rewards.urlpolicy import RewardURLPolicy
from rlcore.spec import HTTPRewardEntry, RewardSpec
from rlft_contracts.settings import Settings
from service.schemas import RewardValidateRequest, RewardValidateResponse
from service.validation import check_reward_url

DRY_RUN_TIMEOUT_S = 30.0
DRY_RUN_RETRIES = 1


async def dry_run(body: RewardValidateRequest, tenant_id: str, settings: Settings) -> RewardValidateResponse:
    # The URL checks resolve hosts: off the event loop.
    for field, reward in body.http_rewards():
        await asyncio.to_thread(check_reward_url, reward.url, settings, f"{field}.url")
    items = [
        RewardItem(
            id=f"validate-{i}",
            prompt=it.prompt,
            completion=it.completion,
            group=i,
            label=it.label,
            metadata=it.metadata,
        )
        for i, it in enumerate(body.items)
    ]
    n = len(items)
    start = time.perf_counter()
    # A fresh id per dry run: a reward server that honours Idempotency-Key must never answer this one with
    # an earlier dry run's result.
    job_id = f"validate-{tenant_id}-{uuid.uuid4().hex[:12]}"
    scrub = Scrubber.for_headers(body.header_secrets())  # the union of every endpoint's values
    scorer = await asyncio.to_thread(_scorer, body, job_id, settings)
    try:
        result = await scorer.ascore(0, items)
    except RLFTError as e:
        return scrub.model(
            RewardValidateResponse(
                ok=False,
                rewards=[None] * n,
                errors=[None] * n,
                components=[None] * n,
                latency_ms=_ms(start),
                protocol_error=e.to_dict(),
                metrics={},
            )
        )
    finally:
        await asyncio.to_thread(scorer.close)
    return scrub.model(
        RewardValidateResponse(
            ok=all(r is not None for r in result.rewards),
            rewards=result.rewards,
            errors=result.errors,
            components=result.components,
            latency_ms=_ms(start),
            protocol_error=None,
            metrics=result.metrics,
        )
    )


def _dry_run_spec(reward: RewardSpec) -> RewardSpec:
    """Item errors come back per item, and a dead endpoint answers in seconds."""
    return reward.model_copy(
        update={
            "on_error": "skip_sample",
            "timeout_s": min(reward.timeout_s, DRY_RUN_TIMEOUT_S),
            "max_retries": min(reward.max_retries, DRY_RUN_RETRIES),
        }
    )


def _client(reward: RewardSpec, job_id: str, settings: Settings, name: str | None = None) -> HTTPRewardClient:
    return HTTPRewardClient(
        _dry_run_spec(reward),
        job_id=job_id,
        url_policy=RewardURLPolicy.from_settings(settings),
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
        retry_after_cap_s=2.0,
        name=name,
    )


def _scorer(
    body: RewardValidateRequest, job_id: str, settings: Settings
) -> HTTPRewardClient | CompositeScorer:
    if body.rewards is None:
        assert body.reward is not None
        return _client(body.reward, job_id, settings)
    built: list[tuple[Any, Any]] = []
    try:
        for entry in body.rewards:
            if isinstance(entry, HTTPRewardEntry):
                built.append((entry, _client(entry, job_id, settings, name=entry.name)))
            else:
                # No tokenizer here: the length grader counts approximate tokens (UTF-8 bytes / 4).
                built.append((entry, GraderScorer(entry.model_copy(update={"on_error": "skip_sample"}))))
    except BaseException:
        for _, scorer in built:
            scorer.close()
        raise
    return CompositeScorer(built)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
