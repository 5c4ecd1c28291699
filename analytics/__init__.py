"""Anomaly detection: detectors score columnar micro-batches; the alert book turns their
decisions into de-duplicated alerts. Score convention, everywhere: higher is more anomalous."""
