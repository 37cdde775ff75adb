"""Every command in README.md and docs/ works as written.

Each line of a fenced ```bash block is one command (a trailing backslash continues it, `&&` chains
two). `python -m M ARGS` is parsed by M's own command line (its real argparse parser, then, for
train, the run config it resolves to) without running it; `make T` needs target T in the Makefile;
`curl URL` needs a route of the gateway that matches the URL's path and method; a script run by path
must exist. Commands of tools outside the project (docker, ray, pip, ...) are listed in EXTERNAL and
left alone. ```python blocks must compile. A command of any other kind fails the test, so a new
kind of command in the docs comes with its check here.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTERNAL = {"docker", "ray", "kubectl", "pip", "source", "git", "nvidia-smi", "tritonserver", "cd"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for lang, body in FENCE.findall(doc.read_text()):
            if lang == language:
                found.append((doc.relative_to(ROOT).as_posix(), body))
    return found


def commands() -> list[tuple[str, str]]:
    out = []
    for where, body in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment starts at '#' after a space
            out.extend((where, part.strip()) for part in line.split("&&") if part.strip())
    return out


class Parsed(Exception):
    """Raised in place of running a command once its parser has accepted the arguments."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def parse_module_command(module: str, argv: list[str], monkeypatch) -> argparse.Namespace | None:
    """Run `python -m module argv` up to its argument parsing: the namespace, or None when the command
    finished before parsing (e.g. `--method list`, cheap by design) or printed its help."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = importlib.import_module(f"{module}.__main__" if _is_package(module) else module).main
    try:
        code = main(argv)
    except Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"python -m {module} {shlex.join(argv)} exited {exit_.code}"
        return None
    finally:
        monkeypatch.undo()
    assert code == 0, f"python -m {module} {shlex.join(argv)} returned {code}"
    return None


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").is_file()


def check_python_module(module: str, argv: list[str], monkeypatch) -> None:
    namespace = parse_module_command(module, argv, monkeypatch)
    if module == "train" and namespace is not None:
        from train.methods import make_config

        make_config(**vars(namespace))  # the preset, data-set defaults and overrides resolve


def gateway_answers(method: str, path: str) -> bool:
    """Whether a route of the gateway app matches the request fully (path and method)."""
    from starlette.routing import Match

    from serve.app import create_app
    from serve.settings import load_settings

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in create_app(load_settings(environ={})).routes)


def check_curl(argv: list[str]) -> None:
    urls = [a for a in argv if a.startswith("http")]
    assert len(urls) == 1, f"curl command without one URL: {argv}"
    method = "POST" if any(a in ("-F", "-d", "--data") for a in argv) else "GET"
    for flag in ("-X", "--request"):
        if flag in argv:
            method = argv[argv.index(flag) + 1]
    path = urlsplit(urls[0]).path
    assert gateway_answers(method, path), f"no gateway route answers {method} {path}"


def check_command(command: str, monkeypatch) -> None:
    argv = shlex.split(command)
    program = Path(argv[0]).name
    if program in EXTERNAL:
        return
    if program == "torchrun":  # torchrun [its options] -m MODULE ARGS
        argv = ["python", *argv[argv.index("-m"):]]
        program = "python"
    if program.startswith("python"):
        if argv[1] == "-m" and argv[2] == "pytest":
            return
        if argv[1] == "-m":
            check_python_module(argv[2], argv[3:], monkeypatch)
        else:
            assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert argv[1] in targets, f"make {argv[1]}: no such target (targets: {targets})"
        return
    if program == "bash":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    if program == "curl":
        check_curl(argv[1:])
        return
    raise AssertionError(f"a kind of command this test does not check: {command!r}")


COMMANDS = commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 30 and {w for w, _ in COMMANDS} >= {"README.md", "docs/training.md", "docs/serving.md"}


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_is_accepted(where, command, monkeypatch):
    check_command(command, monkeypatch)


@pytest.mark.parametrize("where,code", blocks("python"))
def test_documented_python_compiles(where, code):
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # examples may await at top level


@pytest.mark.parametrize("command", [
    "python -m train --method cc --dataset digits --no-such-option 1",
    "python -m export --engine onnnx",
    "python -m serve.bulk ~/photos --top-k many",
    "curl http://127.0.0.1:8080/no-such-route",
    "curl -X DELETE http://127.0.0.1:8080/cluster",
    "frobnicate --all",
])
def test_a_wrong_command_is_caught(command, monkeypatch):
    with pytest.raises((AssertionError, SystemExit)):
        check_command(command, monkeypatch)
