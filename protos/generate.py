"""Regenerate the Python stubs from ps.proto: ``python -m rayps.protos.generate``.

The stubs are committed (so installing needs no protoc); a test regenerates
them into a temp folder and fails when the committed ones differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import PSError

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("ps_pb2.py", "ps_pb2.pyi", "ps_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs for protos/ps.proto into ``out_dir``; return their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # protoc names imports after the proto's path under -I: lay it out as the
        # installed package (rayps/protos/ps.proto), so the stubs import "rayps.protos.ps_pb2".
        include = Path(tmp) / "include"
        (include / "rayps" / "protos").mkdir(parents=True)
        shutil.copy(ROOT / "protos" / "ps.proto", include / "rayps" / "protos" / "ps.proto")
        out = Path(tmp) / "out"
        out.mkdir()
        code = protoc.main([
            "grpc_tools.protoc", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", str(include / "rayps" / "protos" / "ps.proto"),
        ])
        if code != 0:
            raise PSError(f"protoc failed with exit code {code}")
        for name in STUBS:
            shutil.copy(out / "rayps" / "protos" / name, out_dir / name)
    return [out_dir / name for name in STUBS]


if __name__ == "__main__":
    paths = generate(ROOT / "protos")
    print("\n".join(str(p) for p in paths))
    sys.exit(0)
