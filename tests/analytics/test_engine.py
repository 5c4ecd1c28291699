import polars as pl

from analytics.engine import DetectionEngine
from controltower.site import (
    DetectorsConfig,
    FlatlineConfig,
    LimitsDetectorConfig,
    QualityDetectorConfig,
    RateOfChangeConfig,
    StaleConfig,
    ZScoreConfig,
)
from tests.analytics.helpers import TEMPERATURE, batch, make_tag

TAG = make_tag(**TEMPERATURE)
TID = TAG.tag_id
NO_FLATLINE = FlatlineConfig(enabled=False)
NO_QUALITY = QualityDetectorConfig(enabled=False)
NO_CLOCK = {"rate_of_change": RateOfChangeConfig(enabled=False), "stale": StaleConfig(enabled=False)}
LIMITS_ONLY = DetectorsConfig(zscore=ZScoreConfig(enabled=False), flatline=NO_FLATLINE, quality=NO_QUALITY, **NO_CLOCK)


def test_alert_lifecycle_over_many_batches():
    engine = DetectionEngine([TAG], LIMITS_ONLY)
    assert [d.name for d in engine.detectors] == ["limits"]
    assert engine.process(batch(TID, [37.0, 37.1])) == []
    (raised,) = engine.process(batch(TID, [37.5, 38.3, 38.4], start=2))
    assert raised.severity == "warning" and raised.detector == "limits" and raised.value == 38.4
    # The condition lasts over many batches: no new alert.
    for k in range(5):
        assert engine.process(batch(TID, [38.2, 38.1, 37.9], start=5 + 3 * k)) == []
    # Escalation: same alert id, severity alarm, worst value tracked.
    assert engine.process(batch(TID, [39.4, 39.8, 39.1], start=20)) == []
    (alert,) = engine.book.active()
    assert alert.id == raised.id and alert.severity == "alarm" and alert.value == 39.8
    # Clears once back below warning high - deadband.
    assert engine.process(batch(TID, [38.5, 37.5], start=23)) == []
    assert engine.book.active() == []
    (cleared,) = engine.book.recent()
    assert cleared.id == raised.id and cleared.cleared_at is not None
    # A second excursion is a new alert.
    (again,) = engine.process(batch(TID, [38.5], start=25))
    assert again.id != raised.id
    assert len(engine.book.recent()) == 2


def test_events_are_few_and_scores_kept_for_the_screen():
    engine = DetectionEngine([TAG], DetectorsConfig(zscore=ZScoreConfig(window=20), flatline=NO_FLATLINE, quality=NO_QUALITY,
                                                    **NO_CLOCK))
    engine.process(batch(TID, [37.0 + 0.01 * (i % 3) for i in range(30)] + [38.5] * 30))
    assert set(engine.last_scores) == {"limits", "zscore"}
    assert engine.last_scores["limits"].height == 60
    limits_events = engine.last_events.filter(pl.col("detector") == "limits")
    assert limits_events["level"].to_list() == [1, 1]  # the change, then the condition's peak


def test_unknown_tags_ignored_and_detectors_configurable():
    engine = DetectionEngine([TAG], DetectorsConfig(limits=LimitsDetectorConfig(enabled=False),
                                                    zscore=ZScoreConfig(enabled=False), flatline=NO_FLATLINE,
                                                    quality=NO_QUALITY, **NO_CLOCK))
    assert engine.detectors == []
    engine = DetectionEngine([TAG], LIMITS_ONLY)
    assert engine.process(batch("other.a.b.c.d", [1e9])) == []
    (alert,) = engine.process(pl.concat([batch("other.a.b.c.d", [1e9]), batch(TID, [40.0])]))
    assert alert.tag_id == TID and alert.severity == "alarm"


def test_zscore_alert_from_engine():
    engine = DetectionEngine([TAG], DetectorsConfig(limits=LimitsDetectorConfig(enabled=False)))
    quiet = [37.0 + 0.01 * (i % 5) for i in range(60)]
    assert engine.process(batch(TID, quiet)) == []
    (alert,) = engine.process(batch(TID, [37.6, 37.0], start=60))
    assert alert.detector == "zscore" and alert.severity == "warning" and "z=" in alert.message
    assert engine.book.active() == []  # cleared by the next normal sample
