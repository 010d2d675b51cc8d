#!/usr/bin/env bash
# PrairieLearn mounts the student's files in /grade/student and reads /grade/results/results.json.
set -uo pipefail
mkdir -p /grade/results /grade/work
rm -rf /grade/work/submission && cp -r /grade/student /grade/work/submission
llmkata grade /grade/work/submission --prairielearn /grade/results/results.json
