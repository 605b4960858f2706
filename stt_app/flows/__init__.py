"""Prefect flows of the pipeline."""
