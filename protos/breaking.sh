#!/bin/sh
# buf breaking, from the repository root: the .proto files against v1 as first published
# (tests/conformance/frozen_v1) and, when the clone has it, against the previous commit.
# BUF names the buf executable (make lint passes the one npm ci installed).
set -eu
buf=${BUF:-tests/conformance/node_modules/.bin/buf}
"$buf" breaking protos --against tests/conformance/frozen_v1
if git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null 2>&1; then
	"$buf" breaking protos --against '.git#ref=HEAD~1,subdir=protos'
else
	echo "buf breaking: no previous commit in this clone (shallow?); compared with frozen_v1 only"
fi
