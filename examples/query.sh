#!/bin/sh
# The seed README's curl example, unchanged but for the URL.
curl -X POST "${SANDSTORM_URL:-http://localhost:8000}/query" \
  -H "Content-Type: application/json" \
  -d '{"prompt": "Create hello.py and run it"}' \
  --no-buffer
