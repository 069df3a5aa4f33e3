#!/bin/sh
# A line of bytes that are not UTF-8 between two good lines.
printf 'ok\n\377\376bad\nend\n'
