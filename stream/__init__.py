"""churn-stream: real-time churn and retention metrics from customer lifecycle events."""

from stream.native import check_builds

check_builds()
