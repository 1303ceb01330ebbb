FROM alpine AS builder
RUN echo one

FROM debian AS Builder
RUN echo two

FROM alpine AS scratch
FROM alpine AS context
FROM alpine AS unikernel
FROM builder AS final
