ARG VERSION=3.19
ARG REGISTRY
FROM ${REGISTRY}alpine:${VERSION} AS base
FROM alpine:${VERSON} AS typo
FROM --platform=$BUILDPLATFORM alpine:$UNDECLARED AS build
COPY $VERSION /global-not-in-scope
ARG VERSION
COPY $VERSION /redeclared-ok
COPY $TARGETARCH /predefined-needs-arg
ARG TARGETARCH
COPY $TARGETARCH /ok
ENV HOME_DIR=/home/app
WORKDIR $HOME_DIR
WORKDIR ${HOME_DRI:-/tmp}
ENV A=1 B=$A
ENV C=$A
USER $APP_USER
LABEL version=$VERSION build=$BUILD_ID
RUN echo $NOT_CHECKED_IN_SHELL_FORM
RUN --mount=type=cache,target=$CACHE_DIR echo mounts are checked
EXPOSE $PORT
COPY '$NOT_A_VAR' \$ALSO_NOT /literal/
ARG D=$C E=$D
COPY $E $PATH /ok/

FROM scratch AS empty
COPY $HOME_DIR /parent-scope-not-inherited

FROM build AS child
COPY $HOME_DIR $VERSION /inherited/
