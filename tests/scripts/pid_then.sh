#!/bin/sh
# Print this process's pid on a line of its own, then become the given command (same pid, same group).
echo "$$"
exec "$@"
