"""Typed flow parameters: every deployment validates them first, before Ray or MLflow start.

A deployment run's parameters arrive as JSON from the Prefect API, so a typo in an override
(`train.epochz=3`) or a bad value (`train.epochs=zero`) must fail the run at once, with a
message naming the parameter and the key, not an hour later inside a task.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from crosstvr_core.config import ConfigError, CrossTVRConfig, load_config


class FlowParameterError(ValueError):
    """A flow parameter is wrong; the message names it and says what is wrong."""


def _no_none(value):
    return [] if value is None else value


class RunParams(BaseModel):
    """`config_file` (YAML/TOML) + dotted `overrides`: the parameters of every deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_file: str | None = None
    overrides: list[str] = Field(default_factory=list)
    _config: CrossTVRConfig | None = PrivateAttr(None)

    _overrides_not_none = field_validator("overrides", mode="before")(_no_none)

    @field_validator("config_file")
    @classmethod
    def _config_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"config file '{value}': not found")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides_are_key_value(cls, value: list[str]) -> list[str]:
        for override in value:
            if "=" not in override or not override.split("=", 1)[0].strip():
                raise ValueError(f"override '{override}': expected key=value "
                                 "(e.g. train.epochs=3)")
        return value

    @model_validator(mode="after")
    def _resolves_to_a_config(self) -> RunParams:
        try:
            self._config = load_config(self.config_file, self.overrides)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def config(self) -> CrossTVRConfig:
        """The resolved config (validated once, when the parameters were)."""
        return self._config


class AblationVariant(BaseModel):
    """One re-ranker variant: a name for the table and overrides on top of the run's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[\w.\-=+]+$")
    overrides: list[str] = Field(default_factory=list)


# The paper's ablations (CrossTVR Tables 3-6), on the same cached tokens and stage-1 lists.
PAPER_ABLATION: tuple[AblationVariant, ...] = (
    AblationVariant(name="decoupled", overrides=[]),
    AblationVariant(name="spatial_only", overrides=["reranker.attention=spatial_only"]),
    AblationVariant(name="temporal_only", overrides=["reranker.attention=temporal_only"]),
    AblationVariant(name="joint", overrides=["reranker.attention=joint"]),
    AblationVariant(name="unshared", overrides=["reranker.share_parameters=false"]),
    AblationVariant(name="no_hard_negatives", overrides=["train.hard_negatives=false"]),
    AblationVariant(name="patches_4", overrides=["reranker.num_selected_patches=4"]),
    # what this implementation adds to the paper's module and training, one at a time
    AblationVariant(name="bce_loss", overrides=["train.loss=bce"]),
    AblationVariant(name="no_text_layers", overrides=["reranker.text_layers=0"]),
    AblationVariant(name="no_temporal_context", overrides=["reranker.temporal_layers=0"]),
    AblationVariant(name="no_match_term", overrides=["reranker.match_term=false"]),
    AblationVariant(name="no_grounding_term", overrides=["reranker.grounding_term=false"]),
    AblationVariant(name="lists_not_cross_fitted", overrides=["train.lists_from=stage1"]),
    AblationVariant(name="no_reversed_negatives", overrides=["train.reversed_negatives=false"]),
    AblationVariant(name="swapped_negatives", overrides=["train.swapped_negatives=true"]),
)

# keys a variant may change: everything downstream of the shared index and stage 1
VARIANT_SECTIONS = ("reranker.", "train.", "eval.")


class AblationParams(RunParams):
    """The run's parameters plus the variants; each variant's config is validated too."""

    variants: list[AblationVariant] = Field(default_factory=lambda: list(PAPER_ABLATION))
    _variant_configs: dict[str, CrossTVRConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _variants_resolve(self) -> AblationParams:
        if not self.variants:
            raise ValueError("variants: give at least one")
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variants: duplicate names {duplicates}")
        configs = {}
        for variant in self.variants:
            for override in variant.overrides:
                if not override.startswith(VARIANT_SECTIONS):
                    raise ValueError(
                        f"variant '{variant.name}': override '{override}' changes the shared "
                        f"index or stage 1; a variant may only set {', '.join(VARIANT_SECTIONS)}*")
            try:
                configs[variant.name] = load_config(self.config_file,
                                                    [*self.overrides, *variant.overrides])
            except ConfigError as exc:
                raise ValueError(f"variant '{variant.name}': {exc}") from exc
        self._variant_configs = configs
        return self

    def variant_config(self, name: str) -> CrossTVRConfig:
        return self._variant_configs[name]


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config_file + overrides"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def validate_params(model: type[RunParams], flow_name: str, /, **params) -> RunParams:
    """Validate a flow's parameters, or raise FlowParameterError naming what is wrong.

    Called first thing in every flow, so Prefect marks the run Failed at once with this
    message, before a Ray runtime or an MLflow run is started.
    """
    try:
        return model(**params)
    except ValidationError as exc:
        raise FlowParameterError(f"flow '{flow_name}': bad parameter: {_describe(exc)}") from None
