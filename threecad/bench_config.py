"""`threecad bench --config FILE.yaml` and `--print-config`: a bench invocation as a file.

Why: a run worth repeating is easier to keep, diff and share as a file than as a command line
(anomalib users expect one). The file holds the command's options under their long names
(`category`, `eval_size`, ...) and the method's config fields under `set`; options given on
the command line win over the file. `--print-config` writes the resolved invocation: every
option, the preset chosen, and every config field of the method after preset and `--set`,
so that `--config` of its output runs the same benchmark; each run keeps that file as
`RUN/config.yaml`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from threecad.errors import ThreecadError

CONFIG_FILE = "config.yaml"
# YAML key -> the bench command's parameter name
OPTIONS = {
    "method": "method", "root": "root", "category": "categories", "preset": "preset", "set": "sets",
    "device": "device", "threads": "threads", "protocol": "protocol", "out": "out", "setting": "setting",
    "resume": "resume", "eval_size": "eval_size", "metrics": "metrics_mode",
    "metrics_memory": "metrics_memory", "pictures": "pictures",
    "allow_layout_problems": "allow_layout_problems", "logger": "logger", "ddp": "ddp",
    "track_test_every": "track_test_every", "split": "split_file",
}


def read_config_file(path: Path) -> dict[str, Any]:
    """The file as click defaults (parameter name -> value); unknown keys and bad shapes refused."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThreecadError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ThreecadError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThreecadError(f"--config {path}: must be a mapping of option names to values")
    unknown = sorted(set(map(str, data)) - set(OPTIONS))
    if unknown:
        raise ThreecadError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"known: {', '.join(OPTIONS)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "set":
            if not isinstance(value, dict):
                raise ThreecadError(f"--config {path}: `set` must be a mapping of config fields to values")
            value = [f"{k}={_text(v)}" for k, v in value.items()]
        elif key == "category":
            value = [value] if isinstance(value, str) else [",".join(map(str, value))]
        elif value is not None and key in ("root", "out", "split"):
            value = str(value)
        out[OPTIONS[key]] = value
    return out


def _text(value: Any) -> str:
    """A config value as `--set` reads it (tuples as comma lists)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def resolved_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of a bench command line (click's parameters), its preset resolved and the
    method's config complete: what --print-config writes."""
    from threecad.harness import devices
    from threecad.method import build_config, config_dict, parse_set_options
    from threecad.registry import load_method

    method = str(params["method"])
    if "," in method:
        raise ThreecadError("--print-config describes one method's run; print each method's on its own")
    method_cls = load_method(method)
    device = devices.pick_device(params["device"])
    preset = params["preset"] or ("paper" if device.type == "cuda" else "cpu")
    config = config_dict(build_config(method_cls, preset, parse_set_options(params["sets"])))
    options = {key: params[name] for key, name in OPTIONS.items() if key != "set" and name in params}
    return describe({**options, "preset": preset}, config)


def run_config(spec, run_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The same description from what the harness ran (a BenchSpec and its run.json), so that a
    study's member and a single run keep the same file."""
    options = {"method": spec.method, "root": spec.root, "category": list(spec.categories),
               "preset": run_spec["preset"], "device": spec.device, "threads": spec.threads,
               "protocol": spec.protocol, "out": spec.out,
               "setting": spec.setting, "resume": spec.resume, "eval_size": spec.eval_size,
               "metrics": spec.metrics_mode, "metrics_memory": spec.metrics_memory, "pictures": spec.pictures,
               "allow_layout_problems": spec.allow_layout_problems, "logger": spec.logger, "ddp": spec.ddp,
               "track_test_every": spec.track_test_every, "split": spec.split}
    return describe(options, run_spec["config"])


def describe(options: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Options in one fixed order (YAML keys, paths as text, categories as a list), then `set`."""
    out: dict[str, Any] = {}
    for key in OPTIONS:
        if key == "set" or key not in options:
            continue
        value = options[key]
        if isinstance(value, Path):
            value = str(value)
        if key == "category":
            value = [c for v in value for c in str(v).split(",")]
        out[key] = value
    out["set"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    return out


def config_yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
