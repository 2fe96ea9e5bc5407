"""``POST /v1/rewards/validate``: the dry run of a job's rewards (service/dryrun.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import dryrun
from service.admission import release_admission
from service.bodies import BoundedJSONRoute
from service.deps import CurrentTenant, SettingsDep
from service.schemas import RewardValidateRequest, RewardValidateResponse

router = APIRouter(prefix="/v1/rewards", tags=["rewards"], route_class=BoundedJSONRoute)


@router.post("/validate", response_model=RewardValidateResponse)
async def validate_reward(
    body: RewardValidateRequest, request: Request, tenant: CurrentTenant, settings: SettingsDep
) -> RewardValidateResponse:
    # Async, and authenticated by a session already closed: the wait on the endpoint holds no database
    # connection and no thread, so the request hands its admission slot back (service/admission.py). The
    # dry-run slots bound what one tenant, and all of them, can have waiting.
    with request.app.state.dry_runs.hold(tenant.id):
        release_admission(request)
        return await dryrun.dry_run(body, tenant.id, settings)
