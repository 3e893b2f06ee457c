"""The deployment package, built as azd builds it for the function service, and the app imported
from it with nothing but what requirements.txt installs: a runtime import of a dev-only package,
or a file the package leaves out, fails here instead of in Azure.

azd packages a function service by its ``.funcignore`` when the file exists, with gitignore
syntax, and applies its own default exclusions (``__pycache__``, virtual environments) only when
it does not (azd, *Configure service packaging file exclusions*, learn.microsoft.com,
azure/developer/azure-developer-cli/service-packaging-ignore-files). Flex Consumption then
installs requirements.txt by a remote build (pip, Linux, the app's Python version) and runs
the app from the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from pathspec import GitIgnoreSpec

REPO = Path(__file__).resolve().parents[2]
FUNCIGNORE = REPO / ".funcignore"
# The package holds the service's code and settings files; a few hundred kilobytes today. A
# virtual environment or node_modules that slipped in weighs hundreds of megabytes.
MAX_PACKAGE_BYTES = 3 * 1024 * 1024
NEVER = {".venv", "node_modules", ".lab", "tests", "lab", "bench", "mutants", "docs", "infra",
         ".git", "scripts", ".hypothesis", "__pycache__"}


class TooLarge(Exception):
    """The files selected so far already exceed the bound."""


def package_files(root: Path = REPO, limit: int = MAX_PACKAGE_BYTES) -> dict[str, int]:
    """The files azd would put in the package (relative path -> size), honouring .funcignore.
    Symbolic links to directories are followed, as a real directory in their place would be
    (in a plain checkout .venv and node_modules are directories); stops past ``limit``."""
    spec = GitIgnoreSpec.from_lines(FUNCIGNORE.read_text().splitlines())
    files: dict[str, int] = {}
    total = 0
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        relative = Path(directory).relative_to(root)
        subdirectories[:] = sorted(
            d for d in subdirectories
            if not spec.match_file(f"{(relative / d).as_posix()}/"))
        for name in sorted(names):
            path = (relative / name).as_posix()
            if spec.match_file(path):
                continue
            files[path] = (Path(directory) / name).stat().st_size
            total += files[path]
            if total > limit:
                raise TooLarge(f"over {limit} bytes at {path}; top folders so far: "
                               f"{sorted({p.split('/')[0] for p in files})}")
    return files


def build_package(target: Path) -> dict[str, int]:
    """The zip azd deploys, written to ``target``; its files by path."""
    files = package_files()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(REPO / path, path)
    return files


def test_the_package_holds_the_app_and_nothing_of_the_workbench(tmp_path: Path) -> None:
    """Pins issue 24's point 3: the package has function_app.py, host.json, requirements.txt
    and shared/, and nothing of the virtual environment, node_modules, the lab, the tests,
    benchmarks, docs or infra; it stays under MAX_PACKAGE_BYTES (the .funcignore before the fix
    let the ~1 GB .venv and node_modules in)."""
    files = build_package(tmp_path / "package.zip")
    for needed in ("function_app.py", "host.json", "requirements.txt", "shared/__init__.py",
                   "shared/config/__init__.py", "shared/flow/handlers.py"):
        assert needed in files
    assert [] == sorted(p for p in files if set(Path(p).parts) & NEVER or p.endswith(".pyc"))
    size = (tmp_path / "package.zip").stat().st_size
    print(f"package: {len(files)} files, {sum(files.values())} bytes, {size} bytes zipped")
    assert sum(files.values()) <= MAX_PACKAGE_BYTES


def test_every_module_of_shared_is_in_the_package() -> None:
    """Pins that .funcignore leaves out no part of the service: every .py file under shared/
    is packaged (a pattern such as ``*/tests/`` or ``config`` would drop one silently)."""
    files = package_files()
    on_disk = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "shared").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert [] == [p for p in on_disk if p not in files]


def remote_build(requirements: Path) -> tuple[Path, bool]:
    """requirements.txt alone installed by pip into an empty target, as Flex's remote build does;
    returns the target and whether it was reused.

    The target is kept outside the repository, under the system's temporary directory, keyed by
    the SHA-256 of requirements.txt, the interpreter and the platform: the same pinned file gives
    the same packages, so a later run reuses it; any change to the file (or another Python) makes
    a new, empty target. A target counts only when pip finished: it is installed beside its final
    name and renamed into place on success. The import check below runs every time, in a fresh
    interpreter, against whatever the target holds. ``O365PROV_FRESH_REMOTE_BUILD=1`` forces a
    fresh install. pip runs without byte-compiling (``--no-compile``: the interpreter compiles
    what it imports) and without version checks or progress bars.
    """
    key = hashlib.sha256(requirements.read_bytes()
                         + f"{sys.version}|{sysconfig.get_platform()}".encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / "o365prov-remote-build"
    target = root / key
    if target.is_dir() and not os.environ.get("O365PROV_FRESH_REMOTE_BUILD"):
        return target, True
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-input", "--no-compile", "--progress-bar", "off", "--target", str(building),
         "-r", str(requirements)],
        capture_output=True, text=True, timeout=900)
    if install.returncode:
        shutil.rmtree(building, ignore_errors=True)
    assert 0 == install.returncode, install.stderr[-3000:]
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return target, False


IMPORT_APP = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import function_app
functions = {f.get_function_name(): f.get_trigger().get_dict_repr()["type"]
             for f in function_app.app.get_functions()}
dev_only = sorted(m for m in ("pytest", "checkov", "pycep", "mutmut", "hypothesis", "lab", "tests")
                  if m in sys.modules)
import sysconfig
allowed = (sys.argv[1], sys.argv[2], sysconfig.get_paths()["stdlib"],
           sysconfig.get_paths()["platstdlib"])
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
print(json.dumps({"functions": functions, "dev_only": dev_only,
                  "elsewhere": sorted(f for f in files if f and not f.startswith(allowed))}))
"""


@pytest.mark.slow
def test_the_app_imports_from_the_package_with_requirements_txt_alone(tmp_path: Path) -> None:
    """Pins the remote build: requirements.txt alone, installed by pip into an empty target as
    Flex Consumption's remote build does, plus the unpacked package, are enough to import
    function_app and list its functions, in an interpreter that sees nothing else (no venv, no
    site-packages, no PYTHONPATH)."""
    package = tmp_path / "package.zip"
    build_package(package)
    app = tmp_path / "wwwroot"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(app)
    started = time.monotonic()
    target, reused = remote_build(app / "requirements.txt")
    installed = time.monotonic() - started
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_APP, str(app), str(target)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert 0 == result.returncode, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    print(f"pip install -r requirements.txt: {installed:.0f} s"
          f"{' (reused ' + str(target) + ')' if reused else ''}; "
          f"{len(seen['functions'])} functions: {sorted(seen['functions'])}")
    assert [] == seen["dev_only"]
    assert [] == seen["elsewhere"]
    assert {"timerTrigger", "queueTrigger"} == set(seen["functions"].values())
    assert "poll_provision_group" in seen["functions"]
