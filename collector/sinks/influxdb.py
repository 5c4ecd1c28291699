"""The InfluxDB historian: line protocol over HTTP, InfluxQL to read back.

Writes send the vectorised line protocol of `collector.sinks.lineprotocol` (its docstring is the
schema), at most `max_lines` lines (5000) per request, gzip-compressed:

    api: v2   influxdb-client's WriteApi (SYNCHRONOUS) to `/api/v2/write?org=&bucket=&precision=ns`
              with `Authorization: Token <token>`: InfluxDB 2.x/3.x, 1.8+ and VictoriaMetrics.
    api: v1   urllib3 POST to `/write?db=&rp=&precision=ns` (bucket is `database[/retention_policy]`):
              InfluxDB 1.x. A token `user:password` is sent as basic auth, any other as `Token`.

Connection errors, timeouts, 429 and 5xx answers are retried with exponential backoff and jitter,
`max_attempts` times in all, then raise HistorianError; a 4xx answer raises at once with the
server's message. Writes are idempotent (a point is its series and time), so a retried batch
never duplicates samples. Writes run in a worker thread, one batch at a time.

Clock steps: a plant clock stepped back would republish timestamps already stored, and InfluxDB
keeps one point per series and timestamp. The samples concerned get an extra `clock_epoch` tag
(collector/sinks/clocksteps.py), so both values are kept; the normal schema is unchanged.

Reads use InfluxQL on `/query` (`db`, `rp`, `q`, `epoch=ns`, chunked), which InfluxDB 1.x and
InfluxDB 2.x (through a DBRP mapping) both answer. VictoriaMetrics has no InfluxQL: with it, read
through its Prometheus or export API instead.

Batch events (`controltower.batch_events`) go to the measurement `batch_events`, one point per
transition: tags area, line, site, transition, unit; string fields batch_id, phase, product,
recipe; the time is the event's. The transition is a tag, so a batch ending and the next starting
at one instant are two points, and a replayed event overwrites itself.

The token (from the environment variable `token_env`, or the file `token_file`) is never shown: not
in repr, logs, nor in any exception text (server answers are scrubbed of it too).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlencode

import polars as pl
import urllib3

from collector.sinks import HistorianError
from collector.sinks.clocksteps import ClockSteps
from collector.sinks.lineprotocol import (
    DEFAULT_MAX_LINES,
    DEFAULT_MEASUREMENT,
    UNENCODABLE_REASON,
    QueryError,
    _documents,
    _query_error,
    _series_frame,
    encode_chunks,
    escape_measurement,
    escape_tag,
    parse_query_response,
    split_unencodable,
    string_field,
)
from controltower.batch_events import BATCH_EVENT_SCHEMA, conform_events, empty_batch_events
from controltower.samples import SAMPLE_SCHEMA, empty_samples

if TYPE_CHECKING:
    from controltower.site import InfluxDbHistorianConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tags per InfluxQL statement: keeps the WHERE clause (and the request) a sane size.
TAGS_PER_QUERY = 100
_READ_COLUMNS = [c for c in SAMPLE_SCHEMA if c != "ts"]
BATCH_EVENT_MEASUREMENT = "batch_events"
_EVENT_TAGS = ("area", "line", "site", "transition", "unit")  # sorted, as InfluxDB keeps them
_EVENT_FIELDS = ("batch_id", "phase", "product", "recipe")


def encode_batch_events(events: pl.DataFrame) -> bytes:
    """Batch events as line protocol (the `batch_events` measurement; see the module doc)."""
    events = conform_events(events).drop_nulls(["ts", *_EVENT_TAGS])
    if events.is_empty():
        return b""
    tags = [pl.concat_str(pl.lit(f",{t}="), escape_tag(pl.col(t))) for t in _EVENT_TAGS]
    # A point needs a field: batch_id is always written (empty when unknown).
    fields = [pl.concat_str(pl.lit("batch_id="), string_field(pl.col("batch_id").fill_null("")))]
    fields += [pl.when(pl.col(f).is_not_null()).then(pl.concat_str(pl.lit(f",{f}="), string_field(pl.col(f))))
               .otherwise(pl.lit("")) for f in _EVENT_FIELDS[1:]]
    lines = events.select(pl.concat_str(
        pl.lit(escape_measurement(BATCH_EVENT_MEASUREMENT)), *tags, pl.lit(" "), *fields, pl.lit(" "),
        pl.col("ts").dt.epoch("ns").cast(pl.String)).alias("line"))["line"]
    return ("\n".join(lines.to_list()) + "\n").encode()


def batch_events_statement(path: str, start_ns: int, end_ns: int | None, retention_policy: str | None = None) -> str:
    """InfluxQL for the batch events of the unit or line at `path` in [start, end), each unit's
    last event before start and (with an end) its first at or after end."""
    source = quote_identifier(BATCH_EVENT_MEASUREMENT)
    if retention_policy:
        source = f"{quote_identifier(retention_policy)}.{source}"
    parts = path.split(".")
    where = " AND ".join(f"{quote_identifier(k)} = {quote_string(v)}" for k, v in zip(("site", "area", "line", "unit"), parts))
    within = f"time >= {int(start_ns)}" + (f" AND time < {int(end_ns)}" if end_ns is not None else "")
    per_unit = 'GROUP BY "site", "area", "line", "unit"'
    statements = [f"SELECT * FROM {source} WHERE {where} AND {within}",
                  f"SELECT * FROM {source} WHERE {where} AND time < {int(start_ns)} {per_unit} ORDER BY time DESC LIMIT 3"]
    if end_ns is not None:
        statements.append(f"SELECT * FROM {source} WHERE {where} AND time >= {int(end_ns)} {per_unit} LIMIT 1")
    return "; ".join(statements)


class _Retryable(Exception):
    """A failure worth another attempt (connection, timeout, 429, 5xx)."""


def resolve_token(token_env: str | None, token_file: str | Path | None) -> str | None:
    """The token: the file's content (stripped) when `token_file` is set, else the environment
    variable named by `token_env`, else None. The error names the file, never its content."""
    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise HistorianError(f"cannot read the InfluxDB token file {path}: {exc.strerror}") from None
        return token or None
    if token_env:
        return os.environ.get(token_env) or None
    return None


def quote_identifier(name: str) -> str:
    """An InfluxQL identifier in double quotes (a newline as \\n: InfluxQL ends a quoted name at a raw one)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes (a newline as \\n: InfluxQL ends a string at a raw one)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def select_statement(
    measurement: str,
    tag_ids: Sequence[str],
    start_ns: int,
    end_ns: int | None,
    retention_policy: str | None = None,
) -> str:
    """`SELECT * FROM <measurement> WHERE tag_id in (...) AND start <= time < end` in InfluxQL."""
    source = quote_identifier(measurement)
    if retention_policy:
        source = f"{quote_identifier(retention_policy)}.{source}"
    tags = " OR ".join(f'"tag_id" = {quote_string(t)}' for t in tag_ids)
    where = f"({tags}) AND time >= {int(start_ns)}"
    if end_ns is not None:
        where += f" AND time < {int(end_ns)}"
    return f"SELECT * FROM {source} WHERE {where}"


class InfluxDbHistorian:
    """Historian on an InfluxDB-compatible server. Build with `from_config` or keywords."""

    name = "influxdb"

    def __init__(
        self,
        *,
        url: str,
        api: Literal["v1", "v2"] = "v2",
        org: str = "-",
        bucket: str = "controltower",
        token: str | None = None,
        measurement: str = DEFAULT_MEASUREMENT,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_lines: int = DEFAULT_MAX_LINES,
    ):
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be 'v1' or 'v2', not {api!r}")
        self.url = url.rstrip("/")
        self.api = api
        self.org = org
        self.bucket = bucket
        self.database, _, rp = bucket.partition("/")
        self.retention_policy = rp or None
        self.measurement = measurement
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_lines = max_lines
        self.__token = token or None
        self._write_lock = threading.Lock()
        # Samples set aside, per reason: rows line protocol cannot carry (see lineprotocol.py).
        self.rejected: dict[str, int] = {}
        # A plant clock stepping back must not overwrite stored points (see clocksteps.py).
        self.clock_steps = ClockSteps()
        # urllib3 retries are off: the loop in `_attempts` owns retrying.
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False, maxsize=4)
        self._client = None
        self._write_api = None
        if api == "v2":
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            self._client = InfluxDBClient(
                url=self.url, token=self.__token, org=org, timeout=int(timeout_s * 1000), enable_gzip=True
            )
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_config(cls, config: InfluxDbHistorianConfig, **overrides) -> InfluxDbHistorian:
        """From the site file's `historian:` section; the token is resolved here."""
        return cls(
            url=config.url,
            api=config.api,
            org=config.org,
            bucket=config.bucket,
            token=resolve_token(config.token_env, config.token_file),
            measurement=config.measurement,
            timeout_s=config.timeout_s,
            **overrides,
        )

    def __repr__(self) -> str:
        auth = "token" if self.__token else "no token"
        return self._scrub(
            f"InfluxDbHistorian(url={self.url!r}, api={self.api!r}, bucket={self.bucket!r}, {auth})"
        )

    # --- secrets -------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        token = self.__token
        if not token:
            return {}
        if self.api == "v1" and ":" in token:
            return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
        return {"Authorization": f"Token {token}"}

    def _scrub(self, text: str) -> str:
        """Text without the token, or any part or encoding of it."""
        token = self.__token
        if not token:
            return text
        secrets = {
            token,
            base64.b64encode(token.encode()).decode(),
            *(p for p in token.split(":", 1) if len(p) >= 4),
        }
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _error(self, what: str, reason: str) -> HistorianError:
        return HistorianError(self._scrub(f"InfluxDB {self.url}: {what}: {reason}"))

    # --- retrying ------------------------------------------------------------------------------

    def _attempts(self, what: str, call: Callable[[], T]) -> T:
        reason = ""
        for attempt in range(self.max_attempts):
            try:
                return call()
            except _Retryable as exc:
                reason = str(exc)
            if attempt + 1 < self.max_attempts:
                # Exponential backoff, half of it jittered, so restarting collectors do not retry in step.
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning(
                    "%s", self._scrub(f"InfluxDB {self.url}: {what} failed ({reason}); retry in {delay:.2f}s")
                )
                time.sleep(delay)
        raise self._error(what, f"failed after {self.max_attempts} attempts: {reason}")

    def _check(self, what: str, status: int, body: bytes | str | None) -> None:
        if status < 300:
            return
        message = _server_message(body)
        if status == 429 or status >= 500:
            raise _Retryable(self._scrub(f"HTTP {status} {message}"))
        raise self._error(what, f"HTTP {status}: {message}")

    def _request(self, what: str, method: str, path: str, **kwargs) -> urllib3.BaseHTTPResponse:
        try:
            response = self._http.request(method, self.url + path, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(_connection_reason(exc)) from None
        self._check(what, response.status, response.data)
        return response

    # --- writing -------------------------------------------------------------------------------

    async def write(self, batch: pl.DataFrame) -> None:
        """Store a batch (sample schema) from a worker thread; HistorianError when it could not."""
        if batch.height:
            await asyncio.to_thread(self.write_sync, batch)

    def write_sync(self, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        batch, set_aside = split_unencodable(batch)
        if set_aside.height:
            # Refused by InfluxDB anyway, and with them the whole request, again at every retry.
            self.rejected[UNENCODABLE_REASON] = self.rejected.get(UNENCODABLE_REASON, 0) + set_aside.height
            log.warning("InfluxDB historian: %d sample(s) set aside, %s: tag_id %r", set_aside.height,
                        UNENCODABLE_REASON, set_aside["tag_id"][0])
        with self._write_lock:  # one batch at a time: the clock-step state follows the write order
            marked = self.clock_steps.mark(batch)
            try:
                bodies = list(encode_chunks(marked.batch, self.measurement, self.max_lines))
            except ValueError as exc:
                raise self._error("write", str(exc)) from None
            for body in bodies:
                self._attempts("write", lambda body=body: self._write_body(body))
            self.clock_steps.commit(marked)  # only once stored: a retried batch is marked the same way
        if marked.steps_back:
            log.warning("InfluxDB historian: the plant clock stepped back on %d sample(s) (e.g. %s); the samples "
                        "dated before where the tag's clock had been are written with a clock_epoch tag, so "
                        "that they overwrite nothing", marked.steps_back, marked.example)

    def _write_body(self, body: bytes) -> None:
        if self.api == "v2":
            self._write_v2(body)
        else:
            self._write_v1(body)

    def _write_v1(self, body: bytes) -> None:
        params = {"db": self.database, "precision": "ns"}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Encoding": "gzip",
            **self._auth_headers(),
        }
        self._request(
            "write", "POST", "/write?" + urlencode(params), body=gzip.compress(body, 5), headers=headers
        )

    def _write_v2(self, body: bytes) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.NS
            )
        except ApiException as exc:
            self._check("write", exc.status or 0, exc.body)
            raise self._error("write", f"HTTP {exc.status}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(_connection_reason(exc)) from None

    async def write_batch_events(self, events: pl.DataFrame) -> None:
        """Store batch events (`batch_events` measurement) from a worker thread; HistorianError when it could not."""
        if events.height:
            await asyncio.to_thread(self.write_batch_events_sync, events)

    def write_batch_events_sync(self, events: pl.DataFrame) -> None:
        body = encode_batch_events(events)
        if body:
            with self._write_lock:
                self._attempts("write batch events", lambda: self._write_body(body))

    def read_batch_events(self, path: str, start: datetime, end: datetime | None = None) -> pl.DataFrame:
        """Batch events of the unit or line at `path` (an ISA-95 prefix) with start <= ts < end,
        plus each unit's last event before `start` and first at or after `end`; sorted by unit,
        time, transition."""
        body = self.query(batch_events_statement(path, _ns(start), None if end is None else _ns(end),
                                                 self.retention_policy))
        frames = []
        try:
            for doc in _documents(body):
                error = _query_error(doc)
                if error:
                    raise QueryError(error)
                for result in doc.get("results", []):
                    frames.extend(_series_frame(series) for series in result.get("series", []) or [])
        except (QueryError, json.JSONDecodeError) as exc:
            raise self._error("query", str(exc)) from None
        frames = [f for f in frames if f.height]
        if not frames:
            return empty_batch_events()
        frame = pl.concat(frames, how="diagonal_relaxed")
        return conform_events(frame.select([c for c in BATCH_EVENT_SCHEMA if c in frame.columns]))

    # --- reading -------------------------------------------------------------------------------

    def query(self, statement: str) -> bytes:
        """Run one InfluxQL statement on `/query` (epoch=ns, chunked) and return the raw answer."""
        fields = {
            "db": self.database,
            "q": statement,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": "10000",
        }
        if self.retention_policy:
            fields["rp"] = self.retention_policy
        headers = {"Accept": "application/json", **self._auth_headers()}

        def call() -> bytes:
            return self._request(
                "query", "POST", "/query", fields=fields, encode_multipart=False, headers=headers
            ).data

        return self._attempts("query", call)

    def read(self, tag_ids: Sequence[str], start: datetime, end: datetime | None = None) -> pl.DataFrame:
        """Samples of these tags with start <= ts < end (end None: no upper bound), sorted by tag
        then time, in the sample schema. Safe from any thread."""
        frames = []
        tags = list(dict.fromkeys(tag_ids))
        for offset in range(0, len(tags), TAGS_PER_QUERY):
            statement = select_statement(
                self.measurement,
                tags[offset : offset + TAGS_PER_QUERY],
                _ns(start),
                None if end is None else _ns(end),
            )
            body = self.query(statement)
            try:
                frames.append(parse_query_response(body))
            except (QueryError, json.JSONDecodeError) as exc:
                raise self._error("query", str(exc)) from None
        if not frames:
            return empty_samples()
        return pl.concat(frames).sort("tag_id", "ts", maintain_order=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._http.clear()


def _server_message(body: bytes | str | None) -> str:
    """The error text of an InfluxDB answer: `{"error": ...}` (1.x) or `{"message": ...}` (2.x)."""
    if body is None:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("message") or text)[:500]
    return text.strip()[:500]


def _connection_reason(exc: BaseException) -> str:
    # urllib3's messages repeat the pool and the URL; the innermost reason is what helps.
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}"
