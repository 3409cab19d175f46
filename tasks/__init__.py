"""Thin Ray Data / Prefect task wrappers that move data between crosstvr_core and Lance."""

from tasks.runtime import apply_offline_env

apply_offline_env()
