"""Workers at one PoP: load the active versions, route requests to them, run them metered.

The control plane's topology push names each worker's active version. The runtime
fetches a version it lacks (GetWorkerBundle), checks its hash, loads it under its own
package name, binds its `env`, and then swaps it in: a request takes its version when
it starts, so requests in flight finish on the old one. The time from fetch to swap
without the network (compile, import, bind) is the cold start, measured per version.

Each request runs under a CPU budget (`cpu.metered`) and a request scope (`worker_api.
current`) that counts subrequests and gives `fetch` and `caches.default` to the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import grpc
from multidict import CIMultiDict

from edge.v1 import control_plane_pb2, control_plane_pb2_grpc, workers_pb2
from edgepop import packages, seeding
from edgepop.bundle import Route, WorkerConfig, bundle_version, check_bundle
from edgepop.http import origin_session
from edgepop.metrics import NodeChildren
from edgepop.netem import NODE_HEADER, REGION_HEADER, sent_at_metadata
from edgepop.tls import process_tls
from edgepop.worker_api import (
    ExecutionContext,
    Request,
    Response,
    ScheduledController,
    current,
)
from pop_node.identity import PopIdentity
from pop_node.objects.builtin import BUILTIN_CLASSES
from pop_node.workers.bindings import (
    BindingError,
    Env,
    build_env,
    resolve_classes,
    worker_class_namespace,
)
from pop_node.workers.cache import HttpCache
from pop_node.workers.cpu import CpuBudget, CpuLimitExceeded, Watchdog, metered
from pop_node.workers.loader import LoadedModule, WorkerLoadError, load_bundle_bounded

if TYPE_CHECKING:
    from pop_node.kv import KvFrontend
    from pop_node.objects.host import ObjectHost
    from pop_node.objects.router import ObjectRouter
    from pop_node.sql import SqlReplicas

log = logging.getLogger(__name__)

# Hosts a worker's fetch() may reach: the origin application (the network is closed).
ORIGIN_HOSTS = frozenset({"origin", "origin.internal", "api.origin"})
SUBREQUEST_TIMEOUT_S = 30.0
SUBREQUEST_BODY_BYTES_MAX = 25 * 1024 * 1024
WAIT_UNTIL_TIMEOUT_S = 30.0
BUNDLE_FETCH_TIMEOUT_S = 10.0
# A version whose module code runs longer than this at import is refused.
LOAD_TIMEOUT_S = 10.0
# Until the first set of workers is loaded the PoP is not SERVING, and its ingress would
# answer 503 (never a false 404); past this it serves whatever it has (e.g. the control
# plane is unreachable: the data plane does not wait for it).
FIRST_LOAD_WAIT_S_MAX = 3.0
RELOAD_AFTER_FAILURE_S = 1.0
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)


class WorkerError(Exception):
    """A fault a worker caused (its subrequest limit, an unreachable host): a 1101."""


@dataclass
class WorkerVersion:
    name: str
    version: str
    config: WorkerConfig
    module: LoadedModule
    env: Env
    loaded_at: float
    cold_start_s: float
    in_flight: int = 0
    retired: bool = False

    def to_pb(self) -> workers_pb2.LoadedWorker:
        return workers_pb2.LoadedWorker(
            name=self.name,
            version=self.version,
            cold_start_ms=self.cold_start_s * 1000,
            loaded_at=self.loaded_at,
        )


@dataclass(slots=True)
class _Scope:
    """The request scope behind `worker_api.fetch` and `caches.default` (one per request)."""

    runtime: WorkerRuntime
    version: WorkerVersion
    subrequests_left: int
    context: ExecutionContext

    @property
    def env(self) -> Env:
        return self.version.env

    async def fetch(self, request: Request) -> Response:
        if self.subrequests_left <= 0:
            raise WorkerError(
                f"too many subrequests (limit {self.version.config.subrequests} per request)"
            )
        self.subrequests_left -= 1
        return await self.runtime.subrequest(self.version.name, request)

    @property
    def cache(self) -> _CacheFacade:
        return _CacheFacade(self.runtime)


class _CacheFacade:
    """`caches.default`: this PoP's HTTP cache, keyed by URL (and Vary)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self._runtime = runtime

    @staticmethod
    def _request(request: Request | str) -> Request:
        return request if isinstance(request, Request) else Request(request)

    async def match(self, request: Request | str) -> Response | None:
        return self._runtime.cache_lookup(self._request(request))

    async def put(self, request: Request | str, response: Response) -> None:
        body = await response.read()
        self._runtime.cache_store(self._request(request), response.status, response.headers, body)

    async def delete(self, request: Request | str) -> bool:
        return self._runtime.cache.delete(self._request(request).url)


class WorkerPop(PopIdentity, Protocol):
    """What the worker runtime uses of its PoP (pop_node.node.PopNode): where bundles
    come from, what a worker's `env` binds, and where its subrequests go."""

    @property
    def internal_metadata(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def kv(self) -> KvFrontend: ...

    @property
    def router(self) -> ObjectRouter: ...

    @property
    def sql(self) -> SqlReplicas: ...

    @property
    def objects(self) -> ObjectHost: ...

    @property
    def origin_http_address(self) -> str:
        """The origin application's HTTP address ("" until the topology names it)."""

    def control_plane_stub(self) -> control_plane_pb2_grpc.ControlPlaneStub | None: ...


class WorkerRuntime:
    """The workers of one PoP: their loaded versions, routes, and the requests they run."""

    def __init__(self, pop: WorkerPop) -> None:
        self.pop = pop
        self.metrics = metrics = pop.metrics
        self._cpu_children = NodeChildren(metrics.worker_cpu, metrics.node, metrics.region)
        self._cache_children = NodeChildren(metrics.cache_requests, metrics.node, metrics.region)
        self._subrequest_children = NodeChildren(
            metrics.worker_subrequests, metrics.node, metrics.region
        )
        self.versions: dict[str, WorkerVersion] = {}
        self.routes: list[tuple[Route, str]] = []
        self.cache = HttpCache()
        self._desired: dict[str, str] = {}
        self._reconcile_wanted = asyncio.Event()
        # Set once the workers of the first topology push are loaded (see ingress).
        self.ready = asyncio.Event()
        self._topology_seen = False
        self._watchdog: Watchdog | None = None
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._failed: dict[tuple[str, str], str] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        self._watchdog = Watchdog()
        asyncio.get_running_loop().call_later(FIRST_LOAD_WAIT_S_MAX, self.ready.set)
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("worker reconcile failed; the next topology push retries")

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self._watchdog is not None:
            self._watchdog.close()

    def on_topology(self, topology: control_plane_pb2.Topology) -> None:
        desired = {worker.name: worker.version for worker in topology.workers}
        self._topology_seen = True
        if desired != self._desired or not self.ready.is_set():
            self._desired = desired
            self._reconcile_wanted.set()

    # -- loading ---------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Start loading every wanted version not loaded yet; retire unwanted workers.

        Each version loads and swaps in on its own: a slow one (a heavy import, a slow
        module body) holds up no other. The first push's loads decide readiness.
        """
        started = []
        for name, version in self._desired.items():
            loaded = self.versions.get(name)
            key = (name, version)
            if (loaded is not None and loaded.version == version) or key in self._failed:
                continue
            if key not in self._loading:
                self._loading[key] = asyncio.ensure_future(self._load_and_swap(name, version))
            started.append(self._loading[key])
        for name in [n for n in self.versions if n not in self._desired]:
            self._retire(self.versions.pop(name))
        self._rebuild_routes()
        if not self.ready.is_set() and self._topology_seen:
            await asyncio.gather(*started, return_exceptions=True)
            self.ready.set()

    async def _load_and_swap(self, name: str, version: str) -> None:
        try:
            loaded = await self._load(name, version)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                log.warning("cannot fetch worker %s yet (%s); retrying", name, error.code().name)
                asyncio.get_running_loop().call_later(
                    RELOAD_AFTER_FAILURE_S, self._reconcile_wanted.set
                )
            else:
                self._failed[(name, version)] = error.details() or error.code().name
                log.error("cannot load worker %s %s: %s", name, version[:12], error.details())
            return
        except Exception as error:
            # A version that cannot load never will: keep serving the previous one.
            self._failed[(name, version)] = str(error)
            log.error("cannot load worker %s %s: %s", name, version[:12], error)
            return
        finally:
            self._loading.pop((name, version), None)
        if self._desired.get(name) == version:
            self._swap(loaded)
            self._rebuild_routes()
        else:
            loaded.module.unload()

    async def _load(self, name: str, version: str) -> WorkerVersion:
        stub = self.pop.control_plane_stub()
        if stub is None:
            raise WorkerLoadError("no control plane to fetch the bundle from")
        response = await stub.GetWorkerBundle(
            workers_pb2.GetWorkerBundleRequest(name=name, version=version),
            metadata=self.pop.internal_metadata,
            timeout=BUNDLE_FETCH_TIMEOUT_S,
        )
        started = time.perf_counter()
        if bundle_version(response.bundle) != version:
            raise WorkerLoadError(f"bundle of {name} does not hash to {version[:12]}")
        config = check_bundle(response.bundle)
        if config.dependencies:
            # Usually already installed by `edgectl deploy` on this machine; else now
            # (outside the load's time bound: a first install downloads).
            try:
                env_dir = await packages.ensure_installed(config.dependencies)
            except packages.PackageError as error:
                raise WorkerLoadError(str(error)) from error
            packages.activate(env_dir)
            started = time.perf_counter()
        files = {file.path: bytes(file.content) for file in response.bundle.files}
        module = await load_bundle_bounded(name, version, files, LOAD_TIMEOUT_S, config.main)
        try:
            namespaces = resolve_classes(config, set(module.classes), set(BUILTIN_CLASSES))
        except BindingError as error:
            module.unload()
            raise WorkerLoadError(str(error)) from error
        env = build_env(
            config,
            kv=self.pop.kv,
            router=self.pop.router,
            metrics=self.metrics,
            object_namespaces=namespaces,
            sql=self.pop.sql,
        )
        for class_name, cls in module.classes.items():
            # A worker's own objects see its env, as on Cloudflare.
            self.pop.objects.register_class(
                worker_class_namespace(name, class_name),
                cls,
                env,
                sqlite=class_name in config.sqlite_classes,
            )
        cold_start_s = time.perf_counter() - started
        self.metrics.worker_cold_start.labels(self.metrics.node, self.metrics.region, name).observe(
            cold_start_s
        )
        log.info("loaded worker %s %s in %.1f ms", name, version[:12], cold_start_s * 1000)
        return WorkerVersion(name, version, config, module, env, time.time(), cold_start_s)

    def _swap(self, loaded: WorkerVersion) -> None:
        previous = self.versions.get(loaded.name)
        self.versions[loaded.name] = loaded
        if previous is not None:
            self._retire(previous)
        # Tests only (EDGEPOP_RANDOM_SEED): workers' draws restart at each deploy.
        seeding.reseed_module(self.metrics.node, (v.version for v in self.versions.values()))

    def _retire(self, version: WorkerVersion) -> None:
        """Unload a version once its last request finished."""
        version.retired = True
        if version.in_flight == 0:
            version.module.unload()

    def _rebuild_routes(self) -> None:
        routes = [
            (route, name)
            for name, version in self.versions.items()
            for route in version.config.routes
        ]
        routes.sort(key=lambda item: item[0].specificity, reverse=True)
        self.routes = routes

    def match(self, host: str, path: str) -> WorkerVersion | None:
        for route, name in self.routes:
            if route.matches(host, path):
                return self.versions.get(name)
        # `<name>.workers.dev` reaches a worker without a route, as on Cloudflare.
        if host.endswith(".workers.dev"):
            return self.versions.get(host[: -len(".workers.dev")])
        return None

    # -- running ---------------------------------------------------------------------------

    async def handle(self, version: WorkerVersion, request: Request) -> tuple[Response, str]:
        """Run the worker; returns its response and an error code ("" when none)."""
        assert self._watchdog is not None
        version.in_flight += 1
        budget = CpuBudget(version.config.cpu_ms / 1000.0)
        context = ExecutionContext()
        scope = _Scope(self, version, version.config.subrequests, context)
        token = current.set(scope)
        error_code = ""
        try:
            response = await metered(
                version.module.fetch(request, version.env, context), budget, self._watchdog
            )
            if not isinstance(response, Response):
                raise WorkerError(f"fetch returned {type(response).__name__}, not a Response")
        except CpuLimitExceeded:
            error_code = "1102"
            response = Response(
                "error code: 1102\nWorker exceeded resource limits\n",
                status=503,
                headers={"cf-error-code": "1102"},
            )
        except Exception:
            log.exception("worker %s raised", version.name)
            error_code = "1101"
            response = Response(
                "error code: 1101\nWorker threw exception\n",
                status=500,
                headers={"cf-error-code": "1101"},
            )
        finally:
            current.reset(token)
            version.in_flight -= 1
            if version.retired and version.in_flight == 0:
                version.module.unload()
            self._cpu_children(version.name).observe(budget.used_s)
        for work in context.pending:
            self._spawn_background(work, scope)
        if response.streaming:
            response = Response(
                self._metered_stream(version, response.chunks(), budget, scope),
                status=response.status,
                headers=response.headers,
            )
        return response, error_code

    async def run_scheduled(self, version: WorkerVersion, cron: str, scheduled_time_ms: int) -> str:
        """Run the worker's `scheduled` handler once (a cron trigger); "" when it ran to
        the end, else what went wrong. The same CPU budget and scope as a request."""
        assert self._watchdog is not None
        scheduled = version.module.scheduled
        if scheduled is None:
            raise WorkerError(f"worker {version.name} has no scheduled handler")
        version.in_flight += 1
        budget = CpuBudget(version.config.cpu_ms / 1000.0)
        context = ExecutionContext()
        scope = _Scope(self, version, version.config.subrequests, context)
        controller = ScheduledController(cron, scheduled_time_ms)
        token = current.set(scope)
        outcome = ""
        try:
            await metered(scheduled(controller, version.env, context), budget, self._watchdog)
        except CpuLimitExceeded:
            outcome = "exceeded its CPU limit"
        except Exception as error:
            log.exception("worker %s raised in scheduled", version.name)
            outcome = f"raised {type(error).__name__}: {error}"
        finally:
            current.reset(token)
            version.in_flight -= 1
            if version.retired and version.in_flight == 0:
                version.module.unload()
        for work in context.pending:
            self._spawn_background(work, scope)
        self.metrics.worker_cron_runs.labels(
            self.metrics.node, self.metrics.region, version.name, "error" if outcome else "ok"
        ).inc()
        return outcome

    async def _metered_stream(
        self,
        version: WorkerVersion,
        chunks: AsyncIterator[bytes],
        budget: CpuBudget,
        scope: _Scope,
    ) -> AsyncIterator[bytes]:
        """A streaming body is the worker's code too: same CPU budget, same scope."""
        assert self._watchdog is not None
        version.in_flight += 1
        try:
            while True:
                token = current.set(scope)
                try:
                    chunk = await metered(_next_chunk(chunks), budget, self._watchdog)
                except StopAsyncIteration:
                    return
                except CpuLimitExceeded:
                    log.warning("worker %s exceeded its CPU limit while streaming", version.name)
                    return  # the client sees the body end early
                except Exception:
                    log.exception("worker %s raised while streaming", version.name)
                    return
                finally:
                    current.reset(token)
                yield chunk
        finally:
            version.in_flight -= 1
            if version.retired and version.in_flight == 0:
                version.module.unload()

    def _spawn_background(self, work: Any, scope: _Scope) -> None:
        async def run() -> None:
            token = current.set(scope)
            try:
                await asyncio.wait_for(work, WAIT_UNTIL_TIMEOUT_S)
            except Exception:
                log.exception("wait_until work of %s failed", scope.version.name)
            finally:
                current.reset(token)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- subrequests and the cache --------------------------------------------------------

    def cache_lookup(self, request: Request) -> Response | None:
        entry = self.cache.match(request.url, request.headers, time.time())
        self._cache_children("hit" if entry is not None else "miss").inc()
        if entry is None:
            return None
        response = Response(entry.body, status=entry.status, headers=list(entry.headers))
        response.headers["cf-cache-status"] = "HIT"
        response.headers["Age"] = str(int(time.time() - entry.stored_at))
        return response

    def cache_store(
        self, request: Request, status: int, headers: CIMultiDict[str], body: bytes
    ) -> bool:
        return self.cache.put(
            request.url, request.headers, status, list(headers.items()), body, time.time()
        )

    def _origin_url(self, request: Request) -> str:
        host = request.host
        if host not in ORIGIN_HOSTS:
            raise WorkerError(
                f"subrequests reach only the origin (http://origin/...), not {host!r}"
            )
        address = self.pop.origin_http_address
        if not address:
            raise WorkerError("the origin's HTTP address is not known yet")
        query = request.url.split("?", 1)[1] if "?" in request.url else ""
        # Workers name the origin http://origin/...; with TLS on the origin speaks HTTPS.
        scheme = "https" if process_tls() is not None else "http"
        return f"{scheme}://{address}{request.path}" + (f"?{query}" if query else "")

    async def subrequest(self, worker: str, request: Request) -> Response:
        """A worker's fetch(): through this PoP's cache for GET, else to the origin."""
        # Only GET: a HEAD response has no body and must never answer a later GET.
        cacheable = request.method == "GET"
        if cacheable:
            cached = self.cache_lookup(request)
            if cached is not None:
                self._count_subrequest(worker, "hit")
                return cached
        url = self._origin_url(request)
        headers = CIMultiDict(
            (key, value) for key, value in request.headers.items() if key.lower() not in HOP_BY_HOP
        )
        headers[REGION_HEADER] = self.pop.region
        headers[NODE_HEADER] = self.pop.name
        name, value = sent_at_metadata()
        headers[name] = value
        session = self._client()
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=request.body or None,
            timeout=aiohttp.ClientTimeout(total=SUBREQUEST_TIMEOUT_S),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.content.read(SUBREQUEST_BODY_BYTES_MAX + 1)
            if len(body) > SUBREQUEST_BODY_BYTES_MAX:
                raise WorkerError("subrequest response is over 25 MiB")
            response_headers = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            )
            response = Response(body, status=upstream.status, headers=response_headers)
        stored = cacheable and self.cache_store(request, response.status, response.headers, body)
        response.headers["cf-cache-status"] = "MISS" if stored else "DYNAMIC"
        self._count_subrequest(worker, "miss" if cacheable else "bypass")
        return response

    def _count_subrequest(self, worker: str, cache: str) -> None:
        self._subrequest_children(worker, cache).inc()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # HTTPS with this node's client certificate when TLS is on (edgepop.http).
            self._session = origin_session(connections_max=256)
        return self._session

    def loaded(self) -> list[workers_pb2.LoadedWorker]:
        return [version.to_pb() for version in self.versions.values()]


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    return await chunks.__anext__()


StubGetter = Callable[[], control_plane_pb2_grpc.ControlPlaneStub | None]
