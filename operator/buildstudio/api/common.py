"""Shared API building blocks: the camelCase base model, conditions, secret references."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# The API group and version of our CRDs (the one place they are spelled).
API_GROUP = "buildstudio.dpf.dev"
API_VERSION = "v1alpha1"
GROUP = API_GROUP
VERSION = API_VERSION
API_VERSION_STRING = f"{GROUP}/{VERSION}"

# Stable condition reasons follow metav1.Condition's CamelCase rule.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# A DNS-1123 subdomain (object names).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as Kubernetes sees it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class SecretKeyRef(ApiModel):
    """A key of a Secret, resolved in the namespace of the object that uses it."""

    name: str = Field(
        description="Name of the Secret.", min_length=1, max_length=253, pattern=NAME_PATTERN
    )
    key: str = Field(
        "token", description="Key inside the Secret's data.", min_length=1, max_length=253
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A metav1.Condition: one aspect of the object's state."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. ModelReady, Admitted, Running, Succeeded.",
        max_length=316,
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        description="Stable, programmatic CamelCase identifier of the last transition's cause.",
        min_length=1,
        max_length=1024,
        pattern=REASON_PATTERN,
    )
    message: str = Field(
        "", description="Human-readable, single-line detail of the last transition.", max_length=2048
    )
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        None, description="metadata.generation the condition was computed from.", ge=0
    )


def conditions_field(description: str) -> Any:
    return Field(
        default_factory=list,
        description=description,
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
