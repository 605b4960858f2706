"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class SttError(Exception):
    """Base class: bad input or configuration, with a message that says what to do."""


class ConfigError(SttError):
    """A setting names something that does not exist (task, language, model, file)."""


class DataError(SttError):
    """An input file is missing or not in the expected format."""


class DiskFull(DataError):
    """The device under an output folder has no space left; nothing half-written is kept."""


def is_disk_full(exc: BaseException) -> bool:
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # pyarrow's and safetensors' write errors carry the reason only in their message.
    return isinstance(exc, OSError | RuntimeError) and "No space left on device" in str(exc)


def disk_full(folder: object, name: str) -> DiskFull:
    import shutil

    try:
        free = f"{shutil.disk_usage(str(folder)).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"{folder}: no space left on the device while writing {name} ({free}); free space or move "
                    "the run folder, then rerun the same command: finished outputs are kept, the partial "
                    "file was removed")
