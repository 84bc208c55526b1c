"""Score backends (or an ensemble) against human-reviewed records: ``labelloop eval``."""

from labelloop.evaluation.run import BackendScore, EvalReport, compare_versions, evaluate, write_eval_report

__all__ = ["BackendScore", "EvalReport", "compare_versions", "evaluate", "write_eval_report"]
