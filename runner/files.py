"""Files written whole: each goes to a uniquely named temporary file beside it, is flushed and fsynced, then
renamed over the old one, so a crash, a full disk or two writers at once never leave half a file."""
import os
import tempfile
from pathlib import Path

UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write(path: Path, write, verify=None) -> None:
    """write(f) into a unique temporary file beside path, flushed and fsynced, checked by verify(temporary path)
    when given, then renamed over path (with the permissions a plain new file would have)."""
    handle, temporary = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~UMASK)
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify:
            verify(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
