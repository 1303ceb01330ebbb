FROM unikernel AS kernel
APP /app/a
APP /app/b
RUN echo no shell
ENTRYPOINT ["/app/a"]
SHELL ["/bin/sh", "-c"]
HEALTHCHECK CMD true
USER nobody
WORKDIR /app
VOLUME /data
STOPSIGNAL SIGTERM
ONBUILD RUN echo x
MAINTAINER someone
CMD /app/a --shell-form

FROM kernel AS derived
RUN echo still a unikernel

FROM alpine
APP /bin/sh
MODULE net
