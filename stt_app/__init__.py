"""The application on top of the `stt` library: the command line, the Python client, Prefect tasks and flows."""
