"""Part verdicts to the line's PLC over OPC UA: an ``asyncua`` server with a result-ready / acknowledge handshake.

inspectline hosts the server (``plant.lines.<line>.outputs.opcua.endpoint``); the PLC connects as a
client. Each line is an object under ``Objects/InspectLine`` with string node ids in the configured
namespace (``ns=<index of urn:inspectline>;s=<line>.<Variable>``):

    PartId       String    part id of the current result
    Station      String    station that decided it
    Verdict      String    OK, DEFECTIVE, UNSURE or NO_RESULT
    Reject       Boolean   what the reject gate does (the line's no_result / unsure settings applied)
    Reason       String    e.g. "DEFECTIVE in view top p=0.912"
    DecidedAt    DateTime  when the part was decided (UTC)
    Sequence     UInt32    1, 2, 3 ... per line, across service restarts
    ResultReady  Boolean   True while the result above waits for the PLC
    Acknowledge  UInt32    written by the PLC: the Sequence it has taken

Handshake, one result at a time: inspectline writes PartId ... Sequence, then sets ResultReady; the PLC
reads them and writes Acknowledge = Sequence; inspectline sees it, clears ResultReady, and only then
the result counts as delivered and the next one is written. A result not acknowledged within
``ack_timeout_s`` is a failed delivery (counted); it stays ready and the wait goes on with backoff. So
the PLC gets every verdict, in order, exactly as the outbox holds them, also after a restart of either
side; a PLC that restarts mid-handshake reads the same Sequence again and acknowledges it.

asyncua is asynchronous: the server runs on its own event loop in a thread, and ``deliver`` (called by
the dispatcher's thread) waits on coroutines run there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from inspectline.config import OpcUaOutput
from inspectline.errors import ConfigError
from inspectline.outputs.outbox import DeliveryError, OutboxItem

log = logging.getLogger(__name__)
_INSTALL = "pip install 'inspectline[line]'  (asyncua)"
_ACK_POLL_S = 0.01
ROOT_NAME = "InspectLine"


@dataclass
class _LineNodes:
    part_id: Any
    station: Any
    verdict: Any
    reject: Any
    reason: Any
    decided_at: Any
    sequence: Any
    ready: Any
    acknowledge: Any


class OpcUaServer:
    """One asyncua server (one endpoint) holding the objects of every line that uses it."""

    def __init__(self, endpoint: str, namespace: str):
        try:
            import asyncua  # noqa: F401 - fail here, with the install command, not in the server thread
        except ImportError:
            msg = f"an opcua output is configured, but asyncua is not installed: {_INSTALL}"
            raise ConfigError(msg) from None
        self.endpoint, self.namespace = endpoint, namespace
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua-server", daemon=True)
        self._server = None
        self._root = None
        self.namespace_index = 0

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        try:
            self.call(self._start(), timeout)
        except OSError as exc:
            self.stop()
            address = urlparse(self.endpoint).netloc
            msg = f"cannot start the OPC UA server at {self.endpoint}: {exc}; is {address} in use or not local?"
            raise ConfigError(msg) from None

    def line(self, line_id: str, settings: OpcUaOutput, *, delivered: int) -> OpcUaPublisher:
        """Create the line's nodes (Sequence and Acknowledge start at ``delivered``) and its output."""
        nodes = self.call(self._add_line(line_id, delivered), 30)
        return OpcUaPublisher(self, line_id, nodes, settings.ack_timeout_s)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            try:
                self.call(self._server.stop(), 10)
            except (OSError, TimeoutError, RuntimeError) as exc:
                log.warning("OPC UA server at %s did not stop cleanly: %s", self.endpoint, exc)
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _start(self) -> None:
        from asyncua import Server

        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("inspectline part verdicts")
        self.namespace_index = await server.register_namespace(self.namespace)
        self._root = await server.nodes.objects.add_object(f"ns={self.namespace_index};s={ROOT_NAME}", ROOT_NAME)
        await server.start()
        self._server = server
        log.info("OPC UA server listening at %s (namespace %s)", self.endpoint, self.namespace)

    async def _add_line(self, line_id: str, delivered: int) -> _LineNodes:
        from asyncua import ua

        idx = self.namespace_index
        folder = await self._root.add_object(f"ns={idx};s={line_id}", line_id)

        async def variable(name: str, value: Any, kind: Any):
            return await folder.add_variable(f"ns={idx};s={line_id}.{name}", name, ua.Variant(value, kind))

        string, boolean = ua.VariantType.String, ua.VariantType.Boolean
        nodes = _LineNodes(
            part_id=await variable("PartId", "", string),
            station=await variable("Station", "", string),
            verdict=await variable("Verdict", "", string),
            reject=await variable("Reject", False, boolean),
            reason=await variable("Reason", "", string),
            decided_at=await variable("DecidedAt", datetime(1970, 1, 1), ua.VariantType.DateTime),
            sequence=await variable("Sequence", delivered, ua.VariantType.UInt32),
            ready=await variable("ResultReady", False, boolean),
            acknowledge=await variable("Acknowledge", delivered, ua.VariantType.UInt32),
        )
        await nodes.acknowledge.set_writable()
        return nodes


class OpcUaPublisher:
    """The ``opcua`` output of one line: one handshake per verdict."""

    name = "opcua"

    def __init__(self, server: OpcUaServer, line_id: str, nodes: _LineNodes, ack_timeout_s: float):
        self.server, self.line_id, self.nodes, self.ack_timeout_s = server, line_id, nodes, ack_timeout_s

    def deliver(self, item: OutboxItem) -> None:
        try:
            acknowledged = self.server.call(self._handshake(item), self.ack_timeout_s + 10)
        except (OSError, TimeoutError, RuntimeError) as exc:
            msg = f"OPC UA handshake of seq {item.seq} on line {self.line_id!r} failed: {exc}"
            raise DeliveryError(msg) from None
        if not acknowledged:
            msg = (
                f"the PLC did not acknowledge seq {item.seq} of line {self.line_id!r} within {self.ack_timeout_s} s "
                f"(write {item.seq} to {self.line_id}.Acknowledge)"
            )
            raise DeliveryError(msg)

    def close(self) -> None:
        """The server is shared by the lines on its endpoint; the dispatcher's owner stops it."""

    async def _handshake(self, item: OutboxItem) -> bool:
        from asyncua import ua

        n, doc = self.nodes, item.payload
        already_ready = await n.ready.read_value() and await n.sequence.read_value() == item.seq
        if not already_ready:  # a retry keeps the result the PLC may be reading
            await n.part_id.write_value(ua.Variant(doc.get("part_id", ""), ua.VariantType.String))
            await n.station.write_value(ua.Variant(doc.get("station", ""), ua.VariantType.String))
            await n.verdict.write_value(ua.Variant(doc.get("verdict", ""), ua.VariantType.String))
            await n.reject.write_value(ua.Variant(doc.get("disposition") == "reject", ua.VariantType.Boolean))
            await n.reason.write_value(ua.Variant(doc.get("reason", ""), ua.VariantType.String))
            decided = datetime.fromisoformat(doc["decided_at"]) if doc.get("decided_at") else datetime(1970, 1, 1)
            await n.decided_at.write_value(ua.Variant(decided, ua.VariantType.DateTime))
            await n.sequence.write_value(ua.Variant(item.seq, ua.VariantType.UInt32))
            await n.ready.write_value(ua.Variant(True, ua.VariantType.Boolean))  # last: the result is complete
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while loop.time() < deadline:
            if await n.acknowledge.read_value() == item.seq:
                await n.ready.write_value(ua.Variant(False, ua.VariantType.Boolean))
                return True
            await asyncio.sleep(_ACK_POLL_S)
        return False
