"""The REST API under /api/v1/: thin DRF adapters over the same services as MCP and the admin.

Each view parses with an input serializer, calls one service with `actor=` (an `Actor` of surface
`api` built from the bearer token by `auth.TokenAuthentication`) and renders the service's dict.
Authorization is the services' (through `governance.policy`); `base.ActorPermission` only
translates what a view declares (its role and the token capability it needs, as MCP tools
declare theirs) so a denial is answered and audited before anything runs, exactly like MCP.
Domain errors are translated once, in `errors.exception_handler`.
"""
