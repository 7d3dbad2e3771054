#!/usr/bin/env bash
# `make lab-figures`: the lab page's runs (docs/lab.md), then its figures into docs/img/.
# The page runs the same commands in its test; the pictures it shows are these.
set -euo pipefail
cd "$(dirname "$0")/.."
udpchat=.venv/bin/udpchat
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
server_port=${LAB_SERVER_PORT:-15002}
link_port=${LAB_LINK_PORT:-15003}

# One run: a server recording, a link with the options given, one sender through it.
run() {
    local name=$1 label=$2
    shift 2
    "$udpchat" serve --host 127.0.0.1 --port "$server_port" --quiet "$@" \
        --record "$work/$name.jsonl" --record-interval 0.2 --record-label "$label" 2>/dev/null &
    local server=$!
    "$udpchat" impair --listen "127.0.0.1:$link_port" --to "127.0.0.1:$server_port" \
        "${link[@]}" 2>/dev/null &
    local link_pid=$!
    sleep 1
    "$udpchat" send --username ana --port "$link_port" --count 300 --interval 0.002 >/dev/null
    kill -INT "$link_pid" "$server"
    wait "$link_pid" "$server" || true
}

link=(--loss 10% --seed 1); run independent "--loss 10%"
link=(--loss 10% --burst 4 --seed 1); run bursty "--loss 10% --burst 4"
link=(--profile wifi --seed 1); run wifi "--profile wifi"
"$udpchat" plot "$work"/independent.jsonl "$work"/bursty.jsonl "$work"/wifi.jsonl \
    --plot compare -o docs/img/lab-compare.png --force

"$udpchat" serve --host 127.0.0.1 --port "$server_port" --quiet --echo 2>/dev/null &
server=$!
"$udpchat" impair --listen "127.0.0.1:$link_port" --to "127.0.0.1:$server_port" \
    --delay 20ms --jitter 5ms 2>/dev/null &
link_pid=$!
sleep 1
"$udpchat" send --username ana --port "$link_port" --count 100 --interval 0.01 --rtt \
    --record "$work/rtt.jsonl" >/dev/null
kill -INT "$link_pid" "$server"
wait "$link_pid" "$server" || true
"$udpchat" plot "$work/rtt.jsonl" --plot rtt-cdf -o docs/img/lab-rtt-cdf.png --force
