FROM alpine AS src
FROM alpine
COPY /foo <<EOF
EOF
COPY <<EOF1 <<'EOF2' /dest/
first $HOME
EOF1
second $HOME
EOF2
COPY --from=src_${X} /a /b
COPY --from=src /a /b
COPY --exclude=a --exclude=b --parents ./x ./y /dest/
ADD --keep-git-dir --unpack --checksum=sha256:00 https://example.com/x.tgz /x/
ADD ["a b", "c d", "/dest/"]
