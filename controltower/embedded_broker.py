"""An MQTT broker inside the control tower's own process (amqtt), so the demo needs no
Mosquitto. Anonymous, loopback only, no persistence: for demos and small tests, not a plant."""

from __future__ import annotations

import logging

from amqtt.broker import Broker

log = logging.getLogger(__name__)


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883):
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise RuntimeError(
                f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc} "
                "(is the port in use? pass --mqtt-port, or --mqtt-url to use an existing broker)"
            ) from None
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
