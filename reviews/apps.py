from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    """Access-request rules, reviews and JIT grants (issue: human approval). No models yet."""

    name = "reviews"
    verbose_name = "Reviews"
