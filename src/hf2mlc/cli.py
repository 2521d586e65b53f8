"""``hf2mlc``: the library without Snakemake — make the demo, inspect an artifact, chat with a host build.

    hf2mlc demo results/download/demo            # the embedded demo checkpoint
    hf2mlc inspect results/package/demo/iphone   # manifest summary; verifies every file's sha256
    hf2mlc versions                              # every package version stored under results/versions/
    hf2mlc restore 3f2a9c                        # put one back as the current bundle
    hf2mlc chat --model demo --quantization q4f16_0 --prompt "四国の県名を全て列挙してください。"
    hf2mlc build my-config.yaml iphone_bundle    # the workflow's stages for a config, without Snakemake's CLI

``chat`` runs the host build of the workflow's results (same weights, template and tokenizer files as the
bundle) the way MLC's engine would: the prompt rendered by the conversation template, stop tokens, sampling.

``build`` runs the whole workflow for a config file without writing a Snakemake command: the same rules,
checks and reruns, scheduled by the Snakefile of this checkout (Snakemake is one of hf2mlc's pinned
dependencies), with the results under the checkout's ``results/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError
from .layout import RESULTS


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import stages

    stages.download(source="demo", out_dir=args.out_dir)
    print(f"demo checkpoint written to {args.out_dir}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .manifest import MANIFEST_NAME, read_manifest, verify_manifest

    directory = Path(args.directory)
    if not (directory / "manifest.json").is_file():
        raise UserError(f"{directory}: no {MANIFEST_NAME}; point at a stage output under results/.")
    manifest = read_manifest(directory)
    bad = verify_manifest(directory)
    size = sum(entry["size"] for entry in manifest["files"].values())
    print(f"stage      {manifest['stage']}")
    print(f"version    {manifest['version_id']}")
    print(f"files      {len(manifest['files'])} ({size / 1e6:.1f} MB)")
    for key, value in sorted(manifest.get("params", {}).items()):
        print(f"param      {key} = {value}")
    for role, digest in sorted(manifest.get("inputs", {}).items()):
        print(f"input      {role} {digest[:16]}")
    print(f"tools      apache-tvm {manifest['tools'].get('apache-tvm')}, hf2mlc {manifest['tools'].get('hf2mlc')}")
    if bad:
        print(f"CHANGED    {', '.join(bad)}", file=sys.stderr)
        return 1
    print("verified   every file matches its sha256")
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    from .versions import list_versions

    rows = list_versions(Path(args.results))
    if not rows:
        print(f"no versions under {args.results}; a package run stores each bundle it makes")
    for row in rows:
        where = row["path"] if row["stored"] else "(not stored)"
        print(f"{row['version_id']}  {row['model']:<16} {row['device']:<7} {row.get('produced_at') or '-':<26} {where}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from .versions import restore

    entry, target = restore(Path(args.results), args.version_id)
    print(f"restored version {entry['version_id']} ({entry['model']}/{entry['device']}) to {target}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    import json

    from . import layout
    from .families import render_prompt
    from .runtime import Engine
    from .stages import host_library
    from .tokenizer.bundle import bundle_tokenizer

    results = str(args.results)
    build = Path(layout.compile_dir(args.model, "host", args.quantization, results))
    if not (build / layout.LIB_INFO).is_file():
        raise UserError(f"{build}: no host build; run `snakemake --cores 2 {build}` first.")
    patch = Path(layout.patch_dir(args.model, results))
    template = json.loads((patch / layout.CONV_TEMPLATE).read_text(encoding="utf-8"))
    generation = json.loads((patch / layout.OVERRIDES).read_text(encoding="utf-8"))["generation"]
    # As MLC's runtime loads the bundle's files: tokenizer.json if there is one, else tokenizer.model.
    tokenizer = bundle_tokenizer(Path(layout.tokenizer_dir(args.model, results)))
    engine = Engine(host_library(build), Path(layout.weights_dir(args.model, args.quantization, results)))
    temperature = generation.get("temperature", 0.7) if args.temperature is None else args.temperature
    top_p = generation.get("top_p", 1.0)
    history: list[tuple[str, str]] = []
    prompts = [args.prompt] if args.prompt else None
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            user = prompts.pop()
        else:
            try:
                user = input("ユーザー> ")
            except EOFError:
                return 0
        history.append(("user", user))
        ids = list(template.get("system_prefix_token_ids") or []) + tokenizer.encode(render_prompt(template, history))
        out = engine.generate(
            ids, args.max_new_tokens, temperature=temperature, top_p=top_p,
            stop_token_ids=template.get("stop_token_ids", []), seed=args.seed,
        )
        stops = set(template.get("stop_token_ids", []))
        answer = tokenizer.decode([t for t in out if t not in stops])
        for stop in template.get("stop_str", []):
            answer = answer.split(stop)[0]
        print(answer)
        history.append(("assistant", answer))


#: The checkout this hf2mlc runs from (README: an editable install), whose Snakefile ``build`` runs.
CHECKOUT = Path(__file__).resolve().parents[2]
#: The workflow's named targets (Snakefile), for ``build``'s help.
BUILD_TARGETS = ("iphone_bundle", "mac_bundle", "evaluate_all", "all", "summary", "upload")


def _cmd_build(args: argparse.Namespace) -> int:
    import subprocess

    workflow = Path(args.workflow).resolve()
    config = Path(args.config).resolve()
    if not (workflow / "Snakefile").is_file():
        raise UserError(f"{workflow}: no Snakefile; point --workflow at an hf2mlc checkout.")
    if not config.is_file():
        raise UserError(f"{args.config}: no such config file; start from config/config.yaml.")
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(workflow / "Snakefile"),
        "--directory", str(workflow),
        "--cores", str(args.cores),
        *(["--dry-run"] if args.dry_run else []),
        *args.targets,
        "--configfile", str(config),  # last: it takes every file name that follows
    ]  # fmt: skip
    return subprocess.call(command)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task, each option with its help (tests/test_cli.py checks)."""
    parser = argparse.ArgumentParser(prog="hf2mlc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write the embedded demo checkpoint")
    demo.add_argument("out_dir", help="where to write it (config.json, model.safetensors, spiece.model, ...)")
    demo.set_defaults(func=_cmd_demo)
    inspect = sub.add_parser("inspect", help="summarise and verify a stage output")
    inspect.add_argument("directory", help="a stage's output directory (results/<stage>/...) with a manifest.json")
    inspect.set_defaults(func=_cmd_inspect)
    versions = sub.add_parser("versions", help="list every stored package version")
    versions.add_argument("--results", default=RESULTS, help=f"the workflow's results directory (default {RESULTS})")
    versions.set_defaults(func=_cmd_versions)
    restore = sub.add_parser("restore", help="put a stored package version back as the current bundle")
    restore.add_argument("version_id", help="a version id, or enough of its start to be unique")
    restore.add_argument("--results", default=RESULTS, help=f"the workflow's results directory (default {RESULTS})")
    restore.set_defaults(func=_cmd_restore)
    chat = sub.add_parser("chat", help="chat with a host build of the workflow's results")
    chat.add_argument("--results", default=RESULTS, help=f"the workflow's results directory (default {RESULTS})")
    chat.add_argument("--model", default="demo", help="the model id in config/config.yaml (default demo)")
    chat.add_argument("--quantization", default="q4f16_0", help="which host build (default q4f16_0)")
    chat.add_argument("--prompt", help="one prompt (default: read prompts from stdin)")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default 128)")
    chat.add_argument("--temperature", type=float, help="0 for greedy (default: the family's)")
    chat.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    chat.set_defaults(func=_cmd_chat)
    build = sub.add_parser(
        "build",
        help="run the workflow's stages for a config file (Snakemake's scheduler, no Snakemake command)",
        description="Build every enabled model of CONFIG: the workflow's rules, checks and reruns, scheduled by "
        "the checkout's Snakefile. CONFIG is merged over config/config.yaml: a file with only `models:` works.",
    )
    build.add_argument("config", help="a config file (config/config.yaml's keys; see config/README.md)")
    build.add_argument("targets", nargs="*", default=["iphone_bundle"],
                       help=f"named targets (default iphone_bundle): {', '.join(BUILD_TARGETS)}")
    build.add_argument("--cores", type=int, default=2, help="CPU cores to use (default 2)")
    build.add_argument("--dry-run", action="store_true", help="list the jobs that would run, run none")
    build.add_argument("--workflow", default=str(CHECKOUT), help="the hf2mlc checkout (default: this one)")
    build.set_defaults(func=_cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, OSError) as err:
        from .faults import as_user_error

        user = as_user_error(err, output=getattr(args, "out_dir", None))
        if user is None:
            raise
        print(f"hf2mlc: {user}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
