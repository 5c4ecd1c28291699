"""Streaming detectors over columnar sample batches: each scores a micro-batch and decides a
per-sample level (0 normal, 1 warning, 2 alarm). See `base.Detector` for the contract."""

from analytics.detectors.base import SCORE_SCHEMA, Detector
from analytics.detectors.cusum import CusumChart
from analytics.detectors.ewma import EwmaChart
from analytics.detectors.flatline import FlatlineDetector
from analytics.detectors.limits import LimitDetector
from analytics.detectors.nelson import NelsonRules
from analytics.detectors.quality import BadQualityDetector
from analytics.detectors.robust_zscore import RobustZScore
from analytics.detectors.roc import RateOfChangeDetector
from analytics.detectors.stale import StaleDataDetector
from analytics.detectors.zscore import RollingZScore

__all__ = ["SCORE_SCHEMA", "BadQualityDetector", "CusumChart", "Detector", "EwmaChart", "FlatlineDetector",
           "LimitDetector", "NelsonRules", "RateOfChangeDetector", "RobustZScore", "RollingZScore",
           "StaleDataDetector"]
