"""Who a DICOM study belongs to, kept out of every output: salted hashes of the header identifiers.

A DICOM series belongs to its StudyInstanceUID and its PatientID, whatever the folders or file names
(:mod:`ctsynth.io.discover`). Those values, and the AccessionNumber a label sheet may be keyed by, are kept
in memory only (:class:`DicomIdentity`, used to group studies and to match label rows); everything ctsynth
writes or prints names a study and a patient by a *token*: ``pat-`` or ``std-`` and the first 12 hex
digits of HMAC-SHA256(salt, value).

Why salted: PatientIDs (medical record numbers) and accession numbers are short and often sequential, so a
plain hash could be reversed by hashing every candidate number. The salt is a secret random key that
stays on the user's machine, so tokens are stable from run to run (a prepared cache keeps its study ids
and splits) but cannot be reversed without it. It is, first match wins:

1. the environment variable ``CTSYNTH_ID_SALT`` (any text; share it to get the same tokens elsewhere);
2. the file ``$XDG_CONFIG_HOME/ctsynth/id_salt`` (default ``~/.config/ctsynth/id_salt``), created with 32
   random bytes on first use (mode 0600, written atomically).

:class:`Redactor` replaces the clear values of the studies found (and of their series) by their tokens in
text that goes into an output, such as the path of a TCIA-style folder named after the patient.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CTSynthError

SALT_ENV = "CTSYNTH_ID_SALT"
TOKEN_HEX = 12
_salt_cache: dict[str, bytes] = {}


def salt_path() -> Path:
    """Where the persistent salt lives (see the module docstring)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ctsynth" / "id_salt"


def id_salt() -> bytes:
    """The secret salt of the tokens: ``CTSYNTH_ID_SALT``, else the salt file (created on first use)."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    path = salt_path()
    key = str(path)
    if key in _salt_cache:
        return _salt_cache[key]
    try:
        salt = path.read_bytes()
    except FileNotFoundError:
        salt = b""
    except OSError as exc:
        raise CTSynthError(f"cannot read the identifier salt ({exc.strerror or exc})", path,
                           f"make it readable, or set {SALT_ENV} to a secret of your choice") from exc
    if len(salt) < 16:
        salt = _create_salt(path)
    _salt_cache[key] = salt
    return salt


def _create_salt(path: Path) -> bytes:
    from .atomic import atomic_write_bytes

    salt = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, salt)
        os.chmod(path, 0o600)
    except (OSError, CTSynthError) as exc:
        raise CTSynthError(f"cannot create the identifier salt ({exc})", path,
                           f"make {path.parent} writable, or set {SALT_ENV} to a secret of your choice") from exc
    return path.read_bytes()


def token(kind: str, value: str) -> str:
    """``pat-3fa9c2d1e0b4`` for a PatientID, ``std-...`` for a StudyInstanceUID: a salted, one-way name."""
    digest = hmac.new(id_salt(), f"{kind}:{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:TOKEN_HEX]}"


@dataclass(frozen=True)
class DicomIdentity:
    """The clear identifiers of one DICOM study, in memory only (``repr`` shows the tokens, never values)."""

    patient_id: str = field(repr=False)
    study_uid: str = field(repr=False)
    accession: str = field(default="", repr=False)

    @property
    def patient_token(self) -> str:
        return token("pat", self.patient_id) if self.patient_id else ""

    @property
    def study_token(self) -> str:
        return token("std", self.study_uid) if self.study_uid else ""

    def __repr__(self) -> str:
        return f"DicomIdentity(patient={self.patient_token!r}, study={self.study_token!r})"


class Redactor:
    """Replaces known clear identifiers by their tokens in text bound for an output (paths, notes)."""

    def __init__(self) -> None:
        self._pairs: dict[str, str] = {}

    def add(self, value: str, kind: str) -> None:
        """Remember ``value`` (ignored if empty or under 4 characters: too short to be specific)."""
        value = (value or "").strip()
        if len(value) >= 4 and value not in self._pairs:
            self._pairs[value] = token(kind, value)

    def add_identity(self, identity: DicomIdentity, series_uids: list[str] = ()) -> None:
        self.add(identity.patient_id, "pat")
        self.add(identity.study_uid, "std")
        self.add(identity.accession, "acc")
        for uid in series_uids:
            self.add(uid, "ser")

    def __call__(self, text: str) -> str:
        # Longest first, so a UID that contains another value is replaced whole.
        for value in sorted(self._pairs, key=len, reverse=True):
            if value in text:
                text = text.replace(value, self._pairs[value])
        return text

    def __bool__(self) -> bool:
        return bool(self._pairs)
