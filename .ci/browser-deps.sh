#!/usr/bin/env bash
# What `transdiff demo` and its real-browser test need (tests/test_demo.py, marker `browser`): the demo
# extra (Gradio), Playwright's Python package (in the test extra; it drives the system's browser, so no
# browser is downloaded), and Debian's chromium, installed only when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,demo]"
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version 2>/dev/null  # (its wrapper script may warn on stderr)
