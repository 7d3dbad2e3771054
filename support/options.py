"""The command line's options read from itself, and values they must refuse: so that the checks
for NaN, infinity and overflow, in the tests and in ``make attack``, leave no option out."""

from __future__ import annotations

import typer


def float_options(commands: typer.core.TyperGroup) -> list[tuple[str, str]]:
    """(command, option) for every option of every command that takes a number with a
    fraction, read from the command line itself (``typer.main.get_command(app)``), so that the
    NaN checks leave none out."""
    return [
        (name, str(parameter.opts[0]))
        for name, command in commands.commands.items()
        for parameter in command.params
        if isinstance(parameter, typer.core.TyperOption)
        and parameter.type_descriptor.annotation is float
    ]


NUMBER_TOO_LARGE = "1" + "0" * 400
"""A number the impairments' grammar can write and a float cannot hold: it reads as inf."""
NUMBER_UNDERFLOWING = "0." + "0" * 320 + "1"
"""A number that underflows to a subnormal (1e-321)."""
IMPAIRMENTS_OUT_OF_RANGE = [
    ("--rate", f"{NUMBER_UNDERFLOWING}/s"),
    ("--rate", f"{NUMBER_UNDERFLOWING}B/s"),
    ("--rate", f"{NUMBER_TOO_LARGE}/s"),
    ("--rate", f"up:{NUMBER_TOO_LARGE}kB/s"),
    ("--delay", f"{NUMBER_TOO_LARGE}ms"),
    ("--jitter", f"{NUMBER_TOO_LARGE}s"),
    ("--reorder-hold", f"{NUMBER_TOO_LARGE}us"),
    ("--burst", NUMBER_TOO_LARGE),
    ("--loss", NUMBER_TOO_LARGE),
    ("--loss", f"{NUMBER_TOO_LARGE}%"),
]
"""``impair`` values its grammar accepts that overflow to infinity or underflow towards 0: the
grammar writes no NaN, but a rate of 0.000...1/s made the proxy's timer overflow (a traceback)
once traffic came."""
