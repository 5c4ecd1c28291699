"""Multivariate detectors on wide frames (rows = time, columns = process variables).

See `base` for the contract, `threshold` for turning scores into alarms at a nominal false-alarm
rate, `postprocess` for smoothing and persistence, and `analytics.offline.detect` for the
whole path from two files to alarms.
"""

from analytics.multivariate.base import MultivariateDetector
from analytics.multivariate.dpca import DynamicPCADetector
from analytics.multivariate.iforest import IsolationForestDetector
from analytics.multivariate.knn import NearestNeighbourDetector
from analytics.multivariate.pca import PCADetector, spe_limit_box, spe_limit_jackson_mudholkar, t2_limit_f
from analytics.multivariate.postprocess import ewma, persist, rolling_median
from analytics.multivariate.threshold import QuantileThreshold, held_out_scores

__all__ = [
    "DynamicPCADetector", "IsolationForestDetector", "MultivariateDetector", "NearestNeighbourDetector", "PCADetector",
    "QuantileThreshold", "ewma", "held_out_scores", "persist", "rolling_median", "spe_limit_box",
    "spe_limit_jackson_mudholkar", "t2_limit_f",
]
