FROM alpine AS builder
COPY --from=builder /a /b
RUN --mount=from=builder,target=/x echo self

FROM alpine AS second
COPY --from=builder /out /out
COPY --from=0 /out /out2
COPY --from=BUILDER /out /out3
COPY --from=later /x /y
COPY --from=2 /x /y
COPY --from=1 /x /y
COPY --from=7 /x /y
COPY --from=buidler /x /y
COPY --from=alpine /etc/os-release /os
COPY --from=alpine:3 /etc/os-release /os
COPY --from=docker.io/library/alpine /etc/os-release /os
COPY --from=$STAGE /x /y
RUN --mount=type=bind,from=later,target=/l echo forward mount
RUN --mount=type=cache,from=buildr,target=/c echo typo mount

FROM later AS third
FROM buidler AS fourth

FROM alpine AS later
