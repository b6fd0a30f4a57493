"""Build (once) the sandbox image for a bundle set, tagged by a hash of its inputs.

Inputs of the hash: the base tag (itself a hash of the Debian package list), the
Dockerfile template, every bundle definition, the files each bundle copies (the
supervisor source among them), its pip requirements and npm packages. Same inputs,
same tag: an existing image is reused; change anything and a new tag gets built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import docker
import docker.errors

from .base import base_tag, cache_dir, ensure_base
from .bundles import EXEC_ONLY, PACKAGE_DIR, Bundle, resolve

IMAGE_REPO = "agentvm-sandbox"
DOCKERFILE = PACKAGE_DIR.parent / "images" / "Dockerfile.agent"
MARKER = "# @BUNDLES@"
LABEL_BUNDLES = "agentvm.bundles"
LABEL_INPUTS = "agentvm.inputs"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _files_of(bundle: Bundle) -> Iterator[tuple[str, Path]]:
    """(path inside the bundle's context dir, host file) for every file it copies."""
    for rel in bundle.files:
        src = PACKAGE_DIR / rel
        if src.is_file():
            yield rel, src
            continue
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield str(Path(rel) / path.relative_to(src)), path


def render_dockerfile(bundles: Sequence[Bundle]) -> str:
    template = DOCKERFILE.read_text()
    if MARKER not in template:
        raise RuntimeError(f"{DOCKERFILE} lacks the {MARKER!r} line")
    steps = "".join(f"# bundle: {b.name}\n{b.dockerfile}\n" for b in bundles if b.dockerfile)
    lines = [steps if line.startswith(MARKER) else line for line in template.splitlines(True)]
    return "".join(lines)


def apt_packages(bundles: Sequence[Bundle]) -> list[str]:
    return sorted({pkg for b in bundles for pkg in b.apt})


def image_tag(names: Sequence[str] | None = None) -> str:
    """The tag the image for this bundle set has (whether or not it exists yet)."""
    bundles = resolve(list(names) if names is not None else None)
    digest = hashlib.sha256()
    digest.update(base_tag(apt_packages(bundles)).encode())
    digest.update(render_dockerfile(bundles).encode())
    for bundle in bundles:
        digest.update(json.dumps(asdict(bundle), sort_keys=True).encode())
        if bundle.name in EXEC_ONLY:
            digest.update(json.dumps(EXEC_ONLY[bundle.name]).encode())
        for rel, path in _files_of(bundle):
            digest.update(f"\0{bundle.name}/{rel}\0".encode())
            digest.update(path.read_bytes())
    return f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"


@contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per machine (parallel test sessions share the result)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheels(requirements: Sequence[str], dest: Path, progress: Progress) -> None:
    """Fetch wheels for the image's python (Debian bookworm: CPython 3.11) on the host."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        uvx = shutil.which("uvx")
        if uvx is None:
            raise RuntimeError("downloading wheels needs pip or uvx on the host")
        pip = [uvx, "pip"]
    progress(f"downloading wheels: {' '.join(requirements)}")
    subprocess.run(
        [*pip, "download", "--quiet", "--dest", str(dest), "--only-binary=:all:",
         "--python-version", "3.11", "--implementation", "cp",
         "--platform", "manylinux2014_x86_64", "--platform", "any", *requirements],
        check=True,
    )  # fmt: skip


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the cached tree and the build context share a filesystem
    except OSError:
        shutil.copy2(src, dst)


def _install_npm(specs: Sequence[str], dest: Path, progress: Progress) -> None:
    """Install npm packages (with their dependencies) on the host into ``dest``; the
    image build copies the tree in, with no network.

    The tree is cached on the host per spec list (``<cache>/npm/<hash>``): the agent
    bundles are hundreds of MB, and every supervisor change rebuilds the images."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("bundles with npm packages need npm on the host")
    key = hashlib.sha256("\0".join(specs).encode()).hexdigest()[:16]
    cached = cache_dir() / "npm" / key
    if (cached / ".complete").is_file():
        progress(f"npm packages (cached): {' '.join(specs)}")
    else:
        progress(f"installing npm packages: {' '.join(specs)}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=cached.parent))
        try:
            subprocess.run(
                [npm, "install", "--prefix", str(work), "--no-audit", "--no-fund",
                 "--omit=dev", "--no-package-lock", "--loglevel=error", *specs],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            (work / ".complete").write_text("\n".join(specs) + "\n")
            shutil.rmtree(cached, ignore_errors=True)
            work.rename(cached)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        cached, dest, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".complete"),
    )  # fmt: skip


def _make_exec_only(path: Path) -> None:
    """Mode 0511 on a private copy (the context file may be a hard link into the npm
    cache): once COPY'd it is root's, so the sandbox user may run it but not read it.
    0511, not 0111: the host user tarring the context must still read it."""
    private = path.with_name(path.name + ".exec-only")
    shutil.copyfile(path, private)
    os.chmod(private, 0o511)
    os.replace(private, path)


def _prepare_context(ctx: Path, bundles: Sequence[Bundle], progress: Progress) -> None:
    (ctx / "Dockerfile").write_text(render_dockerfile(bundles))
    for bundle in bundles:
        for rel, path in _files_of(bundle):
            target = ctx / bundle.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        if bundle.pip:
            _download_wheels(bundle.pip, ctx / bundle.name / "wheels", progress)
        if bundle.npm:
            _install_npm(bundle.npm, ctx / bundle.name / "npm", progress)
        for rel in EXEC_ONLY.get(bundle.name, ()):
            _make_exec_only(ctx / bundle.name / rel)


def ensure_image(
    bundles: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
    client: docker.DockerClient | None = None,
    rebuild: bool = False,
) -> str:
    """Return the tag of the image for ``bundles`` (default: common), building it if
    missing. Blocking; from async code call it with ``asyncio.to_thread``."""
    say = progress or _quiet
    names = list(bundles) if bundles is not None else None
    resolved = resolve(names)
    tag = image_tag(names)
    own_client = client is None
    docker_client = client or docker.from_env()
    try:
        with _build_lock():
            if not rebuild and _exists(docker_client, tag):
                say(f"image {tag} is up to date")
                return tag
            say(f"building {tag} (bundles: {', '.join(b.name for b in resolved)})")
            base = ensure_base(docker_client, apt_packages(resolved), say)
            say(f"base image {base}")
            with tempfile.TemporaryDirectory(prefix="agentvm-build-") as tmp:
                ctx = Path(tmp)
                _prepare_context(ctx, resolved, say)
                _docker_build(docker_client, ctx, tag, base, resolved, say)
            say(f"built {tag}")
            return tag
    finally:
        if own_client:
            docker_client.close()


def prune_images(client: docker.DockerClient, keep: Sequence[str] = ()) -> list[str]:
    """Remove sandbox images other than ``keep`` that no container uses; return their tags.

    Every change to a bundle or the supervisor makes a new tag, so old ones pile up."""
    removed = []
    for img in client.images.list(name=IMAGE_REPO):
        for tag in img.tags:
            if tag in keep:
                continue
            try:
                client.images.remove(tag)  # refused (409) while a container uses it
                removed.append(tag)
            except docker.errors.APIError:
                continue
    return removed


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _docker_build(
    client: docker.DockerClient,
    ctx: Path,
    tag: str,
    base: str,
    bundles: Sequence[Bundle],
    say: Progress,
) -> None:
    labels = {LABEL_BUNDLES: ",".join(b.name for b in bundles), LABEL_INPUTS: tag.split(":")[1]}
    stream = client.api.build(
        path=str(ctx),
        tag=tag,
        buildargs={"BASE": base},
        network_mode="none",  # the build must not need the network
        labels=labels,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(f"image build failed: {chunk['error']}")
        text = str(chunk.get("stream", "")).rstrip()
        if text:
            say(text)
    if not _exists(client, tag):
        raise RuntimeError(f"image build finished but {tag} is missing")


__all__ = ["ensure_image", "image_tag", "prune_images"]
