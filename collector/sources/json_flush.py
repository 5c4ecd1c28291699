"""Whole-flush decoding of MQTT JSON payloads (`payload: json` and `batched_json`): the fast path.

The MQTT source keeps each message's raw payload, topic and receive time until it flushes; then
the payloads of one flush are decoded together, without a Python statement per value:
- `json` (an object per message): parsed by Polars' NDJSON reader (Rust) with an explicit schema
  made from the tag bindings, topics that read the same fields in one read;
- `batched_json` (a list of items per message): parsed by orjson per message (the same Python
  values as the reference's json.loads), then one list per item key over the whole flush, turned
  into typed series and checked vectorised (the reader's nested lists were slower than that).
Per message, only times are parsed in Python (ISO text, and message times of batched JSON).

Exactness: the per-message decoder (`MqttJsonDecoder.decode` / `decode_batched`) stays the
reference. This path takes a message only when it must give the very samples the reference
gives, and hands every other message back (`slow`) to be decoded one by one, which sets bad ones
aside and counts them by reason exactly as before.
`json`, screened out before parsing (a byte search, vectorised): an empty payload, a line break
in it (one line per payload), and the tokens `null`, `true`, `false`, `NaN`, `Infinity` (the
reader maps null and absent alike, and rejects what Python's json accepts there), the quality
map's key (a per-field quality); after parsing: a message with none of its topic's fields, a time
that is not an epoch number or ISO text within the sample range (or text that a JSON number could
also have been), an integer time at or beyond 2**53, a batch id that is not plainly text. If the
reader rejects a group (a value that is text, JSON it does not accept), the whole group goes the
slow way: that flush costs what it did. One difference remains: an object with the same key
twice keeps the first value here and the last one in the reference (RFC 8259 leaves it open).
`batched_json`: what orjson refuses (NaN, a lone surrogate, a BOM, a number beyond float64), an
item that is not an object, a tag that is not text or not bound to the topic, a value that is not
a number or null, a time the reference would refuse, an integer batch id beyond 64 bits.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import polars as pl

from collector.sources.columns import sample_batch
from controltower.samples import Quality

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Within these (as the reference's SAMPLE_TIME_MIN/MAX) a time fits a Datetime(ns).
TIME_MIN_US = (datetime(1677, 9, 22, tzinfo=UTC) - EPOCH) // _US
TIME_MAX_US = (datetime(2262, 4, 11, tzinfo=UTC) - EPOCH) // _US
_EXACT_INT = 2.0**53  # an integer time at or beyond this lost digits as a float: the reference decides

# Tokens the reader treats differently from Python's json (see the module doc).
_SCREENED = (b"\n", b"\r", b"null", b"true", b"false", b"NaN", b"Infinity")
# Text that a JSON number, literal, object or list also reads as (at a String field the reader
# renders those as text): the reader cannot say which it was, nor render it as Python's str() does.
_NOT_SURELY_TEXT = r"^(?:[-+0-9.eE]+|true|false)$|^[\[{]"
_QUALITIES = [q.value for q in Quality]
_QUALITY_SET = frozenset(_QUALITIES)
_ABSENT = np.iinfo(np.int64).min  # an item without a time of its own


def _is_number(v) -> bool:
    return v is None or v.__class__ is float or v.__class__ is int or v.__class__ is bool


def _typed(values: list, dtype, accepts) -> tuple[pl.Series, np.ndarray]:
    """The values as a series of `dtype` (strict: no conversion but int/bool to float) and which
    are what the reference takes; the others are null in the series."""
    try:
        return pl.Series(values, dtype=dtype, strict=True), np.ones(len(values), dtype=bool)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        fine = np.fromiter((accepts(v) for v in values), dtype=bool, count=len(values))
        try:
            series = pl.Series([v if f else None for v, f in zip(values, fine)], dtype=dtype, strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):  # e.g. an int beyond 64 bits
            return pl.Series([None] * len(values), dtype=dtype), np.zeros(len(values), dtype=bool)
        return series, fine


class FlushResult:
    """The samples of the messages this path took, and the indices of the ones it did not."""

    __slots__ = ("batch", "slow")

    def __init__(self, batch: pl.DataFrame | None, slow: list[int]):
        self.batch = batch
        self.slow = slow


def _plain_key(*keys: str | None) -> bool:
    """Top-level, distinct keys: what a flat schema can name."""
    present = [k for k in keys if k is not None]
    return all("." not in k for k in present) and len(set(present)) == len(present)


def screened(payloads: list[bytes], extra: tuple[bytes, ...] = ()) -> np.ndarray:
    """Which payloads hold a token the reader cannot decode as the reference does (bool array)."""
    series = pl.Series("p", payloads, dtype=pl.Binary)
    frame = pl.DataFrame([series])
    return frame.select(
        pl.any_horizontal(pl.col("p").bin.size() == 0, *(pl.col("p").bin.contains(t) for t in _SCREENED + extra))
    ).to_series().to_numpy()


def epoch_us(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers (seconds; above 1e11, milliseconds) as microseconds, rounded as
    `datetime.fromtimestamp` rounds (the fraction, half to even); and which are usable."""
    ok = np.abs(raw) < _EXACT_INT
    seconds = np.where(ok, raw, 0.0)
    seconds = np.where(np.abs(seconds) > 1e11, seconds / 1000, seconds)
    ok &= np.abs(seconds) < 1e11
    seconds = np.where(ok, seconds, 0.0)
    whole = np.trunc(seconds)
    us = whole.astype(np.int64) * 1_000_000 + np.round((seconds - whole) * 1e6).astype(np.int64)
    ok &= (us >= TIME_MIN_US) & (us <= TIME_MAX_US)
    return us, ok


def _times(column: pl.Series, received_us: np.ndarray, parse_text) -> tuple[np.ndarray, np.ndarray]:
    """A time column as read (Float64 or String; null: absent) as microseconds, absent ones the
    receive time; and which are usable. `parse_text` is the reference's text parser (raises)."""
    if column.dtype == pl.Float64:
        raw = column.to_numpy()  # nulls are NaN
        absent = np.isnan(raw)
        us, ok = epoch_us(np.where(absent, 0.0, raw))
        return np.where(absent, received_us, us), ok | absent
    us = received_us.copy()
    ok = np.ones(len(column), dtype=bool)
    parsed: dict[str, int | None] = {}
    for i, text in enumerate(column.to_list()):
        if text is None:
            continue
        value = parsed.get(text, -1)
        if value == -1:
            value = None
            if not re.match(_NOT_SURELY_TEXT, text):
                try:
                    value = (parse_text(text) - EPOCH) // _US
                except ValueError:  # PayloadError
                    value = None
            parsed[text] = value
        if value is None:
            ok[i] = False
        else:
            us[i] = value
    return us, ok


def _batch_ids(column: pl.Series | None, n: int) -> tuple[pl.Series, np.ndarray]:
    """Batch ids as read (String) and which are surely JSON text (a number would render differently)."""
    if column is None:
        return pl.Series([None] * n, dtype=pl.String), np.ones(n, dtype=bool)
    plain = ~(column.str.contains(_NOT_SURELY_TEXT).fill_null(False).to_numpy())
    return column, plain


def _read(lines: list[bytes], schemas: list[dict]) -> pl.DataFrame | None:
    """The payloads read with the first schema the reader accepts (None: it accepts none)."""
    data = b"\n".join(lines)
    for schema in schemas:
        try:
            # The bytes themselves: Polars 2.1 keeps about 370 bytes per call read from a BytesIO.
            frame = pl.read_ndjson(data, schema=schema)
        except Exception:  # noqa: BLE001, S112 - any refusal: the next schema, else the slow way for the group
            continue
        return frame if frame.height == len(lines) else None
    return None


class JsonFlushDecoder:
    """The fast path for one source's JSON decoder (its bindings and keys; see the module doc)."""

    def __init__(self, decoder) -> None:
        config = decoder.config
        self.decoder = decoder
        self.batched = config.payload == "batched_json"
        self.ts_key, self.batch_key, self.quality_key = config.timestamp_field, config.batch_field, config.quality_field
        self.tag_paths = decoder.tag_paths
        if self.batched:
            spec = config.batched_json
            self.item_keys = (spec.tag_field, spec.value_field, spec.timestamp_field, spec.quality_field)
            self.enabled = _plain_key(spec.samples_field, self.ts_key, self.batch_key) and _plain_key(*self.item_keys)
            self.topic_index = {t: i for i, t in enumerate(decoder.names_by_topic)}
            self.names = pl.DataFrame(
                [(i, name, tag) for t, i in self.topic_index.items() for name, tag in decoder.names_by_topic[t].items()],
                schema={"__topic": pl.UInt32, "__name": pl.String, "__tag_id": pl.String}, orient="row")
        else:
            # Topics whose bindings read the same fields share one read.
            self.groups: dict[str, tuple[tuple[str, ...], list[str]]] = {}
            for topic, bindings in decoder.bindings.items():
                fields = tuple(b.field for b in bindings)
                if _plain_key(*fields, self.ts_key, self.batch_key, self.quality_key):
                    self.groups[topic] = (fields, [b.tag_id for b in bindings])
            self.enabled = True

    def decode(self, topics: list[str], payloads: list[bytes], received: list[datetime]) -> FlushResult:
        if not self.enabled or not payloads:
            return FlushResult(None, list(range(len(payloads))))
        received_us = np.array([(r - EPOCH) // _US for r in received], dtype=np.int64)
        if self.batched:
            return self._batched(topics, payloads, received_us)
        return self._objects(topics, payloads, received_us)

    # --- payload: json ----------------------------------------------------------------------

    def _objects(self, topics: list[str], payloads: list[bytes], received_us: np.ndarray) -> FlushResult:
        quality = (f'"{self.quality_key}"'.encode(),) if self.quality_key else ()
        bad = screened(payloads, quality)
        slow: list[int] = []
        by_fields: dict[tuple[str, ...], list[int]] = defaultdict(list)
        groups = self.groups
        for i, topic in enumerate(topics):
            group = groups.get(topic)
            if group is None or bad[i]:
                slow.append(i)
            else:
                by_fields[group[0]].append(i)
        parts = []
        for fields, members in by_fields.items():
            part = self._object_group(fields, members, topics, payloads, received_us, slow)
            if part is not None:
                parts.append(part)
        return FlushResult(self._frame(parts), sorted(slow))

    def _object_group(self, fields, members, topics, payloads, received_us, slow) -> pl.DataFrame | None:
        base = {f: pl.Float64 for f in fields}
        if self.batch_key:
            base[self.batch_key] = pl.String
        schemas = [base]
        if self.ts_key:
            schemas = [{**base, self.ts_key: pl.Float64}, {**base, self.ts_key: pl.String}]
        frame = _read([payloads[i] for i in members], schemas)
        if frame is None:
            slow.extend(members)
            return None
        index = np.asarray(members, dtype=np.int64)
        ts_us, ok = (_times(frame[self.ts_key], received_us[index], self.decoder.parse_time)
                     if self.ts_key else (received_us[index], np.ones(len(members), dtype=bool)))
        batch_ids, plain = _batch_ids(frame[self.batch_key] if self.batch_key else None, len(members))
        values = frame.select(fields).to_numpy().astype(np.float64, copy=False)  # nulls (absent) are NaN
        present = ~np.isnan(values)
        ok &= plain & present.any(axis=1)  # none of the fields: the reference says which were expected
        slow.extend(index[~ok].tolist())
        keep = np.flatnonzero(ok)
        if not len(keep):
            return None
        # Each sample's tag: its topic's tag for that field.
        topic_tags: dict[str, int] = {}
        tag_ids: list[str] = []
        topic_base = np.empty(len(keep), dtype=np.int64)
        for k, m in enumerate(keep):
            topic = topics[members[m]]
            start = topic_tags.get(topic)
            if start is None:
                start = topic_tags[topic] = len(tag_ids)
                tag_ids += self.groups[topic][1]
            topic_base[k] = start
        present = present[keep]
        rows, cols = np.nonzero(present)  # message-major: a message's samples together, in field order
        return pl.DataFrame({
            "message": index[keep][rows],
            "ts_us": ts_us[keep][rows],
            "received_us": received_us[index[keep]][rows],
            "tag_id": pl.Series(tag_ids, dtype=pl.String).gather(topic_base[rows] + cols),
            "value": values[keep][rows, cols],
            "quality": pl.repeat("good", len(rows), dtype=pl.String, eager=True),
            "batch_id": batch_ids.gather(keep[rows]),
        })

    # --- payload: batched_json --------------------------------------------------------------

    def _batched(self, topics: list[str], payloads: list[bytes], received_us: np.ndarray) -> FlushResult:
        """Batched JSON: orjson per message (it builds the same Python values as the reference's
        json.loads, and refuses what it does not read alike), then one list per item key over the
        whole flush and vectorised checks; no Python statement per item."""
        samples_key, ts_key, batch_key = self.decoder.config.batched_json.samples_field, self.ts_key, self.batch_key
        topic_index = self.topic_index
        slow: list[int] = []
        members: list[int] = []
        member_topic: list[int] = []
        lengths: list[int] = []
        items: list = []
        ts_raw: list = []
        batch_raw: list = []
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        for i, payload in enumerate(payloads):
            t = topic_index.get(topics[i])
            try:
                doc = loads(payload)
            except JSONDecodeError:
                doc = None
            got = doc.get(samples_key) if doc.__class__ is dict else None
            if t is None or got.__class__ is not list:
                slow.append(i)
                continue
            members.append(i)
            member_topic.append(t)
            lengths.append(len(got))
            items += got
            ts_raw.append(doc.get(ts_key) if ts_key else None)
            batch_raw.append(doc.get(batch_key) if batch_key else None)
        part = None
        if members:
            part = self._batched_items(members, member_topic, lengths, items, ts_raw, batch_raw, received_us, slow)
        return FlushResult(self._frame([part] if part is not None else []), sorted(slow))

    def _batched_items(self, members, member_topic, lengths, items, ts_raw, batch_raw, received_us, slow):
        tag_key, value_key, item_ts_key, item_quality_key = self.item_keys
        n = len(members)
        index = np.asarray(members, dtype=np.int64)
        member = np.repeat(np.arange(n), lengths)  # each item's message (position in members)
        ok = np.ones(n, dtype=bool)
        # Message time and batch id, per message as the reference reads them.
        ts_us = received_us[index].copy()
        parse = self.decoder.parse_time
        for k, raw in enumerate(ts_raw):
            if raw is not None:
                try:
                    ts_us[k] = (parse(raw) - EPOCH) // _US
                except ValueError:  # PayloadError: the reference sets the whole message aside
                    ok[k] = False
        batch_ids = pl.Series([None if b is None else str(b) for b in batch_raw], dtype=pl.String)
        for k, b in enumerate(batch_raw):
            if b.__class__ is float and abs(b) >= 2.0**63:  # orjson's float for an integer json keeps as int
                ok[k] = False
        if not items:
            slow.extend(index[~ok].tolist())
            return None
        try:
            names = [it.get(tag_key) for it in items]
        except AttributeError:  # an item that is not an object: those messages go the slow way
            is_item = np.fromiter((it.__class__ is dict for it in items), dtype=bool, count=len(items))
            ok[member[~is_item]] = False
            items = [it if it.__class__ is dict else {} for it in items]
            names = [it.get(tag_key) for it in items]
        values = [it.get(value_key) for it in items]
        item_ok = np.ones(len(items), dtype=bool)
        name_series, name_ok = _typed(names, pl.String, lambda v: v.__class__ is str)
        value_series, value_ok = _typed(values, pl.Float64, _is_number)
        item_ok &= name_ok & value_ok
        value_array = value_series.to_numpy()
        item_ok &= ~np.isinf(value_array)  # an integer beyond float64: the reference says it holds no number
        tag_ids = pl.DataFrame({"__topic": pl.Series(member_topic, dtype=pl.UInt32).gather(member),
                                "__name": name_series}).join(
            self.names, on=["__topic", "__name"], how="left", maintain_order="left")["__tag_id"]
        item_ok &= tag_ids.is_not_null().to_numpy()
        sample_us = ts_us[member]
        if item_ts_key:
            own = [it.get(item_ts_key) for it in items]
            if own.count(None) != len(own):
                own_us, own_ok = self._item_times(own)
                sample_us = np.where(own_us == _ABSENT, sample_us, own_us)
                item_ok &= own_ok
        if item_quality_key:
            given = [it.get(item_quality_key, "good") for it in items]
            if given.count("good") != len(given):
                given = [q if q.__class__ is str and q in _QUALITY_SET else "uncertain" for q in given]
            quality = pl.Series(given, dtype=pl.String)
        else:
            quality = pl.repeat("good", len(items), dtype=pl.String, eager=True)
        # A null value is a bad-quality sample, whatever quality the item names.
        if value_series.null_count():
            quality = quality.zip_with(value_series.is_not_null(), pl.repeat("bad", len(items), dtype=pl.String, eager=True))
        # A message with one item the fast path cannot vouch for goes the slow way as a whole.
        ok[member[~item_ok]] = False
        slow.extend(index[~ok].tolist())
        keep = ok[member]
        if not keep.any():
            return None
        keep_series = pl.Series(keep)
        member = member[keep]
        return pl.DataFrame({
            "message": index[member],
            "ts_us": sample_us[keep],
            "received_us": received_us[index[member]],
            "tag_id": tag_ids.filter(keep_series),
            "value": value_series.filter(keep_series),
            "quality": quality.filter(keep_series),
            "batch_id": batch_ids.gather(member),
        })

    def _item_times(self, raw: list) -> tuple[np.ndarray, np.ndarray]:
        """Items' own times (None: absent, given back as _ABSENT) as microseconds; which are usable."""
        n = len(raw)
        us = np.full(n, _ABSENT, dtype=np.int64)
        ok = np.ones(n, dtype=bool)
        numeric = np.fromiter((v.__class__ is float or v.__class__ is int for v in raw), dtype=bool, count=n)
        if numeric.any():
            at = np.flatnonzero(numeric)
            numbers = np.array([float(raw[i]) if abs(raw[i]) < _EXACT_INT else np.inf for i in at], dtype=np.float64)
            number_us, number_ok = epoch_us(numbers)
            us[at] = number_us
            ok[at] = number_ok
        parsed: dict[str, int | None] = {}
        parse = self.decoder.parse_time
        for i in np.flatnonzero(~numeric).tolist():
            value = raw[i]
            if value is None:
                continue
            if value.__class__ is not str:
                ok[i] = False  # a boolean, list or object: the reference counts a bad timestamp
                continue
            if value not in parsed:
                try:
                    parsed[value] = (parse(value) - EPOCH) // _US
                except ValueError:  # PayloadError
                    parsed[value] = None
            if parsed[value] is None:
                ok[i] = False
            else:
                us[i] = parsed[value]
        return us, ok

    def _frame(self, parts: list[pl.DataFrame]) -> pl.DataFrame | None:
        if not parts:
            return None
        long = parts[0] if len(parts) == 1 else pl.concat(parts).sort("message", maintain_order=True)
        return sample_batch(
            ts=long["ts_us"].cast(pl.Datetime("us", "UTC")),
            server_ts=long["received_us"].cast(pl.Datetime("us", "UTC")),
            tag_id=long["tag_id"], value=long["value"], quality=long["quality"], batch_id=long["batch_id"],
            tag_paths=self.tag_paths,
        )
