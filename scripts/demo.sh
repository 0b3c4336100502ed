#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the starter model if no trained model exists, start the local prediction
# function and the Voila web app, and print both URLs. Ctrl-C stops both. Extra arguments go to `birdclf demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295
exec .venv/bin/birdclf demo "$@"
