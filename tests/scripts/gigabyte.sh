#!/bin/sh
# One line of 1 GiB (NUL bytes) and no newline at all.
exec head -c 1073741824 /dev/zero
