import json

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import Group, User
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import get_application_model

from tests.idp import validator


@csrf_exempt
def control(request):
    """What a test changes at the IdP: users (and their groups), the client, misbehaviour."""
    if request.headers.get("X-Control-Token") != settings.CONTROL_TOKEN:
        return JsonResponse({"error": "forbidden"}, status=403)
    op = json.loads(request.body)
    if op["op"] == "user":
        user, _ = User.objects.get_or_create(username=op["username"])
        user.email = op["email"]
        user.is_active = op.get("active", True)
        user.set_password(op["password"])
        user.save()
        user.groups.set([Group.objects.get_or_create(name=name)[0] for name in op.get("groups", [])])
        return JsonResponse({"sub": str(user.pk)})
    if op["op"] == "delete_user":
        User.objects.filter(username=op["username"]).delete()
        return JsonResponse({})
    if op["op"] == "client":
        Application = get_application_model()
        app, _ = Application.objects.get_or_create(client_id=op["client_id"])
        app.client_secret = op["client_secret"]
        app.client_type = Application.CLIENT_CONFIDENTIAL
        app.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
        app.redirect_uris = " ".join(op["redirect_uris"])
        app.post_logout_redirect_uris = " ".join(op.get("post_logout_redirect_uris", []))
        app.algorithm = Application.RS256_ALGORITHM
        app.skip_authorization = True
        app.name = "portcullis"
        app.save()
        return JsonResponse({})
    if op["op"] == "tamper":
        validator.TAMPER.clear()
        validator.TAMPER.update(op.get("tamper", {}))
        return JsonResponse({})
    return JsonResponse({"error": "unknown op"}, status=400)


urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="idp_login.html")),
    path("control/", control),
    path("healthz", lambda request: JsonResponse({"ok": True})),
]
