FROM --plattform=linux/amd64 alpine AS a
FROM --platform alpine AS b
COPY --from=a --from=b /x /y
COPY --link=maybe /x /y
COPY --link= /x /y
COPY --chown /x /y
COPY --keep-git-dir /x /y
COPY --checksum=sha256:abc /x /y
ADD --from=a /x /y
ADD --parents /x /y
ENV --boo A=1
WORKDIR --flag /x
USER --flag root
ARG --ignored X
STOPSIGNAL --ignored SIGINT
HEALTHCHECK --interval=1s NONE
MAINTAINER --boo joe@example.com
