"""Authorization: one ``authorize(principal, action, resource)``, deny by default, from one policy table.

A later face adds its actions with ``register_action("fleet.command", Rule("member", Ownership.OWNER))`` (or by
adding a line to ``POLICY``); an action missing from the table is refused for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from core.errors import Forbidden, Unauthenticated
from core.principals import Principal, PrincipalKind, Role

PEOPLE = frozenset({PrincipalKind.USER, PrincipalKind.API_KEY})


class Ownership(StrEnum):
    ANY = "any"  # the role is enough
    OWNER = "owner"  # the resource's owner, or an admin; no resource (e.g. "list everything") means admin only


@dataclass(frozen=True)
class Rule:
    """Who may perform an action: at least ``min_role``, a principal of one of ``kinds``, and ``ownership``."""

    min_role: Role
    ownership: Ownership = Ownership.ANY
    kinds: frozenset[PrincipalKind] = field(default=PEOPLE)


@dataclass(frozen=True)
class Resource:
    """What an action touches: ``owner`` is the owning user's name ("" when nobody owns it)."""

    kind: str
    owner: str = ""
    id: str = ""


POLICY: dict[str, Rule] = {
    "users.create": Rule("admin"),
    "users.read": Rule("viewer", Ownership.OWNER),
    "users.update": Rule("admin"),
    "keys.create": Rule("member", Ownership.OWNER),
    "keys.read": Rule("viewer", Ownership.OWNER),
    "keys.revoke": Rule("viewer", Ownership.OWNER),
    "actions.start": Rule("member"),
    "actions.read": Rule("viewer", Ownership.OWNER),
    "actions.cancel": Rule("member", Ownership.OWNER),
    "system.admin": Rule("admin"),
}


def register_action(name: str, rule: Rule) -> None:
    """Add an action to the policy; registering the same name with a different rule is a programming error."""
    existing = POLICY.setdefault(name, rule)
    if existing != rule:
        raise ValueError(f"action {name} is already registered with {existing}")


def authorize(principal: Principal, action: str, resource: Resource | None = None) -> None:
    """Return when ``principal`` may perform ``action`` on ``resource``; raise 401 (anonymous) or 403 otherwise."""
    if not principal.is_authenticated:
        raise Unauthenticated("authentication required")
    rule = POLICY.get(action)
    if rule is None:
        raise Forbidden(f"{action} is not a known action")
    if principal.kind not in rule.kinds:
        raise Forbidden(f"{action} is not allowed for {principal.kind.value} principals")
    if not principal.has_role(rule.min_role):
        raise Forbidden(f"{action} requires role {rule.min_role}")
    if rule.ownership is Ownership.OWNER and not _owns_or_admin(principal, resource):
        raise Forbidden(f"{action} is allowed only to the owner or an admin")


def _owns_or_admin(principal: Principal, resource: Resource | None) -> bool:
    if principal.role == "admin":
        return True
    return resource is not None and bool(resource.owner) and resource.owner == principal.name


def allowed(principal: Principal, action: str, resource: Resource | None = None) -> bool:
    """``authorize`` as a predicate, for code that filters rather than refuses."""
    try:
        authorize(principal, action, resource)
    except (Unauthenticated, Forbidden):
        return False
    return True
