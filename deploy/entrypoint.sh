#!/bin/sh
# Container entry point: runs the given command (bkv-vault-node / bkv-chatd) as
# the unprivileged user `bkv`. Started as root, it first copies the compose
# secrets (bind-mounted, owned by whoever created them on the host) into the
# memory-only /run/bkv, readable by `bkv` alone, so no secret is ever written
# to the container's disk and the service never runs as root.
set -eu

if [ "$(id -u)" = 0 ]; then
    install -d -m 0700 -o bkv -g bkv /run/bkv
    for name in master_key transport_secret fleet_sealed link_key; do
        if [ -f "/run/secrets/$name" ]; then
            install -m 0400 -o bkv -g bkv "/run/secrets/$name" "/run/bkv/$name"
        fi
    done
    # TLS certificate folders (read-only bind mounts, keys 0600 owned by the host
    # user): the same copy into memory, so `bkv` can read its own key
    for name in tls probe; do
        if [ -f "/etc/bkv/$name/cert.pem" ]; then
            install -d -m 0700 -o bkv -g bkv "/run/bkv/$name"
            for file in cert.pem key.pem ca.pem; do
                install -m 0400 -o bkv -g bkv "/etc/bkv/$name/$file" "/run/bkv/$name/$file"
            done
        fi
    done
    if [ -d /var/lib/bkv ] && [ -w /var/lib/bkv ]; then  # a volume (vault nodes)
        chown bkv:bkv /var/lib/bkv
    fi
    exec setpriv --reuid=bkv --regid=bkv --init-groups -- "$@"
fi
exec "$@"
