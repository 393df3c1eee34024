"""Regenerate the Python stubs from ps.proto: ``python -m protos.generate``.

The stubs are committed (so installing needs no protoc); a test regenerates
them into a temp folder and fails when the committed ones differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("ps_pb2.py", "ps_pb2.pyi", "ps_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs for protos/ps.proto under ``out_dir``/protos; return their paths."""
    from grpc_tools import protoc

    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    # Run from the repository root with -I. so the stubs import "protos.ps_pb2".
    code = protoc.main([
        "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}", str(ROOT / "protos" / "ps.proto"),
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return [out_dir / "protos" / name for name in STUBS]


if __name__ == "__main__":
    paths = generate(ROOT)
    print("\n".join(str(p) for p in paths))
    sys.exit(0)
