"""What the management commands share: one-line argument errors and argument types."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any, NoReturn

from django.core.management.base import CommandError, CommandParser

__all__ = ["accept_django_options", "add_loglevel", "one_line_errors", "parse_age",
           "positive_int"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _OneLineParser(CommandParser):
    def error(self, message: str) -> NoReturn:
        if not self.called_from_command_line:
            raise CommandError(f"Error: {message}")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line_errors(parser: Any) -> None:
    """Make ``parser`` (and subparsers added later) report a bad argument in one line.

    argparse prints the whole usage block first, which for ``worker`` is a screenful
    that pushes the one line that matters out of sight. Call first in ``add_arguments``.
    """
    if isinstance(parser, CommandParser):
        parser.__class__ = _OneLineParser


def accept_django_options(subparser: Any) -> None:
    """Let ``manage.py <command> <action> --settings X`` (Django's options after the
    action) parse: argparse hands everything after the action to the subparser, which
    knows none of them. They keep their meaning (Django read ``--settings`` and
    ``--pythonpath`` from the command line before the command ran)."""
    hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    subparser.add_argument("--settings", **hidden)
    subparser.add_argument("--pythonpath", **hidden)
    subparser.add_argument("-v", "--verbosity", type=int, choices=[0, 1, 2, 3], **hidden)
    for flag in ("--traceback", "--no-color", "--force-color", "--skip-checks"):
        subparser.add_argument(flag, action="store_true", **hidden)


def add_loglevel(parser: Any) -> None:
    """``--loglevel``, as the worker and beat take it (any case)."""
    parser.add_argument(
        "-l", "--loglevel", default="INFO", type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="Log level of the django_tasks loggers, in any case as Celery's -l takes it "
             "(default: %(default)s).",
    )


def positive_int(value: str) -> int:
    """A whole number >= 1 (argparse type)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {value!r}")
    return number


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """'90s', '15m', '12h', '7d', '2w' or a bare number of seconds; CommandError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise CommandError(
            f"{option} {text!r}: an age is a number with one of the units s, m, h, d, w "
            "(lowercase; no months or years: 365d), e.g. 90s, 15m, 12h, 7d, 2w."
        )
    number, unit = match.groups()
    try:
        return timedelta(seconds=float(number) * _UNITS[unit or "s"])
    except OverflowError:
        raise CommandError(
            f"{option} {text!r} is longer than the calendar goes back (at most "
            f"{timedelta.max.days:,}d)."
        ) from None
