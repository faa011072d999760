"""The images built without a registry (deps/images.sh) against the Dockerfile's recipe.

Both recipes must install the same pktpath: the Dockerfile runs `pip install` on the source
tree, which installs the wheel built from it; the OCI image built here must hold exactly that
wheel's files (same paths, same hashes), its version, on the same Python, with the same runtime
libraries and entry point.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from typing import Any

from conftest import REPO


def oci_files(archive: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(image config, {path: content}) of the files under dist-packages in an OCI archive."""
    with tarfile.open(archive) as oci:
        def blob(digest: str) -> bytes:
            member = oci.extractfile("./blobs/sha256/" + digest.split(":")[1])
            assert member is not None
            return member.read()

        index = json.load(oci.extractfile("./index.json"))  # type: ignore[arg-type]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as t:
                for member in t.getmembers():
                    name = member.name.lstrip("./")
                    if member.isfile() and "/dist-packages/pktpath" in name:
                        handle = t.extractfile(member)
                        assert handle is not None
                        files[name] = handle.read()
    return config, files


def record(text: str) -> dict[str, str]:
    """pktpath's own files of a RECORD, path relative to site-packages -> hash."""
    rows = (line.split(",") for line in text.splitlines() if line)
    return {path: digest for path, digest, *_ in rows
            if path.startswith("pktpath/") and "__pycache__" not in path}


def test_the_image_holds_what_the_dockerfile_would_install(images: dict[str, tuple[str, str]],
                                                           tmp_path: Any) -> None:
    ref, archive = images["agent"]
    config, files = oci_files(archive)
    installed = {name.split("/dist-packages/")[1]: data for name, data in files.items()}
    dist_info = next(n.split("/")[0] for n in installed if n.endswith(".dist-info/RECORD"))
    in_image = record(installed[f"{dist_info}/RECORD"].decode())

    # the Dockerfile's `pip install /src` installs the wheel built from the tree
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    with zipfile.ZipFile(tmp_path / wheel) as whl:
        wheel_record = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
        from_tree = record(whl.read(wheel_record).decode())
    assert dist_info == wheel_record.split("/")[0], "the same name and version"
    assert in_image == from_tree, "the same files with the same contents"
    assert "pktpath/core/pktpath.bpf.o" in in_image
    assert ref.split(":")[1].startswith(dist_info.removesuffix(".dist-info").split("-")[1] + "-")

    with open(os.path.join(REPO, "Dockerfile")) as f:
        dockerfile = f.read()
    base = re.search(r"^FROM python:(\d+\.\d+)-slim-(\w+)", dockerfile, re.M)
    assert base is not None
    python = next(n for n in files).split("/lib/")[1].split("/")[0]
    assert python == f"python{base.group(1)}", "the same Python"
    with open(os.path.join(REPO, "deps", "images", "recipes")) as f:
        recipe = next(line.split()[2] for line in f if line.startswith("agent "))
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\&\n]+)", dockerfile)
    assert apt is not None
    assert set(apt.group(1).split()) <= set(recipe.split(",")), "the same runtime libraries"
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.*)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert (config["config"]["Entrypoint"], config["config"]["Cmd"]) == (entry, cmd)
    assert "PYTHONDONTWRITEBYTECODE=1" in config["config"]["Env"]
