"""Transport security and authentication: TLS (and mutual TLS) for gRPC and HTTP, and a bearer
token compared in constant time.

One policy for every protocol: with a token, every call needs it except what `--auth-open` names.
`health` opens the probes on every protocol at once (gRPC health, KServe v2 ServerLive/ServerReady
over gRPC, `/v2/health/*` over HTTP), so a Kubernetes probe works whichever it uses; `reflection`
opens gRPC reflection (grpcurl); `explorer` opens the explorer page and its sample images (static
files: the page then sends the token with its API calls). With TLS or a token, the metrics port
listens on loopback unless `--metrics-host` says otherwise (it serves plain HTTP without a token).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from server.startup import StartupError

KSERVE = "/inference.GRPCInferenceService/"
# What each --auth-open name opens: gRPC method prefixes, and HTTP paths (a path ending in "/" opens
# what lies below it; "/" itself only the page).
OPENABLE = {"health": (("/grpc.health.v1.Health/", KSERVE + "ServerLive", KSERVE + "ServerReady"), ("/v2/health/",)),
            "reflection": (("/grpc.reflection.",), ()),
            "explorer": ((), ("/", "/explorer/", "/examples/"))}
DEFAULT_OPEN = ("health", "reflection", "explorer")


@dataclass(frozen=True)
class SecurityOptions:
    tls_cert: Path | None = None          # PEM certificate chain of the server
    tls_key: Path | None = None           # its PEM private key
    tls_client_ca: Path | None = None     # PEM CA(s): clients must present a certificate it signed (mTLS)
    auth_token_file: Path | None = None   # clients must send "authorization: Bearer <the file's first line>"
    open_without_token: tuple[str, ...] = DEFAULT_OPEN
    token: bytes | None = field(default=None, compare=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def read_file(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise StartupError(f"{flag} {path}: {error.strerror or error}") from None


def load(options: SecurityOptions) -> SecurityOptions:
    """Check the combination and read the token once; a mistake is a one-line start-up error."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise StartupError("--tls-cert and --tls-key go together")
    if options.tls_client_ca and not options.tls_cert:
        raise StartupError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    unknown = [name for name in options.open_without_token if name not in OPENABLE]
    if unknown:
        raise StartupError(f"--auth-open: unknown {', '.join(unknown)}; choose from {', '.join(OPENABLE)} or none")
    token = None
    if options.auth_token_file:
        lines = read_file(options.auth_token_file, "--auth-token-file").decode(errors="replace").splitlines()
        token = lines[0].strip().encode() if lines else b""
        if len(token) < 16:
            raise StartupError("--auth-token-file: the token (its first line) must be at least 16 characters")
    return SecurityOptions(options.tls_cert, options.tls_key, options.tls_client_ca, options.auth_token_file,
                           options.open_without_token, token)


def server_credentials(options: SecurityOptions) -> grpc.ServerCredentials:
    ca = read_file(options.tls_client_ca, "--tls-client-ca") if options.tls_client_ca else None
    pair = (read_file(options.tls_key, "--tls-key"), read_file(options.tls_cert, "--tls-cert"))
    try:
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
    except (RuntimeError, ValueError) as error:
        raise StartupError(f"the TLS certificate or key is not usable ({error})") from None


def open_grpc_prefixes(open_names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(prefix for name in open_names for prefix in OPENABLE[name][0])


def http_path_is_open(path: str, open_names: tuple[str, ...]) -> bool:
    return any(path == open_path or (open_path != "/" and path.startswith(open_path))
               for name in open_names for open_path in OPENABLE[name][1])


def token_matches(header: str | None, token: bytes) -> bool:
    """Constant-time comparison of an `authorization` value with "Bearer <token>"."""
    return hmac.compare_digest((header or "").encode(errors="replace"), b"Bearer " + token)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every gRPC method needs the bearer token, except those `--auth-open` opens."""

    def __init__(self, token: bytes, open_services: tuple[str, ...]):
        self.token = token
        self.open_prefixes = open_grpc_prefixes(open_services)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(self.open_prefixes):
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization")
        if token_matches(header, self.token):
            return await continuation(details)
        handler = await continuation(details)
        return None if handler is None else refusing(handler)


def refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    async def deny(request_or_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")
    kind = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return kind[(handler.request_streaming, handler.response_streaming)](
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
