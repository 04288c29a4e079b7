"""The Build Studio API (`buildstudio.dpf.dev/v1alpha1`): the single source of the CRD schemas."""

from buildstudio.api.common import API_VERSION_STRING, GROUP, VERSION, Condition, SecretKeyRef
from buildstudio.api.dispatch import BuildDispatch, BuildDispatchSpec, BuildDispatchStatus
from buildstudio.api.engine import BuildEngine, BuildEngineSpec, BuildEngineStatus
from buildstudio.api.pipeline import BuildPipeline, BuildPipelineSpec, BuildPipelineStatus

__all__ = [
    "API_VERSION_STRING",
    "GROUP",
    "VERSION",
    "BuildDispatch",
    "BuildDispatchSpec",
    "BuildDispatchStatus",
    "BuildEngine",
    "BuildEngineSpec",
    "BuildEngineStatus",
    "BuildPipeline",
    "BuildPipelineSpec",
    "BuildPipelineStatus",
    "Condition",
    "SecretKeyRef",
]
