"""What the model and dataset upload routes share: form-field parsing and storing."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import InsufficientStorage, ValidationFailed
from app.db.models import Dataset, Model
from app.storage import ArtifactStore
from app.uploads import SavedUpload, is_out_of_space

_ARCH_RE = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.\-/]+$")
MAX_NAME = 256


def parse_input_shape(raw: str | None) -> list[int] | None:
    """`"1,3,224,224"` (brackets and spaces tolerated) -> `[1, 3, 224, 224]`."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip().removeprefix("[").removesuffix("]")
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise ValidationFailed(
            "input_shape", "expected comma-separated integers such as 1,3,224,224"
        ) from exc
    if not 1 <= len(dims) <= 8 or any(d < 1 or d > 1_000_000 for d in dims):
        raise ValidationFailed("input_shape", "expected 1 to 8 dimensions, each at least 1")
    return dims


def parse_arch(raw: str | None) -> str | None:
    """`torchvision:resnet18`-style names; which ones exist is the inspector's call."""
    if raw is None or not raw.strip():
        return None
    arch = raw.strip()
    if len(arch) > 256 or not _ARCH_RE.match(arch):
        raise ValidationFailed("arch", "expected 'library:name', e.g. torchvision:resnet18")
    return arch


def display_name(raw: str | None, filename: str | None, fallback: str) -> str:
    """The name shown to clients: the given one, else the uploaded file's base name.
    Only ever metadata: storage keys are built from ids."""
    if raw and raw.strip():
        return raw.strip()[:MAX_NAME]
    if filename:
        base = PureWindowsPath(PurePosixPath(filename).name).name.strip()
        if base:
            return base[:MAX_NAME]
    return fallback


def insert_upload_row(
    factory: sessionmaker[Session], store: ArtifactStore, row: Model | Dataset
) -> None:
    """Commit the row of an already-stored upload; on failure remove the stored file so
    nothing is left without a row."""
    try:
        with factory() as session:
            session.add(row)
            session.commit()
    except BaseException:
        store.delete(row.storage_key)
        raise


@contextmanager
def scratch_upload(tmp: Path, saved: SavedUpload) -> Iterator[None]:
    """Around inspecting and storing a received upload: a full disk answers 507, and the
    scratch file and its ownership lock are released whatever happens."""
    try:
        yield
    except OSError as exc:
        if is_out_of_space(exc):
            raise InsufficientStorage("the server has no room to store the upload right "
                                      "now; retry later") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
        saved.release()
