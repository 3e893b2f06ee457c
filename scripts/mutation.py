"""Mutation testing of the pure modules (``bash scripts/mutation``; issue 19).

mutmut (pinned in requirements-dev.txt, configured in pyproject.toml's ``[tool.mutmut]``) copies
the project into ``mutants/``, mutates the modules ``scripts/mutation.toml`` names, and runs
each mutant against the fast unit tests that reach the mutated function. This script starts
each run from an empty ``mutants/`` (mutmut's cached test map would miss a test that changed),
scores each module, and writes ``bench/results/mutation.json``::

    bash scripts/mutation                             every module
    bash scripts/mutation shared/roles/planner.py     the modules named
    bash scripts/mutation --ci                        the modules whose inputs changed since the
                                                      run bench/results/mutation.json records

What mutmut never mutates (decorated functions such as ``@property``, module constants, class
bodies) is mutated by ``scripts/mutation_supplement.py`` and run against the same tests; its
figures are printed beside mutmut's and counted in the module's score.

A module's score is killed / (mutants - accepted survivors), mutmut's and the supplement's
together; a mutant that times out or ends in an error of pytest (or of the run) is neither a
kill nor a survivor: it is counted apart (``timeouts``, ``errors``) and lowers the score until
someone looks at it. One no test reaches is a survivor. One ``[[accepted]]`` entry accepts one
surviving mutant; the files its reason relies on (``depends``) are part of the module's
fingerprint. The script exits non-zero when a module scores under the threshold, when an
accepted entry matches no surviving mutant or more than one, or when mutmut itself fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "scripts" / "mutation.toml"
RESULTS = REPO / "bench" / "results" / "mutation.json"
MUTANTS = REPO / "mutants"
LOG = MUTANTS / "mutation.log"
# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code, 3.8.1)
KILLED = {1}  # a test failed
SURVIVED = {0, 5, 33}  # every test passed, or none reached the mutant
TIMEOUTS = {24, -24, 36, 152, 255}  # anything else (3: pytest's internal error) is an error
SHOWN = 12  # survivors printed per module


@dataclass(frozen=True)
class Module:
    path: str
    tests: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    supplement: tuple[str, ...] | None = None  # the supplement's targets; None: the default

    @property
    def supplement_targets(self) -> tuple[str, ...] | None:
        """What the supplement mutates: the names given, else every target of a module mutated
        whole (None), else nothing (a module limited to some ``functions``)."""
        if self.supplement is not None:
            return self.supplement
        return () if self.functions else None

    @property
    def dotted(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def patterns(self) -> list[str]:
        """mutmut's names of this module's mutants (``mutmut run`` arguments)."""
        if not self.functions:
            return [f"{self.dotted}.*"]
        return [f"{self.dotted}.{_mangle(f)}__mutmut_*" for f in self.functions]


@dataclass(frozen=True)
class Accepted:
    function: str
    before: str
    after: str
    reason: str
    depends: tuple[str, ...] = ()


@dataclass
class Score:
    killed: int = 0
    survived: list[str] = field(default_factory=list)
    accepted: int = 0
    total: int = 0
    seconds: float = 0.0
    timeouts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def counted(self) -> int:
        return self.total - self.accepted

    def figures(self) -> dict[str, Any]:
        return {"score": round(self.percent, 1), "killed": self.killed, "counted": self.counted,
                "accepted": self.accepted, "mutants": self.total,
                "survived": len(self.survived), "timeouts": len(self.timeouts),
                "errors": len(self.errors), "test_seconds": round(self.seconds, 1)}

    def __add__(self, other: Score) -> Score:
        return Score(self.killed + other.killed, self.survived + other.survived,
                     self.accepted + other.accepted, self.total + other.total,
                     self.seconds + other.seconds, self.timeouts + other.timeouts,
                     self.errors + other.errors)

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.counted if self.counted else 100.0


def _mangle(function: str) -> str:
    """``plan`` → ``x_plan``, ``SkuFacts.of`` → ``xǁSkuFactsǁof``: mutmut's trampoline names."""
    cls, _, name = function.rpartition(".")
    return f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"


def _function(key: str) -> str:
    """A mutant's key as a readable name: ``shared.roles.planner.x_hold__mutmut_9`` →
    ``shared.roles.planner.hold``, ``...xǁBreakGlassǁcovers__mutmut_1`` →
    ``...BreakGlass.covers``."""
    name = key.rsplit("__mutmut_", 1)[0]
    module, _, mangled = name.rpartition(".")
    if mangled.startswith("xǁ"):
        return f"{module}.{mangled[2:].replace('ǁ', '.')}"
    return f"{module}.{mangled.removeprefix('x_')}"


def _flat(text: str) -> str:
    return " ".join(text.split())


def load() -> tuple[float, list[Module], list[Accepted]]:
    config = tomllib.loads(CONFIG.read_text())
    modules = [Module(m["path"], tuple(m["tests"]), tuple(m.get("inputs", ())),
                      tuple(m.get("functions", ())),
                      tuple(m["supplement"]) if "supplement" in m else None)
               for m in config["module"]]
    accepted = [Accepted(a["function"], _flat(a["before"]), _flat(a["after"]), _flat(a["reason"]),
                         tuple(a.get("depends", ())))
                for a in config.get("accepted", [])]
    for entry in accepted:
        missing = [d for d in entry.depends if not (REPO / d).is_file()]
        if missing:
            sys.exit(f"mutation: {entry.function}: depends names no file: {missing}")
    return float(config["threshold"]), modules, accepted


def check_pyproject(modules: list[Module]) -> list[str]:
    """What disagrees between scripts/mutation.toml and pyproject.toml's [tool.mutmut]."""
    mutmut = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    problems = []
    mutated = set(mutmut["only_mutate"])
    named = {m.path for m in modules}
    if mutated != named:
        problems.append(f"[tool.mutmut] only_mutate {sorted(mutated)} is not the modules of "
                        f"scripts/mutation.toml {sorted(named)}")
    selected = {a for a in mutmut["pytest_add_cli_args_test_selection"] if a.endswith(".py")}
    missing = sorted({t for m in modules for t in m.tests} - selected)
    if missing:
        problems.append(f"[tool.mutmut] pytest_add_cli_args_test_selection lacks {missing}")
    return problems


def fingerprint(module: Module, accepted: list[Accepted], threshold: float) -> str:
    """What a module's score depends on: its source, its tests and inputs, the shared fixtures,
    mutmut's settings and this module's entries of scripts/mutation.toml, and the tools."""
    digest = hashlib.sha256()
    mine = [a for a in accepted if a.function.startswith(module.dotted + ".")]
    files = [module.path, *module.tests, "tests/conftest.py", "scripts/mutation_supplement.py",
             *sorted({d for a in mine for d in a.depends})]
    for pattern in module.inputs:
        files += sorted(str(p.relative_to(REPO)) for p in REPO.glob(pattern) if p.is_file())
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    mutmut = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    settings = {"mutmut": mutmut, "accepted": [asdict(a) for a in mine], "threshold": threshold,
                "functions": module.functions, "supplement": module.supplement_targets,
                "versions": _versions()}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("mutmut", "hypothesis")}


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_mutmut(modules: list[Module]) -> None:
    """One ``mutmut run`` for the modules' mutants, from an empty mutants/ directory."""
    shutil.rmtree(MUTANTS, ignore_errors=True)
    MUTANTS.mkdir()
    jobs = os.environ.get("MUTATION_JOBS") or str(os.cpu_count() or 2)
    command = [str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", jobs,
               *[p for m in modules for p in m.patterns()]]
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}
    with LOG.open("w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        tail = LOG.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        sys.exit("mutation: mutmut failed (exit " + str(done.returncode) + "); the end of "
                 f"{LOG.relative_to(REPO)}:\n" + "\n".join(tail))


def _diff(key: str, path: str) -> tuple[str, str]:
    """(lines removed, lines added) of a mutant, as ``mutmut show`` prints it (main() runs in
    the repository, where mutmut looks for mutants/)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(key, path=path).splitlines()[2:]
    removed = _flat(" ".join(line[1:] for line in diff if line.startswith("-")))
    added = _flat(" ".join(line[1:] for line in diff if line.startswith("+")))
    return removed, added


def accept(result: Score, accepted: list[Accepted], matched: dict[int, list[str]],
           key: str, function: str, before: str, after: str) -> None:
    """A survivor: accepted by the first entry for it not yet used, else a survivor (and an
    entry that already accepted an identical mutant records this one too: it fails the run,
    since one entry accepts one mutant)."""
    same = [i for i, a in enumerate(accepted)
            if a.function == function and (a.before, a.after) == (before, after)]
    free = next((i for i in same if i not in matched), None)
    if free is not None:
        matched[free] = [key]
        result.accepted += 1
        return
    if same:
        matched[same[-1]].append(key)
    result.survived.append(f"{key}\n      - {before}\n      + {after}")


def score(module: Module, accepted: list[Accepted], matched: dict[int, list[str]]) -> Score:
    """The module's mutmut score from its record of each mutant (mutants/<path>.meta)."""
    result = Score()
    if not (MUTANTS / f"{module.path}.meta").exists():
        return result  # nothing mutmut mutates (no undecorated function): the supplement's
    meta = json.loads((MUTANTS / f"{module.path}.meta").read_text())
    wanted = module.patterns()
    for key, code in sorted(meta["exit_code_by_key"].items()):
        if not any(fnmatch.fnmatchcase(key, p) for p in wanted):
            continue
        if code is None:
            sys.exit(f"mutation: mutmut did not run {key}; see {LOG.relative_to(REPO)}")
        result.total += 1
        result.seconds += float(meta["durations_by_key"].get(key, 0.0))
        if code in KILLED:
            result.killed += 1
            continue
        if code not in SURVIVED:
            (result.timeouts if code in TIMEOUTS else result.errors).append(f"{key} (exit {code})")
            continue
        before, after = _diff(key, module.path)
        accept(result, accepted, matched, key, _function(key), before, after)
    return result


def supplement(module: Module, accepted: list[Accepted], matched: dict[int, list[str]],
               jobs: int) -> Score:
    """The supplement's score of a module: what mutmut skips, run against the same tests."""
    import mutation_supplement as extra

    targets = module.supplement_targets
    result = Score()
    if targets == ():
        return result
    found = extra.mutants((REPO / module.path).read_text(), targets)
    if not found:
        return result
    mutmut = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    if mutmut["pytest_add_cli_args_test_selection"][-2] != "-m":
        sys.exit("mutation: [tool.mutmut] pytest_add_cli_args_test_selection ends with -m MARKERS")
    args = [*module.tests, "-x", "-q", "-p", "no:cacheprovider",
            *mutmut["pytest_add_cli_args_test_selection"][-2:]]  # the marker expression
    os.environ["HYPOTHESIS_PROFILE"] = "mutation"
    (baseline, seconds), = extra.run(REPO, module.dotted, module.path, [None], args, 1, 600.0)
    if baseline != extra.SURVIVED:
        sys.exit(f"mutation: {module.path}'s tests fail unmutated ({baseline}): "
                 f".venv/bin/python -m pytest {' '.join(args)}")
    outcomes = extra.run(REPO, module.dotted, module.path, [m.source for m in found], args,
                         jobs, max(30.0, 10 * seconds))
    for number, (mutant, (outcome, took)) in enumerate(zip(found, outcomes, strict=True), 1):
        key = f"{module.dotted}.{mutant.target} (supplement {number})"
        result.total += 1
        result.seconds += took
        if outcome == extra.KILLED:
            result.killed += 1
        elif outcome == extra.TIMEOUT:
            result.timeouts.append(f"{key}: {mutant.before} -> {mutant.after}")
        elif outcome == extra.ERROR:
            result.errors.append(f"{key}: {mutant.before} -> {mutant.after}")
        else:
            accept(result, accepted, matched, key, f"{module.dotted}.{mutant.target}",
                   mutant.before, mutant.after)
    return result


def changed(modules: list[Module], accepted: list[Accepted], threshold: float,
            record: dict[str, Any]) -> list[Module]:
    """The modules whose inputs differ from what the record says they were measured on."""
    known = record.get("modules", {})
    return [m for m in modules
            if known.get(m.path, {}).get("fingerprint") != fingerprint(m, accepted, threshold)]


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all)")
    parser.add_argument("--ci", action="store_true",
                        help="only the modules whose inputs changed since the recorded run")
    args = parser.parse_args()
    os.chdir(REPO)
    started = time.monotonic()
    threshold, modules, accepted = load()
    problems = check_pyproject(modules)
    if problems:
        for problem in problems:
            print(f"mutation: {problem}", file=sys.stderr)
        return 2
    record: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.modules:
        unknown = sorted(set(args.modules) - {m.path for m in modules})
        if unknown:
            print(f"mutation: not a module of scripts/mutation.toml: {unknown}", file=sys.stderr)
            return 2
        chosen = [m for m in modules if m.path in args.modules]
    elif args.ci:
        chosen = changed(modules, accepted, threshold, record)
        kept = [m.path for m in modules if m not in chosen]
        if kept:
            print(f"mutation: unchanged since the recorded run ({record.get('commit', '?')}), "
                  f"not run again: {', '.join(kept)}")
    else:
        chosen = modules

    scores: dict[str, Score] = {}
    extras: dict[str, Score] = {}
    matched: dict[int, list[str]] = {}
    jobs = int(os.environ.get("MUTATION_JOBS") or os.cpu_count() or 2)
    if chosen:
        print(f"mutation: mutmut {_versions()['mutmut']} on "
              f"{', '.join(m.path for m in chosen)} (log: {LOG.relative_to(REPO)})", flush=True)
        run_mutmut(chosen)
        scores = {m.path: score(m, accepted, matched) for m in chosen}
        print("mutation: the supplement (what mutmut skips) on the same modules", flush=True)
        import mutation_supplement

        mutation_supplement.preload()
        extras = {m.path: supplement(m, accepted, matched, jobs) for m in chosen}

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    entries = dict(record.get("modules", {}))
    for module in chosen:
        both = scores[module.path] + extras[module.path]
        entries[module.path] = {
            **both.figures(), "mutmut": scores[module.path].figures(),
            "supplement": extras[module.path].figures(), "measured": now, "commit": _commit(),
            "fingerprint": fingerprint(module, accepted, threshold),
        }
    entries = {m.path: entries[m.path] for m in modules if m.path in entries}

    failed = False
    for module in modules:
        entry = entries.get(module.path)
        if entry is None:
            continue
        note = "" if module.path in scores else f"  (recorded {entry['commit']})"
        extra = f"; {entry['accepted']} accepted" if entry["accepted"] else ""
        apart = "".join(f"; {entry.get(k, 0)} {k}" for k in ("timeouts", "errors")
                        if entry.get(k))
        parts = "".join(f"  {name} {entry[name]['score']:.1f} % ({entry[name]['killed']}/"
                        f"{entry[name]['counted']})" for name in ("mutmut", "supplement")
                        if name in entry and entry[name]["mutants"])
        print(f"mutation score: {entry['score']:5.1f} % ({entry['killed']}/{entry['counted']}"
              f"{extra}{apart})  {module.path}{'  =' + parts if parts else ''}{note}")
        if module.path in scores:
            both = scores[module.path] + extras[module.path]
            for kind, lines in (("survived", both.survived), ("timeout", both.timeouts),
                                ("error", both.errors)):
                for line in lines[:SHOWN]:
                    print(f"    {kind}: {line}")
                if len(lines) > SHOWN:
                    print(f"    ... and {len(lines) - SHOWN} more {kind} "
                          "(mutmut results; mutmut show NAME)")
        if entry["score"] < threshold:
            failed = True
    killed = sum(e["killed"] for e in entries.values())
    counted = sum(e["counted"] for e in entries.values())
    overall = 100.0 * killed / counted if counted else 100.0
    print(f"mutation score: {overall:5.1f} % ({killed}/{counted})  all")

    ran = {m.dotted for m in chosen}
    for number, entry in enumerate(accepted):
        if not any(entry.function.startswith(d + ".") for d in ran):
            continue
        keys = matched.get(number, [])
        if len(keys) > 1:
            failed = True
            print(f"mutation: accepted entry matches {len(keys)} surviving mutants, and one entry "
                  f"accepts one: {entry.function}: {entry.before!r} -> {entry.after!r} "
                  f"({', '.join(keys)}); add an entry for each, with its reason")
        elif not keys:
            failed = True
            print(f"mutation: accepted survivor no longer survives (killed, or the code changed): "
                  f"{entry.function}: {entry.before!r} -> {entry.after!r}; remove or update it in "
                  "scripts/mutation.toml")
    under = [p for p, e in entries.items() if e["score"] < threshold]
    if under:
        print(f"mutation: under {threshold:g} %: {', '.join(under)}")

    seconds = round(time.monotonic() - started, 1)
    if chosen:
        RESULTS.write_text(json.dumps({
            "command": "bash scripts/mutation" + (" --ci" if args.ci else "")
            + "".join(f" {p}" for p in args.modules),
            "generated": now, "commit": _commit(), "seconds": seconds,
            "threshold": threshold, "cpus": os.cpu_count(), "versions": _versions(),
            "modules": entries,
            "all": {"score": round(overall, 1), "killed": killed, "counted": counted},
        }, indent=2, ensure_ascii=False) + "\n")
    print(f"mutation: {len(chosen)} of {len(modules)} modules mutated in {seconds:g} s; "
          f"{RESULTS.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
