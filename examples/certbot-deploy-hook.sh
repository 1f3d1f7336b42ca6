#!/bin/sh
# certbot deploy hook for anytls-server: copy the renewed certificate where the server
# (user anytls) can read it, then reload the server (no connection is dropped).
#
#   install -D -m 755 certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/anytls.sh
#   certbot certonly --standalone -d proxy.example.com    # first certificate (port 80 free)
#   RENEWED_LINEAGE=/etc/letsencrypt/live/proxy.example.com \
#       /etc/letsencrypt/renewal-hooks/deploy/anytls.sh     # install it the first time
#
# examples/server.toml then reads cert = "/etc/anytls/fullchain.pem" and
# key = "/etc/anytls/privkey.pem" (mode 640, group anytls: readable by the server only).
set -eu
dest="${ANYTLS_CERT_DIR:-/etc/anytls}"
group="${ANYTLS_GROUP:-anytls}"
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE to the live/<name> directory}"
install -d -m 750 -g "$group" "$dest"
for file in fullchain.pem privkey.pem; do
    install -m 640 -g "$group" "$RENEWED_LINEAGE/$file" "$dest/$file.new"
    mv -f "$dest/$file.new" "$dest/$file"
done
systemctl reload anytls-server
