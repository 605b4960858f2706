"""stt: Self-Translate-Train. Plain library code; Prefect lives in the top-level `tasks` and `flows` packages."""

__version__ = "0.1.0"

from stt.secrets import install_log_redaction  # noqa: E402

# Every process that uses stt (the CLI, Prefect workers running its tasks, plain Python) masks endpoint
# keys, auth strings and database passwords in its logs.
install_log_redaction()
