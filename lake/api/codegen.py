"""
Regenerate the committed protobuf and gRPC code from ``proto/``.

Run ``python -m lake.api.codegen`` after editing a ``.proto`` file. The output lands
beside the package paths the protos declare (``lake/v1/``), so generated imports such
as ``from lake.v1 import health_pb2`` work without rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["generate"]

ROOT = Path(__file__).resolve().parents[2]


def generate(out: Path = ROOT) -> list[Path]:
    """
    Run protoc (from grpcio-tools) over every proto; return the files written.
    """
    from grpc_tools import protoc

    proto_root = ROOT / "proto"
    protos = sorted(proto_root.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        msg = "protoc failed"
        raise RuntimeError(msg)
    written = []
    for proto in protos:
        relative = proto.relative_to(proto_root).parent
        for package in (relative, *relative.parents[:-1]):
            (out / package / "__init__.py").touch(exist_ok=True)
        written += sorted((out / relative).glob(proto.stem + "_pb2*"))
    return written


if __name__ == "__main__":
    for path in generate():
        sys.stdout.write(f"{path.relative_to(ROOT)}\n")
