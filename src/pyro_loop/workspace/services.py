"""A workspace's services and processes, through its agent (agent/services.py): commands
started detached (`pyro exec --detach`), their bounded logs, and what runs in the workspace."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from pyro_loop.agent import protocol as p
from pyro_loop.errors import AgentError
from pyro_loop.workspace.client import (
    _CONNECT_TIMEOUT,
    DEFAULT_MAX_OUTPUT,
    AgentClient,
    Cancellation,
    _Capped,
)
from pyro_loop.workspace.secrets import Redactor

if TYPE_CHECKING:
    from pyro_loop.shapes import ProcessJSON, ServiceJSON, ServiceLogsInfoJSON, ServiceStoppedJSON

builtins_list = list


class ServiceClient:
    """The service operations of one workspace's agent."""

    def __init__(self, client: AgentClient, *, secrets: dict[str, str] | None = None) -> None:
        self.client = client
        # Secrets reach a service's environment, and are masked in what its log shows.
        self.secrets = dict(secrets or {})

    def free_name(self, program: str) -> str:
        """A service name after `program` ("npm" for /usr/bin/npm) that no running service
        has: "npm", else "npm-2", "npm-3" ..."""
        base = re.sub(r"[^A-Za-z0-9._-]", "-", os.path.basename(program)).lstrip(".")[:56]
        base = base or "service"
        running = {s["name"] for s in self.service_list() if s["state"] == "running"}
        name, n = base, 1
        while name in running:
            n += 1
            name = f"{base}-{n}"
        return name

    def service_start(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ServiceJSON:
        """Start `argv` as the service `name`, detached: returns once it runs."""
        env = {**self.secrets, **(env or {})}
        mask = sorted(set(self.secrets.values()))  # the agent writes the log masked
        request = {"op": "service_start", "name": name, "argv": argv, "cwd": cwd, "env": env}
        reply = self.client._request({**request, "mask": mask})
        return _service(reply)

    def service_list(self) -> builtins_list[ServiceJSON]:
        services = self.client._request({"op": "service_list"}).get("services")
        if not isinstance(services, list):
            raise AgentError("malformed reply from the workspace's agent: services is not a list")
        return [_service({"service": s}) for s in services]

    def service_status(self, name: str) -> ServiceJSON:
        return _service(self.client._request({"op": "service_status", "name": name}))

    def service_stop(self, name: str, *, timeout: float = 5.0) -> ServiceStoppedJSON:
        """SIGTERM the service's process tree, SIGKILL what is left after `timeout` s."""
        reply = self.client._request(
            {"op": "service_stop", "name": name, "timeout": timeout}, timeout=timeout + 20.0
        )
        return {**_service(reply), "killed": bool(reply.get("killed"))}

    def service_logs(
        self,
        name: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        on_output: Callable[[bytes], None] | None = None,
        max_bytes: int = DEFAULT_MAX_OUTPUT,
        cancel: Cancellation | None = None,
    ) -> tuple[bytes, ServiceLogsInfoJSON]:
        """The service's kept output (its last `tail` lines), to `on_output` as it comes or
        collected up to `max_bytes`; `follow` goes on until the service ends (or `cancel`)."""
        collected = _Capped(max_bytes)
        redactor = Redactor(self.secrets.values())

        def on_frame(kind: bytes, payload: bytes) -> None:
            if kind != p.KIND_STDOUT:
                raise p.ProtocolError(f"unexpected {kind!r} frame in a service's log")
            if redactor:
                payload = redactor.feed(payload)
            if on_output is not None:
                on_output(payload)
            else:
                collected.add(payload)

        reply = self.client._request(
            {"op": "service_logs", "name": name, "tail": tail, "follow": follow},
            on_frame=on_frame,
            timeout=None if follow else _CONNECT_TIMEOUT,
            cancel=cancel,
        )
        if redactor and (rest := redactor.flush()):
            if on_output is not None:
                on_output(rest)
            else:
                collected.add(rest)
        dropped = reply.get("dropped_bytes")
        info: ServiceLogsInfoJSON = {
            **_service(reply),
            "dropped_bytes": dropped if isinstance(dropped, int) else 0,
            "output_truncated": collected.truncated,
        }
        return collected.value(), info

    def ps(self) -> builtins_list[ProcessJSON]:
        """Every process in the workspace but pyro's own."""
        rows = self.client._request({"op": "ps"}).get("processes")
        if not isinstance(rows, list):
            raise AgentError("malformed reply from the workspace's agent: bad process list")
        return [_process(row) for row in rows]


def _process(raw: object) -> ProcessJSON:
    """A process the agent listed, type-checked field by field."""
    if isinstance(raw, dict):
        pid, ppid, state, argv = raw.get("pid"), raw.get("ppid"), raw.get("state"), raw.get("argv")
        if _count(pid) and _count(ppid) and isinstance(state, str) and isinstance(argv, list) \
                and all(isinstance(a, str) for a in argv):  # fmt: skip
            return {"pid": pid, "ppid": ppid, "state": state, "argv": argv}
    raise AgentError("malformed reply from the workspace's agent: bad process list")


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_SERVICE_FIELDS = {
    "name": str, "state": str, "pid": int, "exit_code": int, "signal": int,
    "started": float, "ended": float, "cwd": str,
}  # fmt: skip


def _service(reply: dict[str, Any]) -> ServiceJSON:
    """A service's description from the agent, type-checked field by field."""
    raw = reply.get("service")
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise AgentError("malformed reply from the workspace's agent: no service")
    info: dict[str, Any] = {}
    for key, kind in _SERVICE_FIELDS.items():
        value = raw.get(key)
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        info[key] = value if ok and not isinstance(value, bool) else None
    argv = raw.get("argv")
    info["argv"] = [str(a) for a in argv] if isinstance(argv, list) else []
    return cast("ServiceJSON", info)  # each field of ServiceJSON, of its type, checked above
