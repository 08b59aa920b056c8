from django.urls import path

from gateway import console

urlpatterns = [
    path("console/", console.console_view, name="console"),
    path("console/sessions/<str:session_id>/wait", console.console_wait_view, name="console-wait"),
    path("console/sessions/<str:session_id>/cancel", console.console_cancel_view, name="console-cancel"),
    path("console/reviews/<str:review_id>/run", console.review_run_view, name="review-run"),
]
