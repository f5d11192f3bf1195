"""``GET /v1/health``: the handshake, without a token."""

from __future__ import annotations

import torch
from fastapi import APIRouter

from ... import API_VERSION, __version__
from ..deps import ServiceDep
from ..errors import documented
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/v1/health", responses=documented())
def health(service: ServiceDep) -> Health:
    """Who answers (version, API version, model, device) and whether the model is ready; no token needed."""
    engines = service.engines
    device = engines.device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return Health(
        status="ok",
        version=__version__,
        api_version=API_VERSION,
        model=service.config.model_name,
        models=[service.config.model_name],
        device=device.type,
        gpu_name=gpu,
        model_ready=engines.ready,
        model_error=engines.error,
        fast_precision=engines.fast.precision,
        fast_precision_reason=engines.fast.reason,
    )
