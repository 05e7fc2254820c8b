#!/usr/bin/env bash
# Renders an inlierq report with headless Chromium (Debian package `chromium`) to a PNG screenshot, to check
# that it displays. Usage: scripts/render_report.sh OUT.report.html [SCREENSHOT.png] [HEIGHT]
set -euo pipefail
report=$(realpath "$1")
shot=${2:-${1%.html}.png}
height=${3:-6000}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,"$height" \
  --screenshot="$(realpath -m "$shot")" "file://$report" 2>/dev/null
echo "screenshot: $shot"
