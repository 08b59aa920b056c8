from django.urls import path

from reviews import views

urlpatterns = [
    path("reviews/", views.review_list_view, name="review-list"),
    path("reviews/<str:review_id>/", views.review_detail_view, name="review-detail"),
    path("reviews/<str:review_id>/decide", views.review_decide_view, name="review-decide"),
    path("reviews/<str:review_id>/events", views.review_events_view, name="review-events"),
]
