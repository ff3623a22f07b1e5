"""The repository's own rules: files cite what a reader has (no developer-only spec folder), the
user docs stay short, tools are entry points that import the package and never each other."""
import ast
import os
import re
import subprocess

from conftest import REPO

# what a file of the repository must not point to: the developers' method specifications
SPEC_REFERENCE = re.compile(
    r"shared/(spec|seeds)\b|\bspec/[a-z_]+\.md|\b(ranking_losses|gol_lvis|olrp|solo|models|export)\.md\b")
README_MAX_LINES = 250
CONFIGS_README_MAX_LINES = 300


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if os.path.isfile(os.path.join(REPO, p))]


def _read(path):
    with open(os.path.join(REPO, path), encoding="utf-8", errors="replace") as f:
        return f.read()


def test_no_file_refers_to_the_developer_specs():
    offenders = []
    for path in _tracked_files():
        if not path.endswith((".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".cfg", ".toml")):
            continue
        if path == "tests/test_repository.py":  # the pattern itself
            continue
        for number, line in enumerate(_read(path).splitlines(), 1):
            if SPEC_REFERENCE.search(line):
                offenders.append(f"{path}:{number}: {line.strip()[:100]}")
    assert not offenders, "references to the developers' spec folder:\n" + "\n".join(offenders)


def test_user_docs_stay_short():
    assert len(_read("README.md").splitlines()) <= README_MAX_LINES
    for path in _tracked_files():
        if path.startswith("configs/") and path.endswith("README.md"):
            assert len(_read(path).splitlines()) <= CONFIGS_README_MAX_LINES, path


def test_readme_keeps_no_test_count():
    assert not re.search(r"\b\d{3,} tests\b", _read("README.md"))


def test_tools_import_the_package_not_each_other():
    tools = [p for p in _tracked_files() if p.startswith("tools/") and p.endswith(".py")]
    names = {os.path.splitext(os.path.basename(p))[0] for p in tools}
    for path in tools:
        source = _read(path)
        assert "sys.path" not in source, f"{path} changes sys.path"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module.split(".")[0]]
            else:
                continue
            assert not names.intersection(imported), f"{path} imports another tool: {imported}"
