#!/usr/bin/env bash
# The README's walk through the API, as a script: run it while `make run` runs (another terminal).
# Needs curl and python3. Every call must succeed (curl -f, set -e): the first unexpected answer
# stops the script with curl's message, instead of feeding an empty value to the next call.
set -euo pipefail

MOSAIC=${MOSAIC:-.venv/bin/mosaic}
# json KEY.PATH < document: one field of a JSON document (strings bare, the rest as JSON).
json() {
  python3 -c 'import json, sys
try:
    value = json.load(sys.stdin)
    for key in sys.argv[1].split("."):
        value = value[key]
except (ValueError, KeyError, TypeError):
    sys.exit(f"no {sys.argv[1]} in the answer")
print(value if isinstance(value, str) else json.dumps(value))' "$1"
}
call() { curl -fsS "$@"; }

S=$($MOSAIC status --json)              # the gateway's URL and the seeded credentials
GW=$(json gateway.url <<<"$S")
K="x-api-key: $(json credentials.apiKey.key <<<"$S")"
J='content-type: application/json'

# The admin signs in (seeded with every role, EDITOR included).
ADMIN=$(call "$GW/v1/auth/signin" -H "$K" -H "$J" -d "$(json credentials.admin <<<"$S")" |
        json tokens.accessToken)
# Ada signs up (a LEARNER), the admin makes her an AUTHOR (roles are replaced, so keep LEARNER),
# and she refreshes her token to get the new role.
RUN="$(date +%s)-$RANDOM"               # so that the script can run again on the same stack
ADA=$(call "$GW/v1/auth/signup" -H "$K" -H "$J" \
      -d "{\"email\":\"ada-$RUN@example.com\",\"password\":\"correct-horse-9\",\"name\":\"Ada\"}")
call -o /dev/null -X PUT "$GW/v1/users/$(json user.id <<<"$ADA")/roles" -H "$K" -H "$J" \
     -H "authorization: Bearer $ADMIN" -d '{"roles":["LEARNER","AUTHOR"]}'
TOKEN=$(call "$GW/v1/auth/refresh" -H "$K" -H "$J" \
        -d "{\"refreshToken\":\"$(json tokens.refreshToken <<<"$ADA")\"}" | json tokens.accessToken)

# Ada writes a draft and submits it, an editor publishes it, anyone (with an API key) reads it.
ID=$(call "$GW/v1/author/blogs" -H "$K" -H "$J" -H "authorization: Bearer $TOKEN" \
     -d "{\"title\":\"Hello, Mosaic\",\"description\":\"A first post\",\"draftText\":\"It works.\",
          \"slug\":\"Hello Mosaic $RUN\",\"imgUrl\":\"https://example.com/cover.png\",
          \"tags\":[\"intro\"]}" | json id)
call -o /dev/null -X POST "$GW/v1/author/blogs/$ID/submit" -H "$K" -H "authorization: Bearer $TOKEN"
call -o /dev/null -X POST "$GW/v1/editor/blogs/$ID/publish" -H "$K" -H "authorization: Bearer $ADMIN"
call "$GW/v1/blogs/by-slug/hello-mosaic-$RUN" -H "$K" | json title   # cached by the gateway
call "$GW/v1/blogs?tag=intro" -H "$K" >/dev/null                     # the public list
# Without an API key the gateway answers 401 (problem+json).
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' "$GW/v1/blogs")
[ "$STATUS" = 401 ] || { echo "expected 401 without an API key, got $STATUS" >&2; exit 1; }
echo "published $ID; both APIs are documented at $GW/docs"
