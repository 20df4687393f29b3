"""``python -m speckle_embed <command>`` / ``speckle-embed <command>``: sub-command dispatch.

Commands::

    classify   classify HDF5/CXI frames with a saved FewShotClassifier (speckle_embed.cli)
    train      train an embedding network (speckle_embed.train.__main__, Hydra)
    evaluate   the evaluation suite and its report (speckle_embed.evaluation.__main__, Hydra)
    demo       the whole story: simulate a new sample, register 5 shots, classify
               (speckle_embed.demo.__main__, Hydra; needs the sim extra)
    stream     the online veto service (speckle_embed.stream, Hydra; the stream extra)
    stream-replay  send frames of files over ZMQ at a chosen rate (rehearsals)

Everything after the command is passed on (Hydra overrides ``key=value``)::

    speckle-embed classify classifier=clf/ inputs=[run42/*.cxi]
    speckle-embed train experiment=offline
    speckle-embed evaluate checkpoint=pretrained online.enabled=true
    speckle-embed demo
"""
from __future__ import annotations

import importlib
import importlib.util
import runpy
import sys

__all__ = ["main", "COMMANDS"]

#: command -> (candidate modules with a ``main()``, one-line help)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "classify": (("speckle_embed.cli",), "classify frames of HDF5/CXI files with a saved classifier"),
    "train": (("speckle_embed.train.__main__",), "train an embedding network (Hydra)"),
    "evaluate": (("speckle_embed.evaluation.__main__",),
                 "the evaluation suite: offline/online protocols, report (Hydra)"),
    "demo": (("speckle_embed.demo.__main__",),
             "the whole story: simulate a new sample, register 5 shots, classify (Hydra)"),
    "stream": (("speckle_embed.stream.__main__",), "online veto: classify a stream of frames (Hydra)"),
    "stream-replay": (("speckle_embed.stream.replay_main",), "send frames of files over ZMQ at a rate"),
}


def _usage() -> str:
    lines = ["usage: speckle-embed <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`speckle-embed <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; returns (and, as a console script, exits with) its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"speckle-embed: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if cmd == "classify":
        from speckle_embed.cli import classify_main

        return classify_main(rest)
    modules, _ = COMMANDS[cmd]
    errors = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except ImportError as exc:  # a missing parent package
            errors.append(f"{name}: {exc}")
            continue
        if spec is None:
            errors.append(f"{name} is not importable")
            continue
        # Run it exactly as `python -m <package>` would (Hydra entry points read sys.argv and
        # locate their config relative to a __main__ script).
        saved = sys.argv
        sys.argv = [spec.origin or name, *rest]
        try:
            runpy.run_module(name.removesuffix(".__main__"), run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
            if isinstance(code, str):  # sys.exit("message"): print it, as the interpreter would
                print(code, file=sys.stderr)
            return code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            sys.argv = saved
        return 0
    print(f"speckle-embed: the {cmd!r} command is not available in this installation ("
          + "; ".join(errors) + ")", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
