"""The image for a bundle set: tagged by a content hash, built once, has the tools."""

from __future__ import annotations

import asyncio

import docker
import pytest

from host.sandbox import DockerBackend, Sandbox, SandboxSpec
from vm_images import bundles
from vm_images.builder import ensure_image, image_tag, render_dockerfile

pytestmark = pytest.mark.docker

COMMON_TOOLS = ["bash", "git", "curl", "python3", "rg", "jq", "patch", "diff", "find", "sed",
                "grep", "tar", "gzip", "ps", "ls", "sha256sum"]  # fmt: skip


def test_tag_is_a_content_hash_of_the_inputs() -> None:
    tag = image_tag(["common"])
    assert tag == image_tag(["common"]) == image_tag(["common", "supervisor"])
    extra = bundles.Bundle(name="zz-test", description="test only", dockerfile="RUN true\n")
    bundles.register(extra)
    try:
        assert image_tag(["common", "zz-test"]) != tag
        assert "# bundle: zz-test\nRUN true" in render_dockerfile(bundles.resolve(["zz-test"]))
    finally:
        del bundles.BUNDLES["zz-test"]
    with pytest.raises(KeyError, match="unknown bundle"):
        image_tag(["no-such-bundle"])


def test_second_build_reuses_the_image(image: str, docker_engine: docker.DockerClient) -> None:
    before = docker_engine.images.get(image).id
    lines: list[str] = []
    assert ensure_image(["common"], client=docker_engine, progress=lines.append) == image
    assert docker_engine.images.get(image).id == before
    assert lines == [f"image {image} is up to date"]
    labels = docker_engine.images.get(image).labels
    assert labels["agentvm.bundles"] == "common,supervisor"


async def test_common_bundle_tools_are_installed(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["bash", "-c", 'for t in "$@"; do command -v "$t"; done', "-",
                                 *COMMON_TOOLS])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.split()) == len(COMMON_TOOLS)
    tls = await sandbox.exec(["test", "-s", "/etc/ssl/certs/ca-certificates.crt"])
    assert tls.exit_code == 0


async def test_bundle_wheels_are_fetched_on_the_host_and_installed_offline(
    backend: DockerBackend, image: str, docker_engine: docker.DockerClient
) -> None:
    extra = bundles.Bundle(
        name="zz-wheels",
        description="test only: a pure-Python wheel from PyPI",
        pip=("six==1.16.0",),
        dockerfile=bundles.install_wheels("zz-wheels"),
    )
    bundles.register(extra)
    try:
        tag = await asyncio.to_thread(ensure_image, ["common", "zz-wheels"], client=docker_engine)
        sandbox = await backend.create(SandboxSpec(image=tag))
        result = await sandbox.exec(["python3", "-c", "import six; print(six.__version__)"])
        assert result.stdout == "1.16.0\n"
        await backend.remove(sandbox)
        await asyncio.to_thread(docker_engine.images.remove, tag)
    finally:
        del bundles.BUNDLES["zz-wheels"]
