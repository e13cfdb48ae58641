"""User-facing errors: each one is a single line saying what is wrong and how to fix it."""


class ReverieError(Exception):
    """Bad input or environment. The CLI prints the message alone and exits with code 2."""


class ModelError(ReverieError):
    """The model could not be found, loaded or understood."""


class TargetError(ReverieError):
    """A target spec is malformed or does not fit the model."""


class ConfigError(ReverieError):
    """An EPO option is out of range or inconsistent."""


class RunDirError(ReverieError):
    """A run directory cannot be written, or its files cannot be read."""


def is_oom(e: BaseException) -> bool:
    """Whether an exception from torch is an out-of-memory error (CUDA, or the CPU allocator)."""
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e) or "can't allocate memory" in str(e)
