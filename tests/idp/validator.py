"""The IdP's claims: e-mail (verified), name and `groups` (the user's Django groups), in the ID
token and UserInfo. `TAMPER` lets a test make this provider misbehave the way a wrong or hostile
IdP would (another issuer or audience, no nonce); it is set over the control endpoint."""

import json

from jwcrypto import jwk, jwt
from oauth2_provider.oauth2_validators import OAuth2Validator

TAMPER: dict = {}


class Validator(OAuth2Validator):
    oidc_claim_scope = None  # every claim below, whatever the scopes

    def get_additional_claims(self, request):
        user = request.user
        return {
            "email": user.email,
            "email_verified": True,
            "name": user.get_full_name() or user.username,
            "groups": sorted(g.name for g in user.groups.all()),
        }

    def get_id_token_dictionary(self, token, token_handler, request):
        claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
        claims.update(TAMPER.get("claims", {}))
        return claims, expiration

    def finalize_id_token(self, id_token, token, token_handler, request):
        if TAMPER.get("drop_nonce"):
            id_token.pop("nonce", None)
            request.nonce = None
        if TAMPER.get("forge_signature"):
            # A forger's token: the IdP's key id in the header, signed with a key the IdP never had.
            claims, _ = self.get_id_token_dictionary(token, token_handler, request)
            id_token.update(claims)
            id_token.setdefault("nonce", request.nonce)
            header = {"typ": "JWT", "alg": "RS256", "kid": request.client.jwk_key.thumbprint()}
            forged = jwt.JWT(header=json.dumps(header), claims=json.dumps(id_token, default=str))
            forged.make_signed_token(jwk.JWK.generate(kty="RSA", size=2048))
            return forged.serialize()
        return super().finalize_id_token(id_token, token, token_handler, request)
