"""Evaluation: resumable runner, SQLite results store, metrics, estimates with intervals, comparison tables."""

from .compare import Cell, Comparison, Estimate, Metric, PaperValue, mean, rate, run_estimates
from .protocol import edge_flat_energy, magnified_change, operating_characteristic, protocol_summary
from .runner import attack_config, first_correct, make_pairs, run_attack, run_key, summarize
from .store import ResultStore

__all__ = ["protocol_summary", "operating_characteristic", "edge_flat_energy", "magnified_change", "ResultStore", "attack_config", "first_correct",
           "make_pairs", "run_attack", "run_key", "summarize", "Estimate", "rate", "mean", "run_estimates", "PaperValue",
           "Cell", "Metric", "Comparison"]
