"""Audit lines: one per admin action (reload, rollback) whatever its outcome, on ``service.audit``.

A line names the action, model, outcome, reason, client address and the checkpoint asked for;
never a credential (callers have nothing of the request's headers to pass in).
"""

from __future__ import annotations

import logging

from service.errors import Forbidden, InvalidParameter, NotFound, Unauthorized

log = logging.getLogger("service.audit")

# Outcomes by the error that refused the action; any other error is a "failure".
_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (Unauthorized, "unauthorized"),
    (Forbidden, "forbidden"),
    (NotFound, "not_found"),
    (InvalidParameter, "invalid"),
)


def outcome_of(error: BaseException) -> str:
    """The audit outcome of an action that raised ``error``."""
    for kind, outcome in _REFUSALS:
        if isinstance(error, kind):
            return outcome
    return "failure"


def audit(
    action: str,
    model: str,
    outcome: str,
    *,
    client: str | None,
    checkpoint: str | None = None,
    reason: str | None = None,
    previous_version: str | None = None,
    version: str | None = None,
) -> None:
    """Logs one admin action: INFO when it was carried out (or changed nothing), else WARNING."""
    done = outcome in ("success", "unchanged")
    versions = f" {previous_version} -> {version}" if done else ""
    log.log(
        logging.INFO if done else logging.WARNING,
        "%s %s %s%s checkpoint=%s client=%s%s",
        action,
        model,
        outcome,
        versions,
        "-" if checkpoint is None else repr(checkpoint),
        client or "-",
        "" if reason is None else f" reason={reason!r}",
        extra={
            "action": action,
            "model": model,
            "outcome": outcome,
            "reason": reason,
            "checkpoint": checkpoint,
            "client": client,
            "previous_version": previous_version,
            "version": version,
        },
    )
