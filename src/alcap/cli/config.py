"""`alcap config show`: a training config, resolved, with every key's meaning."""

from __future__ import annotations


def add_config(sub) -> None:
    p = sub.add_parser("config", help="show a training config with every key's meaning and default",
                       description="Configs are YAML files (configs/) read by `alcap train` and `alcap experiment`.")
    inner = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    s = inner.add_parser("show", help="print a config as it resolves, every key commented with its meaning",
                         description="Print CONFIG (a YAML file, or a model or run directory with its "
                                     "run_config.yaml) after defaults and --set overrides are applied: commented "
                                     "YAML that `alcap train` reads back as the same config, each key with its "
                                     "meaning and, where the value differs, its default. Without CONFIG: the "
                                     "defaults. --format markdown prints the reference tables of docs/config.md.")
    s.add_argument("config", metavar="CONFIG", nargs="?", help="YAML config, or a directory with run_config.yaml")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value as `alcap train --set` does, e.g. --set train.lr=1e-4; repeatable")
    s.add_argument("--method", metavar="NAME", help="for an experiment file (configs/demo.yaml): the config of this method")
    s.add_argument("--seed", type=int, default=2020, metavar="N", help="with --method: the seed (default 2020)")
    s.add_argument("--format", choices=("yaml", "markdown"), default="yaml",
                   help="yaml (default): commented YAML; markdown: a table of keys, defaults and meanings per section")
    s.set_defaults(func=cmd_config_show)


def cmd_config_show(args) -> int:
    from pathlib import Path

    from ..config import RUN_CONFIG_FILE, describe_config, load_config, read_yaml
    from ..experiment import load_experiment

    path = args.config
    if path is not None and Path(path).is_dir():
        if not (Path(path) / RUN_CONFIG_FILE).is_file():
            raise ValueError(f"{path}: a directory without {RUN_CONFIG_FILE}; give a YAML config or a model directory")
        path = Path(path) / RUN_CONFIG_FILE
    if path is not None and "methods" in read_yaml(path):
        experiment = load_experiment(path)
        if not args.method:
            raise ValueError(f"{path} is an experiment file; choose a method with --method "
                             f"({', '.join(experiment.methods)})")
        config = experiment.run_config(args.method, args.seed, args.set)
    elif args.method:
        raise ValueError(f"--method is for experiment files; {path or 'the defaults'} is a run config")
    else:
        config = load_config(path, args.set)
    print(describe_config(config, args.format), end="")
    return 0
