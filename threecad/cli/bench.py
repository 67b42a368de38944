"""`threecad bench`: run one method, or a study of several, through the shared benchmark harness.

One method without torchrun is `run_benchmark` (one run directory at --out). A method list
(`--method a,b`), or any run under torchrun, goes through `threecad.harness.study`: a run
directory per method under --out plus the study table, the pairs shared by the ranks.
"""
from __future__ import annotations

from pathlib import Path

import click

from threecad.choices import PROTOCOLS, SETTINGS, STANDARD
from threecad.cli.common import category_option, resolve_root, root_option


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """--config FILE: its options become this command's defaults (the command line still wins)."""
    if value is not None:
        from threecad.bench_config import read_config_file

        ctx.default_map = {**(ctx.default_map or {}), **read_config_file(value)}


class _BenchCommand(click.Command):
    """`bench --help` ends with the registered methods and their presets (read when help is asked for)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from threecad.registry import available_methods

        rows = [(name, "failed to load" if isinstance(cls, Exception) else f"presets: {', '.join(cls.presets)}")
                for name, cls in available_methods().items()]
        with formatter.section("Methods (`threecad methods NAME` shows one's model card)"):
            formatter.write_dl(rows)


@click.command("bench", cls=_BenchCommand)
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
              expose_value=False, callback=_load_config,
              help="A YAML file of this command's options (long names: method, root, category, preset, eval_size, "
                   "...) and the method's config fields under `set`; options on the command line win. "
                   "--print-config writes one.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved invocation as YAML (every option, the preset, every config field) and "
                   "exit without running; `--config` of it runs the same benchmark.")
@click.option("--method", required=True,
              help="Method name (see `threecad methods`), or a comma list for a study: one run directory "
                   "per method under --out, and study.md/study.csv comparing them.")
@root_option()
@category_option()
@click.option("--preset", default=None, help="Config preset (paper, cpu, ...). Default: paper on CUDA, cpu on CPU.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, typed (repeatable): --set epochs=3 --set weights=PATH.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for every pool (torch, OpenMP, numba, BLAS, cache building, loaders). Default: "
                   "OMP_NUM_THREADS, else the CPUs this process may use (affinity and cgroup quota); recorded "
                   "in run.json. On a shared machine give fewer than the free cores.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=STANDARD, show_default=True,
              help="Evaluation protocol; 3cad-paper reproduces the official release's metrics.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory. Default: runs/<method>-<preset>-<time>.")
@click.option("--setting", type=click.Choice(SETTINGS), default=None,
              help="per-category: one model per category; unified: one model fitted on the union of the "
                   "categories' training images, evaluated per category. Default: the paper's for --preset "
                   "paper (unified for UniAD and CRAD), per-category otherwise.")
@click.option("--resume", is_flag=True, help="Finish a run directory: skip categories already done.")
@click.option("--eval-size", type=int, default=256, show_default=True, help="Side of the evaluation grid.")
@click.option("--metrics", "metrics_mode", type=click.Choice(["auto", "exact", "streaming"]), default="auto",
              show_default=True, help="Exact metrics (auto), or the faster streaming engine with a stated error "
                                      "bound.")
@click.option("--metrics-memory", type=click.FloatRange(min=0.01), default=2.0, show_default=True, metavar="GB",
              help="Exact metrics hold at most this much memory; beyond it they rank sorted runs spilled to the run "
                   "folder (or re-read from its kept predictions), with the same numbers to the last bit.")
@click.option("--pictures", type=int, default=6, show_default=True,
              help="Hardest good and defective images pictured per category (0: none).")
@click.option("--allow-layout-problems", is_flag=True,
              help="Run on a root with layout errors that leave files out (masks without a test image, "
                   "unreadable folders); warned, and their count recorded in results.json. A missing, unreadable "
                   "or wrongly sized mask or image is refused even so: the run reads every one.")
@click.option("--logger", type=click.Choice(["tensorboard", "mlflow"]), default=None,
              help="Also log each (method, category)'s config, per-epoch losses and metrics to TensorBoard "
                   "(OUT/tensorboard/) or MLflow (file store OUT/mlruns, or $MLFLOW_TRACKING_URI); "
                   "needs that package installed.")
@click.option("--ddp", is_flag=True,
              help="Under torchrun: fit each (method, category) across all ranks (DistributedSampler, gradients "
                   "averaged), evaluate on rank 0. Without it the ranks share the pairs.")
@click.option("--track-test-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also evaluate the test split every N epochs while training, for the record only (never "
                   "for selection): the curve beside the loss curve and `best_on_test`, marked not valid. "
                   "Shows what the references' selection on the test set is worth.")
@click.option("--split", "split_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Split manifest (`threecad split --out FILE`): its val images select epochs (select=val) and "
                   "only its train images train. Default: ROOT/split.csv when there is one.")
def command(print_config, method, root, categories, preset, sets, device, threads, protocol, out, setting, resume,
            eval_size, metrics_mode, metrics_memory, pictures, allow_layout_problems, logger, ddp, track_test_every,
            split_file):
    """Fit and evaluate METHOD on each category; write a run directory and print the table.

    Under `torchrun --nproc-per-node N -m threecad bench ...` the ranks share the work.

    \b
    Examples:
      threecad bench --method cfrg --root demo-data --preset cpu --category ACC,CS
      threecad bench --method patchcore,padim --out runs/study      # a study: one table
      threecad bench --method cfrg --print-config > cfrg.yaml; threecad bench --config cfrg.yaml
    """
    from threecad.bench_config import config_yaml, resolved_config
    from threecad.harness import BenchSpec, distributed
    from threecad.method import parse_set_options

    params = click.get_current_context().params
    if print_config:
        click.echo(config_yaml(resolved_config(params)), nl=False)
        return

    spec = BenchSpec(method=method, root=resolve_root(root), categories=tuple(categories), preset=preset,
                     overrides=parse_set_options(sets), device=device, protocol=protocol, out=out,
                     resume=resume, eval_size=eval_size, metrics_mode=metrics_mode, pictures=pictures,
                     allow_layout_problems=allow_layout_problems, setting=setting, logger=logger,
                     track_test_every=track_test_every, split=split_file, threads=threads,
                     metrics_memory=metrics_memory)
    launch = distributed.detect()
    if "," in method or launch is not None or ddp:
        _study(spec, method, ddp, launch)
    from threecad.harness import run_benchmark

    results, code = run_benchmark(spec, echo=click.echo)
    run_dir = Path(out) if out else Path("runs") / str(results["run_id"])
    click.echo("")
    md = run_dir / "results.md"
    from threecad.harness.rundir import markdown

    click.echo(md.read_text() if md and md.is_file() else markdown(results))
    raise SystemExit(code)


def _study(spec, method: str, ddp: bool, launch) -> None:
    """A method list, or a torchrun job: threecad.harness.study; rank 0 prints the table."""
    from threecad.harness.distributed import RankStopped
    from threecad.harness.study import StudySpec, parse_methods, run_study

    try:
        outcome = run_study(StudySpec(methods=parse_methods(method), bench=spec, ddp=ddp), echo=click.echo,
                            launch=launch)
    except RankStopped as exc:  # rank 0 says why, in one line
        raise SystemExit(exc.exit_code) from None
    if outcome.text:
        click.echo("")
        click.echo(outcome.text, nl=False)
    raise SystemExit(outcome.code)
