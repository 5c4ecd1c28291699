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

Reads use InfluxQL on `/query` (`db`, `rp`, `q`, `epoch=ns`, chunked), which InfluxDB 1.x and
InfluxDB 2.x (through a DBRP mapping) both answer. VictoriaMetrics has no InfluxQL: with it, read
through its Prometheus or export API instead.

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
from collector.sinks.lineprotocol import (
    DEFAULT_MAX_LINES,
    DEFAULT_MEASUREMENT,
    QueryError,
    encode_chunks,
    parse_query_response,
)
from controltower.samples import SAMPLE_SCHEMA, empty_samples

if TYPE_CHECKING:
    from controltower.site import InfluxDbHistorianConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tags per InfluxQL statement: keeps the WHERE clause (and the request) a sane size.
TAGS_PER_QUERY = 100
_READ_COLUMNS = [c for c in SAMPLE_SCHEMA if c != "ts"]


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
        try:
            bodies = list(encode_chunks(batch, self.measurement, self.max_lines))
        except ValueError as exc:
            raise self._error("write", str(exc)) from None
        with self._write_lock:
            for body in bodies:
                self._attempts("write", lambda body=body: self._write_body(body))

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
