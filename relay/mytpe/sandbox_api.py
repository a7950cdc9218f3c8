"""The sandbox's HTTP side: MyTPE's management API of both generations, as documented, plus control routes.

Legacy, X-API-KEY / X-API-SECRET:  /api/v2/mytpe-pay/{instance}/webhook (GET, PUT), …/regenerate-secret
New generation, same headers:      /api/ext/webhooks[/{id}[/regenerate-secret|/deliveries[/{d}/redeliver]]]
Sandbox control (no credentials):  POST /sandbox/emit {"hook", "count", "rate", "seed", "disorder", "repeat"},
                                   GET /sandbox/attempts, POST /sandbox/faults {"fail_next", "fail_status",
                                   "stall_next", "stall_seconds", "lose_next", "lose_status", "match"}
                                   (see sandbox.Faults; answers the counts left), POST /sandbox/instances {"id"}
Error answers follow Laravel's shape, as MyTPE's API is: `{"message": …}` (401, 404), plus
`{"errors": {field: [...]}}` for 422.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.mytpe.sandbox import Delivery, Hook, Sandbox, mask, new_secret, now

Handler = Callable[[Request], Awaitable[Response]]
PAGE = 25
UPDATED = "Webhook updated successfully"  # MyTPE's messages, as in its documented examples
REGENERATED = "Webhook secret regenerated"


def create_sandbox_app(sandbox: Sandbox) -> Starlette:
    def guarded(handler: Callable[[Request, Sandbox], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            faults, line = sandbox.faults, f"{request.method} {request.url.path}"
            await request.body()  # read now: a stalled request is still applied after its client left
            if faults.take("stall_next", line):
                await asyncio.sleep(faults.stall_seconds)
            if faults.take("fail_next", line):
                return JSONResponse({"message": "Server Error"}, status_code=faults.fail_status)
            key, secret = request.headers.get("x-api-key"), request.headers.get("x-api-secret")
            if key != sandbox.api_key or secret != sandbox.api_secret:
                return JSONResponse({"success": False, "message": "Unauthenticated."}, status_code=401)
            if not faults.take("lose_next", line):
                return await handler(request, sandbox)
            answer = await handler(request, sandbox)  # the change is made; its answer is lost
            if faults.lose_status:
                return JSONResponse({"message": "Gateway Timeout"}, status_code=faults.lose_status)
            await asyncio.sleep(faults.stall_seconds)
            return answer

        return endpoint

    def control(handler: Callable[[Request, Sandbox], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await handler(request, sandbox)

        return endpoint

    legacy = "/api/v2/mytpe-pay/{instance}/webhook"
    ext = "/api/ext/webhooks"
    routes = [
        Route(legacy, guarded(legacy_get), methods=["GET"]),
        Route(legacy, guarded(legacy_put), methods=["PUT"]),
        Route(legacy + "/regenerate-secret", guarded(legacy_regenerate), methods=["POST"]),
        Route(ext, guarded(ext_list), methods=["GET"]),
        Route(ext, guarded(ext_create), methods=["POST"]),
        Route(ext + "/{id}", guarded(ext_get), methods=["GET"]),
        Route(ext + "/{id}", guarded(ext_patch), methods=["PATCH"]),
        Route(ext + "/{id}", guarded(ext_delete), methods=["DELETE"]),
        Route(ext + "/{id}/regenerate-secret", guarded(ext_regenerate), methods=["POST"]),
        Route(ext + "/{id}/deliveries", guarded(ext_deliveries), methods=["GET"]),
        Route(ext + "/{id}/deliveries/{delivery}/redeliver", guarded(ext_redeliver), methods=["POST"]),
        Route("/sandbox/instances", control(add_instance), methods=["POST"]),
        Route("/sandbox/emit", control(emit), methods=["POST"]),
        Route("/sandbox/attempts", control(attempts), methods=["GET"]),
        Route("/sandbox/faults", control(faults), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _not_found(what: str) -> Response:
    return JSONResponse({"success": False, "message": f"{what} not found."}, status_code=404)


def _invalid(field: str, message: str) -> Response:
    return JSONResponse({"message": message, "errors": {field: [message]}}, status_code=422)


def _url_problem(sandbox: Sandbox, url: Any) -> str | None:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http") or not urlsplit(url).netloc:
        return "The webhook url field must be a valid URL."
    if urlsplit(url).scheme == "http" and not sandbox.allow_http_webhooks:
        return "The webhook url must use HTTPS."
    return None


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _legacy_view(hook: Hook, *, full: bool = False) -> dict[str, Any]:
    secret = hook.secret if full else (mask(hook.secret) if hook.secret else None)
    return {"webhook_url": hook.url, "webhook_secret": secret, "has_secret": hook.secret is not None}


async def legacy_get(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.instances.get(request.path_params["instance"])
    if hook is None:
        return _not_found("Instance")
    return JSONResponse({"success": True, "data": _legacy_view(hook)})


async def legacy_put(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.instances.get(request.path_params["instance"])
    if hook is None:
        return _not_found("Instance")
    body = await _json(request)
    if "webhook_url" not in body:
        return _invalid("webhook_url", "The webhook url field must be present.")
    url = body["webhook_url"]
    if url is None:
        hook.url, hook.secret, hook.updated_at = None, None, now()
        return JSONResponse({"success": True, "message": UPDATED, "data": _legacy_view(hook)})
    problem = _url_problem(sandbox, url)
    if problem:
        return _invalid("webhook_url", problem)
    first = hook.secret is None
    hook.url, hook.updated_at = url, now()
    if first:
        hook.secret = new_secret()
    return JSONResponse({"success": True, "message": UPDATED, "data": _legacy_view(hook, full=first)})


async def legacy_regenerate(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.instances.get(request.path_params["instance"])
    if hook is None:
        return _not_found("Instance")
    hook.secret, hook.updated_at = new_secret(), now()  # the old one is dead at once
    return JSONResponse({"success": True, "message": REGENERATED, "data": {"webhook_secret": hook.secret}})


async def ext_list(request: Request, sandbox: Sandbox) -> Response:
    items = [hook.public() for hook in sandbox.endpoints.values()]
    return JSONResponse(_page(items, request))


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    page = max(int(request.query_params.get("page", "1") or 1), 1)
    last = max((len(items) + PAGE - 1) // PAGE, 1)
    chunk = items[(page - 1) * PAGE : page * PAGE]
    return {"data": chunk, "meta": {"current_page": page, "last_page": last, "per_page": PAGE, "total": len(items)}}


async def ext_create(request: Request, sandbox: Sandbox) -> Response:
    body = await _json(request)
    problem = _url_problem(sandbox, body.get("url"))
    if problem:
        return _invalid("url", problem)
    events = body.get("events") or []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        return _invalid("events", "The events field must be an array of event names.")
    hook = Hook(str(uuid.uuid4()), body["url"], new_secret(), events, body.get("description"))
    sandbox.endpoints[hook.id] = hook
    return JSONResponse({"data": hook.public(with_secret=True)}, status_code=201)


async def ext_get(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.endpoints.get(request.path_params["id"])
    return _not_found("Webhook") if hook is None else JSONResponse({"data": hook.public()})


async def ext_patch(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.endpoints.get(request.path_params["id"])
    if hook is None:
        return _not_found("Webhook")
    body = await _json(request)
    if "url" in body:
        problem = _url_problem(sandbox, body["url"])
        if problem:
            return _invalid("url", problem)
        hook.url = body["url"]
    if "is_active" in body:
        hook.is_active = bool(body["is_active"])
    if "events" in body and isinstance(body["events"], list):
        hook.events = [str(e) for e in body["events"]]
    hook.updated_at = now()
    return JSONResponse({"data": hook.public()})


async def ext_delete(request: Request, sandbox: Sandbox) -> Response:
    if sandbox.endpoints.pop(request.path_params["id"], None) is None:
        return _not_found("Webhook")
    return Response(status_code=204)


async def ext_regenerate(request: Request, sandbox: Sandbox) -> Response:
    hook = sandbox.endpoints.get(request.path_params["id"])
    if hook is None:
        return _not_found("Webhook")
    hook.secret, hook.updated_at = new_secret(), now()
    return JSONResponse({"data": hook.public(with_secret=True)})


async def ext_deliveries(request: Request, sandbox: Sandbox) -> Response:
    hook_id = request.path_params["id"]
    if hook_id not in sandbox.endpoints:
        return _not_found("Webhook")
    items = [d.public() for d in sandbox.deliveries.values() if d.hook == hook_id]
    return JSONResponse(_page(items, request))


async def ext_redeliver(request: Request, sandbox: Sandbox) -> Response:
    hook_id = request.path_params["id"]
    delivery = sandbox.deliveries.get(request.path_params["delivery"])
    if hook_id not in sandbox.endpoints or delivery is None or delivery.hook != hook_id:
        return _not_found("Delivery")
    sandbox.deliver(Delivery(delivery.id, delivery.hook, delivery.event, delivery.body))
    return JSONResponse({"data": {"id": delivery.id, "status": "pending"}}, status_code=202)


async def add_instance(request: Request, sandbox: Sandbox) -> Response:
    body = await _json(request)
    instance = str(body.get("id") or uuid.uuid4())
    sandbox.add_instance(instance)
    return JSONResponse({"id": instance}, status_code=201)


async def emit(request: Request, sandbox: Sandbox) -> Response:
    body = await _json(request)
    hook = str(body.get("hook", ""))
    if sandbox.hook(hook) is None:
        return _not_found("Instance or webhook")
    made = sandbox.emit(
        hook,
        int(body.get("count", 10)),
        seed=int(body.get("seed", 1)),
        disorder=float(body.get("disorder", 0.0)),
        repeat=float(body.get("repeat", 0.0)),
    )
    task = asyncio.create_task(sandbox.run_emission(made, float(body.get("rate", 10.0))))
    sandbox.background.add(task)
    task.add_done_callback(sandbox.background.discard)
    return JSONResponse({"deliveries": [d.id for d in made]}, status_code=202)


async def attempts(request: Request, sandbox: Sandbox) -> Response:
    tries: dict[str, list[int | str]] = {}
    for attempt in sandbox.log:  # one pass: thousands of deliveries stay quick
        tries.setdefault(attempt.delivery_id, []).append(attempt.status)
    deliveries = [{**d.public(), "hook": d.hook, "tries": tries.get(d.id, [])} for d in sandbox.deliveries.values()]
    log = [{"delivery_id": a.delivery_id, "attempt": a.attempt, "status": a.status, "at": a.at} for a in sandbox.log]
    return JSONResponse({"deliveries": deliveries, "attempts": len(sandbox.log), "log": log})


async def faults(request: Request, sandbox: Sandbox) -> Response:
    body = await _json(request)
    for name in ("fail_next", "fail_status", "stall_next", "lose_next", "lose_status"):
        if name in body:
            setattr(sandbox.faults, name, int(body[name]))
    if "stall_seconds" in body:
        sandbox.faults.stall_seconds = float(body["stall_seconds"])
    if "match" in body:
        sandbox.faults.match = str(body["match"])
    left = {name: getattr(sandbox.faults, name) for name in ("fail_next", "stall_next", "lose_next")}
    return JSONResponse({"ok": True, **left})  # what is left to hit: `{}` asks without changing anything
