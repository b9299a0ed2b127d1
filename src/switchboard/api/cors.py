"""Permissive CORS, as LiveKit serves it: browsers call the API and `/rtc/validate` from any origin."""

from collections.abc import Awaitable, Callable

from aiohttp import web

HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, HEAD, GET, POST, PATCH, DELETE",
    "Access-Control-Max-Age": "86400",
}


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers = dict(HEADERS)
        headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "*")
        return web.Response(status=204, headers=headers)
    try:
        response = await handler(request)
    except web.HTTPException as error:  # refusals raised as exceptions carry the headers too
        error.headers.update(HEADERS)
        raise
    if not response.prepared:
        response.headers.update(HEADERS)
    return response
