"""Thin Prefect tasks over the `stt` library: retries, cache policies, logging, concurrency."""
