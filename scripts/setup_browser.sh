# Sourced by test.sh: what the WebLLM browser test needs on a fresh Debian machine (we run as root).
#  - Debian's chromium (headless, WebGPU on its SwiftShader adapter), only if /usr/bin/chromium is missing;
#  - puppeteer-core and @mlc-ai/web-llm 0.2.79 from npm, pinned by tests/browser/package-lock.json, into
#    tests/browser/node_modules (never a browser download: PUPPETEER_SKIP_DOWNLOAD).
# Failures are not fatal here: the browser test itself fails (under CI=true) when something is missing.
BROWSER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/browser" && pwd)"
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup_browser: installing Debian's chromium" >&2
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) ||
      echo "setup_browser: apt-get install chromium failed" >&2
  else
    echo "setup_browser: /usr/bin/chromium is missing (install Debian's chromium as root)" >&2
  fi
fi
if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$BROWSER_DIR/node_modules/.package-lock.json" ] ||
     ! cmp -s "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/.installed-lock.json"; then
    echo "setup_browser: npm ci in $BROWSER_DIR" >&2
    (cd "$BROWSER_DIR" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
       cp package-lock.json .installed-lock.json) || echo "setup_browser: npm ci failed" >&2
  fi
else
  echo "setup_browser: npm is missing (install Node.js 20 and npm)" >&2
fi
export PERSONALIZE_WEBLLM_DIR="$BROWSER_DIR/node_modules/@mlc-ai/web-llm"
