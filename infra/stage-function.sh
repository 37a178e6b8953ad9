#!/usr/bin/env bash
# Stage one Cloud Function's source as a self-contained folder for `gcloud functions deploy --source`:
# functions/NAME/main.py and requirements.txt at the top, the mountainid library beside it.
# Usage: infra/stage-function.sh NAME [DEST]   (DEST defaults to a new temporary folder; printed)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:-}
[[ $name =~ ^[a-z][a-z0-9_-]*$ && -f $repo/functions/$name/main.py ]] ||
  { echo "usage: $0 NAME [DEST]  (NAME: a folder under functions/ with a main.py)" >&2; exit 2; }
dest=${2:-$(mktemp -d)}
if [[ -e $dest && -n $(ls -A "$dest") ]]; then
  echo "error: $dest is not empty" >&2
  exit 1
fi

mkdir -p "$dest"
# The function's folder (main.py and its requirements.txt: the pinned subset of requirements.lock
# it imports), then the library beside it.
[[ -f $repo/functions/$name/requirements.txt ]] || { echo "error: functions/$name/requirements.txt is missing" >&2; exit 1; }
cp -R "$repo/functions/$name/." "$dest/"
cp -R "$repo/mountainid" "$dest/mountainid"
find "$dest" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
echo "$dest"
