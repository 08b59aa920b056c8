"""Users and groups: users_list (with user_email, one user: it replaced users_get) and
usergroups_list (any member of the org, as in hoop), usergroups_create (admins), and the usergroup
kind of config_list|get|update|delete (rename, members, delete). Thin calls into `governance.services`."""

from __future__ import annotations

from typing import Annotated

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from gateway import shapes
from governance import services
from governance.policy import ROLE_ADMIN
from mcpserver.registry import Args, Result, page, shared, tool
from mcpserver.tools.rule_crud import Kind, register_kind

Limit = Annotated[int, Field(ge=1, le=100)]
Offset = Annotated[int, Field(ge=0, le=10_000)]
Email = Annotated[str, Field(min_length=3, max_length=254)]


UserOut = shapes.UserOut


class UsersListArgs(Args):
    user_email: str | None = Field(
        None,
        max_length=254,
        description="One user (e-mail or id).",
        validation_alias=AliasChoices("user_email", "email"),
    )
    search: str | None = Field(None, max_length=100, description="In e-mail or name.")
    group_name: str | None = Field(
        None,
        max_length=100,
        description="Members of this group.",
        validation_alias=AliasChoices("group_name", "group"),
    )
    active: bool | None = Field(None, description=None)
    limit: Limit = 50
    offset: Offset = 0


class UsersList(Result):
    items: list[UserOut]
    total: int
    has_next_page: bool
    next_offset: int | None


@tool(
    "users_list",
    description="Users of your organization, by e-mail.",
    args=UsersListArgs,
    result=UsersList,
    render=lambda r: f"{r.total} users: " + ", ".join(u.email for u in r.items),
)
async def users_list(actor, args: UsersListArgs, ctx) -> UsersList:
    @db
    def run():
        if args.user_email is not None:
            return [services.user_to_dict(services.user_get(actor=actor, ref=args.user_email))], 1
        items, total = services.user_list(
            actor=actor,
            search=args.search,
            group=args.group_name,
            active=args.active,
            limit=args.limit,
            offset=args.offset,
        )
        return [services.user_to_dict(u) for u in items], total

    items, total = await run()
    return UsersList(**page(items, total, args.offset))


class GroupOut(shapes.GroupOut):
    model_config = shared("usergroups_list")


class GroupsListArgs(Args):
    search: str | None = Field(None, max_length=100, description=None)
    limit: Limit = 50
    offset: Offset = 0


class GroupsList(Result):
    items: list[GroupOut]
    total: int
    has_next_page: bool
    next_offset: int | None


@tool(
    "usergroups_list",
    description="Groups of your organization and their members (`admin`, `auditor`: those roles).",
    args=GroupsListArgs,
    result=GroupsList,
    render=lambda r: f"{r.total} groups: " + ", ".join(g.name for g in r.items),
)
async def usergroups_list(actor, args: GroupsListArgs, ctx) -> GroupsList:
    @db
    def run():
        items, total = services.usergroup_list(
            actor=actor, search=args.search, limit=args.limit, offset=args.offset
        )
        return [services.usergroup_to_dict(g) for g in items], total

    items, total = await run()
    return GroupsList(**page(items, total, args.offset))


class GroupCreateArgs(Args):
    name: str = Field(min_length=1, max_length=100)
    members: list[Email] | None = Field(None, description="E-mails.")


@tool(
    "usergroups_create",
    description="Create a user group; access_control_set binds it to connections.",
    args=GroupCreateArgs,
    result=GroupOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def usergroups_create(actor, args: GroupCreateArgs, ctx) -> GroupOut:
    @db
    def run():
        group = services.usergroup_create(actor=actor, name=args.name, members=args.members)
        return services.usergroup_to_dict(services.usergroup_get(actor=actor, name=group.name))

    return GroupOut(**await run())


class GroupChanges(Args):
    name: str | None = Field(None, min_length=1, max_length=100)
    members: list[Email] | None = None
    add_members: list[Email] | None = None
    remove_members: list[Email] | None = None


def _groups_page(actor, limit, offset):
    items, total = services.usergroup_list(actor=actor, limit=limit, offset=offset)
    return [services.usergroup_to_dict(g) for g in items], total


def _group_update(actor, ref, changes):
    fields = GroupChanges.model_validate(changes)
    group = services.usergroup_update(
        actor=actor,
        name=ref,
        new_name=fields.name,
        members=fields.members,
        add=fields.add_members,
        remove=fields.remove_members,
    )
    return services.usergroup_to_dict(group)


register_kind(
    Kind(
        name="usergroup",
        what="user group",
        create_tool="usergroups_create",
        out=GroupOut,
        list=_groups_page,
        get=lambda actor, ref: services.usergroup_to_dict(services.usergroup_get(actor=actor, name=ref)),
        update=_group_update,
        # The reserved admin and auditor groups cannot be deleted, nor a connection's only access group.
        delete=lambda actor, ref: services.usergroup_delete(actor=actor, name=ref),
    )
)
