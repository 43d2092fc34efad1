"""How a client reaches a server: TLS / bearer-token settings and their command-line flags, and the
message limits both sides agree on (`cnnserve.spec`). Nothing heavy is imported."""
from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from cnnserve.spec import DEFAULT_MAX_MESSAGE_MB, message_limits  # noqa: F401  (the clients' flags use both)


@dataclass(frozen=True)
class ClientSecurity:
    tls_ca: Path | None = None        # trust this CA; TLS is on when this or a client certificate is given
    tls_cert: Path | None = None      # client certificate and key, for servers that require them (mTLS)
    tls_key: Path | None = None
    token_file: Path | None = None    # sends "authorization: Bearer <the file's first line>"

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda path: Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(root_certificates=read(self.tls_ca), private_key=read(self.tls_key),
                                            certificate_chain=read(self.tls_cert))

    def ssl_context(self) -> ssl.SSLContext:
        """The same trust and client certificate for HTTPS clients."""
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        lines = Path(self.token_file).read_text().splitlines()
        return (("authorization", f"Bearer {lines[0].strip() if lines else ''}"),)


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", type=Path, help="PEM CA to trust: connect over TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for servers that require one (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--token-file", type=Path, help="send 'authorization: Bearer <its first line>'")


def security_from(args: argparse.Namespace) -> ClientSecurity:
    return ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.token_file)


def connect(target: str, max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
            security: ClientSecurity | None = None, own_connection: bool = False,
            retry_connect_ms: int | None = None) -> grpc.Channel:
    """A channel with the same explicit message limits as the server, over TLS when `security` says so.
    `own_connection`: do not share a TCP connection with this process's other channels to the same
    target (grpcio shares them by default), so the server sees a separate caller. `retry_connect_ms`: how
    soon a refused connection is tried again, every time (gRPC's default waits 1 s, then backs off towards
    2 min): for a caller waiting on a server that is starting up."""
    options = message_limits(max_message_mb) + ([("grpc.use_local_subchannel_pool", 1)] if own_connection else [])
    if retry_connect_ms is not None:
        options += [(f"grpc.{name}_reconnect_backoff_ms", retry_connect_ms) for name in ("initial", "min", "max")]
    if security is not None and security.tls:
        return grpc.secure_channel(target, security.credentials(), options=options)
    return grpc.insecure_channel(target, options=options)
