FROM alpine
ONBUILD RUN echo fine
ONBUILD COPY . /app
ONBUILD ONBUILD RUN echo chained
ONBUILD FROM scratch
ONBUILD MAINTAINER me
ONBUILD INCLUDE x.Dockerfile
ONBUILD RUN --network=bogus echo bad trigger flag
ONBUILD BOGUS thing
ONBUILD RUN <<EOF
echo heredoc trigger
EOF
