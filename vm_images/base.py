"""The base image: Debian bookworm with every bundle's Debian packages installed.

This is the only step that touches the network (the Debian mirror), and never a
container registry unless ``debian:bookworm-slim`` happens to be pullable:

1. ``agentvm-base:<hash>`` exists locally -> use it (the hash covers the package list);
2. ``debian:bookworm-slim`` is present or pullable -> install the packages in a
   container from it and commit the result;
3. else debootstrap a minbase rootfs with the packages on the host and
   ``docker import`` it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

SUITE = "bookworm"
SLIM = "debian:bookworm-slim"
MIRROR = os.environ.get("AGENTVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_REPO = "agentvm-base"
# Bump when the recipe below changes in a way that should rebuild every base.
RECIPE = "3"
# Trimmed from the rootfs: documentation and caches nobody in a sandbox reads.
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "var/cache/apt/archives", "var/lib/apt/lists", "var/log",
)  # fmt: skip

Progress = Callable[[str], None]
# debootstrap prints one of these per package (hundreds); the phase headers are enough.
_NOISY = tuple(
    f"I: {verb} "
    for verb in ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring", "Installing")
)


def base_tag(packages: list[str]) -> str:
    digest = hashlib.sha256(
        "\n".join([RECIPE, SUITE, MIRROR, *sorted(set(packages))]).encode()
    ).hexdigest()[:16]
    return f"{BASE_REPO}:{digest}"


def _has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _slim_available(client: docker.DockerClient, progress: Progress) -> bool:
    if _has_image(client, SLIM):
        return True
    if os.environ.get("AGENTVM_NO_PULL"):
        return False
    progress(f"trying to pull {SLIM}")
    try:
        client.images.pull(SLIM)
        return True
    except docker.errors.DockerException as exc:
        progress(f"no registry ({str(exc).splitlines()[0][:120]}); using debootstrap")
        return False


def ensure_base(client: docker.DockerClient, packages: list[str], progress: Progress) -> str:
    """Return the tag of a base image with ``packages`` installed, making it if needed."""
    tag = base_tag(packages)
    if _has_image(client, tag):
        return tag
    if _slim_available(client, progress):
        _from_slim(client, tag, packages, progress)
    else:
        _from_debootstrap(client, tag, packages, progress)
    return tag


def _from_slim(
    client: docker.DockerClient, tag: str, packages: list[str], progress: Progress
) -> None:
    progress(f"installing {len(packages)} Debian packages on {SLIM}")
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
        f"apt-get install -y -qq --no-install-recommends {' '.join(sorted(set(packages)))}; "
        + "; ".join(f"rm -rf /{p}/*" for p in PRUNE)
    )
    container = client.containers.run(
        SLIM, ["sh", "-c", script], detach=True, network_mode="bridge"
    )
    try:
        for line in container.logs(stream=True, follow=True):
            progress(line.decode(errors="replace").rstrip())
        status = container.wait()
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"installing packages on {SLIM} failed: {status}")
        repo, _, version = tag.partition(":")
        container.commit(repository=repo, tag=version, changes=['CMD ["bash"]'])
    finally:
        container.remove(force=True)


def _need_root_tools() -> None:
    if shutil.which("debootstrap"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "debootstrap"]
        if subprocess.run(install, stdout=subprocess.DEVNULL, env=env).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(install, check=True, stdout=subprocess.DEVNULL, env=env)
        return
    raise RuntimeError(
        f"no {SLIM} image and no debootstrap: install debootstrap (as root: "
        "apt-get install debootstrap) or load debian:bookworm-slim into Docker"
    )


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "agentvm"


def _from_debootstrap(
    client: docker.DockerClient, tag: str, packages: list[str], progress: Progress
) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("building the base with debootstrap needs root")
    _need_root_tools()
    debs = cache_dir() / "debootstrap-debs"
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentvm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} (minbase, {len(packages)} packages) from {MIRROR}")
        cmd = [
            "debootstrap", "--variant=minbase", f"--cache-dir={debs}",
            f"--include={','.join(sorted(set(packages)))}", SUITE, str(rootfs), MIRROR,
        ]  # fmt: skip
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            tail: list[str] = []
            for line in proc.stdout:
                line = line.rstrip()
                tail = [*tail[-20:], line]
                if line.startswith(_NOISY):
                    continue
                progress(line)
        if proc.returncode != 0:
            raise RuntimeError("debootstrap failed:\n" + "\n".join(tail))
        for rel in PRUNE:
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        # The runtime provides these; an image carries them empty.
        for rel in ("dev", "proc", "sys", "run", "tmp"):
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
            target.mkdir(mode=0o1777 if rel == "tmp" else 0o755)
        progress("importing the rootfs into Docker")
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
            check=True,
        )
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(
            str(tarball), repository=repo, tag=version, changes=['CMD ["bash"]']
        )
