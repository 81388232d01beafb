"""POST /v1/feedback: the truth about an answer, for live accuracy (MNIST_FEEDBACK)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.errors import NotFound
from service.http.api.deps import DataPlaneDep, require_api_key
from service.http.api.guard import body_schema, guarded_route, parse_json, read_body
from service.wire.schemas.rest import ErrorResponse, FeedbackRequest, FeedbackResponse

#: A feedback body is a request id, an index and a short truth.
MAX_FEEDBACK_BYTES = 4096

router = APIRouter(
    prefix="/v1",
    tags=["v1"],
    dependencies=[Depends(require_api_key)],
    route_class=guarded_route(require_api_key, lambda _: MAX_FEEDBACK_BYTES),
)


class FeedbackOff(NotFound):
    code = "feedback_off"


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        400: {"model": ErrorResponse, "description": "Bad JSON, index or truth"},
        401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
        404: {"model": ErrorResponse, "description": "Unknown or expired answer; or feedback off"},
        413: {"model": ErrorResponse, "description": "Body over 4 KiB"},
        503: {"model": ErrorResponse, "description": "The feedback store cannot be reached"},
    },
    summary="Give the truth about one answer (request id and index)",
    openapi_extra=body_schema(FeedbackRequest),
)
async def give_feedback(request: Request, plane: DataPlaneDep) -> JSONResponse:
    """Record what a file really shows; giving it again replaces it (the same twice is a no-op)."""
    recorder = plane.recorder
    if recorder is None:
        raise FeedbackOff("feedback is off on this server (MNIST_FEEDBACK)")
    body = await parse_json(await read_body(request), FeedbackRequest)
    truth = body.truth_text()
    served = await recorder.give(body.request_id, body.index, truth)
    out: FeedbackResponse = {
        "request_id": body.request_id,
        "index": body.index,
        "truth": truth,
        "version": served.version,
        "answer": served.answer,
        "correct": served.answer == truth,
    }
    return JSONResponse(out)
