"""Reading and writing files safely: JSON configs with clear errors, atomic writes and links.

Imports no torch, so the command line (`--help`, config errors) answers at once.
"""
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from utils.errors import ConfigError, UserError, WriteError

_JSON_HINTS = (
    ("Expecting property name enclosed in double quotes",
     " (JSON allows no trailing commas, single quotes or // comments)"),
    ("Expecting value", " (JSON allows no // comments, trailing commas or single quotes)"),
)


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file; a missing file or a syntax error is a `UserError` naming file, line, column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({error.__class__.__name__})") from None
    duplicates = []
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, duplicates),
                          parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        hint = next((h for key, h in _JSON_HINTS if error.msg.startswith(key)), "")
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}{hint}") from None
    except _NonFinite as error:
        offset = max(text.find(str(error)), 0)
        line = text.count("\n", 0, offset) + 1
        column = offset - text.rfind("\n", 0, offset)
        raise ConfigError(f"{path}:{line}:{column}: invalid JSON: {error} is not a number JSON "
                          f"allows; use a finite number") from None
    if duplicates:
        raise ConfigError(*(f"{path}: key {key!r} appears twice in one object (JSON keeps only "
                            f"the last); remove one" for key in duplicates))
    return data


class _NonFinite(ValueError):
    """NaN or Infinity in a JSON file: Python's reader takes them, a config may not."""


def _refuse_constant(name: str):
    raise _NonFinite(name)


def _object(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict:
    """A JSON object; a key given twice is added to `duplicates`."""
    result = {}
    for key, value in pairs:
        if key in result and key not in duplicates:
            duplicates.append(key)
        result[key] = value
    return result


def refuse_link(path: str | os.PathLike) -> None:
    """A `UserError` when `path` is a symbolic link: a file the template appends to in a run
    folder (a log) is never written through one, whatever it points at."""
    if os.path.islink(path):
        raise UserError(f"{path}: is a symbolic link; the template does not write through it "
                        f"into {os.readlink(path)} (remove the link)")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that a crash at any instant leaves either the old file or the new one.

    `write` gets a binary file object in the same folder; it is flushed, fsynced and moved into
    place with `os.replace`, then the folder is fsynced so the rename itself is durable.
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file follows the umask
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        # torch.save wraps the OSError of a failed write in a RuntimeError
        if isinstance(error, (OSError, RuntimeError)) and _os_error(error) is not None:
            raise _write_error(path, _os_error(error)) from None
        raise
    _fsync_dir(path.parent)


# What a full disk or quota, or a file size limit, gives.
_NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file size limit exceeded"}


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself, or what it was raised from or while handling)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_error(path: Path, error: OSError) -> WriteError:
    reason = _NO_ROOM.get(error.errno)
    if reason is not None:
        return WriteError(f"{reason} while writing {path}", no_room=True)
    return WriteError(f"{path}: cannot be written ({error.strerror})")


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make `path` a hard link to the complete file `source`, atomically (a link under a temp
    name, then `os.replace`); False where the file system has no hard links."""
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    try:
        tmp_name.unlink(missing_ok=True)
        os.link(source, tmp_name)
    except OSError:
        return False
    os.replace(tmp_name, path)
    _fsync_dir(path.parent)
    return True


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system supports fsync on a folder (why: durability only, not atomicity)
    finally:
        os.close(fd)


def write_json(content: dict, path: str | os.PathLike) -> None:
    """Write `content` as indented JSON, atomically."""
    data = (json.dumps(content, indent=4, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda file: file.write(data))
