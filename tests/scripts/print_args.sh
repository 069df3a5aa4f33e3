#!/bin/sh
# Print each argument on a line of its own, exactly as received.
for arg in "$@"; do
    printf '%s\n' "$arg"
done
