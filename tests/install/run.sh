#!/usr/bin/env bash
# Installs the built zoo into a temporary prefix, then configures and builds tests/install against it: runs the
# consumer program, then trains the plugin's model through the installed `zoo` tool and evaluates the run (which
# loads the plugin again from the run's config.json).
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/build" >/dev/null
export LD_LIBRARY_PATH="$work/prefix/lib:${LD_LIBRARY_PATH:-}"
"$work/build/consumer"
zoo=$work/prefix/bin/zoo
plugin=$work/build/libtiny_plugin.so
"$zoo" --plugin "$plugin" list | grep -q '^tiny '
# stop-below ends the 3-epoch run after epoch 1 (its threshold, 10, is above any cross-entropy of 10 classes here)
"$zoo" train tiny --plugin "$plugin" --callback stop-below --limit 300 --threads 1 --no-progress --out "$work/run"
test "$(grep -c '"epoch"' "$work/run/metrics.jsonl")" -eq 1
"$zoo" eval "$work/run" | tee "$work/eval.txt"
grep -q accuracy "$work/eval.txt"
# a file that is not a plugin is one line and exit 1, not a crash
if "$zoo" --plugin "$work/run/config.json" list 2> "$work/err.txt"; then exit 1; fi
grep -q "is not a zoo plugin" "$work/err.txt"
echo "install: consumer, plugin training and evaluation passed"
