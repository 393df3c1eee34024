"""cluster.yaml's Ray half: Ray's schema check, the config written for `ray up`, the job's entrypoint (no Ray)."""

from __future__ import annotations

import shlex
import stat
import textwrap
from pathlib import Path

import pytest
import yaml

from rayps.launcher.cluster import auth
from rayps.launcher.cluster.auth import Token, ensure_token, find_token
from rayps.launcher.cli import main
from rayps.launcher.cluster.provision import check_ray_config, load_cluster_file, ray_up_config, write_up_config
from rayps.launcher.cluster.jobs import entrypoint, resolve_address
from rayps.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

CLUSTER = """\
cluster_name: ps-test
max_workers: 2
provider:
  type: local
  head_ip: 10.0.0.1
  worker_ips: [10.0.0.2, 10.0.0.3]
auth:
  ssh_user: ubuntu
head_start_ray_commands:
  - ray stop
  - ray start --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
  - ray stop
  - ray start --address=$RAY_HEAD_IP:6379
job:
  workers: 3
  consistency: {mode: bsp}
"""


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_cluster_file(write(tmp_path, text))
    return str(info.value)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh $HOME with no Ray token anywhere, so no test reads or writes the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in (auth.TOKEN_ENV, auth.TOKEN_PATH_ENV, "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return home


# --- Ray's schema ---------------------------------------------------------------------------


def test_root_cluster_yaml_passes_rays_schema_and_the_job_check():
    cluster = load_cluster_file(ROOT / "cluster.yaml")
    assert cluster.ray["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert "job" not in cluster.ray
    assert cluster.job.servers == 2 and cluster.job.consistency.mode == "ssp"


def test_root_cluster_yaml_ships_the_project_to_every_node_for_its_dependencies(tmp_path):
    """Jobs bring their code (working_dir), but the nodes must already hold its dependencies."""
    cluster = load_cluster_file(ROOT / "cluster.yaml")
    assert cluster.ray["setup_commands"] == ["pip install -e ~/rayps"]
    path = write_up_config(cluster, Token("t", "test"), root=tmp_path)
    mounts = yaml.safe_load(path.read_text())["file_mounts"]
    assert mounts["~/rayps"] == str(ROOT)  # relative to cluster.yaml, not to wherever psctl runs


def test_misspelled_top_level_key_is_named_with_the_file_and_a_suggestion(tmp_path):
    message = error_of(tmp_path, CLUSTER.replace("max_workers:", "max_wrokers:"))
    assert message == f"{tmp_path / 'cluster.yaml'}: unknown key 'max_wrokers' (did you mean 'max_workers'?)"


def test_wrong_type_names_the_dotted_key_and_the_value(tmp_path):
    message = error_of(tmp_path, CLUSTER.replace("type: local", "type: 3"))
    assert message == f"{tmp_path / 'cluster.yaml'}: provider.type: expected a string, got 3"


def test_unknown_nested_key_lists_the_allowed_keys(tmp_path):
    message = error_of(tmp_path, CLUSTER.replace("ssh_user: ubuntu", "ssh_user: ubuntu\n  ssh_passwd: x"))
    assert message.startswith(f"{tmp_path / 'cluster.yaml'}: auth: unknown key 'ssh_passwd' (allowed: ")
    assert "ssh_user" in message


def test_every_schema_error_is_reported_at_once(tmp_path):
    text = "cluster_name: c\nprovider: {}\nfile_mounts: []\nhead_start_ray_commands: [1]\n"
    lines = error_of(tmp_path, text).splitlines()
    where = tmp_path / "cluster.yaml"
    assert lines == [
        f"{where}: file_mounts: expected a mapping, got []",
        f"{where}: head_start_ray_commands[0]: expected a string, got 1",
        f"{where}: provider: missing required key 'type'",
    ]


def test_missing_cluster_name_is_reported():
    with pytest.raises(ConfigError, match=r"^c.yaml: missing required key 'cluster_name'$"):
        check_ray_config({"provider": {"type": "aws"}}, "c.yaml")


def test_cluster_name_must_be_usable_as_a_folder_name():
    with pytest.raises(ConfigError, match=r"^c.yaml: cluster_name: '../x' must be letters"):
        check_ray_config({"cluster_name": "../x", "provider": {"type": "aws"}}, "c.yaml")


def test_local_provider_needs_head_and_worker_ips(tmp_path):
    message = error_of(tmp_path, "cluster_name: c\nprovider: {type: local, head_ip: 10.0.0.1}\n")
    assert message.startswith(f"{tmp_path / 'cluster.yaml'}: provider: missing required key 'worker_ips'")


def test_head_node_type_must_name_a_node_type(tmp_path):
    text = ("cluster_name: c\nprovider: {type: aws, region: us-west-2}\nhead_node_type: head\n"
            "available_node_types: {cpu: {node_config: {}, resources: {}, max_workers: 1}}\n")
    assert error_of(tmp_path, text).endswith("head_node_type: 'head' is not one of available_node_types (cpu)")


def test_job_section_errors_name_the_file_after_the_ray_part_passes(tmp_path):
    message = error_of(tmp_path, CLUSTER.replace("mode: bsp", "mdoe: bsp"))
    assert message.startswith(f"{tmp_path / 'cluster.yaml'}: job.consistency: unknown key 'mdoe'")


def test_psctl_up_rejects_a_bad_file_before_starting_anything(tmp_path, home, capsys):
    path = write(tmp_path, CLUSTER.replace("max_workers:", "max_wrokers:"))
    assert main(["up", str(path)]) == 2
    assert "unknown key 'max_wrokers'" in capsys.readouterr().err
    assert not (home / ".rayps").exists() and not (home / ".ray").exists()  # no token, no config written


# --- the config `ray up` reads ---------------------------------------------------------------


def test_ray_up_config_strips_job_and_turns_on_token_auth_on_every_node(tmp_path):
    cluster = load_cluster_file(write(tmp_path, CLUSTER))
    config = ray_up_config(cluster.ray, "/secret/dir/auth_token")
    assert "job" not in config
    assert config["file_mounts"] == {"~/.rayps/ps-test/auth_token": "/secret/dir/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert len(config[key]) == 2
        for command in config[key]:
            # Each command is its own shell: each must carry the variables.
            assert command.startswith(
                'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$HOME"/.rayps/ps-test/auth_token && ')
    assert config["head_start_ray_commands"][1].endswith(
        "ray start --dashboard-host=127.0.0.1 --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml")
    assert config["worker_start_ray_commands"][1].endswith("&& ray start --address=$RAY_HEAD_IP:6379")
    assert "dashboard-host" not in " ".join(config["worker_start_ray_commands"])
    check_ray_config(config, "written")  # still valid for Ray
    assert cluster.ray["head_start_ray_commands"][1].startswith("ray start --head")  # the loaded file is untouched


def test_rays_own_config_preparation_accepts_the_written_config(tmp_path):
    """What `ray up` runs before it provisions anything: defaults filled in, then Ray's full validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # Ray's private API; no cluster

    cluster = load_cluster_file(ROOT / "cluster.yaml")
    path = write_up_config(cluster, Token("t", "test"), root=tmp_path)
    prepared = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(prepared)
    assert prepared["head_start_ray_commands"][-1].startswith("export RAY_AUTH_MODE=token ")
    assert "~/.rayps/rayps/auth_token" in prepared["file_mounts"]


def test_a_dashboard_host_in_the_file_is_kept(tmp_path):
    text = CLUSTER.replace("--port=6379 --auto", "--port=6379 --dashboard-host=0.0.0.0 --auto")
    config = ray_up_config(load_cluster_file(write(tmp_path, text)).ray, "t")
    head = config["head_start_ray_commands"][1]
    assert head.count("--dashboard-host") == 1 and "--dashboard-host=0.0.0.0" in head


def test_existing_file_mounts_are_kept_next_to_the_token(tmp_path):
    text = CLUSTER + "file_mounts: {~/data: /local/data}\n"
    text = text.replace("job:\n  workers: 3\n  consistency: {mode: bsp}\n", "") + "job: {}\n"
    config = ray_up_config(load_cluster_file(write(tmp_path, text)).ray, "/t")
    assert config["file_mounts"] == {"~/data": "/local/data", "~/.rayps/ps-test/auth_token": "/t"}


def test_missing_start_commands_get_rays_provider_defaults_with_auth(tmp_path):
    text = "cluster_name: c\nprovider: {type: local, head_ip: 10.0.0.1, worker_ips: []}\n"
    config = ray_up_config(load_cluster_file(write(tmp_path, text)).ray, "/t")
    head = config["head_start_ray_commands"]
    assert any("ray start --dashboard-host=127.0.0.1 --head" in c for c in head)
    assert all(c.startswith("export RAY_AUTH_MODE=token ") for c in head + config["worker_start_ray_commands"])


def test_write_up_config_keeps_the_token_in_a_private_file_not_in_the_yaml(tmp_path):
    cluster = load_cluster_file(write(tmp_path, CLUSTER))
    path = write_up_config(cluster, Token("s3cr3t" * 8, "test"), root=tmp_path / "state")
    assert path == tmp_path / "state" / "ps-test" / "ray-up.yaml"
    assert "s3cr3t" not in path.read_text()
    written = yaml.safe_load(path.read_text())
    token_file = Path(written["file_mounts"]["~/.rayps/ps-test/auth_token"])
    assert token_file.read_text() == "s3cr3t" * 8
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    check_ray_config(written, str(path))


def test_psctl_up_dry_run_generates_a_token_and_prints_the_config(tmp_path, home, capsys):
    path = write(tmp_path, CLUSTER)
    assert main(["up", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    token_file = home / ".ray" / "auth_token"
    assert f"generated a Ray auth token in {token_file}" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() not in out
    written = home / ".rayps" / "clusters" / "ps-test" / "ray-up.yaml"
    assert written.read_text() in out
    assert (written.parent / "auth_token").read_text() == token_file.read_text()


# --- the token ------------------------------------------------------------------------------


def test_token_is_found_where_ray_looks_in_rays_order(home, tmp_path, monkeypatch):
    assert find_token() is None
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("from-default\n")
    assert find_token().value == "from-default"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    token = find_token()
    assert token.value == "from-env" and token.header() == {"Authorization": "Bearer from-env"}
    assert "from-env" not in repr(token)


def test_an_unreadable_token_path_is_an_error_not_a_fallback(home, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH"):
        find_token()


def test_ensure_token_reuses_an_existing_token(home):
    first = ensure_token()
    assert first.created and len(first.value) == 64
    again = ensure_token()
    assert again.value == first.value and not again.created


# --- the job on the cluster -----------------------------------------------------------------


def test_entrypoint_names_a_config_inside_the_working_dir_and_forwards_overrides(tmp_path):
    command = entrypoint(ROOT / "cluster.yaml", ROOT, ["workers=2", "server_resources={ps_server: 1}"], "/tmp/x y")
    assert shlex.split(command) == ["python", "-m", "rayps", "run", "cluster.yaml", "--set", "workers=2",
                                    "--set", "server_resources={ps_server: 1}", "--output", "/tmp/x y"]


def test_entrypoint_sends_a_config_outside_the_working_dir_as_overrides(tmp_path):
    path = write(tmp_path, CLUSTER)
    args = shlex.split(entrypoint(path, ROOT, ["epochs=1"]))
    assert args == ["python", "-m", "rayps", "run", "--set", "workers=3", "--set",
                    'consistency={"mode": "bsp"}', "--set", "epochs=1"]
    from rayps.launcher.job.config import load_job_config

    job = load_job_config(None, [a for a in args[4:] if a != "--set"])  # what the job will build
    assert job.workers == 3 and job.consistency.mode == "bsp" and job.epochs == 1


def test_address_comes_from_the_flag_then_the_local_head_then_ray_address(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = load_cluster_file(write(tmp_path, CLUSTER))
    assert resolve_address("http://h:1", cluster) == "http://h:1"
    assert resolve_address(None, cluster) == "http://10.0.0.1:8265"
    assert resolve_address(None, None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.9.9.9:8265")
    assert resolve_address(None, None) == "http://10.9.9.9:8265"
    other_port = CLUSTER.replace("--port=6379 --auto", "--port=6379 --dashboard-port=9999 --auto")
    assert resolve_address(None, load_cluster_file(write(tmp_path, other_port))) == "http://10.0.0.1:9999"


def test_submit_to_an_unreachable_dashboard_says_so(home, capsys):
    assert main(["status", "--address", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in capsys.readouterr().err
