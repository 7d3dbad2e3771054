"""``impair --profile NAME``: named links, each a set of the options as written.

The values are typical, not measurements of any one network; each row says where it comes
from. Options given beside a profile override its values (``--profile satellite --loss 2%``),
direction by direction, as a later option overrides an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass

from udpchat.wire import display_width

LIST = "list"
"""``--profile list`` prints the table instead of running."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    options: dict[str, tuple[str, ...]]
    """Impairment field to values, as the options write them (both directions)."""
    about: str
    source: str
    """Where the values come from."""

    def written(self) -> str:
        """The options as a command line writes them: ``--delay 280ms --jitter 10ms``."""
        return " ".join(
            f"--{name.removesuffix('_s').replace('_', '-')} {value}"
            for name, values in self.options.items()
            for value in values
        )


PROFILES = (
    Profile(
        "lan",
        {"delay_s": ("0.2ms",), "jitter_s": ("0.1ms",)},
        "switched Ethernet: well under a millisecond",
        "ITU-T G.1010 puts a LAN far below every class's delay budget; typical switch latency",
    ),
    Profile(
        "wifi",
        {"delay_s": ("5ms",), "jitter_s": ("3ms",), "loss": ("2%",), "burst": ("3",)},
        "802.11 in a busy room: jitter, loss in bursts",
        "netem's Gilbert-Elliott loss model (tc-netem(8), 'loss gemodel') for bursty "
        "wireless loss; delay and jitter as the netem wiki's examples",
    ),
    Profile(
        "3g",
        {"delay_s": ("100ms",), "jitter_s": ("20ms",), "loss": ("1%",)},
        "a UMTS mobile link",
        "3GPP TS 23.107: conversational class transfer delay 100 ms, SDU error ratio 1e-2",
    ),
    Profile(
        "satellite",
        {"delay_s": ("280ms",), "jitter_s": ("10ms",), "loss": ("0.5%",)},
        "a geostationary hop: long delay",
        "ITU-T G.114: a geostationary satellite hop adds about 280 ms one way",
    ),
    Profile(
        "congested",
        {"rate": ("200/s",), "rate_queue": ("20",), "delay_s": ("20ms",), "jitter_s": ("5ms",)},
        "a 200/s bottleneck with a short queue: tail drops",
        "netem's rate with a limit (tc-netem(8): 'rate', 'limit'): a token bottleneck with a "
        "short FIFO",
    ),
    Profile(
        "lossy-10",
        {"loss": ("10%",)},
        "10% independent loss, nothing else",
        "netem wiki: 'loss 10%' (random, independent loss)",
    ),
)
"""The profiles, in the order ``--profile list`` shows them."""

BY_NAME = {profile.name: profile for profile in PROFILES}


def profile_table() -> list[str]:
    """``--profile list``: each profile's name, options, what it is and its source."""
    rows = [("PROFILE", "OPTIONS", "WHAT")]
    rows += [(profile.name, profile.written(), profile.about) for profile in PROFILES]
    widths = [max(display_width(row[column]) for row in rows) for column in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() for row in rows]
    lines.append("")
    lines += [f"{profile.name}: {profile.source}" for profile in PROFILES]
    return lines


def with_profile(
    name: str | None, settings: dict[str, list[str] | None]
) -> dict[str, list[str] | None]:
    """``settings`` (Impairment field to values as written) after the profile's values, so
    that what is given beside the profile overrides it; ``ValueError`` for an unknown name."""
    if name is None:
        return settings
    profile = BY_NAME.get(name)
    if profile is None:
        known = ", ".join([*BY_NAME, LIST])
        raise ValueError(f"must be one of {known}, not {name!r}")
    merged = dict(settings)
    for field_name, values in profile.options.items():
        merged[field_name] = [*values, *(settings.get(field_name) or [])]
    return merged
