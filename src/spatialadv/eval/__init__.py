"""Evaluation: resumable runner, SQLite results store, metrics."""

from .runner import attack_config, first_correct, make_pairs, run_attack, run_key, summarize
from .store import ResultStore

__all__ = ["ResultStore", "attack_config", "first_correct", "make_pairs", "run_attack", "run_key", "summarize"]
