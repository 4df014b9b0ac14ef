"""How every command of this project fails: one `error: ...` line on stderr and an exit status, no traceback.

    def main(argv=None) -> int:
        return run_command(_main, argv)             # _main(argv) builds a CommandParser and does the work

Exit status: 0 done; **2** the command line is wrong: argparse's errors (a bad option or value, an option out
of range) and a `UsageError` from the checks a command makes before any work (an input path that does not
exist or is of the wrong kind, an output path that cannot be written, options that cannot work together),
plus the error types a command declares as `usage` (a file the user named that is not what it should be: a
checkpoint, a scene folder, a config); **1** the command line was right and running failed: any other
`LLMFormerError` or `OSError` (an altered artifact, a backend that is not installed here, a camera that does
not open, a full disk, a captioner that fails); **130** Ctrl-C. `--debug` (every CommandParser has it) or
LLMFORMER_DEBUG=1 lets the error through with its traceback. Anything else is a bug and is never caught:
its traceback is what to report.

Light on purpose: argparse, os, sys and the error root only (export/ and llmformer/ commands import it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engines.errors import LLMFormerError

__all__ = ["CommandError", "CommandParser", "DEBUG_ENV", "UsageError", "artifact_folder", "bounded",
           "existing_file", "existing_folder", "output_file", "output_folder", "run_command"]

DEBUG_ENV = "LLMFORMER_DEBUG"
USAGE, FAILURE, INTERRUPTED = 2, 1, 130


class UsageError(LLMFormerError, ValueError):
    """The command line is wrong (an option, a value, a path the user typed): exit status 2."""


class CommandError(LLMFormerError, RuntimeError):
    """A command's run failed for a reason no more specific error names: exit status 1."""


def debug_requested(argv: Sequence[str]) -> bool:
    """--debug among the arguments (before a bare `--`), or LLMFORMER_DEBUG set to anything but 0/empty."""
    args = list(argv)
    if "--" in args:
        args = args[:args.index("--")]
    return "--debug" in args or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def error_line(exc: BaseException) -> str:
    """`error: <message>` on one line (a message spanning lines, e.g. a backend's, is joined with spaces)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"error: {text or type(exc).__name__}"


def run_command(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
                usage: tuple[type[BaseException], ...] = ()) -> int:
    """`main(argv)`'s exit status; an expected error becomes one `error:` line on stderr and status 2 (usage:
    UsageError and the `usage` types) or 1 (any other LLMFormerError or OSError); Ctrl-C is 130. With --debug
    or LLMFORMER_DEBUG=1 the error propagates with its traceback."""
    debug = debug_requested(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except (LLMFormerError, OSError, *usage) as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return USAGE if isinstance(exc, (UsageError, *usage)) else FAILURE


class CommandParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with the commands' conventions: a `--debug` flag, and a bad command line is a
    UsageError (one `error:` line and status 2 through run_command) instead of usage text and SystemExit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# -- argparse types: each refuses a bad value with a usage error that names it ------------------------
def bounded(kind: type = int, low: float | None = None, high: float | None = None, low_open: bool = False,
            what: str | None = None) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)` in [low, high] ((low, high] with low_open); floats must be finite."""
    noun = what or ("an integer" if kind is int else "a number")
    rule = " and ".join(r for r in ((f"> {low:g}" if low_open else f">= {low:g}") if low is not None else "",
                                    f"<= {high:g}" if high is not None else "") if r)

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)) or (
                low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {noun}{' ' + rule if rule else ''}, got {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert


def existing_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return path


def existing_folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path} does not exist")
    return path


def artifact_folder(text: str) -> Path:
    """A folder holding a finished build (manifest.json); its contents are checked by runtime.load()."""
    path = Path(text)
    build = f"build one with `python export/build_engines.py --out {path}`"
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not an artifact folder: {build}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"artifact folder {path} does not exist: {build}")
    if not (path / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"{path} is not an artifact folder (no manifest.json; a build may have "
                                         f"been interrupted): {build}")
    return path


def _writable_from(path: Path) -> None:
    """The nearest existing ancestor of `path` must be a folder this process may write in (folders that do
    not exist yet are created there later)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: {parent} is not writable")


def output_file(text: str) -> Path:
    """A file to write: not an existing folder, in a folder that exists or can be created and is writable.
    Checked when the options are parsed, so a bad path fails before the work, not after it."""
    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: name a file in it, e.g. {path / 'out.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: it is read-only")
    _writable_from(path)
    return path


def output_folder(text: str) -> Path:
    """A folder to write into: an existing folder or one that can be created, writable."""
    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder name is empty")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write in {path}: it is not writable")
    else:
        _writable_from(path)
    return path
