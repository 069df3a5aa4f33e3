#!/bin/sh
# Echo stdin until it is closed, say so, then try to read stdin again (it must stay at EOF).
cat
echo eof
cat
echo done
