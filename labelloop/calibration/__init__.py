"""Closed-loop calibration: per-field auto-accept thresholds that hold a target error rate."""

from labelloop.calibration.run import CalibrationResult, DriftDetected, calibrate, current_thresholds
from labelloop.calibration.select import ThresholdChoice, choose_threshold

__all__ = [
    "CalibrationResult",
    "DriftDetected",
    "ThresholdChoice",
    "calibrate",
    "choose_threshold",
    "current_thresholds",
]
