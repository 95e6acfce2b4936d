"""How `interceptor status` shows an agent's identity to a person: its state, why it is
refused, its expiry as local time with the time left, and when it was and will be checked."""

from __future__ import annotations

import time
from collections.abc import Mapping

NONE = "-"


def duration(seconds: float) -> str:
    """A non-negative span as its two largest units: "45s", "41m", "2h05m", "3d04h"."""
    whole = int(round(abs(seconds)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def local_time(epoch: float) -> str:
    """Epoch seconds as this host's local time, "2026-11-30 06:41:23 UTC"."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def expiry(expires_at: object, now: float) -> str:
    """ "<local time> (in 41m)" or "<local time> (expired 3m ago)"; "-" when not a number."""
    if not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool):
        return NONE
    left = expires_at - now
    when = f"in {duration(left)}" if left > 0 else f"expired {duration(left)} ago"
    return f"{local_time(expires_at)} ({when})"


def relative(epoch: object, now: float) -> str:
    """An instant near now as "12s ago" or "in 30s"; "-" when not a number."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return NONE
    return f"in {duration(epoch - now)}" if epoch > now else f"{duration(now - epoch)} ago"


def identity_columns(identity: Mapping[str, object] | None, now: float) -> dict[str, str]:
    """One agent's identity (ControlApi's summary, or None) as the status table's cells:
    identity (state), subject, groups, expires, checked ("12s ago, next in 18s") and reason."""
    shown = identity or {}
    groups = shown.get("groups")
    checked = relative(shown.get("last_checked"), now)
    if shown.get("next_check") is not None:
        checked += f", next {relative(shown.get('next_check'), now)}"
    return {"identity": str(shown.get("state") or NONE), "subject": str(shown.get("subject") or NONE),
            "groups": ",".join(str(g) for g in groups) if isinstance(groups, list) and groups else NONE,
            "expires": expiry(shown.get("expires_at"), now), "checked": checked,
            "reason": str(shown.get("reason") or NONE)}
