# Every instruction in its valid forms: only lint warnings are expected.
ARG BASE=alpine:3.19
ARG TARGETPLATFORM
FROM alpine AS deps
RUN echo deps > /deps

FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG VERSION=1.0 REVISION
ENV APP_HOME=/app MODE="release build"
ENV LEGACY_FORM some value with spaces
LABEL org.opencontainers.image.version=$VERSION "com.example.quoted"="yes"
WORKDIR /app
RUN echo "shell form $VERSION"
RUN ["/bin/sh", "-c", "echo exec form"]
RUN <<EOF
echo heredoc
EOF
RUN <<-EOT bash
	echo chomped
	EOT
COPY --chown=1000:1000 --chmod=0644 --link --exclude=*.tmp --exclude=*.log src/ /app/src/
COPY --from=deps --parents a/b.txt c/d.txt /app/
COPY ["with space.txt", "/app/"]
COPY <<EOF /app/config.txt
version=$VERSION
EOF
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar.gz /dl/
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /buildkit
ADD --unpack=false --link=false archive.tar /keep/
USER app:app
EXPOSE 80 443/tcp 53/udp 8000-8010 9000/sctp
VOLUME /data /cache
VOLUME ["/logs"]
STOPSIGNAL SIGTERM
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --start-interval=2s --retries=3 CMD curl -f http://localhost/ || exit 1
ONBUILD RUN echo triggered
ENTRYPOINT ["/app/run"]
CMD ["--serve"]

FROM build AS final
HEALTHCHECK NONE
STOPSIGNAL 9
USER 1000
CMD /app/run --serve
