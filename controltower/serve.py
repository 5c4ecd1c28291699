"""`controltower serve`: the screen and the JSON API of the scaled-out shape (docs/uns.md). It
collects nothing and detects nothing: live values come from the UNS (`values/#`), the alarm list
from the retained alarm state (`alarm-state/#`), alarm history from the transitions
(`alerts/#`, also written to this instance's alarm journal), history from the historian.
Operators' acknowledge / shelve / unshelve go to the worker owning the alert as UNS commands, and
come back to every screen as the new alarm state: several screens show the same alarms. A tag
taken out of service (or back) is published retained on its `tag-service/` topic, so a worker
taking the unit over later applies it too; the screens list out-of-service tags from the
workers' retained `tag-state/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import polars as pl

from analytics.alerts import AlarmNotFound, AlarmTransitionError, Alert
from analytics.journal import AlarmJournal
from collector.sinks import open_historian
from controltower.audit import open_trail
from controltower.live import LiveState
from controltower.metrics import Metrics
from controltower.site import SiteConfig
from controltower.uns import Topics, UnsTopicError, client_for, decode_values, uns_login
from controltower.uns_alarms import alert_from_state

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10.0
LIVE_FLUSH_S = 0.25

_ERRORS: dict[str, type[Exception]] = {"not_found": AlarmNotFound, "transition": AlarmTransitionError,
                                       "invalid": ValueError}


class CommandFailed(RuntimeError):
    """A command no worker answered in time, or that failed there for another reason."""


class RemoteAlerts:
    """The part of `AlertBook` the screen and the API use, backed by the UNS: reads from the
    retained alarm state and the transitions seen, actions sent as commands (`send`, blocking,
    from the web threads). Thread-safe."""

    def __init__(self, send: Callable[..., dict[str, Any]], topics: Topics,
                 journal: AlarmJournal | None, max_history: int = 2000, tag_ids: set[str] | None = None):
        self._send = send  # (topic, body, retain=False) -> the worker's result
        self._tag_ids = tag_ids
        self._topics = topics
        self.journal = journal
        self._lock = threading.Lock()
        self._states: dict[str, Alert] = {}  # the alarm list: retained state, by id
        self._history: deque[Alert] = deque(maxlen=max_history)  # alerts as last seen in a transition
        self._out_of_service: dict[str, dict[str, Any]] = {}  # retained tag-state, by tag id

    # --- fed from the UNS (event loop) --------------------------------------------------------

    def on_state(self, alert_id: str, payload: bytes) -> None:
        with self._lock:
            if not payload:
                self._states.pop(alert_id, None)
                return
        alert = alert_from_state(json.loads(payload))
        with self._lock:
            self._states[alert_id] = alert

    def on_tag_state(self, tag_id: str, payload: bytes) -> None:
        state = json.loads(payload) if payload else None
        with self._lock:
            if isinstance(state, dict) and state.get("out_of_service"):
                self._out_of_service[tag_id] = state
            else:
                self._out_of_service.pop(tag_id, None)

    def on_transition(self, body: dict[str, Any]) -> None:
        info = body.get("alert")
        if not isinstance(info, dict):
            if body.get("event") in ("suppressed", "unsuppressed") and self.journal is not None and body.get("tag_id"):
                tag_id = str(body["tag_id"])
                self.journal.append({
                    "ts": datetime.fromisoformat(body["at"]) if body.get("at") else datetime.now(UTC),
                    "event": body["event"], "alert_id": None, "tag_id": tag_id, "detector": None,
                    "line_id": ".".join(tag_id.split(".")[:3]), "priority": None, "severity": None,
                    "from_state": body.get("from_state"), "to_state": body.get("to_state"),
                    "user": body.get("user") or "", "comment": body.get("comment") or "",
                    "message": f"tag {tag_id} {body.get('to_state')}",
                })
            return
        alert = alert_from_state(info)
        with self._lock:
            self._history.append(alert)
        if self.journal is not None:
            self.journal.append({
                "ts": datetime.fromisoformat(body["at"]) if body.get("at") else datetime.now(UTC),
                "event": body["event"], "alert_id": alert.id, "tag_id": alert.tag_id, "detector": alert.detector,
                "line_id": alert.line_id, "priority": alert.priority, "severity": alert.severity,
                "from_state": body.get("from_state"), "to_state": body.get("to_state"), "user": body.get("user") or "",
                "comment": body.get("comment") or "", "message": alert.message,
            })

    # --- read (web threads) -------------------------------------------------------------------

    def _live(self) -> list[Alert]:
        with self._lock:
            return [replace(a) for a in self._states.values()]

    def active(self) -> list[Alert]:
        alerts = [a for a in self._live() if a.active and not (a.shelved or a.suppressed)]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def alarm_list(self, *, shelved: bool = False, suppressed: bool = False, grouped: bool = False) -> list[Alert]:
        live = [a for a in self._live() if (shelved or not a.shelved) and (suppressed or not a.suppressed)]
        listed = {a.id for a in live}
        alerts = [a for a in live if grouped or a.grouped_under not in listed]
        return sorted(alerts, key=lambda a: a.raised_at, reverse=True)

    def shelved(self) -> list[Alert]:
        return sorted((a for a in self._live() if a.shelved), key=lambda a: a.raised_at, reverse=True)

    def recent(self, limit: int = 200) -> list[Alert]:
        with self._lock:
            latest = {a.id: a for a in self._history} | self._states
            return [replace(a) for a in heapq.nlargest(limit, latest.values(), key=lambda a: a.raised_at)]

    def counts_by_line(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for alert in self.active():
            line = counts.setdefault(alert.line_id, {"warning": 0, "alarm": 0})
            line[alert.severity] += 1
        return counts

    def get(self, alert_id: str) -> Alert | None:
        with self._lock:
            found = self._states.get(alert_id) or next((a for a in reversed(self._history) if a.id == alert_id), None)
            return replace(found) if found is not None else None

    def suppressed_tags(self) -> dict[str, str]:
        with self._lock:
            return {t: str(s.get("reason") or "") for t, s in self._out_of_service.items()}

    # --- act (web threads) --------------------------------------------------------------------

    def _command(self, action: str, alert_id: str, **fields: Any) -> Alert:
        alert = self.get(alert_id)
        if alert is None:
            raise AlarmNotFound(f"unknown alert {alert_id!r}")
        topic = self._topics.command(alert.site, alert.area, alert.line, alert.unit)
        result = self._send(topic, {"action": action, "alert_id": alert_id, **fields})
        if result.get("ok"):
            return alert_from_state(result["alert"])
        raise _ERRORS.get(result.get("kind"), CommandFailed)(result.get("error") or "the command failed")

    def acknowledge(self, alert_id: str, user: str, comment: str = "") -> Alert:
        return self._command("acknowledge", alert_id, user=user, comment=comment or "")

    def shelve(self, alert_id: str, user: str, minutes: float, reason: str) -> Alert:
        return self._command("shelve", alert_id, user=user, minutes=minutes, reason=reason)

    def unshelve(self, alert_id: str, user: str, comment: str = "") -> Alert:
        return self._command("unshelve", alert_id, user=user, comment=comment or "")

    def _tag_command(self, tag_id: str, out: bool, user: str, text: str | None) -> None:
        """Publish the tag's wanted service state, retained (a worker taking the unit over later
        finds it), and wait for the owning worker's result; the checks it can make here are
        made first, so a refused request leaves no retained command behind."""
        if self._tag_ids is not None and tag_id not in self._tag_ids:
            raise AlarmNotFound(f"unknown tag {tag_id!r}")
        if out == (tag_id in self.suppressed_tags()):
            raise AlarmTransitionError(f"tag {tag_id} is already out of service" if out else
                                       f"tag {tag_id} is not out of service")
        if not isinstance(user, str) or not user.strip():
            raise ValueError("user: required (who does this), a non-empty string")
        if out and (not isinstance(text, str) or not text.strip()):
            raise ValueError("reason: required, a non-empty string")
        body = {"out_of_service": out, "user": user, ("reason" if out else "comment"): text or "",
                "at": datetime.now(UTC).isoformat()}
        result = self._send(self._topics.tag_service(tag_id), body, retain=True)
        if not result.get("ok"):
            raise _ERRORS.get(result.get("kind"), CommandFailed)(result.get("error") or "the command failed")
        with self._lock:  # the worker's tag-state follows; the API answers with the new state now
            if out:
                self._out_of_service[tag_id] = {"tag_id": tag_id, "out_of_service": True, "reason": text, "user": user}
            else:
                self._out_of_service.pop(tag_id, None)

    def suppress(self, tag_id: str, user: str, reason: str) -> None:
        self._tag_command(tag_id, True, user, reason)

    def unsuppress(self, tag_id: str, user: str, comment: str = "") -> None:
        self._tag_command(tag_id, False, user, comment)


class ScreenService:
    """Implements `controltower.context.TowerContext` from the UNS and the historian."""

    def __init__(self, site: SiteConfig, *, data_dir: Path, name: str):
        if not site.uns.enabled:
            raise ValueError("controltower serve: the site file's uns.enabled is false; set uns: {enabled: true, url: ...}")
        self.site = site
        self.name = name
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.tags = site.tag_table()
        self.topics = Topics.of(site.uns)
        self.metrics = Metrics()
        self.live = LiveState(self.tags)
        self.historian = open_historian(site.historian, data_dir)
        self.journal = AlarmJournal(data_dir / "alarm_journal.jsonl")
        self.login = uns_login(site.uns, data_dir)
        self.alerts = RemoteAlerts(self._send_command, self.topics, self.journal,
                                   tag_ids={t.tag_id for t in self.tags})
        self.audit = open_trail(data_dir)
        self.started_at = datetime.now(UTC)
        self.connected = False
        self.web = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._pending_values: list[pl.DataFrame] = []
        self.counts = {"values_messages": 0, "bad_messages": 0, "transitions": 0}

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.connected else "degraded", "enterprise": self.site.enterprise,
            "uptime_s": round((datetime.now(UTC) - self.started_at).total_seconds(), 1), "sources": [],
            "historian": {"name": self.historian.name, "ok": True, "last_error": None},
            "uns": {"connected": self.connected, **self.counts}, "alerts_active": len(self.alerts.active()),
        }

    def start_screen(self, host: str | None = None, port: int | None = None) -> str:
        from controltower.runtime import ControlTower

        return ControlTower.start_screen(self, host, port)  # type: ignore[arg-type]  # the same wiring

    def stop_screen(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    # --- commands ------------------------------------------------------------------------------

    def _send_command(self, topic: str, body: dict[str, Any], retain: bool = False) -> dict[str, Any]:
        """From a web thread: publish a command and wait for its result."""
        if self._loop is None:
            raise CommandFailed("not connected to the UNS broker")
        future = asyncio.run_coroutine_threadsafe(self._round_trip(topic, body, retain), self._loop)
        try:
            return future.result(timeout=COMMAND_TIMEOUT_S + 1)
        except TimeoutError:
            future.cancel()
            raise CommandFailed(f"no analytics worker answered within {COMMAND_TIMEOUT_S:g}s; try again") from None

    async def _round_trip(self, topic: str, body: dict[str, Any], retain: bool = False) -> dict[str, Any]:
        if self._client is None:
            raise CommandFailed("not connected to the UNS broker")
        request_id = f"{self.name}-{uuid.uuid4().hex}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            await self._client.publish(topic, json.dumps(body | {"request_id": request_id}).encode(), qos=1,
                                       retain=retain)
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await waiter
        finally:
            self._waiting.pop(request_id, None)

    # --- the UNS session -----------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        session = asyncio.create_task(self._supervise(), name="uns-session")
        try:
            await asyncio.wait({session}, timeout=duration_s)
            if session.done():
                session.result()
        finally:
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            try:
                async with client_for(self.site.uns, f"{self.site.uns.client_id_prefix}-serve-{self.name}",
                                      self.login) as client:
                    self._client = client
                    await client.subscribe([(f, 1) for f in (
                        self.topics.alarm_state_filter, self.topics.alerts_filter, self.topics.tag_state_filter,
                        f"{self.topics.base}/command-results/+")] + [(f"{self.topics.base}/values/#", 0)])
                    self.connected, delay = True, 0.5
                    flusher = asyncio.create_task(self._flush_live())
                    try:
                        async for message in client.messages:
                            self._on_message(message.topic.value, message.payload or b"")
                    finally:
                        flusher.cancel()
            except aiomqtt.MqttError as exc:
                log.warning("screen %s: UNS broker %s: %s; retrying in %.1fs", self.name, self.site.uns.url, exc, delay)
            finally:
                self.connected, self._client = False, None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _on_message(self, topic: str, payload: Any) -> None:
        payload = payload if isinstance(payload, bytes) else str(payload).encode()
        base = self.topics.base
        try:
            if topic.startswith(f"{base}/values/"):
                _, unit = self.topics.parse_values(topic)
                self._pending_values.append(decode_values(payload, unit))
                self.counts["values_messages"] += 1
            elif topic.startswith(f"{base}/alarm-state/"):
                self.alerts.on_state(topic.rsplit("/", 1)[1], payload)
            elif topic.startswith(f"{base}/tag-state/"):
                self.alerts.on_tag_state(self.topics.parse_tag(topic, "tag-state"), payload)
            elif topic.startswith(f"{base}/alerts/"):
                self.alerts.on_transition(json.loads(payload))
                self.counts["transitions"] += 1
            elif topic.startswith(f"{base}/command-results/"):
                waiter = self._waiting.get(topic.rsplit("/", 1)[1])
                if waiter is not None and not waiter.done():
                    waiter.set_result(json.loads(payload))
        except (ValueError, KeyError, UnsTopicError) as exc:
            self.counts["bad_messages"] += 1
            log.warning("screen %s: message on %s set aside: %s", self.name, topic, exc)

    async def _flush_live(self) -> None:
        """The live view is updated a few times a second with what came, not once per message."""
        while True:
            await asyncio.sleep(LIVE_FLUSH_S)
            pending, self._pending_values = self._pending_values, []
            if pending:
                self.live.update(pl.concat(pending, how="vertical_relaxed"))

    def close(self) -> None:
        self.stop_screen()
        self.historian.close()
        self.journal.close()


async def run_serve(site: SiteConfig, *, data_dir: Path | None, name: str, host: str | None, port: int | None,
                    duration_s: float | None) -> None:
    root = Path(data_dir) if data_dir is not None else Path(site.data_dir) / f"serve-{name}"
    screen = ScreenService(site, data_dir=root, name=name)
    try:
        url = screen.start_screen(host=host, port=port)
        with contextlib.suppress(OSError):
            (root / "url").write_text(url)  # where a script finds a screen started on port 0
        await screen.run(duration_s)
    finally:
        screen.close()


def add_serve_arguments(parser) -> None:
    from controltower.cli import _port

    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--name", default=f"screen-{os.getpid()}", help="this screen's name among several")
    parser.add_argument("--data-dir", type=Path, help="journal copy, users, audit (default DATA_DIR/serve-NAME)")
    parser.add_argument("--host", help="overrides screen.host")
    parser.add_argument("--port", type=_port, help="overrides screen.port (0: a free one, written to DATA_DIR/url)")
    parser.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
