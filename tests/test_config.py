"""Loading the job: section of cluster.yaml, --set overrides, and psctl's config errors (no Ray)."""

import json
import textwrap
import threading

import pytest

from rayps.launcher.cli import main
from rayps.launcher.job.config import DebugConfig, JobConfig, load_job_config
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.errors import ConfigError
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.settings import build

CLUSTER_YAML = """\
cluster_name: ps-digits
max_workers: 4
provider:
  type: local
  head_ip: 10.0.0.1
  worker_ips: [10.0.0.2, 10.0.0.3]
auth:
  ssh_user: ubuntu
setup_commands:
  - pip install -e .
job:
  workers: 3
  servers: 1
  batch_size: 64
  model_args: {hidden: 128}
  optimizer:
    name: adam
    lr: 0.002
    betas: [0.8, 0.99]
  consistency:
    mode: ssp
    staleness: 3
  debug:
    slow_workers: {0: 0.05}
"""


def write(tmp_path, text, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def job_yaml(tmp_path, job_text):
    """A cluster.yaml whose job: section is ``job_text`` (YAML, unindented)."""
    return write(tmp_path, "cluster_name: t\njob:\n" + textwrap.indent(textwrap.dedent(job_text), "  "))


def config_error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_job_config(path, overrides)
    return str(info.value)


# --- a good file ------------------------------------------------------------------------------

def test_job_section_of_a_ray_cluster_yaml_loads_into_nested_dataclasses(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML))

    assert isinstance(config, JobConfig)
    assert (config.workers, config.servers, config.batch_size) == (3, 1, 64)
    assert config.model_args == {"hidden": 128}
    assert config.optimizer == OptimizerConfig(name="adam", lr=0.002, betas=(0.8, 0.99))
    assert config.consistency == ConsistencyConfig(mode="ssp", staleness=3)
    assert config.debug == DebugConfig(slow_workers={0: 0.05})
    # absent section: auto, which the default mode (ssp, stale updates) resolves to a decay at the end
    assert config.schedule == ScheduleConfig(name="cosine", decay_fraction=0.2)
    assert config.epochs == JobConfig().epochs  # absent key: default


def test_optimizer_betas_list_from_yaml_becomes_a_tuple(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML))
    assert config.optimizer.betas == (0.8, 0.99)
    assert isinstance(config.optimizer.betas, tuple)


def test_file_without_a_job_section_gives_the_default_job(tmp_path):
    path = write(tmp_path, "cluster_name: t\nprovider: {type: local}\n")
    assert load_job_config(path) == JobConfig()


def test_empty_job_section_and_empty_file_give_the_default_job(tmp_path):
    assert load_job_config(write(tmp_path, "job:\n", "a.yaml")) == JobConfig()
    assert load_job_config(write(tmp_path, "", "b.yaml")) == JobConfig()


def test_no_path_gives_the_default_job():
    assert load_job_config(None) == JobConfig()


def test_loaded_config_is_frozen(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML))
    with pytest.raises(AttributeError):
        config.workers = 5  # type: ignore[misc]


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_top_level_job_key_names_file_key_and_allowed_keys(tmp_path):
    path = job_yaml(tmp_path, "wokers: 2\n")
    message = config_error(path)
    assert str(path) in message
    assert "job:" in message
    assert "'wokers'" in message
    assert "allowed:" in message and "workers" in message and "consistency" in message


def test_unknown_nested_key_names_file_dotted_path_key_and_allowed_keys(tmp_path):
    path = job_yaml(tmp_path, "consistency: {mdoe: bsp}\n")
    message = config_error(path)
    assert str(path) in message
    assert "job.consistency" in message
    assert "'mdoe'" in message
    assert "allowed: mode, quorum, staleness, staleness_aware_lr" in message


def test_unknown_key_inside_optimizer_is_rejected_with_its_path(tmp_path):
    message = config_error(job_yaml(tmp_path, "optimizer: {name: sgd, learning_rate: 0.1}\n"))
    assert "job.optimizer" in message and "'learning_rate'" in message and "lr" in message


def test_free_form_mappings_accept_any_keys(tmp_path):
    config = load_job_config(job_yaml(tmp_path, "model_args: {anything: 1, goes: [2, 3]}\n"))
    assert config.model_args == {"anything": 1, "goes": [2, 3]}


# --- bad values -------------------------------------------------------------------------------

@pytest.mark.parametrize("job_text, key, value", [
    ("workers: 0", "workers", "0"),
    ("servers: -1", "servers", "-1"),
    ("batch_size: x", "batch_size", "'x'"),
    ("transport: carrier-pigeon", "transport", "'carrier-pigeon'"),
    ("consistency: {mode: bspp}", "mode", "'bspp'"),
    ("consistency: {staleness: -1}", "staleness", "-1"),
    ("optimizer: {name: sgd, lr: -1}", "optimizer.lr", "-1"),
    ("optimizer: {name: rmsprop}", "optimizer.name", "'rmsprop'"),
    ("workers: 2\nconsistency: {mode: bsp, quorum: 3}", "consistency.quorum", "3"),
    ("workers: 2\ndebug: {slow_workers: {2: 0.05}}", "debug.slow_workers", "2"),
    ("debug: {slow_workers: {0: -0.5}}", "slow_workers[0]", "-0.5"),
], ids=lambda p: p if isinstance(p, str) and "\n" not in p and ":" not in p else None)
def test_bad_value_error_names_file_key_and_value(tmp_path, job_text, key, value):
    path = job_yaml(tmp_path, job_text + "\n")
    message = config_error(path)
    assert str(path) in message
    assert key in message
    assert value in message


def test_bad_nested_value_error_names_the_section_path(tmp_path):
    message = config_error(job_yaml(tmp_path, "consistency: {mode: bspp}\n"))
    assert "job.consistency: mode ('bspp') must be one of asp, ssp, bsp" in message


def test_slow_worker_outside_the_job_names_the_valid_range(tmp_path):
    message = config_error(job_yaml(tmp_path, "workers: 2\ndebug: {slow_workers: {2: 0.05}}\n"))
    assert "names worker 2" in message and "0..1" in message


@pytest.mark.parametrize("section", ["optimizer", "consistency", "schedule", "debug"])
def test_empty_section_is_rejected_rather_than_left_as_none(tmp_path, section):
    # `consistency:` with everything under it commented out parses as None.
    path = job_yaml(tmp_path, f"{section}:\n")
    message = config_error(path)
    assert str(path) in message and f"job.{section}" in message and "None" in message


def test_section_given_as_a_scalar_is_rejected(tmp_path):
    message = config_error(job_yaml(tmp_path, "consistency: bsp\n"))
    assert "job.consistency" in message and "'bsp'" in message


# --- --set overrides --------------------------------------------------------------------------

def test_set_overrides_parse_yaml_values_and_merge_into_file_sections(tmp_path):
    path = write(tmp_path, CLUSTER_YAML)
    config = load_job_config(path, ["consistency.mode=bsp", "workers=3", "debug.slow_workers={0: 0.05}",
                                    "optimizer.lr=0.01"])

    assert config.consistency.mode == "bsp"
    assert config.consistency.staleness == 3  # kept from the file
    assert config.workers == 3 and isinstance(config.workers, int)
    assert config.debug.slow_workers == {0: 0.05}
    assert config.optimizer.lr == 0.01
    assert config.optimizer.name == "adam" and config.optimizer.betas == (0.8, 0.99)  # kept from the file
    assert config.batch_size == 64  # untouched keys kept from the file


def test_set_can_fill_a_section_the_file_does_not_have(tmp_path):
    config = load_job_config(write(tmp_path, "cluster_name: t\n"), ["schedule.name=cosine", "schedule.min_lr=0.0001"])
    assert config.schedule == ScheduleConfig(name="cosine", min_lr=0.0001)


def test_later_set_wins_over_earlier_one(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML), ["workers=4", "workers=5"])
    assert config.workers == 5


def test_set_does_not_change_the_file(tmp_path):
    path = write(tmp_path, CLUSTER_YAML)
    load_job_config(path, ["consistency.mode=asp"])
    assert load_job_config(path).consistency.mode == "ssp"


def test_set_into_free_form_mapping_adds_a_key(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML), ["model_args.dropout=0.1"])
    assert config.model_args == {"hidden": 128, "dropout": 0.1}


def test_set_unknown_top_level_key_names_the_set_text_and_allowed_keys(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["nosuchkey=1"])
    assert "--set 'nosuchkey=1'" in message
    assert "'nosuchkey'" in message and "allowed:" in message and "workers" in message


def test_set_unknown_nested_key_names_the_set_text_and_section(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["consistency.nope=1"])
    assert "--set 'consistency.nope=1'" in message
    assert "'nope' in consistency" in message
    assert "allowed: mode, quorum, staleness, staleness_aware_lr" in message


def test_set_bad_value_names_set_key_and_value(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["workers=zero"])
    assert "--set" in message
    assert "workers ('zero') must be an integer" in message


def test_set_bad_nested_value_names_set_key_and_value(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["consistency.mode=bspp"])
    assert "--set" in message and "consistency" in message and "mode ('bspp')" in message


def test_set_without_equals_sign_names_the_set_text(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["novalue"])
    assert "--set 'novalue'" in message and "KEY=VALUE" in message


def test_set_with_invalid_yaml_value_names_the_set_text(tmp_path):
    message = config_error(write(tmp_path, CLUSTER_YAML), ["model_args={a: [1"])
    assert "--set 'model_args={a: [1'" in message and "not valid YAML" in message


def test_set_that_breaks_a_cross_field_rule_is_rejected(tmp_path):
    # The file has debug.slow_workers {0: ...} and workers 3; quorum 3 needs workers >= 3.
    message = config_error(write(tmp_path, CLUSTER_YAML), ["consistency.mode=bsp", "consistency.quorum=3",
                                                          "workers=2"])
    assert "--set" in message and "consistency.quorum (3) must not exceed workers (2)" in message


def test_file_errors_are_reported_against_the_file_even_with_overrides(tmp_path):
    path = job_yaml(tmp_path, "consistency: {mdoe: bsp}\n")
    message = config_error(path, ["workers=2"])
    assert str(path) in message and "'mdoe'" in message


# --- unreadable files -------------------------------------------------------------------------

def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert str(path) in message and "no such file" in message


def test_invalid_yaml_is_named(tmp_path):
    path = write(tmp_path, "job:\n  workers: [1, 2\n")
    message = config_error(path)
    assert str(path) in message and "not valid YAML" in message


def test_top_level_list_is_rejected_naming_the_file(tmp_path):
    path = write(tmp_path, "- job\n- workers\n")
    message = config_error(path)
    assert str(path) in message and "mapping" in message and "list" in message


def test_job_section_that_is_not_a_mapping_is_rejected(tmp_path):
    for i, body in enumerate(["job: []\n", "job: 3\n", "job: [workers, 2]\n"]):
        path = write(tmp_path, body, f"c{i}.yaml")
        message = config_error(path)
        assert str(path) in message and "job:" in message and "expected a mapping" in message


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    message = config_error(tmp_path)
    assert str(tmp_path) in message and "cannot read" in message


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_bytes(b"\xff\xfe\x00job")
    assert str(path) in config_error(path)


# --- psctl run --------------------------------------------------------------------------------

class _JobStarts:
    """Stands in for the driver: counts jobs that got as far as placing actors."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("a bad config reached the driver")


@pytest.fixture
def ray_untouched(monkeypatch):
    """Errors must surface before the driver connects to Ray (which may already be
    running for other tests in this session), so watch the driver, not Ray."""
    import rayps.launcher.job.driver

    starts = _JobStarts()
    monkeypatch.setattr(rayps.launcher.job.driver, "run_job", starts)
    yield starts
    assert starts.calls == 0


def test_psctl_run_with_bad_config_exits_2_naming_the_problem_without_starting_ray(
        tmp_path, capsys, ray_untouched):
    path = job_yaml(tmp_path, "consistency: {mode: bspp}\n")

    assert main(["run", str(path)]) == 2

    err = capsys.readouterr().err
    assert err.startswith("psctl: error: ")
    assert str(path) in err and "job.consistency" in err and "'bspp'" in err
    assert ray_untouched.calls == 0


def test_psctl_run_with_bad_set_exits_2_naming_the_set_without_starting_ray(tmp_path, capsys, ray_untouched):
    path = write(tmp_path, CLUSTER_YAML)

    assert main(["run", str(path), "--set", "consistency.nope=1"]) == 2

    err = capsys.readouterr().err
    assert "psctl: error: --set 'consistency.nope=1'" in err
    assert ray_untouched.calls == 0


def test_psctl_run_with_missing_file_exits_2(tmp_path, capsys, ray_untouched):
    path = tmp_path / "missing.yaml"
    assert main(["run", str(path)]) == 2
    assert f"psctl: error: {path}: no such file" in capsys.readouterr().err
    assert ray_untouched.calls == 0


# --- to_dict ----------------------------------------------------------------------------------

def test_to_dict_round_trips_through_json_for_a_loaded_config(tmp_path):
    config = load_job_config(write(tmp_path, CLUSTER_YAML))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["optimizer"] == {**data["optimizer"], "name": "adam", "lr": 0.002, "betas": [0.8, 0.99]}
    assert data["consistency"]["staleness"] == 3
    assert data["debug"] == {"slow_workers": {"0": 0.05}, "slowdown": {}, "stragglers": {}, "compute_s": None, "audit": False,
                             "link_mbit": None, "link_latency_ms": 0.0}
    assert data["compression"]["codec"] == "none"
    assert data["checkpoint"]["keep"] == 3 and data["fault"]["max_restarts"] == 3 and data["chaos"]["kill"] == []
    assert data["workers"] == 3


def test_to_dict_is_json_serialisable_with_a_callable_model():
    def make_model():
        return None

    data = json.loads(json.dumps(JobConfig(model=make_model).to_dict()))
    assert "make_model" in data["model"]
    assert data["consistency"]["mode"] == "ssp"


def test_to_dict_is_json_serialisable_with_a_callable_that_cannot_be_copied():
    class Factory:
        def __init__(self):
            self.lock = threading.Lock()  # deep-copying this raises TypeError

        def __call__(self):
            return None

        def __repr__(self):
            return "Factory()"

    data = json.loads(json.dumps(JobConfig(model=Factory()).to_dict()))
    assert data["model"] == "Factory()"


@pytest.mark.parametrize("debug, fragment", [
    ({"stragglers": {"probability": 1.5, "factor": 3}}, "stragglers.probability (1.5) must be <= 1"),
    ({"stragglers": {"probability": 0.1, "factr": 3}}, "stragglers: unknown key ['factr']"),
    ({"stragglers": {"probability": 0.1}}, "stragglers needs probability and factor"),
    ({"slowdown": {0: -1}}, "slowdown[0] (-1) must be >= 0"),
    ({"slowdown": {5: 1.0}}, "debug.slowdown names worker 5, but the job has workers 0..1"),
])
def test_straggler_knobs_are_checked_before_anything_starts(debug, fragment):
    with pytest.raises(ConfigError) as caught:
        build(JobConfig, {"debug": debug}, "Job")
    assert fragment in str(caught.value)


def test_overlap_true_is_refused_where_computing_ahead_would_break_the_bound():
    with pytest.raises(ConfigError, match="overlap: true needs asp or ssp with staleness >= 1, not bsp"):
        build(JobConfig, {"overlap": True, "consistency": {"mode": "bsp"}}, "Job")
    assert build(JobConfig, {"consistency": {"mode": "ssp", "staleness": 0}}, "Job").overlaps is False
    assert build(JobConfig, {"consistency": {"mode": "asp"}}, "Job").overlaps is False
    assert build(JobConfig, {"consistency": {"mode": "asp"}, "overlap": True}, "Job").overlaps is True
    # auto is off in every bundled mode: its extra step of staleness unsteadied a transformer under ssp
    assert build(JobConfig, {"consistency": {"mode": "ssp", "staleness": 2}}, "Job").overlaps is False
    assert build(JobConfig, {"consistency": {"mode": "ssp"}, "overlap": True}, "Job").overlaps is True


def test_schedule_auto_decays_where_updates_are_stale_and_keeps_bsp_comparable_with_one_process():
    def schedule(**keys):
        return build(JobConfig, keys, "Job").schedule.name
    assert schedule(consistency={"mode": "ssp"}) == schedule(consistency={"mode": "asp"}) == "cosine"
    assert schedule(consistency={"mode": "bsp"}) == "constant"
    assert schedule(consistency={"mode": "asp"}, schedule={"name": "constant"}) == "constant"  # a name is kept
    assert build(JobConfig, {"schedule": {"warmup_steps": 10}}, "Job").schedule.warmup_steps == 10
