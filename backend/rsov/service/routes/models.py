"""The models the backend knows, and the download or import of their weights."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...models import list_models
from ..deps import ServiceDep
from ..errors import documented
from ..schemas import DownloadRequest, ImportRequest, ModelList, ModelTransfer
from ..security import require_token

router = APIRouter(tags=["models"], dependencies=[Depends(require_token)])


@router.get("/v1/models", responses=documented("unauthorized"))
def models(service: ServiceDep) -> ModelList:
    """Every known CLIP and SAM model: its weights on this machine, whether it is loaded, its latest transfer."""
    rows = []
    model_name = service.config.model_name
    for row in list_models():
        transfer = service.transfers.get(row["name"])
        rows.append(
            dict(
                row,
                loaded=row["kind"] == "clip" and row["name"] == model_name,
                transfer=transfer.as_dict() if transfer else None,
            )
        )
    if not any(r["loaded"] for r in rows):
        rows.append(
            {
                "name": model_name,
                "kind": "clip",
                "arch": "",
                "description": "loaded model",
                "weights_present": True,
                "loaded": True,
                "path": None,
                "size_bytes": None,
                "sha256": None,
                "downloadable": False,
                "transfer": None,
            }
        )
    return ModelList.model_validate({"models": rows})


@router.post(
    "/v1/models/{name}/download",
    status_code=202,
    responses=documented("unauthorized", "no_such_model", "invalid_request"),
)
def download_model(name: str, service: ServiceDep, body: DownloadRequest | None = None) -> ModelTransfer:
    """Download a model's weights into the cache, verified; progress in GET /v1/models. A gated model
    (SAM 3) takes a hub token in the body; a refusal is the transfer's error, naming the licence step."""
    spec = service.model(name)
    transfer = service.transfers.download(spec, body.hub_token if body else None)
    return ModelTransfer.model_validate({"name": spec.name, "transfer": transfer.as_dict()})


@router.post(
    "/v1/models/{name}/import",
    status_code=202,
    responses=documented("bad_path", "unauthorized", "forbidden_path", "no_such_model", "invalid_request"),
)
def import_model(name: str, body: ImportRequest, service: ServiceDep) -> ModelTransfer:
    """Verify a weights file on this machine against the model's digest and copy it into the cache."""
    spec = service.model(name)
    transfer = service.transfers.import_file(spec, service.policy.check(body.path))
    return ModelTransfer.model_validate({"name": spec.name, "transfer": transfer.as_dict()})
