"""Writing files so that no reader ever sees half of one; reading json with one-line errors."""
import json
import os
import tempfile
from pathlib import Path

from core.errors import UserError


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same folder, then rename it into place.

    A crash leaves either the old file or the new one, never a torn one (ARCHITECTURE.md, Errors).
    """
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> Path:
    """write_text_atomic for bytes (a PNG, say)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary output files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path, what: str = "json file"):
    """The parsed content of a json file; a missing or unparsable one is a UserError naming it
    (`what` says what was expected there: "annotations file")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid json ({e})") from None
