#!/usr/bin/env bash
# Refreshes the chat page's vendored libraries from the versions pinned in package.json and
# package-lock.json (change the pins first, then run this; commit what it writes). Needs npm and
# the registry; the build itself never does.
#
#   chat/ui/vendor/update.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$here/package.json" "$tmp/"
[ -f "$here/package-lock.json" ] && cp "$here/package-lock.json" "$tmp/"
npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error
cp "$tmp/package-lock.json" "$here/"
m="$tmp/node_modules"
cp "$m/marked/lib/marked.umd.js" "$here/marked.js"
cp "$m/dompurify/dist/purify.min.js" "$here/purify.js"
cp "$m/@highlightjs/cdn-assets/highlight.min.js" "$here/highlight.js"
# One stylesheet for code, light and dark as the system says.
{
  echo "/* highlight.js github and github-dark themes (BSD-3-Clause), by prefers-color-scheme */"
  echo "@media (prefers-color-scheme: light) {"; cat "$m/@highlightjs/cdn-assets/styles/github.min.css"; echo "}"
  echo "@media (prefers-color-scheme: dark) {"; cat "$m/@highlightjs/cdn-assets/styles/github-dark.min.css"; echo "}"
} > "$here/hljs.css"
{
  for p in marked dompurify @highlightjs/cdn-assets; do
    v=$(node -p "require('$m/$p/package.json').version")
    echo "== $p $v"; cat "$m/$p/LICENSE"*; echo
  done
} > "$here/LICENSES.txt"
ls -l "$here"
