#!/usr/bin/env bash
# Gradescope autograder setup (Ubuntu image, run once as root when the autograder is built).
# Zip this folder's files (setup.sh, run_autograder) and upload the zip as the assignment's autograder.
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip bubblewrap
python3 -m venv /opt/llmkata
/opt/llmkata/bin/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
/opt/llmkata/bin/pip install -q "llmkata[interop]"
