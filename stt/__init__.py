"""stt: Self-Translate-Train. Plain library code; Prefect lives in the top-level `tasks` and `flows` packages."""

__version__ = "0.1.0"
