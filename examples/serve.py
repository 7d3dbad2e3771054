"""``udpchat.run()``: serve a config until Ctrl-C, SIGTERM or SIGHUP, in two processes, as the
``serve`` command does, and read the result."""

from __future__ import annotations

import udpchat


def announce(service: udpchat.Service) -> None:
    print(f"serving on port {service.address[1]}", flush=True)


def main() -> None:
    config = udpchat.ServerConfig(
        host="127.0.0.1", port=0, processes=2, output_format=udpchat.OutputFormat.TEXT
    )
    result = udpchat.run(config, on_started=announce)
    received = sum(stats.received for stats in result.per_process)
    print(f"processes={len(result.per_process)} received={received} drained={result.drained}")


if __name__ == "__main__":
    main()
