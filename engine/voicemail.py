"""Voicemail (#10 part 1): PINs, the MWI summary, retention, and the owner's DTMF menu.

Rule 1: pure: no I/O, no trio, no clock reads (time arrives as arguments); the salt of a PIN hash
        is passed in by the caller (``os.urandom`` at the edge).
Rule 2: a PIN is never stored or logged: only ``hash_pin``'s PBKDF2-SHA256 string is.
Rule 3: the menu (``Access``) is a state machine ``step(state, input) -> (state, actions)``; it
        decides, the host performs the actions (play a prompt or a message, move a message to
        saved, delete it, send MWI, hang up). It never reaches the menu without the right PIN and
        never plays a message it deleted.

Theory of operation
Leaving a message is a flow node (``engine.flows`` VoicemailNode: greeting, beep, the FreeSWITCH
``record`` app with a time limit and silence detection); the call machine publishes VOICEMAIL_NEW
when the recording stops (or the caller hangs up while recording). The host-side service
(``adapters/postgres/voicemail.py``) stores the message and sends MWI.

Retrieving: the owner's channel runs ``Access``: ``start`` asks for the PIN (digits then ``#``);
after ``max_pin_attempts`` wrong PINs it hangs up. Every PIN it checks is reported
(``PinChecked``), so the host can count wrong PINs across calls and lock the mailbox
(``lockout``): a locked mailbox is handed to the menu with no PIN hash, every PIN fails, and the
caller cannot tell a lockout from a wrong PIN. In the menu: ``1`` plays the next message (new
ones first, oldest first, then saved ones), ``9`` saves the message just played (folder
new -> saved), ``7`` deletes it, ``#`` exits. Every change emits ``Mwi(new, saved)`` with the
counts after the change, so the phone's lamp follows the mailbox.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

import msgspec

__all__ = [
    "VoicemailError", "BadPin", "hash_pin", "check_pin", "validate_pin", "mwi_headers", "expires_at",
    "MessageRef", "Access", "Digit", "PlaybackDone", "Play", "PlayMessage", "SaveMessage",
    "DeleteMessage", "Mwi", "HangUp", "PinChecked", "start", "step", "counts", "PROMPTS", "PBKDF2_ROUNDS",
    "Lockout", "lockout", "is_locked",
]

#: PBKDF2 iterations: a PIN has few digits, so the hash must be slow to brute-force offline
PBKDF2_ROUNDS = 100_000

#: prompts the menu plays (sound files of the media server; the names are the contract)
PROMPTS = {
    "enter_pin": "voicemail/vm-enter_pass.wav",
    "bad_pin": "voicemail/vm-fail_auth.wav",
    "menu": "voicemail/vm-menu.wav",
    "no_more": "voicemail/vm-no_more_messages.wav",
    "saved": "voicemail/vm-saved.wav",
    "deleted": "voicemail/vm-deleted.wav",
    "goodbye": "voicemail/vm-goodbye.wav",
}


class VoicemailError(Exception):
    """A voicemail request that cannot be served; ``code`` is the API error code."""

    code = "INVALID_ARGUMENT"


class BadPin(VoicemailError):
    def __init__(self, why: str) -> None:
        super().__init__(f"voicemail PIN {why}")


def validate_pin(pin: str) -> str:
    """A PIN is 4 to 12 decimal digits (what a phone keypad can enter before ``#``)."""
    if not (4 <= len(pin) <= 12 and pin.isascii() and pin.isdigit()):
        raise BadPin("must be 4 to 12 digits")
    return pin


def hash_pin(pin: str, salt: bytes, rounds: int = PBKDF2_ROUNDS) -> str:
    """``pbkdf2_sha256$<rounds>$<salt hex>$<digest hex>``; the PIN itself is never kept."""
    validate_pin(pin)
    if len(salt) < 8:
        raise ValueError("a PIN salt needs at least 8 bytes")
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, rounds)
    return f"pbkdf2_sha256${rounds}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    """Constant-time check of ``pin`` against ``hash_pin``'s string; a malformed hash is False."""
    try:
        scheme, rounds, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def mwi_headers(account: str, new: int, saved: int, urgent_new: int = 0,
                urgent_saved: int = 0) -> dict[str, str]:
    """The MESSAGE_WAITING headers FreeSWITCH's mod_voicemail fires (and mod_sofia turns into a SIP
    NOTIFY message-summary): ``account`` is ``<extension>@<domain>``."""
    return {
        "MWI-Messages-Waiting": "yes" if new > 0 else "no",
        "MWI-Message-Account": f"sip:{account}",
        "MWI-Voice-Message": f"{new}/{saved} ({urgent_new}/{urgent_saved})",
    }


def expires_at(created: float, retention_days: int) -> float | None:
    """When a message made at ``created`` expires; ``retention_days <= 0`` keeps it forever."""
    return None if retention_days <= 0 else created + retention_days * 86400.0


# ---- the owner's menu ----------------------------------------------------------------------


class MessageRef(msgspec.Struct, frozen=True):
    id: str
    folder: Literal["new", "saved"]
    path: str = ""
    created: float = 0.0


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """One owner's session with their mailbox."""

    box: str
    pin_hash: str
    #: the mailbox content when the session started, in play order after ``start``
    messages: tuple[MessageRef, ...] = ()
    phase: Literal["pin", "menu", "done"] = "pin"
    digits: str = ""
    pin_failures: int = 0
    max_pin_attempts: int = 3
    #: index of the next message ``1`` plays
    cursor: int = 0
    #: the message just played (what ``7``/``9`` act on), "" when none
    current: str = ""
    deleted: frozenset[str] = frozenset()
    max_pin_digits: int = 12


class Digit(msgspec.Struct, frozen=True):
    digit: str


class PlaybackDone(msgspec.Struct, frozen=True):
    pass


class Play(msgspec.Struct, frozen=True):
    prompt: str


class PlayMessage(msgspec.Struct, frozen=True):
    id: str
    path: str


class SaveMessage(msgspec.Struct, frozen=True):
    id: str


class DeleteMessage(msgspec.Struct, frozen=True):
    id: str


class Mwi(msgspec.Struct, frozen=True):
    new: int
    saved: int


class HangUp(msgspec.Struct, frozen=True):
    reason: str


class PinChecked(msgspec.Struct, frozen=True):
    """A PIN was entered and checked (the host counts wrong ones across calls: ``lockout``)."""

    ok: bool


Action = Play | PlayMessage | SaveMessage | DeleteMessage | Mwi | HangUp | PinChecked
Input = Digit | PlaybackDone

_replace = msgspec.structs.replace


def counts(state: Access) -> Mwi:
    """(new, saved) of the messages not deleted in this session."""
    new = sum(1 for m in state.messages if m.folder == "new" and m.id not in state.deleted)
    saved = sum(1 for m in state.messages if m.folder == "saved" and m.id not in state.deleted)
    return Mwi(new, saved)


def start(box: str, pin_hash: str, messages: tuple[MessageRef, ...] | list[MessageRef], *,
          max_pin_attempts: int = 3) -> tuple[Access, list[Action]]:
    """Begin a session: messages are ordered new first, then saved, oldest first within each."""
    ordered = tuple(sorted(messages, key=lambda m: (m.folder != "new", m.created, m.id)))
    state = Access(box=box, pin_hash=pin_hash, messages=ordered, max_pin_attempts=max(1, max_pin_attempts))
    return state, [Play(PROMPTS["enter_pin"])]


def step(state: Access, event: Input) -> tuple[Access, list[Action]]:
    """Apply a DTMF digit (or the end of a prompt, which changes nothing) to the session."""
    if state.phase == "done" or not isinstance(event, Digit):
        return state, []
    d = event.digit
    if state.phase == "pin":
        return _pin(state, d)
    return _menu(state, d)


def _pin(state: Access, d: str) -> tuple[Access, list[Action]]:
    if d != "#":
        if len(state.digits) >= state.max_pin_digits:
            return state, []  # a keypad held down: ignore the excess, the check fails anyway
        return _replace(state, digits=state.digits + d), []
    if check_pin(state.digits, state.pin_hash):
        state = _replace(state, phase="menu", digits="")
        return state, [PinChecked(True), counts(state), Play(PROMPTS["menu"])]
    failures = state.pin_failures + 1
    state = _replace(state, digits="", pin_failures=failures)
    if failures >= state.max_pin_attempts:
        return _replace(state, phase="done"), [PinChecked(False), Play(PROMPTS["bad_pin"]), HangUp("pin_failed")]
    return state, [PinChecked(False), Play(PROMPTS["bad_pin"]), Play(PROMPTS["enter_pin"])]


def _menu(state: Access, d: str) -> tuple[Access, list[Action]]:
    if d == "1":
        i = state.cursor
        while i < len(state.messages) and state.messages[i].id in state.deleted:
            i += 1
        if i >= len(state.messages):
            return _replace(state, cursor=i, current=""), [Play(PROMPTS["no_more"])]
        msg = state.messages[i]
        return _replace(state, cursor=i + 1, current=msg.id), [PlayMessage(msg.id, msg.path)]
    if d in ("7", "9"):
        if not state.current:
            return state, [Play(PROMPTS["menu"])]
        cur = state.current
        if d == "7":
            state = _replace(state, deleted=state.deleted | {cur}, current="")
            return state, [DeleteMessage(cur), counts(state), Play(PROMPTS["deleted"])]
        msgs = tuple(_replace(m, folder="saved") if m.id == cur else m for m in state.messages)
        changed = any(m.id == cur and m.folder == "new" for m in state.messages)
        state = _replace(state, messages=msgs, current="")
        out: list[Action] = [SaveMessage(cur)]
        if changed:
            out.append(counts(state))
        return state, out + [Play(PROMPTS["saved"])]
    if d == "#":
        return _replace(state, phase="done", current=""), [Play(PROMPTS["goodbye"]), HangUp("exit")]
    return state, [Play(PROMPTS["menu"])]


# ---- lockout across calls ------------------------------------------------------------------


class Lockout(msgspec.Struct, frozen=True, kw_only=True):
    """A mailbox's wrong-PIN count across calls. ``max_failures`` wrong PINs in a row (any number
    of calls) lock it for ``lock_s`` seconds; a right PIN or a new PIN clears the count."""

    failures: int = 0
    locked_until: float | None = None


def lockout(current: Lockout, ok: bool, at: float, *, max_failures: int = 6, lock_s: float = 900.0) -> Lockout:
    """The count after one checked PIN at ``at``. A PIN checked while locked (it fails: the menu got
    no hash) changes nothing: it neither counts nor extends the lock, so guessing cannot keep a
    mailbox locked for ever, and the owner gets ``max_failures`` tries once the lock is over."""
    if is_locked(current, at):
        return current
    if ok:
        return Lockout()
    failures = current.failures + 1
    if failures >= max(1, max_failures):
        return Lockout(failures=0, locked_until=at + lock_s)
    return Lockout(failures=failures)


def is_locked(current: Lockout, at: float) -> bool:
    return current.locked_until is not None and current.locked_until > at
