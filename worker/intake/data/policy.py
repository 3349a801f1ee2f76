"""Where data may come from: the operator's policy and the checks that enforce it.

Every check here runs *before* a byte is read or a packet is sent: local paths are resolved and
compared with the configured roots, remote hosts are matched against the allow-list (both by
the rulebook's :mod:`lrprobe.rules.data_refs`, which the service applies too) and their
addresses classified (loopback, private, link-local, …) from a literal IP or from one DNS look-up
whose answer is then the only address the fetch may connect to (no second look-up, so a DNS
rebinding cannot swap in an internal address between the check and the connection).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lrprobe.worker.intake.errors import IntakeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BYTES = 1 << 30
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # Linux routes 0.x.x.x to the local host


@dataclass(frozen=True)
class DataPolicy:
    """What data references a deployment accepts.

    ``roots``: ``file://`` references must lie under one of these directories, by their written
    path *and* by their real path (symbolic links resolved).
    ``allowed_hosts``: hosts that ``https://`` (and, with ``allow_insecure_http``, ``http://``)
    references may name, and buckets that ``s3://`` / ``gs://`` references may name. An entry is
    an exact host name (case-insensitive), ``*.example.com`` for any subdomain of example.com (not
    the apex), or ``scheme://host`` to admit a host for one scheme only.
    ``allow_private_addresses``: admit hosts that resolve to loopback, private (RFC 1918, unique
    local), shared (100.64/10) or other non-global unicast addresses. Link-local addresses (the
    cloud metadata service lives at 169.254.169.254), multicast, unspecified and reserved
    addresses stay refused even then.
    ``allow_insecure_http``: admit ``http://`` for allow-listed hosts; off by default because a
    plain-HTTP download can be altered on the way.
    ``max_bytes``: the most bytes one reference may read, download or decompress to.
    ``cache_dir``: where remote references are downloaded to (needed only for remote data).
    ``timeout_s``: the limit for connecting and for each read of a download.
    ``ca_file``: a PEM bundle of certificate authorities to trust for https:// data *instead of*
    the default (certifi) bundle, for data hosts behind a private PKI.
    ``s3_endpoint_url``: the S3-compatible service ``s3://`` references are read from (MinIO,
    Ceph, a cloud other than AWS), e.g. ``https://minio.internal:9000``; ``None`` uses
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` from the environment if set, else AWS. The
    endpoint, whichever way it is given, is held to the same rules as a data host except the
    allow-list (buckets are allow-listed, not the endpoint): ``http://`` needs
    ``allow_insecure_http``, and an address that is loopback or private needs
    ``allow_private_addresses`` (link-local stays refused).
    """

    roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    allow_insecure_http: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    cache_dir: Path | None = None
    timeout_s: float = 60.0
    ca_file: Path | None = None
    s3_endpoint_url: str | None = None
    _real_roots: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roots = tuple(Path(root) for root in self.roots)
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"data root {str(root)!r} must be an absolute path")
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.s3_endpoint_url is not None:
            endpoint = urlsplit(self.s3_endpoint_url)
            if endpoint.scheme not in ("https", "http") or not endpoint.hostname:
                raise ValueError(
                    f"s3_endpoint_url {self.s3_endpoint_url!r} must be an http(s)://HOST[:PORT] URL"
                )
        object.__setattr__(self, "roots", tuple(Path(os.path.normpath(r)) for r in roots))
        object.__setattr__(self, "_real_roots", tuple(Path(os.path.realpath(r)) for r in roots))
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in self.allowed_hosts))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @property
    def real_roots(self) -> tuple[Path, ...]:
        return self._real_roots


def is_under_real_roots(path: Path, policy: DataPolicy) -> bool:
    return any(path.is_relative_to(root) for root in policy.real_roots)


def address_refusal(address: IPAddress, policy: DataPolicy) -> str | None:
    """Why ``address`` may not be connected to under ``policy`` (``None`` when it may)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_refusal(embedded, policy)
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if address.is_loopback:
        return None if policy.allow_private_addresses else "a loopback address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_global:
        return None
    if policy.allow_private_addresses:
        return None
    if address.is_private:
        return "a private address"
    return "a non-global address"


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


Resolver = Callable[[str, int], Sequence[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for ``host`` (one look-up, no connection)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def pin_address(host: str, port: int, policy: DataPolicy, resolve: Resolver) -> IPAddress:
    """The one address a fetch of ``host`` may connect to, after checking every resolved one.

    A literal IP is checked without a look-up. A name is resolved once; if *any* of its
    addresses is refused the whole host is refused (an attacker controlling DNS could otherwise
    rely on the client trying addresses in order).
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            found = resolve(host, port)
        except OSError as exc:
            raise IntakeError(
                "data_not_found",
                f"The host {host!r} could not be resolved ({exc}); check the data reference.",
            ) from None
        addresses = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                continue
        if not addresses:
            raise IntakeError(
                "data_not_found", f"The host {host!r} has no address; check the data reference."
            )
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            raise IntakeError(
                "address_not_allowed",
                f"The host {host!r} resolves to {address}, {reason}, which data references may "
                "not reach; serve the data from a public allow-listed host or upload it.",
            )
    return addresses[0]
