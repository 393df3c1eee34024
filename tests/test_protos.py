"""The committed stubs are what protos/ps.proto generates: nobody edited the contract without regenerating."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayps.protos.generate import ROOT, STUBS, generate


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, bytes]:
    paths = generate(tmp_path_factory.mktemp("stubs"))
    return {path.name: path.read_bytes() for path in paths}


def test_generate_writes_every_stub(regenerated):
    assert sorted(regenerated) == sorted(STUBS)


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_equals_the_one_ps_proto_generates(regenerated, name):
    committed = (Path(ROOT) / "protos" / name).read_bytes()
    assert committed == regenerated[name], (
        f"protos/{name} is stale: run `python -m rayps.protos.generate` after editing protos/ps.proto")
