#!/usr/bin/env python3
"""Write a small OCI image layout without Docker (Python 3 stdlib only).

It holds two tags:
  SINGLE_TAG  a single-platform linux/amd64 image manifest
  INDEX_TAG   an image index over two other manifests, linux/amd64 and linux/arm64
The single image differs from the index's amd64 image, so tests can tell the digests apart.
Output is reproducible (fixed mtimes, sorted JSON), so digests are stable between runs.
Prints a JSON object with every digest on stdout; `skopeo copy [--all] oci:DIR:TAG ...`
pushes the tags byte for byte, so these are the digests a registry reports.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Layout:
    def __init__(self, root):
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)

    def put(self, data):
        """Store a blob; return its descriptor core (digest + size)."""
        hexd = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, hexd), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + hexd, "size": len(data)}

    def put_json(self, obj):
        return self.put(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode())


def layer_tar(files):
    """An uncompressed tar of {path: text}, with fixed metadata for reproducibility."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def image(lay, arch, text):
    tar = layer_tar({"hello.txt": text})
    layer = lay.put(gzip.compress(tar, mtime=0))
    config = lay.put_json({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/hello.txt"], "Labels": {"org.kosli.testenv": arch}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "mk_oci_layout.py"}],
    })
    manifest = lay.put_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **config},
        "layers": [{"mediaType": OCI_LAYER, **layer}],
    })
    return {"mediaType": OCI_MANIFEST, **manifest}


def main():
    p = argparse.ArgumentParser(description="write a test OCI image layout")
    p.add_argument("out", help="layout directory (created)")
    p.add_argument("--single-tag", default="single")
    p.add_argument("--index-tag", default="multi")
    a = p.parse_args()

    lay = Layout(a.out)
    single = image(lay, "amd64", "hello from the kosli-operator testenv (single)\n")
    amd64 = image(lay, "amd64", "hello from the kosli-operator testenv (amd64)\n")
    arm64 = image(lay, "arm64", "hello from the kosli-operator testenv (arm64)\n")
    index = lay.put_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {**amd64, "platform": {"architecture": "amd64", "os": "linux"}},
            {**arm64, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    })
    ref = "org.opencontainers.image.ref.name"
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**single, "annotations": {ref: a.single_tag}},
        {"mediaType": OCI_INDEX, **index, "annotations": {ref: a.index_tag}},
    ]}
    with open(os.path.join(a.out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(top, f)
    with open(os.path.join(a.out, "oci-layout"), "w", encoding="utf-8") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(json.dumps({
        "single_tag": a.single_tag, "single_digest": single["digest"],
        "index_tag": a.index_tag, "index_digest": index["digest"],
        "amd64_digest": amd64["digest"], "arm64_digest": arm64["digest"],
    }))


if __name__ == "__main__":
    main()
