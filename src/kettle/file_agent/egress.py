"""Where the file agent may connect: a URL is a user's choice, so the node is no deputy.

An execution node sits inside the operator's network, next to the platform's
own services, cloud metadata endpoints and whatever else listens on private
addresses. A task's input URL is chosen by a user, and the function that reads
the input can hand its bytes back to that user, so without a rule every user
could read what the node can reach. The rule (``docs/data.md``):

- a host is resolved **once**, every address it resolves to is checked, and the
  connection is made to one of exactly those addresses (a second DNS lookup at
  connect time could answer differently: DNS rebinding);
- any address that is not globally routable is refused: loopback, link-local
  (cloud metadata at 169.254.169.254 included), private (RFC 1918), shared
  (CGNAT), unique-local, unspecified, multicast, documentation and other
  reserved ranges, and the same addresses hidden inside IPv6 forms
  (IPv4-mapped, IPv4-compatible, NAT64, 6to4);
- so are the node's own addresses (whatever listens on them) and the
  platform's own endpoints, wherever they are;
- an operator lets the agent reach such a target by naming it, as
  ``host:port``, in ``file_agent.egress_allowlist``: the entry matches the host
  exactly as the URL writes it (case aside), so no other spelling of an address
  (``2130706433``, ``0x7f.1``, ``0177.0.0.1``) slips through.

Refusals, names that do not resolve and connections that fail all read the
same (:data:`UNREACHABLE`), so failure texts, which every participant of a task
reads, never tell whether something listens on an internal port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Final

from ..errors import TransferError

__all__ = [
    "UNREACHABLE",
    "EgressPolicy",
    "IPAddress",
    "Resolver",
    "is_internal",
    "normalize_host",
    "parse_host_port",
    "system_resolver",
]

UNREACHABLE: Final = "the URL's host is not allowed or not reachable"
"""The one text for every refusal and every failure to reach a host (see the module's doc)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``, in the order to try them; raises OSError when the name does not resolve."""

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (``getaddrinfo``): each address once, in the order it returned them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def normalize_host(host: str) -> str:
    """A host as allowlist entries are compared: lower case, without IPv6 brackets or a final dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def parse_host_port(entry: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its normalised host and port; ValueError if it is not one."""
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{entry!r}: an IPv6 address is written in brackets, [::1]:port")
    normalized = normalize_host(host)
    if not normalized or any(c.isspace() or c in "/@?#[]" for c in normalized):
        raise ValueError(f"{entry!r} is not host:port")
    return normalized, int(port)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form stands for, where the network would deliver it there."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_internal(address: IPAddress) -> bool:
    """Whether ``address`` is anything but an ordinary public unicast address.

    ``is_global`` is false for every special-purpose range (loopback, private,
    link-local, shared, unique-local, unspecified, reserved, documentation...);
    multicast counts as global there but is no place to fetch a file from.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and is_internal(embedded):
            return True
    return not address.is_global or address.is_multicast


def is_local_address(address: IPAddress) -> bool:
    """Whether ``address`` belongs to this machine: only then can a socket be bound to it."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


class EgressPolicy:
    """Decides, per connection, which addresses the agent may connect to for ``host:port``."""

    def __init__(
        self,
        allowlist: Iterable[str],
        platform_endpoints: Iterable[str] = (),
        resolver: Resolver = system_resolver,
        is_local: Callable[[IPAddress], bool] = is_local_address,
    ) -> None:
        """``allowlist`` and ``platform_endpoints`` are ``host:port`` entries (malformed allowlist
        entries are a ValueError; the configuration refuses them before this)."""
        self._allowed = frozenset(parse_host_port(entry) for entry in allowlist)
        platform: set[tuple[str, int]] = set()
        for entry in platform_endpoints:
            try:
                platform.add(parse_host_port(entry))
            except ValueError:
                continue  # an endpoint without a port names no place a URL could reach
        self._platform = frozenset(platform)
        self._resolve = resolver
        self._is_local = is_local

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host:port``, resolved now, once.

        The caller connects to these and to nothing else. Raises TransferError
        with :data:`UNREACHABLE` when the host is refused or does not resolve.
        """
        name = normalize_host(host)
        try:
            # The name as written (a final dot keeps it absolute); the allowlist compares it normalised.
            resolved = self._resolve(host.strip().removeprefix("[").removesuffix("]"), port)
        except (OSError, UnicodeError):
            raise TransferError(UNREACHABLE) from None
        if not resolved:
            raise TransferError(UNREACHABLE)
        if (name, port) in self._allowed:
            return resolved
        for text in resolved:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                raise TransferError(UNREACHABLE) from None
            if is_internal(address) or self._is_local(address) or self._is_platform(address, port):
                raise TransferError(UNREACHABLE)
        return resolved

    def _is_platform(self, address: IPAddress, port: int) -> bool:
        """Whether ``address:port`` is one of the platform's own endpoints (on another machine too)."""
        for host, endpoint_port in self._platform:
            if endpoint_port != port:
                continue
            try:
                if str(address) in self._resolve(host, port):
                    return True
            except (OSError, UnicodeError):
                continue  # an endpoint that does not resolve from here is not this address either
        return False
