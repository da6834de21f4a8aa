"""The Dockerfile and .dockerignore, checked by parsing them (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            assert not re.match(r"#\s*escape\s*=", stripped), "escape directive not supported"
            continue  # comments may sit between continuation lines too
        if not pending and not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        logical = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, args = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages_of(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
    return stages


@cache
def stages() -> list[Stage]:
    return stages_of(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))


def final() -> Stage:
    return stages()[-1]


@cache
def pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def exec_form(instruction: Instruction) -> list[str]:
    try:
        value = json.loads(instruction.args)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list), (
        f"line {instruction.line}: {instruction.keyword} {instruction.args} is not exec form "
        "(a JSON array): the shell form runs /bin/sh -c, which does not pass SIGTERM on"
    )
    assert value, f"line {instruction.line}: empty {instruction.keyword}"
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.args)
        if "=" not in words[0]:  # legacy `ENV KEY value with spaces`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def run_commands(stage: Stage) -> str:
    return "\n".join(i.args for i in stage.all("RUN"))


# -- the Dockerfile -----------------------------------------------------------------


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile('FROM a AS b\n# note\nRUN x \\\n  # inside\n  && y\n\nCMD ["z"]\n')
    assert [(i.keyword, i.args) for i in parsed] == [
        ("FROM", "a AS b"),
        ("RUN", "x && y"),
        ("CMD", '["z"]'),
    ]


def test_multi_stage_build_copies_the_venv_into_a_slim_python() -> None:
    assert len(stages()) >= 2, "expected a builder stage and a runtime stage"
    builder_names = {s.name for s in stages()[:-1] if s.name}
    assert final().image == "python:3.11-slim"
    copies = [c.args for c in final().all("COPY") if c.args.startswith("--from=")]
    assert copies, "the runtime stage copies nothing from the builder"
    source = copies[0].split()[0].removeprefix("--from=")
    assert source in builder_names
    venv = copies[0].split()[1]
    assert f"{venv}/bin" in env_of(final()).get("PATH", ""), "the venv is not on PATH"


def test_builder_installs_the_project_with_its_production_extras() -> None:
    installs = [
        m.group(1)
        for s in stages()[:-1]
        for m in re.finditer(r"pip install [^&\n]*?\"?\.\[([^\]]+)\]", run_commands(s))
    ]
    assert installs, "no `pip install .[extras]` in a builder stage"
    extras = set(installs[-1].split(","))
    assert {"kurrentdb", "mongodb"} <= extras, extras
    assert extras <= set(pyproject()["project"]["optional-dependencies"]), extras
    assert "dev" not in extras, "dev tools do not belong in the image"


def test_runtime_has_no_build_tools_or_downloads() -> None:
    commands = run_commands(final())
    assert "pip install" not in commands, "install in the builder, copy the venv"
    assert not re.search(r"\b(curl|wget|apt-get install|gcc)\b", commands), commands


def created_users(stage: Stage) -> dict[str, str]:
    """User name -> uid for every `useradd --uid N ... NAME` in the stage's RUN steps."""
    users: dict[str, str] = {}
    for step in re.split(r"&&|;|\n", run_commands(stage)):
        words = shlex.split(step)
        if words[:1] != ["useradd"]:
            continue
        uid = next((v for k, v in itertools.pairwise(words) if k in {"--uid", "-u"}), "")
        users[words[-1]] = uid
    return users


def runtime_user() -> tuple[str, str]:
    """(name, uid) of the final stage's USER, which useradd must have created."""
    user = final().last("USER")
    assert user is not None, "the image would run as root"
    who = user.args.split(":")[0]
    assert who not in {"root", "0", ""}, user.args
    users = created_users(final())
    by_uid = {uid: name for name, uid in users.items()}
    if who.isdigit():
        assert who in by_uid, f"USER {who}: no useradd --uid {who} in the runtime stage"
        return by_uid[who], who
    assert who in users, f"USER {who}: no useradd of {who} in the runtime stage"
    return who, users[who]


def test_final_stage_runs_as_an_unprivileged_user() -> None:
    name, uid = runtime_user()
    assert uid.isdigit(), f"give {name} a fixed uid (useradd --uid)"
    assert int(uid) >= 1000, f"give {name} a uid outside the system range"


def test_data_dir_exists_and_belongs_to_the_user() -> None:
    data = env_of(final()).get("LEDGER_DATA_DIR")
    assert data, "LEDGER_DATA_DIR is not set in the image"
    assert data.startswith("/"), "LEDGER_DATA_DIR must be an absolute path"
    name, uid = runtime_user()
    owners = re.findall(
        rf"(?:install -d -o (\S+)[^\n&]* {re.escape(data)}\b|chown (?:-R )?(\S+?)(?::\S+)? "
        rf"[^\n&]*{re.escape(data)}\b)",
        run_commands(final()),
    )
    assert owners, f"{data} is not created owned by the runtime user"
    assert {a or b for a, b in owners} <= {name, uid}, owners
    workdir = final().last("WORKDIR")
    assert workdir is not None
    assert workdir.args == data


def test_entrypoint_and_cmd_are_exec_form_console_scripts() -> None:
    scripts = set(pyproject()["project"]["scripts"])
    for keyword in ("ENTRYPOINT", "CMD"):
        for instruction in final().all(keyword):
            argv = exec_form(instruction)
            assert argv[0] not in SHELLS, f"{keyword} {argv} wraps the process in a shell"
    cmd = final().last("CMD")
    assert cmd is not None
    entrypoint = final().last("ENTRYPOINT")
    argv = exec_form(entrypoint) if entrypoint else exec_form(cmd)
    assert argv[0] in scripts, f"{argv[0]} is not a console script of pyproject.toml"


def test_stop_signal_is_sigterm() -> None:
    signal = final().last("STOPSIGNAL")
    assert signal is None or signal.args in {"SIGTERM", "15"}


def test_healthcheck_runs_the_python_probe() -> None:
    checks = final().all("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK in the runtime stage"
    options, marker, command = checks[0].args.partition("CMD ")
    assert marker, "HEALTHCHECK without CMD"
    for option in options.split():
        assert re.fullmatch(
            r"--(interval|timeout|start-period|start-interval)=\d+(ms|s|m)|--retries=\d+", option
        ), option
    argv = exec_form(Instruction("HEALTHCHECK CMD", command, checks[0].line))
    assert argv[:3] == ["python", "-m", "ledger.healthcheck"], argv
    assert find_spec("ledger.healthcheck") is not None


def test_no_grpc_health_probe_binary_is_fetched() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    code = "\n".join(i.args for s in stages() for i in s.instructions)
    assert not re.search(r"grpc[_-]health[_-]probe", code), "use python -m ledger.healthcheck"
    assert not re.search(r"\b(curl|wget)\b", code), "the image downloads nothing"
    assert not re.search(r"^ADD\s+(--\S+\s+)*https?://", text, re.MULTILINE)


def test_ports_and_bind_host() -> None:
    exposed = {p.split("/")[0] for e in final().all("EXPOSE") for p in e.args.split()}
    assert exposed == {"50051", "50052"}
    env = env_of(final())
    assert env.get("LEDGER_BIND_HOST") == "0.0.0.0", "a container must listen on all interfaces"
    assert env.get("LEDGER_COMMAND_PORT", "50051") == "50051"
    assert env.get("LEDGER_QUERY_PORT", "50052") == "50052"
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer"


# -- .dockerignore: what the build context holds --------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]"
            i = end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@cache
def ignore_rules() -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern), pattern))
    return rules


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex, _ in ignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


@cache
def context() -> frozenset[str]:
    """Every file of the work tree that `docker build .` would send."""
    reincluded = [p for negated, _, p in ignore_rules() if negated]
    files: set[str] = set()
    for top, dirs, names in os.walk(REPO_ROOT):
        rel_top = os.path.relpath(top, REPO_ROOT)
        rel_top = "" if rel_top == "." else rel_top + "/"
        # skip big excluded trees (.git, .venv, node_modules) unless a `!` rule reaches in
        dirs[:] = [
            d
            for d in dirs
            if not ignored(rel_top + d)
            or any(p.startswith(rel_top + d + "/") or p.startswith("*") for p in reincluded)
        ]
        files.update(rel_top + n for n in names if not ignored(rel_top + n))
    return frozenset(files)


def test_ignore_matcher_follows_docker_semantics() -> None:
    regex = _pattern_regex("**/__pycache__")
    assert regex.fullmatch("__pycache__")
    assert regex.fullmatch("a/b/__pycache__")
    assert _pattern_regex("*.py[cod]").fullmatch("x.pyc")
    assert not _pattern_regex("*").fullmatch("ledger/x.py")


def test_context_has_what_pip_install_needs() -> None:
    files = context()
    project = pyproject()["project"]
    assert "pyproject.toml" in files
    readme = project.get("readme")
    if isinstance(readme, str):
        assert (REPO_ROOT / readme).is_file(), f"pyproject's readme {readme} does not exist"
        assert readme in files, f"{readme} (pyproject's readme) is excluded by .dockerignore"
    for copy in (i for s in stages() for i in s.all("COPY") if not i.args.startswith("--")):
        for source in copy.args.split()[:-1]:
            if source != ".":
                assert source in files, f"line {copy.line}: COPY {source}: not in the context"


def test_context_has_every_package_module() -> None:
    files = context()
    patterns = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [
        d.name
        for d in REPO_ROOT.iterdir()
        if (d / "__init__.py").is_file() and any(fnmatch.fnmatch(d.name, p) for p in patterns)
    ]
    assert {"ledger", "command_server", "query_server", "projector"} <= set(packages)
    for package in packages:
        for path in (REPO_ROOT / package).rglob("*"):
            rel = path.relative_to(REPO_ROOT).as_posix()
            if path.is_file() and path.suffix in {".py", ".pyi", ".typed"}:
                assert rel in files, f"{rel} is left out of the build context"


def test_context_leaves_out_local_state() -> None:
    files = context()
    for prefix in (".git/", ".venv/", "node_modules/", "ledger-data/", "tests/", ".mypy_cache/"):
        assert not any(f.startswith(prefix) for f in files), prefix
    for name in ("__pycache__/", ".pyc", ".sqlite3"):
        assert not any(name in f for f in files), name
    assert not any(Path(f).name.startswith(".env") for f in files)
    assert ignored("ledger/__pycache__/x.cpython-311.pyc")
    assert ignored("ledger/.env.local")
    assert ignored("events.sqlite3-wal")
    assert not ignored("ledger/settings.py")


@pytest.mark.parametrize("path", ["secrets.txt", ".env", "ledger-data/events.sqlite3"])
def test_context_is_an_allowlist(path: str) -> None:
    assert ignored(path), f"{path} would be sent to the daemon"
