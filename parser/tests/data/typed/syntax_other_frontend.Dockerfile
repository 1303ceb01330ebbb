# syntax=example.com/my/frontend:1
FROM alpine
RUN --cache=ttl=1h echo extensions stay available under other frontends

FROM unikernel AS k
APP /app
