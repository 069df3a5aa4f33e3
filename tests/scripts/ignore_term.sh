#!/bin/sh
# Ignore SIGTERM (children inherit it), print the pid, and run until killed with SIGKILL.
trap '' TERM
echo "$$"
echo ready
while :; do sleep 1; done
