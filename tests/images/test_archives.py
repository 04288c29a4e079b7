"""The OCI archives `make images` leaves in .tools/images/ (what hack/e2e-kind.sh loads into kind) are the
images the smoke tests ran, under the references the chart deploys by default: one source for the names
(pyproject's version = the chart's appVersion, tests/test_packaging.py) and for the content."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.conftest import BUILDAH, REPO_ROOT, TIMEOUT, VERSION, buildah, images_missing

pytestmark = pytest.mark.images

# Same rule as hack/build-images.sh.
OUT = Path(os.environ.get("BUILDSTUDIO_IMAGE_OUT") or REPO_ROOT / ".tools" / "images")
HELM = REPO_ROOT / ".tools" / "bin" / "helm"


def _chart_defaults() -> dict[str, str]:
    """The image references of `helm template` with the chart's default values."""
    if not HELM.is_file():
        pytest.skip(f"no helm at {HELM} (run `make setup`)")
    out = subprocess.run([str(HELM), "template", "bs", str(REPO_ROOT / "charts" / "build-studio")],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return {"operator": container["image"], "sandbox": str(env["BUILDSTUDIO_SANDBOX_IMAGE"])}


def _member(archive: tarfile.TarFile, name: str) -> Any:
    member = archive.extractfile(name)
    assert member is not None, f"{archive.name}: no {name}"
    return json.loads(member.read())


@pytest.mark.parametrize("what", ["operator", "sandbox"])
def test_the_archive_is_the_tested_image_under_the_charts_reference(what: str) -> None:
    path = OUT / f"buildstudio-{what}.oci.tar"
    if not path.is_file():
        images_missing(f"{path} not built (run `make images`)")
    local = f"localhost/buildstudio-{what}:{VERSION}"
    probe = subprocess.run([*BUILDAH, "inspect", "--type", "image", local], capture_output=True, timeout=TIMEOUT,
                           check=False)
    if probe.returncode != 0:
        images_missing(f"{local} not in buildah's store (run `make images`)")
    with tarfile.open(path) as archive:
        index = _member(archive, "index.json")
        [entry] = index["manifests"]  # one image per archive: `kind load image-archive` imports all
        manifest = _member(archive, "blobs/" + entry["digest"].replace(":", "/"))
    # The chart's default reference: what kind's containerd names the image on import (ctr import keeps a
    # full reference from this annotation), so the chart finds it without a registry.
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == _chart_defaults()[what]
    # Its config digest is the image ID of the image the smoke tests run: the same content.
    image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", local)
    assert manifest["config"]["digest"] == f"sha256:{image_id}"
    recorded = {i["name"]: i for i in json.loads((OUT / "images.json").read_text(encoding="utf-8"))["images"]}
    assert recorded[what]["id"] == image_id and Path(recorded[what]["archive"]) == path
