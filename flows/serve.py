"""Serve the deployments: `crosstvr/full-benchmark` (the whole DAG on the embedded default).

`make up` runs this in the background; `prefect deployment run crosstvr/full-benchmark`
then schedules a run that this process picks up and executes in a subprocess.
"""

from __future__ import annotations

from prefect import serve

from flows.full_benchmark import crosstvr

FULL_BENCHMARK = "full-benchmark"


def deployments() -> list:
    return [
        crosstvr.to_deployment(
            name=FULL_BENCHMARK,
            description="index -> stage 1 -> train CrossTVR re-ranker -> two-stage eval -> "
            "report, on the configured dataset (default: the embedded generated benchmark)",
            tags=["crosstvr", "benchmark"],
        ),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
