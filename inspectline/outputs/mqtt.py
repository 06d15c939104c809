"""Part verdicts to an MQTT broker: one topic per line, QoS 1, optionally retained, with ``paho-mqtt``.

Each verdict is published as the outbox's JSON document (``seq``, line, station, part id, verdict,
disposition, reason, views ...) on ``plant.lines.<line>.outputs.mqtt.topic`` (default
``inspectline/<line>/parts``; ``{station}`` may be used too). ``deliver`` returns once the broker has
acknowledged it (PUBACK), so the outbox moves on only past verdicts the broker holds. One message is
in flight at a time, which keeps them in order; a publish whose PUBACK did not come in time stays in
paho's queue (paho sends it again after a reconnect) and the next attempt waits for that same message
instead of publishing a second copy. A subscriber can still see a verdict twice (at-least-once: after
a service restart, or a lost PUBACK); ``seq`` tells it so. With ``retain: true`` the broker keeps the
last verdict of the topic for subscribers that connect later.

paho's network thread reconnects by itself (1 s, doubling up to 30 s); while it is disconnected a
delivery fails at once and the dispatcher backs off.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from inspectline.config import MqttOutput
from inspectline.errors import ConfigError
from inspectline.outputs.outbox import DeliveryError, OutboxItem

log = logging.getLogger(__name__)
_INSTALL = "pip install 'inspectline[line]'  (paho-mqtt)"


class MqttPublisher:
    """The ``mqtt`` output of one line."""

    name = "mqtt"

    def __init__(self, settings: MqttOutput, line_id: str):
        try:
            from paho.mqtt import client as mqtt
        except ImportError:
            msg = f"line {line_id!r} has an mqtt output, but paho-mqtt is not installed: {_INSTALL}"
            raise ConfigError(msg) from None
        self.settings, self.line_id = settings, line_id
        self._connected = threading.Event()
        self._pending = None  # (seq, MQTTMessageInfo) of the publish still waiting for its PUBACK
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"inspectline-{line_id}",
            protocol=mqtt.MQTTv311,
        )
        if settings.username:
            password = os.environ.get(settings.password_env) if settings.password_env else None
            client.username_pw_set(settings.username, password)
        if settings.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        client.loop_start()
        self.client = client

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def deliver(self, item: OutboxItem) -> None:
        """Publish ``item`` (or keep waiting for its earlier publish) until the broker acknowledges it."""
        if self._pending is not None and self._pending[0] == item.seq:
            info = self._pending[1]
        else:
            if not self._connected.is_set():
                msg = f"not connected to the MQTT broker at {self.address}"
                raise DeliveryError(msg)
            topic = self.settings.topic.format(line=self.line_id, station=item.payload.get("station", ""))
            body = json.dumps(item.document, sort_keys=True).encode()
            info = self.client.publish(topic, body, qos=1, retain=self.settings.retain)
            self._pending = (item.seq, info)
        try:
            info.wait_for_publish(self.settings.timeout_s)
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:  # paho refused to queue it (not connected, queue full)
            self._pending = None
            msg = f"MQTT publish of seq {item.seq} to {self.address} failed: {exc}"
            raise DeliveryError(msg) from None
        if not published:
            msg = f"MQTT broker {self.address} did not acknowledge seq {item.seq} within {self.settings.timeout_s} s"
            raise DeliveryError(msg)
        self._pending = None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.address, reason_code)
            return
        log.info("connected to the MQTT broker at %s (line %s)", self.address, self.line_id)
        self._connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if self._connected.is_set():
            log.warning("lost the MQTT broker at %s (%s); reconnecting", self.address, reason_code)
        self._connected.clear()
