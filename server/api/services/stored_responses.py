"""The Responses API's side of the store: new ids, the stored chain as chat history, saving a
finished response, and the 404s and 503s of stored operations.

What a stored response keeps (`StoredResponse`): the `response` object as its client got it
(output items, usage, status and the request's settings), and its own input items, each with an
id (`msg_…`) for `GET /v1/responses/{id}/input_items`. `previous_response_id` walks the chain
back: each earlier turn's input items, then its output, in order, then the new input; the
instructions are the new request's only, as on OpenAI.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from server.api.protocol.responses_request import ResponseInputItem, ResponsesRequest
from server.errors import APIError, invalid_request, unavailable
from server.store import Chain, StoreArchive, StoredResponse, StoreUnavailable

TEXT_INPUT_TYPES = {"input_text", "text"}


def new_response_id() -> str:
    """Unique whatever the request id (a client may send the same X-Request-Id twice)."""
    return f"resp_{uuid.uuid4().hex}"


def response_not_found(response_id: str, param: str = "response_id") -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found.",
        type="not_found_error", param=param, code="response_not_found",
    )


@contextlib.contextmanager
def unavailable_as_503() -> Iterator[None]:
    """A store that cannot be reached is the routes' 503, with nothing of the driver's error."""
    try:
        yield
    except StoreUnavailable:
        raise store_unavailable() from None


def store_unavailable() -> APIError:
    return unavailable("The responses store is unavailable; retry shortly, or send `store: false`.", retry_after=2)


def stored_input_items(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as OpenAI lists a response's input items: message items with ids and
    typed parts (a string input is one user message)."""
    if isinstance(request.input, str):
        items = [ResponseInputItem(role="user", content=[{"type": "input_text", "text": request.input}])]
    else:
        items = request.input
    stored = []
    for item in items:
        body = item.model_dump(exclude_none=True)
        if item.type != "message":  # function_call, function_call_output: kept as they came
            prefix = "fc" if item.type == "function_call" else "fco"
            stored.append({"id": body.pop("id", None) or f"{prefix}_{uuid.uuid4().hex}", **body, "status": "completed"})
            continue
        if isinstance(item.content, str):
            part_type = "output_text" if item.role == "assistant" else "input_text"
            body["content"] = [{"type": part_type, "text": item.content}]
        stored.append({"id": f"msg_{uuid.uuid4().hex}", **body, "type": "message", "status": "completed"})
    return stored


def _as_input(item: dict[str, Any]) -> ResponseInputItem:
    return ResponseInputItem.model_validate({k: v for k, v in item.items() if k not in ("id", "status")})


def chain_items(chain: Chain) -> list[ResponseInputItem]:
    """The conversation a chain holds: each turn's input items, then its output items (the
    answer's message and its function calls, as a client would send them back)."""
    items: list[ResponseInputItem] = []
    for record in chain.responses:
        items.extend(_as_input(item) for item in record.input_items)
        for output in record.response.get("output", []):
            if output.get("type") == "message":
                items.append(ResponseInputItem(type="message", role="assistant", content=output.get("content") or []))
            elif output.get("type") == "function_call":
                items.append(_as_input(output))
    return items


class StoredResponses:
    def __init__(self, archive: StoreArchive | None) -> None:
        self.archive = archive

    @property
    def enabled(self) -> bool:
        return self.archive is not None

    def will_store(self, request: ResponsesRequest) -> bool:
        """`store` defaults to true, as on OpenAI, where a store exists."""
        return self.enabled if request.store is None else request.store

    def _archive(self) -> StoreArchive:
        if self.archive is None:  # the service refused the request before this
            raise store_unavailable()
        return self.archive

    async def history(self, request: ResponsesRequest) -> list[ResponseInputItem]:
        """The items of the chain `previous_response_id` names (none without it)."""
        if request.previous_response_id is None:
            return []
        with unavailable_as_503():
            chain = await self._archive().chain(request.previous_response_id)
        if chain.missing is not None:
            # An earlier turn of the chain may be the one gone (deleted, expired or evicted).
            raise response_not_found(chain.missing, param="previous_response_id")
        return chain_items(chain)

    async def save(self, request: ResponsesRequest, input_items: list[dict[str, Any]], response: dict[str, Any]) -> None:
        record = StoredResponse(
            id=response["id"], previous_id=request.previous_response_id, created_at=time.time(),
            status=response["status"], response=response, input_items=input_items,
        )
        with unavailable_as_503():
            await self._archive().save(record)

    async def save_record(
        self, record: StoredResponse, *, owner: str | None = None, only_if_status: tuple[str, ...] | None = None
    ) -> bool:
        with unavailable_as_503():
            return await self._archive().save(record, owner=owner, only_if_status=only_if_status)

    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> bool:
        with unavailable_as_503():
            return await self._archive().append_events(response_id, events)

    async def events_after(self, response_id: str, after: int) -> tuple[str | None, list[tuple[int, str]]]:
        with unavailable_as_503():
            return await self._archive().events_after(response_id, after)

    async def heartbeat(self, response_id: str) -> str | None:
        return await self._archive().heartbeat(response_id)

    async def cancel(self, response_id: str) -> StoredResponse:
        """Mark a running background response cancelled; it as it is now."""
        if self.archive is None:
            raise response_not_found(response_id)
        with unavailable_as_503():
            record = await self.archive.get(response_id)
            if record is None:
                raise response_not_found(response_id)
            if not record.response.get("background"):
                raise invalid_request(
                    "Only responses created with background: true can be cancelled.", param="response_id",
                    code="not_background",
                )
            cancelled = await self.archive.cancel(response_id)
        if cancelled is None:
            raise response_not_found(response_id)
        return cancelled

    async def get(self, response_id: str) -> StoredResponse:
        if self.archive is None:
            raise response_not_found(response_id)
        with unavailable_as_503():
            record = await self.archive.get(response_id)
        if record is None:
            raise response_not_found(response_id)
        return record

    async def delete(self, response_id: str) -> None:
        if self.archive is None:
            raise response_not_found(response_id)
        with unavailable_as_503():
            existed = await self.archive.delete(response_id)
        if not existed:
            raise response_not_found(response_id)


def input_items_page(
    items: list[dict[str, Any]], *, after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """One page of a response's input items, as OpenAI lists them: `order` desc (newest first,
    OpenAI's default) or asc, the items after the one with id `after`, at most `limit`."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    start = 0
    if after is not None:
        positions = [position for position, item in enumerate(ordered) if item.get("id") == after]
        if not positions:
            raise invalid_request(f"No input item '{after}' in this response.", param="after")
        start = positions[0] + 1
    data = ordered[start:start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }
