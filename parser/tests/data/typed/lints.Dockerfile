FROM --platform=$TARGETPLATFORM alpine AS a
CMD echo one
CMD echo two
ENTRYPOINT run.sh
HEALTHCHECK CMD true
HEALTHCHECK NONE
WORKDIR app/src
WORKDIR more
EXPOSE 80/TCP 127.0.0.1:8080:80
ENV DB_PASSWORD=hunter2 PUBLIC_KEY=abc
ARG GITHUB_TOKEN API_VERSION
LABEL maintainer me

FROM --platform=linux/arm64 alpine AS b
SHELL ["/bin/bash", "-c"]
CMD echo no lint after SHELL

FROM --platform=linux/arm64 alpine AS build-arm64
from alpine as lower
Run echo mixed
