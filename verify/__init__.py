"""The tools that prove the service: the proof (proof.py), the history check (history.py), the
chaos runs (chaos.py, cluster_chaos.py), and the SQL that only they and the tests use (queries/)."""
from pathlib import Path

QUERIES = Path(__file__).parent / "queries"
