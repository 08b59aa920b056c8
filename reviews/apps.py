from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    """Access-request rules, reviews and JIT grants (issue: human approval). Models in reviews.models, transitions in reviews.services."""

    name = "reviews"
    verbose_name = "Reviews"
