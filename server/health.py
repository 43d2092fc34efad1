"""grpc.health.v1 for cnnserve: Check, Watch and List, safe against hostile watchers.

grpcio-health-checking's servicer keeps every service name ever watched (a 1 MB name costs 1 MB
for the life of the process), answers List with UNIMPLEMENTED, and sends to watchers while
holding its lock, which can deadlock the server. This one knows a fixed set of services (the
server, each API and each model, registered at start-up), answers Watch of any other name with
SERVICE_UNKNOWN without keeping anything of it, and sends outside its lock.
"""
from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc

SERVING, NOT_SERVING = hpb.HealthCheckResponse.SERVING, hpb.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = hpb.DESCRIPTOR.services_by_name["Health"].full_name


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, services: list[str]):
        self._lock = threading.Lock()
        self._status = {name: NOT_SERVING for name in services}
        self._watchers: dict[str, set] = {name: set() for name in services}
        self._frozen = False

    def set(self, service: str, status: int) -> None:
        with self._lock:
            if self._frozen or service not in self._status:
                return
            self._status[service] = status
            watchers = list(self._watchers[service])
        for send in watchers:                 # outside the lock: a slow watcher must not stall the server
            send(hpb.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, and no status changes after."""
        for service in list(self._status):
            self.set(service, NOT_SERVING)
        with self._lock:
            self._frozen = True

    def Check(self, request: hpb.HealthCheckRequest, context: grpc.ServicerContext) -> hpb.HealthCheckResponse:
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service ({len(request.service):,} characters); "
                                                     f"List shows the known ones")
        return hpb.HealthCheckResponse(status=status)

    def List(self, request: hpb.HealthListRequest, context: grpc.ServicerContext) -> hpb.HealthListResponse:
        with self._lock:
            statuses = dict(self._status)
        return hpb.HealthListResponse(statuses={name: hpb.HealthCheckResponse(status=status)
                                                for name, status in statuses.items()})

    def Watch(self, request: hpb.HealthCheckRequest, context: grpc.ServicerContext, send_response_callback=None):
        """Non-blocking: no thread waits per watcher; responses go out through `send_response_callback`."""
        service = request.service
        with self._lock:
            status = self._status.get(service)
            if status is not None:
                self._watchers[service].add(send_response_callback)
        send_response_callback(hpb.HealthCheckResponse(
            status=hpb.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status))
        if status is not None:
            def forget() -> None:
                with self._lock:
                    self._watchers[service].discard(send_response_callback)
                send_response_callback(None)
            context.add_callback(forget)
        else:
            context.add_callback(lambda: send_response_callback(None))

    Watch.experimental_non_blocking = True
    Watch.experimental_thread_pool = None
