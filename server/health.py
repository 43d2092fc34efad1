"""grpc.health.v1 for cnnserve: Check, Watch and List, safe against hostile watchers.

grpcio-health-checking's servicer keeps every service name ever watched (a 1 MB name costs 1 MB
for the life of the process), answers List with UNIMPLEMENTED, and sends to watchers while
holding its lock, which can deadlock the server. This one knows a bounded set of services (the
server, each API, and each model, registered at start-up or when the model appears in the repository),
answers Watch of any other name with SERVICE_UNKNOWN without keeping anything of it once the stream
ends, and runs on the server's event loop: an open Watch is a suspended coroutine, not a thread.
"""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc

SERVING, NOT_SERVING = hpb.HealthCheckResponse.SERVING, hpb.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = hpb.DESCRIPTOR.services_by_name["Health"].full_name


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Call `set` and `enter_graceful_shutdown` on the server's event loop."""

    def __init__(self, services: list[str]):
        self._status = {name: NOT_SERVING for name in services}
        self._watchers: dict[str, set[asyncio.Queue]] = {name: set() for name in services}
        self._frozen = False

    def add(self, service: str) -> None:
        """Know one more service (a model that appeared in the repository), NOT_SERVING until set."""
        if service not in self._status:
            self._status[service] = NOT_SERVING
            self._watchers[service] = set()

    def set(self, service: str, status: int) -> None:
        """Watchers hear of changes only (a status set again is no news)."""
        if self._frozen or self._status.get(service, status) == status:
            return
        self._status[service] = status
        for queue in self._watchers[service]:
            if queue.full():              # a watcher that has not sent the last change gets the newest instead
                queue.get_nowait()
            queue.put_nowait(status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, and no status changes after."""
        for service in list(self._status):
            self.set(service, NOT_SERVING)
        self._frozen = True

    async def Check(self, request: hpb.HealthCheckRequest, context: grpc.aio.ServicerContext):
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service ({len(request.service):,} characters); "
                                                           f"List shows the known ones")
        return hpb.HealthCheckResponse(status=status)

    async def List(self, request: hpb.HealthListRequest, context: grpc.aio.ServicerContext):
        return hpb.HealthListResponse(statuses={name: hpb.HealthCheckResponse(status=status)
                                                for name, status in self._status.items()})

    async def Watch(self, request: hpb.HealthCheckRequest, context: grpc.aio.ServicerContext):
        service = request.service
        if service not in self._status:
            yield hpb.HealthCheckResponse(status=hpb.HealthCheckResponse.SERVICE_UNKNOWN)
            await asyncio.Event().wait()          # open until the client leaves; nothing is registered
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        queue.put_nowait(self._status[service])
        self._watchers[service].add(queue)
        try:
            while True:
                yield hpb.HealthCheckResponse(status=await queue.get())
        finally:
            self._watchers[service].discard(queue)
