#!/bin/sh
# Entrypoint of the capshard image. With --user U:G it runs capshard as U:G (no home or passwd
# entry needed). Started as root, it runs capshard as the owner of the working folder (the
# mounted /data), so what a build writes belongs to whoever owns that folder; a root-owned
# folder is written as root. exec keeps capshard PID 1, so it gets SIGTERM itself.
set -eu
if [ "$(id -u)" = 0 ]; then
    owner=$(stat -c %u .)
    group=$(stat -c %g .)
    if [ "$owner" != 0 ]; then
        exec setpriv --reuid="$owner" --regid="$group" --clear-groups -- capshard "$@"
    fi
fi
exec capshard "$@"
