#!/usr/bin/env bash
# Set up (with the test tools) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Headless Chromium renders `align report` pages in the report test (skipped where it cannot be installed).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "[align] chromium not installed: the report's browser test will skip"
fi
# Deliberate thread settings: the suite runs on 2 cores, sometimes beside other processes; spinning OpenMP
# threads slowed a decode step 10x under load here (see align/runtime.py).
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
# Two test modules at a time (pytest-xdist; a module's tests and fixtures stay in one worker): tiny models and
# the start of many Python processes keep one core busy at a time, and two workers overlap them.
# `-n 0` runs it in this process, ALIGN_TEST_WORKERS=N with N workers. The benchmark's own quick run
# (-m bench) is a separate CI step (.ci/run).
exec "${PYTHON:-python3}" -m pytest -q -m "not bench" -n "${ALIGN_TEST_WORKERS:-2}" --dist loadscope "$@"
