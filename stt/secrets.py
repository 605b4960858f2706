"""Secrets stay out of configs, manifests, artifacts and logs.

Secrets come from the environment only (`STT_OPENAI_API_KEY` for endpoints; Prefect's auth string and
the database password are the server's), never from a config file: a config is saved next to every
output. `redact` masks them anyway wherever text leaves the process (the log filter below, error
messages), together with any `user:password@` in a URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

# Environment variables whose values are secrets (or URLs that carry one).
SECRET_ENV = ("STT_OPENAI_API_KEY", "OPENAI_API_KEY", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
              "PREFECT_SERVER_API_AUTH_STRING", "POSTGRES_PASSWORD", "PREFECT_API_DATABASE_PASSWORD",
              "PREFECT_API_DATABASE_CONNECTION_URL")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
MASK = "***"


def endpoint_key() -> str | None:
    return os.environ.get("STT_OPENAI_API_KEY") or None


def redact(text: str) -> str:
    """`text` with URL credentials and the values of the secret environment variables masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["user"] else f"{m['scheme']}{MASK}@",
                         text)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:  # shorter values would mask ordinary words
            text = text.replace(value, MASK)
            if ":" in value:  # an auth string "user:password": its password alone too
                secret = value.split(":", 1)[1]
                if len(secret) >= 4:
                    text = text.replace(secret, MASK)
    return text


def scrub(exc: BaseException) -> BaseException:
    """Redact the messages of `exc` and of every exception in its chain, in place: a traceback's text, a
    Prefect state's message ("... encountered an exception: <message>") and a CLI error are all made from
    them. Notes (`add_note`) too."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        with contextlib.suppress(Exception):  # an exception type whose args cannot be set keeps them
            e.args = tuple(redact(a) if isinstance(a, str) else a for a in e.args)
        # Messages some types build from attributes instead of args (OSError's strerror and file names,
        # CalledProcessError's command and output).
        for name in ("strerror", "filename", "filename2", "cmd", "output", "stderr"):
            value = getattr(e, name, None)
            if isinstance(value, str):
                with contextlib.suppress(Exception):
                    setattr(e, name, redact(value))
            elif isinstance(value, list | tuple) and name == "cmd":
                with contextlib.suppress(Exception):
                    setattr(e, name, [redact(str(v)) for v in value])
        notes = getattr(e, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redact(n) if isinstance(n, str) else n for n in notes]
        todo += [e.__cause__, e.__context__]
    return exc


@contextlib.contextmanager
def scrubbed() -> Iterator[None]:
    """Exceptions leaving the block have their messages redacted (`scrub`): around the body of a Prefect
    task, so the state message Prefect builds from the exception holds no secret."""
    try:
        yield
    except BaseException as exc:
        scrub(exc)
        raise


def has_credentials(url: str) -> bool:
    return bool(_USERINFO.match(url.strip()))


def install_log_redaction() -> None:
    """Mask secrets in every log record of the process, whichever logger or handler it goes to
    (Prefect's API log handler included): the record factory redacts the message as it is made, and the
    exception of a record logged with its traceback (`scrub`), so the formatted traceback is clean too."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stt_redacting", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info, tuple) and record.exc_info[1] is not None:
            scrub(record.exc_info[1])
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    factory.stt_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
