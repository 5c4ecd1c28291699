"""The control tower as separate services over the unified namespace (docs/uns.md, docs/deployment.md):

    controltower collect --config SITE [--instance N]   sources -> spool -> historian, and each batch
                                                        to the UNS, one message per unit
    controltower analyse --config SITE [--worker NAME]  the UNS values of the partitions this worker
                                                        owns -> detectors -> alert transitions to the UNS

`controltower run` still does all of it in one process (`controltower.runtime`) for small sites.

Each service writes `status.json` in its data directory every second (counts, connection,
partitions owned): what an operator or a test reads without an HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import polars as pl
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from analytics.alerts import AlarmJournalError, AlarmTransitionError, AlertBook
from analytics.engine import DetectionEngine
from analytics.journal import AlarmJournal
from collector.pipeline import Pipeline
from collector.sinks import open_historian
from collector.spool import Spool
from controltower.audit import open_trail, record_model_change
from controltower.batch_events import empty_batch_events
from controltower.metrics import Metrics
from controltower.runtime import build_sources, load_unit_monitors, model_reloader
from controltower.site import MqttSourceConfig, SiteConfig, TagInfo
from controltower.uns import (
    Topics,
    UnsPublisher,
    UnsTopicError,
    alert_message,
    assign,
    client_for,
    decode_batch_events,
    decode_values,
    partition_of,
    uns_login,
)
from controltower.uns_alarms import alert_from_state, seed_levels, warm_up

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace `path` atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, default=str, indent=1))
    os.replace(tmp, path)


def _require_uns(site: SiteConfig, command: str) -> None:
    if not site.uns.enabled:
        raise ValueError(f"controltower {command}: the site file's uns.enabled is false; "
                         "set uns: {enabled: true, url: mqtt://...} to run the services apart")


# --- collect -------------------------------------------------------------------------------------


def instance_sources(site: SiteConfig, instance: str | None, only: list[str] | None) -> SiteConfig:
    """The site as one collector instance sees it: only the sources named in `only` (when given),
    and MQTT client ids suffixed with the instance (two clients with one id would keep
    disconnecting each other; a `shared_group` splits the stream between instances)."""
    sources = list(site.sources)
    if only:
        unknown = set(only) - {s.name for s in sources}
        if unknown:
            raise ValueError(f"--source: no source named {', '.join(sorted(unknown))} "
                             f"(sources: {', '.join(s.name for s in sources)})")
        sources = [s for s in sources if s.name in only]
    if instance is not None:
        sources = [
            s.model_copy(update={"client_id": f"{s.client_id}-{instance}"})
            if isinstance(s, MqttSourceConfig) and s.client_id else s
            for s in sources
        ]
    # Tags of the sources left out are not collected here: the model validator is not run again.
    return site.model_copy(update={"sources": sources})


class Collector:
    """Sources -> pipeline (spool, historian) as in `controltower run`, plus the UNS publisher
    as the pipeline's consumer. No detectors, no screen."""

    def __init__(self, site: SiteConfig, *, data_dir: Path, instance: str):
        _require_uns(site, "collect")
        self.site = site
        self.instance = instance
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.historian = open_historian(site.historian, data_dir)
        self.sources = build_sources(site, data_dir)
        self.publisher = UnsPublisher(site.uns, client_id=f"{site.uns.client_id_prefix}-collect-{instance}",
                                      login=uns_login(site.uns, data_dir))
        spool = Spool.from_config(site.spool, data_dir) if site.spool.enabled else None
        self.pipeline = Pipeline(self.sources, self.historian, consumers=[self.publisher.publish_batch],
                                 metrics=self.metrics, spool=spool,
                                 event_consumers=[self.publisher.publish_batch_events])

    def status(self) -> dict[str, Any]:
        return {
            "service": "collect", "instance": self.instance, "pid": os.getpid(),
            "at": datetime.now(UTC).isoformat(),
            "sources": [s.health.as_dict() for s in self.sources],
            "historian": {"name": self.historian.name, "ok": self.pipeline.historian_ok,
                          "last_error": self.pipeline.historian_error,
                          "samples_stored": self.pipeline.samples_stored},
            "spool_pending_batches": self.pipeline.spool_batches,
            "uns": self.publisher.stats.as_dict() | {"pending": self.publisher.pending},
        }

    async def run(self, duration_s: float | None = None) -> None:
        publisher = asyncio.create_task(self.publisher.run(), name="uns-publisher")
        status = asyncio.create_task(_status_loop(self.data_dir / "status.json", self.status), name="status")
        pipeline = asyncio.create_task(self.pipeline.run(), name="pipeline")
        try:
            done, _ = await asyncio.wait({pipeline}, timeout=duration_s)
            if pipeline in done:
                pipeline.result()
        finally:
            if not pipeline.done():
                pipeline.cancel()  # stops the sources, drains to the historian
            await asyncio.gather(pipeline, return_exceptions=True)
            # What the consumers were given goes out before the publisher stops (bounded).
            await self.publisher.flush(timeout_s=5.0)
            for task in (publisher, status):
                task.cancel()
            await asyncio.gather(publisher, status, return_exceptions=True)
            write_status(self.data_dir / "status.json", self.status())

    def close(self) -> None:
        self.pipeline.close()
        self.historian.close()


async def _status_loop(path: Path, status) -> None:
    while True:
        with contextlib.suppress(OSError):  # a full disk must not stop the service
            write_status(path, status())
        await asyncio.sleep(STATUS_INTERVAL_S)


# --- analyse -------------------------------------------------------------------------------------


class _TransitionLog:
    """The worker's alarm journal, which also keeps the entries of the last applied batch so
    they can be published as alert transitions (the AlertBook journals every transition)."""

    def __init__(self, journal: AlarmJournal):
        self.journal = journal
        self.entries: list[dict[str, Any]] = []

    def append_many(self, entries):
        written = self.journal.append_many(entries)
        self.entries.extend(entries)
        return written

    def append(self, entry):
        return self.append_many([entry])

    def take(self) -> list[dict[str, Any]]:
        entries, self.entries = self.entries, []
        return entries

    def close(self) -> None:
        self.journal.close()


class AnalyticsWorker:
    """Owns some of the UNS partitions (rendezvous hashing over the live workers, see
    `controltower.uns.assign`), runs one DetectionEngine per owned partition (its detectors'
    streaming state moves with the partition) and publishes every alert transition.

    Membership: on connect the worker publishes a retained `{root}/v1/workers/{name}` and sets a
    last will that empties it; it subscribes to `workers/+`, and on every change recomputes the
    assignment and subscribes to or unsubscribes from `values/p{k}/#`. A worker killed is taken
    out by the broker after 1.5 keep-alives; its partitions then go to the others.

    Alarm state: every changed alert is published retained on `alarm-state/...`; a partition
    taken over brings its alerts back from there (`controltower.uns_alarms`) and warms its
    detectors up from the historian's recent samples; operators' acknowledge / shelve /
    unshelve arrive on the partition's `commands/` topic, tags taken out of service on its
    retained `tag-service/` topic.
    """

    def __init__(self, site: SiteConfig, *, data_dir: Path, name: str, flush_interval_s: float = 0.25):
        _require_uns(site, "analyse")
        if not name or any(c in name for c in "/+#$") or len(name) > 64:
            raise ValueError(f"--worker {name!r}: a worker name is 1-64 characters without / + # $")
        self.site = site
        self.name = name
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.topics = Topics.of(site.uns)
        self.login = uns_login(site.uns, data_dir)  # a bad TLS file or missing password stops us here
        self.tags = site.tag_table()
        self._tags_by_partition: dict[int, list[TagInfo]] = {}
        for t in self.tags:
            k = partition_of(f"{t.site}.{t.area}.{t.line}.{t.unit}", self.topics.partitions)
            self._tags_by_partition.setdefault(k, []).append(t)
        self.log = _TransitionLog(AlarmJournal(data_dir / "alarm_journal.jsonl"))
        self.book = AlertBook(journal=self.log)  # type: ignore[arg-type]
        # What the worker changes in the scoring path itself (model versions swapped in or refused),
        # in its own hash-chained trail: it may run on another machine than the tower.
        self.audit = open_trail(data_dir)
        # The retained alarm state of the whole site, as last seen (alert id -> Alert.to_dict()):
        # what a partition taken over is restored from.
        self.alarm_states: dict[str, dict[str, Any]] = {}
        # Tags out of service as their owners applied it (retained `tag-state/...`): tag id -> state.
        self.tag_states: dict[str, dict[str, Any]] = {}
        # Where a partition taken over warms its detectors up from (docs/uns.md).
        self.historian = open_historian(site.historian, data_dir) if site.uns.warmup_s else None
        # Per warmed-up partition, each tag's newest sample in the warm-up history: live samples
        # not newer than it were in the history already (the collectors store and publish alike).
        self._warmed_to: dict[int, pl.DataFrame] = {}
        self.engines: dict[int, DetectionEngine] = {}
        # Per owned partition, what swaps new stored model versions into its engine (None: off).
        self.reloaders: dict[int, Any] = {}
        self.members: set[str] = set()
        self.owned: set[int] = set()
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple[int, pl.DataFrame]] = []
        # The detectors run in a thread (`_detect`); operator commands, rebalancing, the tag
        # service and batch events change the same engines and alert book, so they take turns.
        self._engine_lock = asyncio.Lock()
        self.counts: dict[str, Any] = {"messages": 0, "samples": 0, "bad_messages": 0, "foreign_partition": 0,
                                       "samples_detected": 0, "alerts_raised": 0, "transitions_published": 0,
                                       "rebalances": 0}
        self.units_seen: dict[str, int] = {}  # unit path -> samples, since start
        self.connected = False

    def status(self) -> dict[str, Any]:
        return {
            "service": "analyse", "worker": self.name, "pid": os.getpid(), "at": datetime.now(UTC).isoformat(),
            "connected": self.connected, "members": sorted(self.members), "partitions": sorted(self.owned),
            "counts": self.counts, "units": self.units_seen, "alerts_active": len(self.book.active()),
        }

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.topics.worker(self.name), b"", qos=1, retain=True)
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 0
        return client_for(self.site.uns, f"{self.site.uns.client_id_prefix}-analyse-{self.name}", self.login,
                          will=will, clean_start=True, properties=connect)

    async def run(self, duration_s: float | None = None) -> None:
        status = asyncio.create_task(_status_loop(self.data_dir / "status.json", self.status), name="status")
        session = asyncio.create_task(self._supervise(), name="uns-session")
        models = asyncio.create_task(self._watch_models(), name="model-reload")
        try:
            await asyncio.wait({session}, timeout=duration_s)
            if session.done():
                session.result()
        finally:
            for task in (session, status, models):
                task.cancel()
            await asyncio.gather(session, status, models, return_exceptions=True)
            write_status(self.data_dir / "status.json", self.status())

    async def _watch_models(self) -> None:
        """New stored model versions into the owned partitions' engines (`analytics.model_reload`),
        each swap or refusal audited in the worker's trail (`model.load` / `model.refuse`)."""
        period = self.site.detectors.models.reload_s
        if not self.site.detectors.models.enabled or period <= 0:
            return
        from analytics.model_reload import watch

        await watch(lambda: [r for r in self.reloaders.values() if r is not None], period,
                    lambda change: record_model_change(self.audit, change, by=f"analytics worker {self.name}"))

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning("analytics worker %s: broker %s: %s; retrying in %.1fs", self.name, self.site.uns.url,
                            exc, delay)
            finally:
                self.connected = False
                self.members.clear()
                self.owned.clear()  # after a reconnection the subscriptions are made again
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _session(self) -> None:
        async with self._client() as client:
            self.connected = True
            # The alarm state first: the broker sends a subscription's retained messages right
            # after its acknowledgement, so they are all here before the membership that makes
            # this worker take partitions (and restore their alerts).
            await client.subscribe(self.topics.alarm_state_filter, qos=1)
            await client.subscribe(self.topics.tag_state_filter, qos=1)
            await client.subscribe(self.topics.workers_filter, qos=1)
            await client.publish(self.topics.worker(self.name), json.dumps(
                {"worker": self.name, "pid": os.getpid(), "since": datetime.now(UTC).isoformat()}).encode(),
                qos=1, retain=True)
            flusher = asyncio.create_task(self._flush_loop(client))
            try:
                async for message in client.messages:
                    await self._on_message(client, message.topic.value, message.payload, bool(message.retain))
            finally:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                with contextlib.suppress(Exception):  # what was received and journalled goes out too
                    await asyncio.wait_for(self._detect(client), timeout=5)
                with contextlib.suppress(Exception):  # leaving cleanly: the others take over at once
                    await client.publish(self.topics.worker(self.name), b"", qos=1, retain=True, timeout=2)

    async def _on_message(self, client: aiomqtt.Client, topic: str, payload: Any, retained: bool = False) -> None:
        payload = payload if isinstance(payload, bytes) else str(payload or "").encode()
        if topic.startswith(f"{self.topics.base}/values/"):
            self._on_values(topic, payload)
            return
        async with self._engine_lock:
            await self._on_control(client, topic, payload, retained)

    async def _on_control(self, client: aiomqtt.Client, topic: str, payload: bytes, retained: bool) -> None:
        if topic.startswith(f"{self.topics.base}/workers/"):
            try:
                worker = self.topics.worker_name(topic)
            except UnsTopicError:
                return
            if payload:
                self.members.add(worker)
            else:
                self.members.discard(worker)
            await self._rebalance(client)
            return
        if topic.startswith(f"{self.topics.base}/alarm-state/"):
            alert_id = topic.rsplit("/", 1)[1]
            if not payload:
                self.alarm_states.pop(alert_id, None)
                return
            try:
                self.alarm_states[alert_id] = json.loads(payload)
            except ValueError:
                self.counts["bad_alarm_states"] = self.counts.get("bad_alarm_states", 0) + 1
            return
        if topic.startswith(f"{self.topics.base}/commands/"):
            await self._command(client, payload)
            return
        if topic.startswith(f"{self.topics.base}/tag-state/"):
            self._on_tag_state(topic, payload)
            return
        if topic.startswith(f"{self.topics.base}/tag-service/"):
            await self._tag_service(client, topic, payload, retained)
            return
        if topic.startswith(f"{self.topics.base}/batch-events/"):
            self._on_batch_events(topic, payload)
            return
        self.counts["bad_messages"] += 1
        log.warning("analytics worker %s: message on unexpected topic %s set aside", self.name, topic)

    def _on_values(self, topic: str, payload: bytes) -> None:
        try:
            partition, unit = self.topics.parse_values(topic)
            frame = decode_values(payload, unit)
        except ValueError as exc:
            self.counts["bad_messages"] += 1
            log.warning("analytics worker %s: message on %s set aside: %s", self.name, topic, exc)
            return
        if partition not in self.owned:  # in flight while the partition moved away
            self.counts["foreign_partition"] += 1
            return
        self.counts["messages"] += 1
        self.counts["samples"] += frame.height
        self.units_seen[unit] = self.units_seen.get(unit, 0) + frame.height
        self._pending.append((partition, frame))

    def _units_of(self, partition: int) -> list[str]:
        return sorted({t.unit_id for t in self._tags_by_partition.get(partition, [])})

    def _on_batch_events(self, topic: str, payload: bytes) -> None:
        """A unit's batch events from a collector: to the partition's engine (its golden models
        and SPC centre lines fitted by phase follow them), as `controltower run` feeds them."""
        try:
            partition, unit = self.topics.parse_values(topic, kind="batch-events")
            events = decode_batch_events(payload, unit)
        except ValueError as exc:
            self.counts["bad_messages"] += 1
            log.warning("analytics worker %s: message on %s set aside: %s", self.name, topic, exc)
            return
        if partition not in self.owned:
            self.counts["foreign_partition"] += 1
            return
        self.counts["batch_events"] = self.counts.get("batch_events", 0) + events.height
        self._feed_batch_events(partition, events)

    def _feed_batch_events(self, partition: int, events: pl.DataFrame) -> None:
        engine = self.engines.get(partition)
        if engine is not None:
            engine.batch_events(events)

    async def _recent_batch_events(self, partition: int, since: datetime) -> pl.DataFrame:
        """The batch events of the partition's units from `since` on, with each unit's last one
        before it, from the historian (none when nothing of the partition follows phases)."""
        read = getattr(self.historian, "read_batch_events", None)
        if read is None or not self.engines[partition].follows_phases:
            return empty_batch_events()
        frames = [await asyncio.to_thread(read, unit, since) for unit in self._units_of(partition)]
        return pl.concat(frames, how="vertical_relaxed") if frames else empty_batch_events()

    async def _command(self, client: aiomqtt.Client, payload: bytes) -> None:
        """An operator's action on an alert this worker holds: acknowledge, shelve or unshelve.
        The book journals it (so it is published as a transition, with the alarm state, at the
        next flush); the outcome goes to `command-results/{request_id}`."""
        try:
            command = json.loads(payload)
        except ValueError:
            command = None
        if not isinstance(command, dict):
            self.counts["bad_commands"] = self.counts.get("bad_commands", 0) + 1
            log.warning("analytics worker %s: command set aside: not a JSON object", self.name)
            return
        action, alert_id = command.get("action"), command.get("alert_id")

        def apply() -> dict[str, Any]:
            if action == "acknowledge":
                alert = self.book.acknowledge(alert_id, command.get("user"), command.get("comment", ""))
            elif action == "shelve":
                alert = self.book.shelve(alert_id, command.get("user"), command.get("minutes"), command.get("reason"))
            elif action == "unshelve":
                alert = self.book.unshelve(alert_id, command.get("user"), command.get("comment", ""))
            else:
                raise ValueError(f"action: one of acknowledge, shelve, unshelve, got {action!r}")
            return {"alert": alert.to_dict()}

        await self._reply(client, str(command.get("request_id") or ""), self._outcome(apply))

    def _outcome(self, apply) -> dict[str, Any]:
        """Run an operator's action on the book: its result, or why it was refused (the kind
        tells the screen which HTTP status to answer)."""
        self.counts["commands"] = self.counts.get("commands", 0) + 1
        try:
            return {"ok": True} | apply()
        except LookupError as exc:
            return {"ok": False, "kind": "not_found", "error": str(exc)}
        except AlarmTransitionError as exc:
            return {"ok": False, "kind": "transition", "error": str(exc)}
        except ValueError as exc:
            return {"ok": False, "kind": "invalid", "error": str(exc)}
        except AlarmJournalError as exc:
            return {"ok": False, "kind": "journal", "error": str(exc)}

    async def _reply(self, client: aiomqtt.Client, request_id: str, result: dict[str, Any]) -> None:
        if request_id and not any(c in request_id for c in "/+#"):
            await client.publish(self.topics.command_result(request_id), json.dumps(result).encode(), qos=1)

    def _on_tag_state(self, topic: str, payload: bytes) -> None:
        try:
            tag_id = self.topics.parse_tag(topic, "tag-state")
            if payload:
                self.tag_states[tag_id] = json.loads(payload)
            else:
                self.tag_states.pop(tag_id, None)
        except ValueError:
            self.counts["bad_tag_states"] = self.counts.get("bad_tag_states", 0) + 1

    async def _tag_service(self, client: aiomqtt.Client, topic: str, payload: bytes, retained: bool) -> None:
        """A tag taken out of service or put back (`tag-service/...`, retained: the wanted state).
        Sent now (not retained): the book applies it, journalled with who and why, the outcome goes
        to `command-results/{request_id}` and the applied state to the retained `tag-state/...`.
        Found retained on taking a partition over: adopted without a second journal entry when
        `tag-state` shows it was applied (by an earlier owner), applied as new otherwise."""
        try:
            tag_id = self.topics.parse_tag(topic, "tag-service")
            wanted = json.loads(payload) if payload else None
            if wanted is not None and not (isinstance(wanted, dict) and isinstance(wanted.get("out_of_service"), bool)):
                raise ValueError("not a JSON object with out_of_service true or false")
        except ValueError as exc:
            self.counts["bad_commands"] = self.counts.get("bad_commands", 0) + 1
            log.warning("analytics worker %s: tag service command on %s set aside: %s", self.name, topic, exc)
            return
        if wanted is None or partition_of(tag_id.rsplit(".", 1)[0], self.topics.partitions) not in self.owned:
            return
        out, request_id = wanted["out_of_service"], str(wanted.get("request_id") or "")
        user, why = wanted.get("user"), wanted.get("reason") if out else wanted.get("comment", "")
        applied = self.tag_states.get(tag_id)
        if retained and (applied.get("request_id") == request_id if applied else not out):
            self.book.adopt_service_state(tag_id, out, str(why or ""), str(user or ""))
            return

        def apply() -> dict[str, Any]:
            (self.book.suppress if out else self.book.unsuppress)(tag_id, user, why)
            return {"tag_id": tag_id, "out_of_service": out}

        result = self._outcome(apply)
        if retained and result.get("kind") == "transition":
            # The book holds that state already (a partition that came back here): take the reason.
            self.book.adopt_service_state(tag_id, out, str(why or ""), str(user or ""))
        if result["ok"]:
            state = {"tag_id": tag_id, "out_of_service": True, "reason": why, "user": user,
                     "at": datetime.now(UTC).isoformat(), "request_id": request_id, "worker": self.name}
            self.tag_states[tag_id] = state
            if not out:
                self.tag_states.pop(tag_id, None)
            await client.publish(self.topics.tag_state(tag_id), json.dumps(state).encode() if out else b"", qos=1,
                                 retain=True)
        if not retained:
            await self._reply(client, request_id, result)

    async def _rebalance(self, client: aiomqtt.Client) -> None:
        if self.name not in self.members:
            return  # our own membership not seen yet: own nothing
        mine = set(assign(self.site.uns.partitions, self.members)[self.name])
        gained, lost = sorted(mine - self.owned), sorted(self.owned - mine)
        if not gained and not lost:
            return
        self.counts["rebalances"] += 1
        filters = (self.topics.values_filter, self.topics.batch_events_filter, self.topics.command_filter,
                   self.topics.tag_service_filter)
        if lost:
            await client.unsubscribe([f(k) for k in lost for f in filters])
        # A partition kept across a reconnection keeps its engine (and its detectors' state);
        # one that moved away drops it, one that came in starts fresh and is warmed up.
        fresh = [k for k in gained if k not in self.engines]
        self.engines = {k: self.engines.get(k) or DetectionEngine(
            self._tags_by_partition.get(k, []), self.site.detectors, self.book,
            monitors=load_unit_monitors(self.site, Path(self.site.data_dir), units=self._units_of(k))) for k in mine}
        self.reloaders = {k: self.reloaders.get(k) or model_reloader(
            self.site, Path(self.site.data_dir), self.engines[k], units=self._units_of(k)) for k in mine}
        self._warmed_to = {k: v for k, v in self._warmed_to.items() if k in mine}
        for k in gained:
            self._restore(k)
        if gained:
            # Subscribed before the warm-up: what arrives meanwhile waits in the client's queue
            # (this loop is busy here), then is scored after the history, its overlap dropped.
            await client.subscribe([(f(k), self.site.uns.qos) for k in gained for f in filters])
            await self._warm_up(fresh)
        self.owned = mine
        self._pending = [(k, f) for k, f in self._pending if k in mine]
        log.info("analytics worker %s: members %s, owns partitions %s (gained %s, lost %s)", self.name,
                 sorted(self.members), sorted(mine), gained, lost)

    def _restore(self, partition: int) -> None:
        """Take back the alerts of a gained partition from the retained alarm state (docs/uns.md)."""
        restored = []
        for state in list(self.alarm_states.values()):
            unit = ".".join(str(state.get(c, "")) for c in ("site", "area", "line", "unit"))
            if partition_of(unit, self.topics.partitions) != partition:
                continue
            try:
                alert = alert_from_state(state)
            except ValueError as exc:
                log.warning("analytics worker %s: alarm state set aside: %s", self.name, exc)
                continue
            if self.book.adopt(alert):
                restored.append(alert)
        if restored:
            seed_levels(self.engines[partition], restored)
            self.counts["alerts_restored"] = self.counts.get("alerts_restored", 0) + len(restored)
            log.info("analytics worker %s: partition %d: %d alert(s) restored from the alarm state", self.name,
                     partition, len(restored))

    async def _warm_up(self, partitions: list[int]) -> None:
        """Run fresh partitions' detectors over their units' last `uns.warmup_s` of history from
        the historian (`controltower.uns_alarms.warm_up`). A historian that does not answer leaves
        them cold (counted, logged): live values are scored all the same."""
        if self.historian is None:
            return
        for k in partitions:
            tags = [t.tag_id for t in self._tags_by_partition.get(k, [])]
            if not tags:
                continue
            since = datetime.now(UTC) - timedelta(seconds=self.site.uns.warmup_s)
            try:
                history = await asyncio.to_thread(self.historian.read, tags, since, None)
                # The phase running then and the changes since: before the history, so it is scored by phase.
                self._feed_batch_events(k, await self._recent_batch_events(k, since))
            except Exception as exc:  # noqa: BLE001  # HistorianError or a driver's own: never stop the worker
                self.counts["warmup_failures"] = self.counts.get("warmup_failures", 0) + 1
                log.warning("analytics worker %s: partition %d: no warm-up, the historian did not answer: %s",
                            self.name, k, exc)
                continue
            used = warm_up(self.engines[k], history)
            if used:
                self._warmed_to[k] = history.group_by("tag_id").agg(pl.col("ts").max().alias("_warmed_to"))
            self.counts["warmup_samples"] = self.counts.get("warmup_samples", 0) + used
            log.info("analytics worker %s: partition %d warmed up with %d samples", self.name, k, used)

    async def _flush_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self._detect(client)

    async def _detect(self, client: aiomqtt.Client) -> None:
        """Run each owned partition's engine on what arrived since the last flush (one engine call
        per partition, not per message), then publish the transitions the book journalled."""
        async with self._engine_lock:
            await self._detect_pending()
        await self._publish_transitions(client)

    async def _detect_pending(self) -> None:
        pending, self._pending = self._pending, []
        by_partition: dict[int, list[pl.DataFrame]] = {}
        for k, frame in pending:
            by_partition.setdefault(k, []).append(frame)
        for k, frames in by_partition.items():
            engine = self.engines.get(k)
            if engine is None:
                continue
            batch = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")
            warmed_to = self._warmed_to.get(k)
            if warmed_to is not None:  # samples the warm-up history held already
                batch = (batch.join(warmed_to, on="tag_id", how="left", maintain_order="left")
                         .filter(pl.col("_warmed_to").is_null() | (pl.col("ts") > pl.col("_warmed_to")))
                         .drop("_warmed_to"))
            try:
                # In a thread: a big batch takes a while, and meanwhile the event loop must keep
                # the broker connection alive (keep-alive pings), or the broker takes this worker
                # out and its partitions move. Polars releases the GIL for the heavy part.
                raised = await asyncio.to_thread(engine.process, batch)
            except Exception:  # one partition's failure must not stop the others
                log.exception("analytics worker %s: detectors failed on partition %d", self.name, k)
                continue
            self.counts["samples_detected"] += batch.height
            self.counts["alerts_raised"] += len(raised)

    async def _publish_transitions(self, client: aiomqtt.Client) -> None:
        changed: dict[str, Any] = {}
        for entry in self.log.take():
            alert = self.book.get(entry["alert_id"]) if entry.get("alert_id") else None
            info = alert.to_dict() if alert is not None else None
            path = entry["tag_id"].split(".") if entry.get("tag_id") else []
            if len(path) < 4:
                continue
            await client.publish(self.topics.alerts(*path[:4]), alert_message(entry, info, self.name),
                                 qos=self.site.uns.qos)
            self.counts["transitions_published"] += 1
            if alert is not None:
                changed[alert.id] = alert
        # The alarm state, retained, once per changed alert: what a screen (any number of them,
        # started at any time) reads to show the alarm list; emptied when nothing is left to show.
        for alert in changed.values():
            done = alert.state == "normal" and not alert.shelved
            await client.publish(
                self.topics.alarm_state(alert.site, alert.area, alert.line, alert.unit, alert.id),
                b"" if done else json.dumps(alert.to_dict() | {"worker": self.name}).encode(), qos=1, retain=True)

    def close(self) -> None:
        self.log.close()
        if self.historian is not None:
            self.historian.close()


# --- command-line entry points -------------------------------------------------------------------


async def run_collect(site: SiteConfig, *, data_dir: Path | None, instance: str, sources: list[str] | None,
                      duration_s: float | None) -> None:
    site = instance_sources(site, instance, sources)
    root = Path(data_dir) if data_dir is not None else Path(site.data_dir) / f"collect-{instance}"
    collector = Collector(site, data_dir=root, instance=instance)
    try:
        await collector.run(duration_s)
    finally:
        collector.close()


async def run_analyse(site: SiteConfig, *, data_dir: Path | None, worker: str, duration_s: float | None) -> None:
    root = Path(data_dir) if data_dir is not None else Path(site.data_dir) / f"analyse-{worker}"
    analytics = AnalyticsWorker(site, data_dir=root, name=worker)
    try:
        await analytics.run(duration_s)
    finally:
        analytics.close()


def add_collect_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--instance", default="1", help="this collector's name among several (default 1): "
                        "suffixes MQTT client ids; data under DATA_DIR/collect-INSTANCE")
    parser.add_argument("--source", action="append", help="collect only this source (repeatable)")
    parser.add_argument("--data-dir", type=Path, help="this instance's spool and status (default DATA_DIR/collect-INSTANCE)")
    parser.add_argument("--duration", type=float, help="stop cleanly after this many seconds")


def add_analyse_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--worker", default=os.uname().nodename.split(".")[0] or "worker",
                        help="this worker's name, unique among the workers (default: the host name)")
    parser.add_argument("--data-dir", type=Path, help="journal and status (default DATA_DIR/analyse-WORKER)")
    parser.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
