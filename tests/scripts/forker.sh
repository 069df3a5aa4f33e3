#!/bin/sh
# Start grandchildren that outlive their parents (one orphaned, holding stdout open), print every pid, then wait.
sleep 300 &
echo "$!"
sh -c 'sleep 300 & echo "$!"'
echo "$$"
echo ready
wait
