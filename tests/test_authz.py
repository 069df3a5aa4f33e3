"""authorize(principal, action, resource): deny by default, roles, ownership, principal kinds."""

from __future__ import annotations

import pytest

from core.authz import POLICY, Ownership, Resource, Rule, allowed, authorize, register_action
from core.errors import Forbidden, Unauthenticated
from core.principals import ANONYMOUS, Principal, PrincipalKind, Role


def user(name: str, role: Role, kind: PrincipalKind = PrincipalKind.USER) -> Principal:
    return Principal(kind=kind, name=name, role=role, user_id=1)


ADMIN = user("root", "admin")
MEMBER = user("alice", "member")
VIEWER = user("victor", "viewer")


def test_authorize_refuses_anonymous_with_401() -> None:
    with pytest.raises(Unauthenticated, match="authentication required"):
        authorize(ANONYMOUS, "keys.read", Resource("api_key", owner="alice"))


def test_authorize_denies_an_unknown_action_even_to_admin() -> None:
    with pytest.raises(Forbidden, match="not a known action"):
        authorize(ADMIN, "no.such.action")


def test_authorize_requires_the_minimum_role() -> None:
    with pytest.raises(Forbidden, match="requires role member"):
        authorize(VIEWER, "keys.create", Resource("user", owner="victor"))
    with pytest.raises(Forbidden, match="requires role admin"):
        authorize(MEMBER, "users.create")
    authorize(ADMIN, "users.create")
    authorize(MEMBER, "actions.start")


def test_authorize_ownership_allows_the_owner_and_admins_only() -> None:
    mine = Resource("api_key", owner="alice", id="3")
    theirs = Resource("api_key", owner="bob", id="4")
    authorize(MEMBER, "keys.revoke", mine)
    authorize(ADMIN, "keys.revoke", theirs)
    with pytest.raises(Forbidden, match="only to the owner or an admin"):
        authorize(MEMBER, "keys.revoke", theirs)


def test_authorize_ownership_without_resource_or_owner_is_admin_only() -> None:
    for resource in (None, Resource("api_key", owner="")):
        assert not allowed(MEMBER, "keys.read", resource)
        assert allowed(ADMIN, "keys.read", resource)
    nameless = user("", "member", PrincipalKind.API_KEY)
    assert not allowed(nameless, "keys.read", Resource("api_key", owner=""))


def test_authorize_api_key_principals_follow_the_same_rules() -> None:
    key = user("alice", "member", PrincipalKind.API_KEY)
    authorize(key, "keys.create", Resource("user", owner="alice"))
    assert not allowed(key, "keys.create", Resource("user", owner="bob"))


def test_authorize_refuses_agent_principals_unless_the_rule_names_them() -> None:
    agent = Principal(kind=PrincipalKind.AGENT, name="srv-1", role="admin", server_id="srv-1")
    with pytest.raises(Forbidden, match="not allowed for agent principals"):
        authorize(agent, "system.admin")


def test_register_action_adds_a_rule_and_refuses_a_conflicting_one() -> None:
    rule = Rule("member", Ownership.OWNER, frozenset({PrincipalKind.AGENT}))
    try:
        register_action("test.agent_report", rule)
        register_action("test.agent_report", rule)
        agent = Principal(kind=PrincipalKind.AGENT, name="srv-1", role="member")
        authorize(agent, "test.agent_report", Resource("server", owner="srv-1"))
        assert not allowed(MEMBER, "test.agent_report", Resource("server", owner="alice"))
        with pytest.raises(ValueError, match="already registered"):
            register_action("test.agent_report", Rule("admin"))
    finally:
        POLICY.pop("test.agent_report", None)


def test_policy_table_lists_the_documented_actions() -> None:
    documented = {"keys.create", "keys.read", "keys.revoke", "users.create", "users.read"}
    documented |= {"actions.start", "actions.read", "actions.cancel", "system.admin"}
    assert documented <= set(POLICY)
