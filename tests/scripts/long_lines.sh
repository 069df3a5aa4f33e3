#!/bin/sh
# A line of $1 ASCII bytes whose newline comes in a later write, a line of $2 two-byte characters (U+00E9),
# then "end".
head -c "$1" /dev/zero | tr '\0' x
sleep 0.1
echo
yes 'é' | head -n "$2" | tr -d '\n'
echo
echo end
