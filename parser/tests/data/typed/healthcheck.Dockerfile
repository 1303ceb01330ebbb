FROM alpine
HEALTHCHECK NONE extra
HEALTHCHECK CONNECT localhost
HEALTHCHECK CMD
HEALTHCHECK --interval=50ns CMD true
HEALTHCHECK --interval=0ms --timeout=1ms CMD true
HEALTHCHECK --timeout=5 CMD true
HEALTHCHECK --start-period=1x CMD true
HEALTHCHECK --retries=-1 CMD true
HEALTHCHECK --retries=many CMD true
HEALTHCHECK --retries=99999999999 CMD true
HEALTHCHECK --retries=0 --start-interval=-5s CMD ["curl", "-f", "http://localhost/"]
