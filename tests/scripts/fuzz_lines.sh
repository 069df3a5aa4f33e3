#!/bin/sh
# Print $1 lines out0..out($1-1), wait for one input line (or EOF), exit with status $2.
i=0
while [ "$i" -lt "$1" ]; do
    echo "out$i"
    i=$((i + 1))
done
read -r _line
exit "$2"
