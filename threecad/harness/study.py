"""A study: several methods over the categories, and the table that compares them.

`threecad bench --method a,b --out S` is the paper's experiment in one command: a run
directory per method (`S/a/`, `S/b/`, each exactly what `--method a --out S/a` writes),
`S/study.json` (what the study is, checked by `--resume`), and `S/study.md` / `S/study.csv`
in the paper's layout (threecad.harness.studytable).

The unit of work is a (method, category) pair, so that the same code runs it in one process
or shared by the ranks of a torchrun job (threecad.harness.distributed):

1. the ranks check that they were given the same arguments;
2. every rank checks everything and builds its datasets (rank 0 first, which fills the
   caches the others then read); a refusal is one line from rank 0, and nothing is written;
3. rank 0 takes the lock of the study and of every method's run directory for the whole
   job, writes study.json and each run.json, and publishes the pairs still to run;
4. each rank claims the next pair (an atomic counter in the c10d store), runs it on its
   LOCAL_RANK device and writes that category's files: only per-category files, so ranks
   never write the same file; a failing pair is recorded and the rest go on;
5. when every rank is done, rank 0 rebuilds each method's results.json/csv/md from the
   category records on disk (so they are consistent however the pairs were shared), then
   the study table, and releases the locks.

With `--ddp` there is no queue: the ranks take the pairs in order and each pair is fitted by
all of them (threecad.harness.fitting.DDPFit); rank 0 evaluates and writes. A lone method
(`--method a`) under torchrun shares its categories the same way into the run directory
`--out` itself, and writes no study table.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from threecad.catalog import Category
from threecad.choices import UNIFIED
from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_json, atomic_write_text
from threecad.harness import distributed
from threecad.harness.fitting import DDPFit
from threecad.harness.prepare import STUDY_FILE, BenchSpec, Plan, prepare
from threecad.harness.records import environment_facts
from threecad.harness.rundir import RunDir, RunLock, make_run_dir, remove_empty_dirs, run_name, utc_now
from threecad.harness.runner import finish_run, open_run, pending, run_pair
from threecad.harness.studytable import study_tables
from threecad.harness.unified import unified_model
from threecad.registry import load_method

log = logging.getLogger(__name__)

STUDY_SCHEMA = "threecad.study/1"
# study.json and a --resume must agree on these
STUDY_KEYS = ("methods", "categories", "preset", "configs", "protocol", "eval_size", "setting", "ddp", "dataset")
# the arguments every rank must have been given alike, and the option that sets each
ARGUMENT_OPTIONS = {"methods": "--method", "root": "--root", "categories": "--category", "preset": "--preset",
                    "overrides": "--set", "device": "--device", "protocol": "--protocol", "out": "--out",
                    "resume": "--resume", "eval_size": "--eval-size", "metrics_mode": "--metrics",
                    "pictures": "--pictures", "allow_layout_problems": "--allow-layout-problems",
                    "setting": "--setting", "ddp": "--ddp"}


@dataclass
class StudySpec:
    """`threecad bench` with a method list, or under torchrun."""

    methods: tuple[str, ...]
    bench: BenchSpec  # the settings every method runs with (its `method` is ignored)
    ddp: bool = False

    @property
    def is_study(self) -> bool:
        """Several methods: one run directory each under --out, and a study table."""
        return len(self.methods) > 1


@dataclass
class Member:
    """One method of the study: its checked plan and its run directory."""

    name: str
    spec: BenchSpec
    plan: Plan
    run: RunDir


@dataclass
class Outcome:
    """What the command prints (rank 0: the study table or the run's table) and its exit code."""

    text: str
    code: int


def parse_methods(text: str) -> tuple[str, ...]:
    """`a,b,c` -> ("a", "b", "c"); an empty or repeated name is refused."""
    names = tuple(n.strip() for n in text.split(","))
    if not names or any(not n for n in names):
        raise ThreecadError(f"--method '{text}': an empty name in the list; give names separated by commas")
    seen: set[str] = set()
    for n in names:
        if n.lower() in seen:
            raise ThreecadError(f"--method '{text}': '{n}' is named twice")
        seen.add(n.lower())
    return names


def run_study(spec: StudySpec, echo: Callable[[str], Any] = print,
              launch: distributed.Launch | None = None) -> Outcome:
    """Run every (method, category) pair of `spec`, in this process or shared by torchrun's ranks."""
    if spec.ddp and launch is None:
        raise ThreecadError("--ddp trains one model across the ranks of a torchrun job; start the command with "
                            "`torchrun --nproc-per-node N -m threecad bench ...` (or drop --ddp)")
    group = distributed.open_group(launch)
    try:
        return _run(spec, group, echo)
    finally:
        group.close()


def _run(spec: StudySpec, group: distributed.Solo, echo) -> Outcome:
    say = (lambda msg: echo(f"[rank {group.rank}] {msg}")) if group.distributed else echo
    if group.distributed:
        _agree_on_arguments(spec, group)
    out = Path(group.publish("out", lambda: str(_out_dir(spec))))

    members: list[Member] = []
    for turn in ("first", "then"):  # rank 0 first: it fills the dataset caches the others read
        error = None
        if (turn == "first") == (group.rank == 0):
            try:
                members = _plan(spec, out, group)
            except ThreecadError as exc:
                error = exc
        group.settle(f"plan/{turn}", error)

    locks: list[RunLock] = []  # rank 0's, held until every rank is done
    work: list[list[str | None]] = []
    try:
        error = None
        if group.rank == 0:
            try:
                work = _open(spec, out, members, locks)
            except ThreecadError as exc:
                error = exc
        group.settle("open", error)
        items = json.loads(group.publish("work", lambda: json.dumps(work)))
        if group.rank == 0:
            say(_announce(spec, out, members, items, group))
        by_name = {m.name: m for m in members}
        if spec.ddp:
            ddp = _ddp(group, members)
            for i, (name, abbr) in enumerate(items):
                group.barrier(f"pair/{i}")
                _run_item(spec, by_name[name], abbr, say, group, ddp)
        else:
            while (i := group.claim("next")) < len(items):
                name, abbr = items[i]
                _run_item(spec, by_name[name], abbr, say, group, None)
        group.barrier("done")
        outcome = _finish(spec, out, members, items, echo) if group.rank == 0 else None
        code = int(group.publish("exit", lambda: str(outcome.code)))
        return outcome if outcome is not None else Outcome("", code)
    finally:
        for lock in locks:
            lock.release()


def _agree_on_arguments(spec: StudySpec, group: distributed.Solo) -> None:
    mine = _arguments(spec)
    everyone = group.gather("args", mine)
    error = None
    for rank, theirs in enumerate(everyone):
        differ = [ARGUMENT_OPTIONS[k] for k in ARGUMENT_OPTIONS if theirs.get(k) != everyone[0].get(k)]
        if differ:
            error = ThreecadError(f"the ranks disagree on the arguments: rank {rank} has a different "
                                  f"{', '.join(differ)} than rank 0; start every rank with the same command")
            break
    group.settle("args", error)


def _arguments(spec: StudySpec) -> dict[str, Any]:
    """The command's arguments in one canonical form (paths absolute), compared across ranks."""
    b = spec.bench
    return {"methods": [m.lower() for m in spec.methods], "root": str(Path(b.root).expanduser().resolve()),
            "categories": list(b.categories), "preset": b.preset, "overrides": dict(sorted(b.overrides.items())),
            "device": b.device, "protocol": b.protocol,
            "out": str(Path(b.out).expanduser().resolve()) if b.out else None, "resume": b.resume,
            "eval_size": b.eval_size, "metrics_mode": b.metrics_mode, "pictures": b.pictures,
            "allow_layout_problems": b.allow_layout_problems, "setting": b.setting, "ddp": spec.ddp}


def _out_dir(spec: StudySpec) -> Path:
    if spec.bench.out is not None:
        return Path(spec.bench.out).expanduser()
    return Path("runs") / run_name("study" if spec.is_study else spec.methods[0].lower())


# ---------------------------------------------------------------------- checking (no writes)
def _plan(spec: StudySpec, out: Path, group: distributed.Solo) -> list[Member]:
    """Check every method, setting and directory; build the datasets. Writes nothing."""
    classes = [load_method(n) for n in spec.methods]  # an unknown name: one line naming it
    names = [c.name for c in classes]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ThreecadError(f"--method: '{twice}' is named twice")
    if spec.ddp:
        if spec.bench.setting == UNIFIED:
            raise ThreecadError("--ddp fits one model per category; it does not run with --setting unified")
        for cls in classes:
            if not cls.trains_by_gradient:
                raise ThreecadError(f"--ddp: method '{cls.name}' is not trained by gradient descent (it builds its "
                                    "model in one pass over the images), so there is no training to share; "
                                    "drop --ddp, and the ranks share the categories instead")
    if spec.is_study:
        _check_study_dir(out, spec.bench.resume)
    overrides = _split_overrides(classes, spec.bench.overrides) if spec.is_study else {
        names[0]: dict(spec.bench.overrides)}
    device = distributed.rank_device(spec.bench.device, group.launch if group.distributed else None)
    members = []
    for cls in classes:
        mspec = dataclasses.replace(spec.bench, method=cls.name, overrides=overrides[cls.name],
                                    out=out / cls.name if spec.is_study else out, device=device, ddp=spec.ddp,
                                    study=out if spec.is_study else None)
        plan = prepare(mspec)
        if spec.ddp and plan.config.batch_size % group.world_size:
            raise ThreecadError(f"--ddp over {group.world_size} ranks splits each batch evenly: {cls.name}'s "
                                f"batch_size {plan.config.batch_size} is not a multiple of {group.world_size}; "
                                f"pass --set batch_size=N with N a multiple of {group.world_size}")
        members.append(Member(cls.name, mspec, plan, RunDir(mspec.out)))
    if spec.is_study:
        previous = _read_study(out)
        if previous is not None:
            _check_same_study(previous, _study_record(spec, members), out)
    return members


def _split_overrides(classes: list[type], overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    """`--set key=value` for a study: `name.key=value` sets one method's field; a plain key sets
    it for every method whose config has it (a key that none has is refused)."""
    fields = {c.name: {f.name for f in dataclasses.fields(c.config_class)} for c in classes}
    out: dict[str, dict[str, str]] = {c.name: {} for c in classes}
    for key, value in overrides.items():
        prefix, _, field = key.partition(".")
        target = next((n for n in out if n.lower() == prefix.lower()), None) if field else None
        if target is not None:
            out[target][field] = value  # build_config refuses a field the method lacks, naming it
            continue
        having = [n for n in out if key in fields[n]]
        if not having:
            raise ThreecadError(f"--set {key}: no method of the study ({', '.join(out)}) has a config key '{key}'; "
                                "`threecad methods NAME` lists a method's keys")
        for n in having:
            out[n][key] = value
    return out


def _check_study_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ThreecadError(f"--out {out} is a file, not a folder")
    spec = out / "run.json"
    if spec.is_file():
        raise ThreecadError(f"--out {out} holds the run directory of one method, not a study; "
                            "choose another --out for a method list")
    if (out / STUDY_FILE).is_file() and not resume:
        raise ThreecadError(f"{out} already holds a study; pass --resume to finish it, or choose another --out")


def _read_study(out: Path) -> dict[str, Any] | None:
    f = out / STUDY_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ThreecadError(f"{f} is damaged ({exc}); move {out} aside or choose another --out") from None
    if not isinstance(data, dict) or data.get("schema") != STUDY_SCHEMA:
        raise ThreecadError(f"{f} is not a threecad study description; move {out} aside or choose another --out")
    return data


def _study_record(spec: StudySpec, members: list[Member]) -> dict[str, Any]:
    first = members[0].plan
    return {"schema": STUDY_SCHEMA, "methods": [m.name for m in members],
            "categories": [c.abbreviation for c in first.categories], "preset": first.preset,
            "configs": {m.name: m.plan.run_spec["config"] for m in members},
            "protocol": spec.bench.protocol, "eval_size": spec.bench.eval_size,
            "setting": spec.bench.setting or {m.name: m.plan.setting for m in members},
            "ddp": spec.ddp, "dataset": {k: first.run_spec["dataset"][k] for k in ("name", "fingerprint")}}


def _check_same_study(previous: dict[str, Any], now: dict[str, Any], out: Path) -> None:
    diff = [k for k in STUDY_KEYS if previous.get(k) != now.get(k)]
    if not diff:
        return
    detail = ""
    for key in ("methods", "categories"):
        if key in diff:
            detail += f" ({key} {','.join(previous.get(key) or [])} then, {','.join(now[key])} now)"
    if "configs" in diff:
        old, new = previous.get("configs") or {}, now["configs"]
        changed = [n for n in new if n in old and old[n] != new[n]]
        if changed:
            detail += f" (config of {', '.join(changed)})"
    raise ThreecadError(f"cannot resume the study {out}: it was run with a different {', '.join(diff)}{detail}")


# ---------------------------------------------------------------------- rank 0: open, then finish
def _open(spec: StudySpec, out: Path, members: list[Member], locks: list[RunLock]) -> list[list[str | None]]:
    """Lock the study and every run directory for the whole job, write study.json and each
    run.json, and list the pairs still to run ([method, category]; [method, None]: a unified fit)."""
    created: list[tuple[Path, Path]] = []
    try:
        dirs = ([out] if spec.is_study else []) + [m.run.path for m in members]
        for d in dirs:
            top = make_run_dir(d)
            if top is not None:
                created.append((d, top))
            lock = RunLock(RunDir(d))
            lock.acquire()
            locks.append(lock)
        if spec.is_study:
            record = _study_record(spec, members)
            previous = _read_study(out)  # again, under the lock
            if previous is None:
                atomic_write_json(out / STUDY_FILE, {**record, "started": utc_now()})
            else:
                _check_same_study(previous, record, out)
        work: list[list[str | None]] = []
        for m in members:
            open_run(m.plan, m.spec, m.run)
            _, todo = pending(m.plan, m.run)
            if m.plan.setting == UNIFIED:
                work += [[m.name, None]] if todo else []
            else:
                work += [[m.name, c.abbreviation] for c in todo]
        return work
    except ThreecadError:
        for lock in reversed(locks):
            lock.release()
        locks.clear()
        for d, top in reversed(created):
            _remove_created(d, top)
        raise


def _remove_created(d: Path, top: Path) -> None:
    """Undo a folder this command made before it was refused (its lock files, then the folders)."""
    for name in (".lock", ".lock.owner"):
        (d / name).unlink(missing_ok=True)
    remove_empty_dirs(d, top)


def _announce(spec: StudySpec, out: Path, members: list[Member], items: list, group: distributed.Solo) -> str:
    first = members[0].plan
    pairs = len(members) * len(first.categories)
    how = (f"{group.world_size} ranks, each pair fitted by all (--ddp)" if spec.ddp else
           f"{group.world_size} ranks sharing the pairs" if group.distributed else "one process")
    by_name = {m.name: m for m in members}
    todo = sum(1 if abbr is not None else len(pending(by_name[name].plan, by_name[name].run)[1])
               for name, abbr in items)  # a unified item is its method's categories still to run
    done = f"; {pairs - todo} done before, skipped (--resume)" if todo < pairs else ""
    return (f"{', '.join(m.name for m in members)} ({first.preset}) on {len(first.categories)} "
            f"categor{'y' if len(first.categories) == 1 else 'ies'} of {first.root} -> {out}: "
            f"{todo} of {pairs} (method, category) pairs to run{done} [{first.device}; {how}]")


def _ddp(group: distributed.Solo, members: list[Member]) -> DDPFit:
    device = members[0].plan.device
    backend = group.init_process_group(device)
    return DDPFit(rank=group.rank, world_size=group.world_size, backend=backend,
                  sync=distributed.GradientAverager(group.rank, group.world_size, device))


def _run_item(spec: StudySpec, m: Member, abbr: str | None, say, group: distributed.Solo,
              ddp: DDPFit | None) -> None:
    """One queue item: a (method, category) pair, or a method's unified fit and its categories."""
    plan = m.plan
    label = (lambda cat: f"{m.name} {cat.abbreviation}")
    if abbr is None:  # --setting unified: the one fit, then every category still to run
        fitted = unified_model(plan, m.spec, m.run, lambda msg: say(f"{m.name} {msg}"))
        _, todo = pending(plan, m.run)
        cats = todo
    else:
        fitted, cats = None, [_category(plan, abbr)]
    for cat in cats:
        run_pair(plan, m.spec, m.run, cat, say, fitted, ddp=ddp, label=label(cat))
        if not group.distributed:  # one process: keep results.json current, as a single run does
            records = {c.abbreviation: r for c in plan.categories if (r := m.run.read_category(c.abbreviation))}
            m.run.write_results(plan.run_spec, plan.in_order(records), environment_facts())


def _category(plan: Plan, abbr: str) -> Category:
    return next(c for c in plan.categories if c.abbreviation == abbr)


def _finish(spec: StudySpec, out: Path, members: list[Member], items: list, echo) -> Outcome:
    """Every rank is done: each method's aggregates rebuilt from its category records, then the table."""
    ran = {name for name, _ in items}
    code = 0
    results: dict[str, dict[str, Any]] = {}
    for m in members:
        records = {}
        for cat in m.plan.categories:
            record = m.run.read_category(cat.abbreviation)
            if record is None:
                log.warning("%s: no record for %s", m.name, cat.abbreviation)
                continue
            records[cat.abbreviation] = record
        res, c = finish_run(m.plan, m.run, records, ran=m.name in ran,
                            echo=(lambda msg, n=m.name: echo(f"{n}: {msg}")) if spec.is_study else echo)
        results[m.name] = res
        code = max(code, c)
    if not spec.is_study:
        return Outcome((members[0].run.path / "results.md").read_text(encoding="utf-8"), code)
    md, csv = study_tables(results, [c.abbreviation for c in members[0].plan.categories])
    for name, text in (("study.md", md), ("study.csv", csv)):
        f = out / name
        if not (f.is_file() and f.read_text(encoding="utf-8") == text):  # a finished study resumed: untouched
            atomic_write_text(f, text)
    return Outcome(md, code)
