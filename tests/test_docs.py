"""Every code block of the README and of the docs pages (docs/**/*.md) is checked, by its language.

- ``python``: run as written, in a temporary working directory. A block that
  builds a ``rayps.Job`` trains a model: it is marked slow and gets the
  session's Ray instance. The examples tests/test_readme.py checks value by
  value are left to it.
- ``yaml``: parsed, then loaded by the loader that reads such a file: a
  cluster file (``provider:``) by load_cluster_file, a ``job:`` section by
  load_job_config, an ``export:`` section as psctl export reads it,
  ``psctl serve``'s settings by load_serve_config; a Prometheus config must
  name its scrape targets.
- ``bash``: every command is parsed, never run. ``psctl`` and ``python -m
  rayps`` go through psctl's own parser; ``pip install`` is checked against
  pyproject.toml (the extras exist; a pinned package is a dependency and its
  pin is inside the project's range); ``python3 -m MODULE`` must import and
  ``python3 FILE`` must exist; any other program must be one of EXTERNAL.
- ``text`` (diagrams, listings): every path of this repository it names exists.

A block in any other language, or in none, fails. Beside the blocks: the
speed tables match the JSON they are rendered from, and the figures the pages
give for the wire and the codecs are the code's.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import rayps
from tests.test_readme import CHECKED, readme_example

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The package the pages describe: this checkout, or (while a branch is merged beside it) the tree that
# `import rayps` reaches. Once merged and installed from the checkout, the two are one folder.
ROOTS = tuple(dict.fromkeys([ROOT, Path(rayps.__file__).resolve().parent]))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
LANGUAGES = ("python", "yaml", "bash", "text")
#: Programs the pages may name besides psctl, python and pip: checked only for being on this list.
EXTERNAL = {"cp", "git", "mkdocs", "prometheus", "grafana-server", "tensorboard", "apt-get"}
#: What runs, builds and installs leave in a checkout: never a path the pages may count on.
UNTRACKED = {"runs", "build", "data", "__pycache__"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            indent = len(m["indent"])
            body = "\n".join(line[indent:] for line in m["body"].splitlines()) + "\n"
            found.append(Block(page, text.count("\n", 0, m.start()) + 1, m["lang"].strip(), body))
    return found


BLOCKS = blocks()


def of(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def test_every_block_is_in_a_language_the_tests_check():
    unknown = [f"{b.where}: {b.lang or '(none)'}" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not unknown, f"code blocks in a language tests/test_docs.py does not check: {unknown}"
    assert {b.lang for b in BLOCKS} == set(LANGUAGES)  # each checker below has blocks to check


# ---- python --------------------------------------------------------------------------------


def python_params() -> list:
    checked = {readme_example(heading, page) for page, heading in CHECKED}
    params, seen = [], set()
    for b in of("python"):
        if b.text in checked or b.text in seen:  # value-checked in test_readme.py, or run once already
            continue
        seen.add(b.text)
        trains = "rayps.Job(" in b.text or "rayps.train(" in b.text
        params.append(pytest.param(b, id=b.where, marks=[pytest.mark.slow, pytest.mark.ray] if trains else []))
    return params


@pytest.mark.parametrize("block", python_params())
def test_python_block_runs_as_written(block, request, tmp_path, monkeypatch):
    if "rayps.Job(" in block.text or "rayps.train(" in block.text:
        request.getfixturevalue("ray_session")
    monkeypatch.chdir(tmp_path)  # examples write runs/ and data/ under the working directory
    namespace = {"__name__": "__docs__"}
    exec(compile(block.text, block.where, "exec"), namespace)
    assigned = set(re.findall(r"^(\w+)\s*=", block.text, re.M))
    assert assigned <= set(namespace), f"{block.where} stopped before it assigned {assigned - set(namespace)}"


def test_the_readme_and_docs_examples_test_readme_checks_are_on_their_pages():
    for page, heading in CHECKED:
        example = readme_example(heading, page)
        assert "rayps.Job(" in example or "rayps.train(" in example, (page, heading)


# ---- yaml ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in of("yaml")])
def test_yaml_block_loads_through_the_real_loader(block, tmp_path):
    from rayps.launcher.cluster.provision import ClusterFile, load_cluster_file
    from rayps.launcher.export.config import ExportConfig
    from rayps.launcher.job.config import JobConfig, load_job_config
    from rayps.launcher.serve import ServeConfig, load_serve_config
    from rayps.settings import build

    doc = yaml.safe_load(block.text)
    assert isinstance(doc, dict), f"{block.where}: not a mapping"
    path = tmp_path / "block.yaml"
    path.write_text(block.text)
    if "provider" in doc:
        assert isinstance(load_cluster_file(path), ClusterFile)
    elif "job" in doc:
        assert isinstance(load_job_config(path), JobConfig)
    elif "export" in doc:
        assert isinstance(build(ExportConfig, doc["export"], f"{block.where}: export"), ExportConfig)
    elif "scrape_configs" in doc:
        targets = [t for c in doc["scrape_configs"] for s in c["static_configs"] for t in s["targets"]]
        assert targets and all(re.fullmatch(r"[\w.-]+:\w+", t) for t in targets), targets
    elif set(doc) <= set(ServeConfig.__dataclass_fields__):
        assert isinstance(load_serve_config(str(path), []), ServeConfig)
    else:
        pytest.fail(f"{block.where}: a YAML block of no kind this test knows (keys {sorted(doc)})")


# ---- bash ----------------------------------------------------------------------------------


def commands(text: str) -> list[list[str]]:
    """Each command of a shell block: lines joined at a trailing backslash, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in ("&&", "||", ";", "|"):
                out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return [c for c in out if c]


def psctl_parses(args: list[str], where: str) -> None:
    from rayps.launcher.cli import _parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: psctl {shlex.join(args)}: {err.getvalue().strip()}")


def pip_install_fits_pyproject(args: list[str], where: str) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    assert args and args[0] == "install", f"{where}: pip {shlex.join(args)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(r) for r in project["dependencies"] + [r for rs in extras.values() for r in rs]]
    ranges = {canonicalize_name(r.name): r.specifier for r in requirements}
    for target in (a for a in args[1:] if not a.startswith("-")):
        local = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", target)
        if local:
            wanted = set((local["extras"] or "").split(",")) - {""}
            assert wanted <= set(extras), f"{where}: pip install {target}: no extra {wanted - set(extras)}"
            continue
        pin = Requirement(target)
        name = canonicalize_name(pin.name)
        assert name in ranges, f"{where}: pip install {target}: not a dependency of the project"
        for version in (s.version for s in pin.specifier if s.operator == "=="):
            assert ranges[name].contains(version), f"{where}: {target} is outside the project's {ranges[name]}"


def check_command(argv: list[str], where: str) -> None:
    import importlib.util

    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):  # VAR=value before the program
        argv = argv[1:]
    program, args = argv[0], argv[1:]
    if program == "psctl":
        psctl_parses(args, where)
    elif program == "pip":
        pip_install_fits_pyproject(args, where)
    elif program in ("python", "python3"):
        if args[:2] == ["-m", "rayps"]:
            psctl_parses(args[2:], where)
        elif args[:2] == ["-m", "pip"]:
            pip_install_fits_pyproject(args[2:], where)
        elif args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
            for path in (a for a in args[2:] if a.startswith("tests/")):
                assert exists(path), f"{where}: {path} does not exist"
        else:
            assert exists(args[0]), f"{where}: {args[0]} does not exist"
    else:
        assert program in EXTERNAL, f"{where}: {program}: a program tests/test_docs.py does not know"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in of("bash")])
def test_every_shell_command_parses(block):
    found = commands(block.text)
    assert found, f"{block.where}: a shell block with no command"
    for argv in found:
        check_command(argv, block.where)


def test_psctl_lines_are_checked_by_psctls_own_parser():
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --no-such-flag"):
        check_command(["psctl", "run", "--no-such-flag"], "here")
    with pytest.raises(AssertionError, match="no extra"):
        check_command(["pip", "install", "-e", ".[no-such-extra]"], "here")


# ---- text ----------------------------------------------------------------------------------


def exists(path: str) -> bool:
    return any(list(r.glob(path.rstrip("/"))) for r in ROOTS)


def file_names() -> set[str]:
    names = set()
    for root in ROOTS:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                       and not (Path(folder) == root and d in UNTRACKED)]
            names.update(files)
    return names


def repository_paths(text: str) -> list[str]:
    """The paths of this repository a text block names: a token whose first part is one of the
    repository's top-level entries, or a bare file name of a kind the repository holds."""
    top = {p.name for r in ROOTS for p in r.iterdir() if p.name not in UNTRACKED and not p.name.startswith(".")
           and not p.name.endswith(".egg-info")} | {".ci"}
    found = []
    for token in re.split(r"[\s`'\"(),;:]+", text):
        token = token.rstrip(".")
        if "/" in token and token.split("/")[0] in top:
            found.append(token)
        elif re.fullmatch(r"[\w*-]+\.(py|proto|yaml|toml)", token):
            found.append(token)
    return found


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in of("text")])
def test_every_path_a_text_block_names_exists(block):
    names = file_names()
    missing = [p for p in repository_paths(block.text)
               if not (exists(p) if "/" in p else any(fnmatch.fnmatch(n, p) for n in names))]
    assert not missing, f"{block.where} names paths that do not exist: {missing}"


def test_a_text_block_naming_a_file_that_is_gone_fails():
    assert repository_paths("ps/core/no_such_module.py (ps/served.py) runs/x/summary.json") == [
        "ps/core/no_such_module.py", "ps/served.py"]
    assert not exists("ps/core/no_such_module.py") and exists("ps/served.py")


# ---- the pages as a whole ------------------------------------------------------------------


def test_the_readme_is_a_front_door_whose_links_all_land():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 300
    links = re.findall(r"\]\(([^)#\s]+\.md)(?:#([\w-]+))?\)", text)
    assert {target for target, _ in links} >= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - {
        "docs/index.md"}
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), target
        if anchor:
            assert anchor in anchors(page), f"README links {target}#{anchor}, which has no such heading"


def anchors(page: Path) -> set[str]:
    """Heading ids as MkDocs' toc extension makes them."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in headings}


def test_every_docs_page_is_in_the_sites_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = {path for entry in config["nav"] for path in entry.values()}
    assert nav == {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}


def test_ci_runs_the_readmes_test_command_and_builds_the_site():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text().split("\n## Tests\n", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1).split(" && ")[-1]
    assert command == "python3 -m pytest -q" and command in ci
    assert "mkdocs build --strict" in ci


def test_the_speed_tables_are_what_their_bench_json_renders():
    from rayps.launcher.bench.tables import MARKED, updated

    marked = [p for p in PAGES if MARKED.search(p.read_text())]
    assert marked, "no page marks a bench table"
    for page in marked:
        assert updated(page) == page.read_text(), (
            f"{page.relative_to(ROOT)} differs from its bench JSON: run"
            f" python3 -m rayps.launcher.bench.tables --update {page.relative_to(ROOT)}")


def test_the_shared_memory_message_sizes_the_pages_give_are_the_wires():
    from rayps.protos.shm_wire import MESSAGE, REPLY, REQUEST

    for name in ("README.md", "docs/transports.md", "docs/architecture.md"):
        text = " ".join((ROOT / name).read_text().split())
        said = {int(n) for n in re.findall(r"(\d+)-byte (?:request|reply)", text)}
        assert said == {REQUEST.size, REPLY.size + MESSAGE.size}, (name, said)


def test_the_push_sizes_the_compression_page_gives_are_the_codecs():
    from rayps.launcher.job.config import JobConfig
    from rayps.ps.core.partition import partition
    from rayps.protos.compression import Codec
    from rayps.worker.models import mlp

    job = JobConfig()  # the default job: its MLP, cut across its shards
    size = sum(p.numel() for p in mlp(**job.model_args).parameters())
    slices = [r.hi - r.lo for r in partition(size, job.servers)]
    text = " ".join((ROOT / "docs" / "compression.md").read_text().split())
    assert f"{size:,} parameters in {job.servers} shards of {slices[0]:,}" in text
    for codec in (Codec("none"), Codec("fp16"), Codec("int8"), Codec("topk", fraction=0.1)):
        assert f"{sum(codec.nbytes(n) for n in slices):,}" in text, codec


def test_getting_started_names_every_public_name_of_rayps():
    text = (ROOT / "docs" / "getting-started.md").read_text()
    missing = [n for n in rayps.__all__ if n != "__version__" and f"`{n}`" not in text and f"`rayps.{n}`" not in text]
    assert not missing, f"docs/getting-started.md does not name {missing}"
