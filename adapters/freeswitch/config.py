"""Where the FreeSWITCH nodes are and how to authenticate, read from the environment.

Rules
-----
* The ESL password is a :class:`Secret`: its ``repr``/``str`` never show the value, so it cannot
  leak into logs, exception messages, reprs of configs, or CTI payloads by accident. Only
  ``Secret.reveal()`` returns it, and only the auth encoder calls that.
* The stock FreeSWITCH password ``ClueCon`` is the default. Using it on a non-loopback address
  warns loudly (``warnings.warn`` + a WARNING log): anyone on that network can drive the switch.
* Environment (all optional)::

      CALLENGINE_ESL_NODES      "fs1=10.0.0.5:8021,fs2=10.0.0.6:8021" (default "fs1=127.0.0.1:8021")
      CALLENGINE_ESL_PASSWORD   password for every node (default ClueCon)
      CALLENGINE_ESL_PASSWORD_<NAME>   password of one node (NAME upper-cased, '-' -> '_')
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_PASSWORD", "EslNodeConfig", "Secret", "is_loopback", "nodes_from_env"]

log = logging.getLogger("callengine.freeswitch")

DEFAULT_PASSWORD = "ClueCon"


class DefaultPasswordWarning(UserWarning):
    """The stock ESL password is used where others can reach the switch."""


class Secret:
    """A string that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # pickling (Ray) keeps the value, printing does not
        return (Secret, (self._value,))


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@dataclass(frozen=True, kw_only=True)
class EslNodeConfig:
    """One FreeSWITCH node reached over inbound ESL (a plain ``str`` password becomes a Secret)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8021
    password: Secret = field(default_factory=lambda: Secret(DEFAULT_PASSWORD))

    def __post_init__(self) -> None:
        if isinstance(self.password, str):  # accept a plain str, keep a Secret
            object.__setattr__(self, "password", Secret(self.password))

    @property
    def uses_default_password(self) -> bool:
        return self.password.reveal() == DEFAULT_PASSWORD

    def check_password(self) -> bool:
        """Warn (once per call) when the default password is used off loopback; True if so."""
        if self.uses_default_password and not is_loopback(self.host):
            msg = (f"FreeSWITCH node {self.name!r} at {self.host}:{self.port} uses the default ESL "
                   "password: anyone who can reach that port controls the switch. Set "
                   "CALLENGINE_ESL_PASSWORD (and event_socket.conf.xml) to a secret.")
            log.warning(msg)
            warnings.warn(msg, DefaultPasswordWarning, stacklevel=2)
            return True
        return False


def _env_name(name: str) -> str:
    return "CALLENGINE_ESL_PASSWORD_" + name.upper().replace("-", "_").replace(".", "_")


def nodes_from_env(env: Mapping[str, str] | None = None) -> list[EslNodeConfig]:
    env = os.environ if env is None else env
    spec = env.get("CALLENGINE_ESL_NODES", "fs1=127.0.0.1:8021")
    common = env.get("CALLENGINE_ESL_PASSWORD", DEFAULT_PASSWORD)
    out = []
    for i, item in enumerate(x.strip() for x in spec.split(",") if x.strip()):
        name, sep, addr = item.partition("=")
        if not sep:
            name, addr = f"fs{i + 1}", item
        host, _, port = addr.rpartition(":")
        if not host:
            host, port = addr, "8021"
        if not port.isdigit():
            raise ValueError(f"CALLENGINE_ESL_NODES: bad port in {item!r}")
        cfg = EslNodeConfig(name=name.strip(), host=host.strip("[]"), port=int(port),
                            password=Secret(env.get(_env_name(name.strip()), common)))
        cfg.check_password()
        out.append(cfg)
    return out
