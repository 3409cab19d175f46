"""Prefect flows that compose the tasks, and the deployments that serve them."""

from tasks.runtime import apply_offline_env

apply_offline_env()
