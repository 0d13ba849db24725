"""The house rules of server/ that a grep can check: where vLLM is imported, where the process
environment is written, that sse-starlette is used through its public API only, that routes hold
no `assert`, that the shipped package needs nothing of the checkout (tests/, bench/), and that
what the server knows about MPT is a leaf the other packages import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from harness.server import REPO_ROOT

SERVER = REPO_ROOT / "server"
VLLM_PACKAGES = ("server/engine/", "server/models/")


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(REPO_ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path)))
        for path in sorted(SERVER.rglob("*.py"))
    ]


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_engine_package_and_the_model_plugin_import_vllm():
    offenders = {
        path: sorted(name for name in _imported_modules(tree) if name.split(".")[0] == "vllm")
        for path, tree in _modules()
        if not path.startswith(VLLM_PACKAGES)
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    # The check sees imports at all: the engine package does import vLLM.
    engine = dict(_modules())["server/engine/engine.py"]
    assert any(name.startswith("vllm") for name in _imported_modules(engine))


def _writes_environment(tree: ast.Module) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        # os.environ[...] = ..., os.environ.setdefault/update/pop(...), os.putenv(...)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and ast.unparse(target.value).endswith("environ"):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if (owner.endswith("environ") and node.func.attr in {"setdefault", "update", "pop", "__setitem__"}) or (
                owner == "os" and node.func.attr in {"putenv", "unsetenv"}
            ):
                lines.append(node.lineno)
    return lines


def test_the_process_environment_is_written_in_one_place_only():
    writers = {path: lines for path, tree in _modules() if (lines := _writes_environment(tree))}
    assert set(writers) == {"server/engine/args.py"}, writers


def test_sse_starlette_is_used_through_its_public_api_only():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                assert owner not in {"super()", "EventSourceResponse"}, f"{path}:{node.lineno} uses {owner}.{node.attr}"
        for name in _imported_modules(tree):
            if name.startswith("sse_starlette"):
                assert name in {"sse_starlette", "sse_starlette.sse"}, f"{path} imports {name}"


def test_routes_hold_no_assert():
    for path, tree in _modules():
        if path.startswith("server/api/"):
            asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
            assert asserts == [], f"{path}: assert at lines {asserts}"


CHECKOUT_ONLY = ("tests", "bench", "harness")  # not in the wheel or the image (.dockerignore)


def test_the_shipped_package_imports_nothing_of_the_checkout():
    offenders = {}
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
                offenders.setdefault(path, []).append(f"line {node.lineno}: sys.path")
                continue
            else:
                continue
            offenders.setdefault(path, []).extend(
                f"line {node.lineno}: {name}" for name in names if name.split(".")[0] in CHECKOUT_ONLY)
    assert {path: found for path, found in offenders.items() if found} == {}


def _server_packages_imported(tree: ast.Module) -> set[str]:
    """The server packages (`server.X`) a module imports, at any depth of the file."""
    return {name.split(".")[1] for name in _imported_modules(tree) if name.startswith("server.") and name.count(".") >= 1}


def test_the_mpt_leaf_imports_no_other_server_package_and_its_readers_import_it():
    leaf = {path: _server_packages_imported(tree) - {"mpt"} for path, tree in _modules() if path.startswith("server/mpt/")}
    assert leaf and {path: names for path, names in leaf.items() if names} == {}
    readers = {path.split("/")[1] for path, tree in _modules() if "mpt" in _server_packages_imported(tree)}
    assert {"engine", "models", "gpu", "settings.py"} <= readers, readers


def _package_table() -> dict[str, set[str]]:
    """server/README.md's package table: package → the names in its imports column."""
    rows = {}
    for line in (SERVER / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            rows[cells[0].strip("`/")] = {name.strip().lower() for name in cells[2].split(",") if name.strip()}
    return rows


def test_the_package_table_lists_every_package_with_what_it_imports():
    table = _package_table()
    packages = {path.name for path in SERVER.iterdir() if (path / "__init__.py").is_file()}
    assert set(table) == packages
    actual: dict[str, set[str]] = {package: set() for package in packages}
    for path, tree in _modules():
        package = path.split("/")[1]
        if package not in packages:
            continue  # a top-level module
        for name in _imported_modules(tree):
            parts = name.split(".")
            if parts[0] == "server" and len(parts) > 1 and parts[1] in packages and parts[1] != package:
                actual[package].add(parts[1])
            elif parts[0] in {"vllm", "prompt_formats"}:
                actual[package].add(parts[0])
    assert table == actual


TESTS = REPO_ROOT / "tests"
# Test modules about the whole product rather than one package: they stay at the top.
WHOLE_PRODUCT_TESTS = {"test_cli.py", "test_first_run.py", "test_readme.py", "test_server_layout.py"}
# Folders of tests for what is not one package: the benchmarks, the deploy manifests, and the
# inference-gateway backend (render routes, KV events and block hashes across packages).
TEST_FOLDERS_BEYOND_PACKAGES = {"bench", "deploy", "gateway"}


def test_each_package_has_a_test_folder_of_its_name():
    packages = {path.parent.name for path in SERVER.glob("*/__init__.py")} | {"prompt_formats"}
    missing = sorted(name for name in packages if not any((TESTS / name).rglob("test_*.py")))
    assert missing == [], f"packages without tests/<package>/: {missing}"


def test_test_files_follow_one_naming_scheme():
    """tests/<package>/test_<what it guards>.py: the folder names the package, so a file does not
    repeat it; only whole-product tests sit at the top."""
    packages = {path.parent.name for path in SERVER.glob("*/__init__.py")} | {"prompt_formats"}
    folders = {path.name for path in TESTS.iterdir() if path.is_dir() and path.name not in {"support", "__pycache__"}}
    assert folders - packages - TEST_FOLDERS_BEYOND_PACKAGES == set()
    assert {path.name for path in TESTS.glob("test_*.py")} == WHOLE_PRODUCT_TESTS
    repeating = sorted(
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.parent != TESTS and path.name.startswith(f"test_{path.parent.name}_")
    )
    assert repeating == [], f"file names that repeat their folder: {repeating}"
    # The drain starts with SIGTERM or SIGINT: the tests of a draining server sit together, apart
    # from what the store keeps of a background response (store/).
    signalled = {
        str(path.parent.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if re.search(r"^(async )?def test_\w*(sigterm|sigint)", path.read_text(), re.MULTILINE)
    }
    assert signalled <= {"ops/drain", "store"}, f"drain tests outside ops/drain/: {signalled}"
