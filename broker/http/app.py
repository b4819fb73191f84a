"""The dashboard: a Starlette app of server-rendered pages over the service layer.

Every value comes from broker.service (never the store, never protobuf); every page is a
Jinja2 template with autoescaping on; the only scripts are the vendored htmx and uPlot and
static/dashboard.js. Signing in trades a token for a signed session cookie; each action is
a POST that carries the session's CSRF token and needs the `admin` role.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from broker.clock import Clock
from broker.domain import (
    POOL_SCALAR_SETTINGS,
    PoolConfig,
    Task,
    TaskFilter,
    TaskState,
)
from broker.errors import BrokerError, InvalidArgument, NotFound
from broker.http import present
from broker.http.auth import Identity, Role, TokenVerifier
from broker.http.security import CSRF_FIELD, CSRF_HEADER, SecurityHeaders, csrf_ok, csrf_token
from broker.service import BrokerService

log = logging.getLogger("taskbroker.dashboard")

HERE = Path(__file__).parent
SESSION_COOKIE = "taskbroker_dashboard"
SESSION_MAX_AGE_S = 12 * 3600
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
TIME_SCAN_PAGES = 20  # pages read at most to fill one page of a time-filtered listing
HISTORY_RANGES_S = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86_400, "7d": 7 * 86_400}
DEFAULT_REFRESH_S = 2.0
ACTIONS = ("drain", "cordon", "uncordon")

Handler = Callable[[Request], Awaitable[Response]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DashboardSettings:
    """`secure_cookies`: send the session cookie only over TLS; `refresh_s`: how often an
    open page asks for fresh numbers."""

    secure_cookies: bool = False
    refresh_s: float = DEFAULT_REFRESH_S
    session_secret: str = ""  # "" = a new random key each start (sessions end with it)


def create_app(
    service: BrokerService,
    verifier: TokenVerifier,
    clock: Clock,
    settings: DashboardSettings | None = None,
) -> Starlette:
    """The dashboard for one broker's service layer."""
    settings = settings or DashboardSettings()
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = present.duration
    env.filters["timestamp"] = present.timestamp
    env.globals["refresh_s"] = settings.refresh_s
    templates = Jinja2Templates(env=env)
    pages = _Pages(service, verifier, clock, templates)
    routes = [
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/", pages.overview),
        Route("/live/overview", pages.overview_live),
        Route("/api/history", pages.history_json),
        Route("/workers", pages.workers),
        Route("/live/workers", pages.workers_live),
        Route("/workers/{worker_id}/{action}", pages.worker_action, methods=["POST"]),
        Route("/tasks", pages.tasks),
        Route("/tasks/{task_id:int}", pages.task),
        Route("/dead-letter", pages.dead_letter),
        Route("/dead-letter/retry", pages.dead_letter_retry, methods=["POST"]),
        Route("/dead-letter/purge", pages.dead_letter_purge, methods=["POST"]),
        Route("/pools", pages.pools),
        Route("/pools/{name}", pages.pool_form, methods=["GET"]),
        Route("/pools/{name}", pages.pool_update, methods=["POST"]),
        Route("/metrics", pages.metrics),
        Route("/audit", pages.audit),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=settings.session_secret or secrets.token_urlsafe(32),
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE_S,
            same_site="strict",
            https_only=settings.secure_cookies,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


class Forbidden(Exception):
    """An action without the admin role or without a valid CSRF token."""


class _Pages:
    def __init__(
        self,
        service: BrokerService,
        verifier: TokenVerifier,
        clock: Clock,
        templates: Jinja2Templates,
    ) -> None:
        self._service = service
        self._verifier = verifier
        self._clock = clock
        self._templates = templates

    # -- plumbing -----------------------------------------------------------------------

    def _identity(self, request: Request) -> Identity | None:
        user = request.session.get("user")
        role = request.session.get("role")
        if not isinstance(user, str) or role not in {r.value for r in Role}:
            return None
        return Identity(name=user, role=Role(role))

    def _render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        identity = self._identity(request)
        flash = request.session.pop("flash", None)
        return self._templates.TemplateResponse(
            request,
            template,
            {
                "identity": identity,
                "csrf": csrf_token(request.session),
                "csrf_field": CSRF_FIELD,
                "flash": flash,
                "now": self._clock.now(),
                "path": request.url.path,
                **context,
            },
            status_code=status_code,
        )

    def _signed_out(self, request: Request) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", status_code=303)

    async def _action(self, request: Request) -> tuple[Identity, dict[str, str]]:
        """The form of an action by a signed-in admin with the session's CSRF token;
        Forbidden otherwise."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        presented = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not csrf_ok(request.session, presented):
            raise Forbidden("the form has expired or did not come from this dashboard")
        identity = self._identity(request)
        if identity is None or not identity.can_act:
            raise Forbidden("this needs the admin role")
        return identity, fields

    def _forbidden(self, request: Request, exc: Forbidden) -> Response:
        return self._render(request, "error.html", status_code=403, message=str(exc))

    def _back(self, request: Request, url: str, message: str) -> Response:
        request.session["flash"] = message
        return RedirectResponse(url, status_code=303)

    # -- signing in ---------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self._render(request, "login.html")

    async def login(self, request: Request) -> Response:
        form = await request.form()
        presented = form.get(CSRF_FIELD)
        if not csrf_ok(request.session, presented if isinstance(presented, str) else None):
            return self._render(
                request, "login.html", status_code=403, error="The form expired; try again."
            )
        token = form.get("token")
        identity = self._verifier.verify(token if isinstance(token, str) else "")
        if identity is None:
            log.warning("dashboard sign-in refused from %s", _client(request))
            return self._render(request, "login.html", status_code=401, error="Unknown token.")
        request.session.clear()  # a fresh session and CSRF token for the signed-in user
        request.session.update({"user": identity.name, "role": identity.role.value})
        log.info("dashboard sign-in: %s (%s)", identity.name, identity.role.value)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        presented = form.get(CSRF_FIELD)
        if csrf_ok(request.session, presented if isinstance(presented, str) else None):
            request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- overview -----------------------------------------------------------------------

    async def _overview_context(self) -> dict[str, Any]:
        stats = await self._service.stats()
        pools = {p.name: p for p in self._service.list_pools()}
        try:
            recommended = {r.pool: r for r in await self._service.recommend()}
        except BrokerError:
            recommended = {}
        return {"stats": stats, "pools": pools, "recommended": recommended}

    async def overview(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        context = await self._overview_context()
        return self._render(request, "overview.html", ranges=HISTORY_RANGES_S, **context)

    async def overview_live(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        return self._render(request, "_overview_live.html", **await self._overview_context())

    async def history_json(self, request: Request) -> Response:
        """A pool's metrics history as columns for uPlot: times, then each series."""
        if self._identity(request) is None:
            return JSONResponse({"error": "sign in"}, status_code=401)
        pool = request.query_params.get("pool", "")
        range_s = HISTORY_RANGES_S.get(request.query_params.get("range", "15m"), 900)
        bucket_s = 60 if range_s <= 6 * 3600 else 3600
        now = self._clock.now()
        try:
            points = await self._service.metrics_history(
                pool, since=now - range_s, until=now, bucket_s=bucket_s
            )
        except BrokerError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        points = [p for p in points if not p.task_type and not p.worker_id]
        return JSONResponse(
            {
                "since": now - range_s,
                "until": now,
                "x": [p.start for p in points],
                "throughput": {
                    "completed/s": [p.completed / p.bucket_s for p in points],
                    "failed/s": [p.failed / p.bucket_s for p in points],
                    "submitted/s": [p.submitted / p.bucket_s for p in points],
                },
                "latency": {
                    "wait p50 s": [p.wait_p50_s for p in points],
                    "wait p99 s": [p.wait_p99_s for p in points],
                    "run p50 s": [p.run_p50_s for p in points],
                    "run p99 s": [p.run_p99_s for p in points],
                },
            }
        )

    # -- workers ------------------------------------------------------------------------

    async def workers(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        return self._render(request, "workers.html", workers=self._workers(request))

    async def workers_live(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        return self._render(request, "_workers_live.html", workers=self._workers(request))

    def _workers(self, request: Request) -> list[Any]:
        pool = request.query_params.get("pool", "")
        try:
            workers = self._service.list_workers(pool)
        except BrokerError:
            workers = []
        return sorted(workers, key=lambda w: (w.spec.pool, w.spec.worker_id))

    async def worker_action(self, request: Request) -> Response:
        try:
            identity, _ = await self._action(request)
        except Forbidden as exc:
            return self._forbidden(request, exc)
        worker_id = request.path_params["worker_id"]
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self._render(request, "error.html", 404, message="no such action")
        try:
            if action == "drain":
                self._service.drain_worker(worker_id)
            else:
                self._service.cordon_worker(worker_id, action == "cordon")
        except BrokerError as exc:
            return self._back(request, "/workers", f"{action} {worker_id}: {exc}")
        log.info("dashboard: %s %s by %s", action, worker_id, identity.name)
        return self._back(request, "/workers", f"{action}: {worker_id}")

    # -- tasks --------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        query = request.query_params
        pool, task_type = query.get("pool", ""), query.get("type", "")
        state_name = query.get("state", "")
        error = ""
        tasks: list[Task] = []
        next_before: int | None = None
        try:
            states = frozenset({TaskState[state_name]}) if state_name else frozenset()
            limit = min(max(_int(query.get("limit"), PAGE_SIZE), 1), MAX_PAGE_SIZE)
            before = _int(query.get("before"), 0) or None
            since_s = _float(query.get("since_min"), 0.0) * 60
            until_s = _float(query.get("until_min"), 0.0) * 60
            tasks, next_before = await self._task_page(
                TaskFilter(
                    pool=pool, task_type=task_type, states=states, limit=limit, before_id=before
                ),
                since_s,
                until_s,
            )
        except KeyError:
            error = f"unknown state {state_name!r}"
        except (BrokerError, ValueError) as exc:
            error = str(exc)
        params = {k: v for k, v in query.items() if k != "before" and v}
        next_url = f"/tasks?{urlencode({**params, 'before': next_before})}" if next_before else ""
        return self._render(
            request,
            "tasks.html",
            tasks=tasks,
            error=error,
            query=query,
            states=[s.name for s in TaskState],
            pools=[p.name for p in self._service.list_pools()],
            next_url=next_url,
        )

    async def _task_page(
        self, flt: TaskFilter, since_s: float, until_s: float
    ) -> tuple[list[Task], int | None]:
        """One page of tasks, newest first, created within the last `since_s` seconds and
        not in the last `until_s` (0: no bound); the id to page on from, if there is more."""
        if not since_s and not until_s:
            tasks = await self._service.list_tasks(flt)
            more = len(tasks) == flt.limit
            return tasks, tasks[-1].id if more and tasks else None
        now = self._clock.now()
        found: list[Task] = []
        before = flt.before_id
        for _ in range(TIME_SCAN_PAGES):
            batch = await self._service.list_tasks(dataclasses.replace(flt, before_id=before))
            for task in batch:
                if since_s and task.created_at < now - since_s:
                    return found, None  # newest first: the rest are older still
                if not until_s or task.created_at <= now - until_s:
                    found.append(task)
                    if len(found) == flt.limit:
                        return found, task.id
            if len(batch) < flt.limit:
                return found, None
            before = batch[-1].id
        return found, before

    async def task(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        task_id = request.path_params["task_id"]
        try:
            task = await self._service.get(task_id)
        except NotFound:
            return self._render(request, "error.html", 404, message=f"no task {task_id}")
        spec = task.spec
        return self._render(
            request,
            "task.html",
            task=task,
            payload=present.preview(spec.payload),
            result=present.preview(task.result),
            trace_id=present.trace_id(spec.trace_context),
            history=_state_history(task),
        )

    # -- dead letters -------------------------------------------------------------------

    async def dead_letter(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        pool = request.query_params.get("pool", "")
        error = ""
        tasks: list[Task] = []
        try:
            tasks = await self._service.list_tasks(
                TaskFilter(pool=pool, states=frozenset({TaskState.DEAD_LETTER}), limit=PAGE_SIZE)
            )
        except BrokerError as exc:
            error = str(exc)
        return self._render(
            request,
            "dead_letter.html",
            tasks=tasks,
            pool=pool,
            error=error,
            pools=[p.name for p in self._service.list_pools()],
        )

    async def dead_letter_retry(self, request: Request) -> Response:
        try:
            identity, form = await self._action(request)
        except Forbidden as exc:
            return self._forbidden(request, exc)
        try:
            ids = [int(form["task_id"])] if form.get("task_id") else []
            pool = form.get("pool", "")
            if not ids and not pool:
                raise InvalidArgument("choose a task or a pool")
            retried = await self._service.retry(ids, dead_letter_pool="" if ids else pool)
        except (BrokerError, ValueError) as exc:
            return self._back(request, "/dead-letter", f"retry: {exc}")
        log.info("dashboard: %d tasks retried by %s", len(retried), identity.name)
        return self._back(request, "/dead-letter", f"{len(retried)} task(s) sent round again")

    async def dead_letter_purge(self, request: Request) -> Response:
        try:
            identity, form = await self._action(request)
        except Forbidden as exc:
            return self._forbidden(request, exc)
        try:
            older_than_s = _float(form.get("older_than_min"), 0.0) * 60
            purged = await self._service.purge_tasks(
                form.get("pool", ""), older_than_s, [TaskState.DEAD_LETTER]
            )
        except (BrokerError, ValueError) as exc:
            return self._back(request, "/dead-letter", f"purge: {exc}")
        log.info("dashboard: %d dead letters purged by %s", purged, identity.name)
        return self._back(request, "/dead-letter", f"{purged} dead-lettered task(s) purged")

    # -- pools --------------------------------------------------------------------------

    async def pools(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        return self._render(
            request, "pools.html", pools=self._service.list_pools(), settings=POOL_SCALAR_SETTINGS
        )

    def _pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self._service.list_pools() if p.name == name), None)

    async def pool_form(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        pool = self._pool(request.path_params["name"])
        if pool is None:
            return self._render(request, "error.html", 404, message="no such pool")
        return self._render(request, "pool_edit.html", pool=pool, fields=_fields(pool), error="")

    async def pool_update(self, request: Request) -> Response:
        try:
            identity, form = await self._action(request)
        except Forbidden as exc:
            return self._forbidden(request, exc)
        pool = self._pool(request.path_params["name"])
        if pool is None:
            return self._render(request, "error.html", 404, message="no such pool")
        try:
            changed = _parse_pool(pool, form)
            await self._service.update_pool(changed, who=f"dashboard:{identity.name}")
        except (BrokerError, ValueError) as exc:
            return self._render(
                request,
                "pool_edit.html",
                status_code=400,
                pool=pool,
                fields=_fields(pool, form),
                error=str(exc),
            )
        return self._back(request, "/pools", f"pool {pool.name} updated")

    # -- history and audit --------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        pools = [p.name for p in self._service.list_pools()]
        pool = request.query_params.get("pool", "")
        chosen = request.query_params.get("range", "1h")
        return self._render(
            request,
            "metrics.html",
            pools=pools,
            pool=pool if pool in pools else "",
            ranges=HISTORY_RANGES_S,
            chosen=chosen if chosen in HISTORY_RANGES_S else "1h",
        )

    async def audit(self, request: Request) -> Response:
        if self._identity(request) is None:
            return self._signed_out(request)
        pool = request.query_params.get("pool", "")
        error = ""
        changes = []
        try:
            changes = await self._service.config_history(pool, limit=200)
        except BrokerError as exc:
            error = str(exc)
        return self._render(request, "audit.html", changes=changes, pool=pool, error=error)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw else default


def _float(raw: str | None, default: float) -> float:
    if not raw:
        return default
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a number of minutes, got {raw!r}")
    return value


def _state_history(task: Task) -> list[tuple[str, float]]:
    """The times a task reached each state it has passed, in order."""
    steps = [
        ("submitted", task.created_at),
        ("assigned", task.assigned_at),
        ("started", task.started_at),
        (task.state.name.lower() if task.state.terminal else "finished", task.finished_at),
    ]
    return [(name, at) for name, at in steps if at]


def _fields(pool: PoolConfig, form: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """A pool's editable settings: name, value shown (the form's, after a failed edit),
    and the kind of input."""
    result = []
    for name in POOL_SCALAR_SETTINGS:
        current = getattr(pool, name)
        kind = "text" if isinstance(current, str) else "number"
        shown = form.get(name, str(current)) if form is not None else str(current)
        result.append((name, shown, kind))
    return result


def _parse_pool(pool: PoolConfig, form: dict[str, str]) -> PoolConfig:
    """The pool with the form's values, each of its setting's type; ValueError naming the
    setting for one that is not."""
    changes: dict[str, Any] = {}
    for name in POOL_SCALAR_SETTINGS:
        if name not in form:
            continue
        raw = form[name].strip()
        current = getattr(pool, name)
        try:
            if isinstance(current, bool):
                value: Any = raw.lower() in ("1", "true", "on", "yes")
            elif isinstance(current, int):
                value = int(raw)
            elif isinstance(current, float):
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError(raw)
            else:
                value = raw
        except ValueError:
            raise ValueError(f"{name}: expected {type(current).__name__}, got {raw!r}") from None
        changes[name] = value
    return dataclasses.replace(pool, **changes)
